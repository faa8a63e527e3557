"""Stage expressions compiled once into closures: the Evaluator's semantics without its per-node dispatch.

Why: `streamd bench` drains with a 4-stage chain at 0.54-0.82 of the rate without stages (target 0.85).
The consumer is sequential, so the chain's CPU adds straight to each message's wall time, next to a
store-bound drain of ~60 µs a message. The Evaluator walks the tree for every message (a dict dispatch
and a bound method a node): the bench chain's five expressions (~35 nodes) took ~9 µs a message, the
whole chain ~17 µs. Turned once into nested closures, a call a node, the expressions take ~1.8 µs and
the chain ~8 µs (the rest is the chain's own bookkeeping and building `kafka`; measured by running the
pipeline on 500 generator messages, best of 20, with and without the chain).

simpleeval stays the definition of the language. `compile_expression` parses and checks the tree as
before; each closure then calls what `Evaluator.run(tree)` would, in the same order: the operator
functions of `Evaluator.operators` (safe_add, safe_mult, the bounded power…), FUNCTIONS, STR_METHODS
through `attribute`, and `Names`, so values, exceptions and limits are the same
(tests/test_stage_expressions.py compares both on generated expressions). The node types not compiled
here (comprehensions, f-strings, anything rare) are run by that Evaluator, on their own subtree; the
comprehension budget is reset once per run, so it spans the whole expression as in `Evaluator.run`.
Nothing reaches Python's `eval` or `compile`.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from functools import partial
from typing import Any

from streamd.stages.expressions import STR_METHODS, Evaluator, attribute

Expression = Callable[[], Any]  # the value of one expression for the message bound to the evaluator


def compile_tree(tree: ast.expr, evaluator: Evaluator) -> Expression:
    """`tree`, checked by `compile_expression`, as closures that read the message `evaluator.bind` gives."""
    compiler = _Compiler(evaluator)
    try:
        compiled = compiler.build(tree)
    except RecursionError:
        # Too deep to compile is too deep to run: the Evaluator then fails each message, as it always has.
        return partial(evaluator.run, tree)
    if not compiler.falls_back:
        return compiled
    start = evaluator.start_run

    def run() -> Any:
        start()
        return compiled()

    return run


def _constant(value: Any) -> Expression:
    return lambda: value


class _Compiler:
    """One closure builder per node type, as simpleeval keeps one `_eval_` method per node type."""

    def __init__(self, evaluator: Evaluator) -> None:
        self.evaluator = evaluator
        self.operators = evaluator.operators
        self.falls_back = False  # whether any part runs on the Evaluator
        self.nodes: dict[type, Callable[[Any], Expression]] = {
            ast.Constant: self.constant,
            ast.Name: self.name,
            ast.UnaryOp: self.unaryop,
            ast.BinOp: self.binop,
            ast.BoolOp: self.boolop,
            ast.Compare: self.compare,
            ast.IfExp: self.ifexp,
            ast.Call: self.call,
            ast.Attribute: self.attribute,
            ast.Subscript: self.subscript,
            ast.Slice: self.slice_parts,
            ast.List: self.list_literal,
            ast.Tuple: self.tuple_literal,
            ast.Set: self.set_literal,
            ast.Dict: self.dict_literal,
        }

    def build(self, node: ast.AST) -> Expression:
        build = self.nodes.get(type(node))
        return self.fallback(node) if build is None else build(node)

    def fallback(self, node: ast.AST) -> Expression:
        self.falls_back = True
        return partial(self.evaluator.run_part, node)

    def constant(self, node: ast.Constant) -> Expression:
        return _constant(node.value)

    def name(self, node: ast.Name) -> Expression:
        return self.evaluator.names.reader(node.id)

    def unaryop(self, node: ast.UnaryOp) -> Expression:
        operator, operand = self.operators[type(node.op)], self.build(node.operand)
        return lambda: operator(operand())

    def binop(self, node: ast.BinOp) -> Expression:
        operator, left = self.operators[type(node.op)], self.build(node.left)
        if type(node.right) is ast.Constant:  # `x % 10`: the most common shape, one call fewer
            value = node.right.value
            return lambda: operator(left(), value)
        right = self.build(node.right)
        return lambda: operator(left(), right())

    def boolop(self, node: ast.BoolOp) -> Expression:
        values = [self.build(value) for value in node.values]
        every = isinstance(node.op, ast.And)  # else Or
        if len(values) == 2:
            first, second = values
            return (lambda: first() and second()) if every else (lambda: first() or second())

        def until_decided() -> Any:
            # simpleeval's loop: `and` stops at the first false value, `or` at the first true one.
            result = False
            for value in values:
                result = value()
                if (not result) is every:
                    break
            return result

        return until_decided

    def compare(self, node: ast.Compare) -> Expression:
        left = self.build(node.left)
        operators = [self.operators[type(operation)] for operation in node.ops]
        if len(operators) == 1:
            operator, (comparator,) = operators[0], node.comparators
            if type(comparator) is ast.Constant:  # `offset % 10 == 0`
                value = comparator.value
                return lambda: operator(left(), value)
            right = self.build(comparator)
            return lambda: operator(left(), right())
        comparators = [self.build(comparator) for comparator in node.comparators]
        steps = list(zip(operators, comparators, strict=True))

        def chained() -> Any:
            right_value = left()
            result = True
            for operator, comparator in steps:
                if not result:
                    break
                left_value, right_value = right_value, comparator()
                result = operator(left_value, right_value)
            return result

        return chained

    def ifexp(self, node: ast.IfExp) -> Expression:
        test, body, orelse = self.build(node.test), self.build(node.body), self.build(node.orelse)
        return lambda: body() if test() else orelse()

    def call(self, node: ast.Call) -> Expression:
        # The callee before its arguments, as the Evaluator; keywords and starred arguments are refused
        # by compile_expression, callees other than names and attributes too.
        func = node.func
        arguments = [self.build(argument) for argument in node.args]
        if type(func) is ast.Attribute:
            method = self.attribute(func)
            if len(arguments) == 1:
                (only,) = arguments
                return lambda: method()(only())
            return lambda: method()(*[argument() for argument in arguments])
        function = self.evaluator.functions[func.id]
        if len(arguments) == 1:
            (only,) = arguments
            return lambda: function(only())
        if len(arguments) == 2:
            first, second = arguments
            return lambda: function(first(), second())
        return lambda: function(*[argument() for argument in arguments])

    def attribute(self, node: ast.Attribute) -> Expression:
        value, name = self.build(node.value), node.attr
        method = STR_METHODS.get(name)
        if method is None:

            def read() -> Any:
                found = value()
                return found.get(name) if type(found) is dict else attribute(found, name)

            return read

        def read_method() -> Any:
            # `text.split`: what `attribute` gives a string, without its tests; anything else goes through it.
            found = value()
            return method(found) if type(found) is str else attribute(found, name)

        return read_method

    def subscript(self, node: ast.Subscript) -> Expression:
        container, key = self.build(node.value), self.build(node.slice)
        return lambda: container()[key()]

    def slice_parts(self, node: ast.Slice) -> Expression:
        lower, upper, step = (
            _constant(None) if part is None else self.build(part) for part in (node.lower, node.upper, node.step)
        )
        return lambda: slice(lower(), upper(), step())

    def list_literal(self, node: ast.List) -> Expression:
        if any(isinstance(item, ast.Starred) for item in node.elts):
            return self.fallback(node)
        items = [self.build(item) for item in node.elts]
        return lambda: [item() for item in items]

    def tuple_literal(self, node: ast.Tuple) -> Expression:
        items = [self.build(item) for item in node.elts]
        return lambda: tuple([item() for item in items])

    def set_literal(self, node: ast.Set) -> Expression:
        items = [self.build(item) for item in node.elts]
        return lambda: {item() for item in items}

    def dict_literal(self, node: ast.Dict) -> Expression:
        pairs = [
            (None if key is None else self.build(key), self.build(value))
            for key, value in zip(node.keys, node.values, strict=True)
        ]

        def mapping() -> dict:
            result: dict = {}
            for key, value in pairs:
                if key is None:  # {**other}
                    result.update(value())
                else:
                    # The value before the key, as in the Evaluator's `result[key] = value`.
                    result[key()] = value()
            return result

        return mapping
