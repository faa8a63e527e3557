"""Stage expressions: Python expression syntax, checked when the config loads, run by simpleeval's sandbox.

An expression is parsed once (`ast.parse(mode="eval")`) and walked before it ever runs: syntax simpleeval
does not evaluate, calls to anything but FUNCTIONS and STR_METHODS, and attributes starting with `_` are
refused then, as a sentence naming the column. What it sees when it runs (`Names`): every payload field
by its name (None when missing), `message` (the whole payload, for names that are not identifiers) and
`kafka` (the message's coordinates, built only when an expression reads it). `a.b` on a mapping reads
key b, None when missing; on a string only the methods in STR_METHODS exist.

simpleeval's own limits stay on (string length, comprehension length); powers are bounded tighter, by
the size of the result, so that `9 ** 4000000` cannot stall a consumer. Whatever an expression raises at
run time is the message's fault (a type error, say): the chain turns it into a stage failure.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from simpleeval import MAX_STRING_LENGTH, EvalWithCompoundTypes

from streamd.message_schema import parse_timestamp

MAX_POWER_BITS = 4096  # the largest integer a power may produce; floats overflow on their own


class ExpressionError(ValueError):
    """What is wrong with an expression's text, with the column: refused when the config loads."""


def parse_time(text: Any, format: str | None = None) -> datetime:
    """ISO 8601 without a format, strptime with one; always an aware UTC datetime."""
    if not isinstance(text, str):
        raise TypeError(f"parse_time takes a string, not {type(text).__name__}")
    if format is None:
        return parse_timestamp(text)
    moment = datetime.strptime(text, format)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def format_time(moment: Any, format: str) -> str:
    if not isinstance(moment, datetime):
        raise TypeError(f"format_time takes a datetime (see parse_time), not {type(moment).__name__}")
    return moment.strftime(format)


def _text(function: Callable[[str], str]) -> Callable[[Any], str]:
    def on_text(value: Any) -> str:
        if not isinstance(value, str):
            raise TypeError(f"{function.__name__} takes a string, not {type(value).__name__}")
        return function(value)

    return on_text


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "lower": _text(str.lower),
    "upper": _text(str.upper),
    "strip": _text(str.strip),
    "len": len,
    "str": str,
    "int": int,
    "float": float,
    "bool": bool,
    "round": round,
    "abs": abs,
    "min": min,
    "max": max,
    "parse_time": parse_time,
    "format_time": format_time,
}


def _replace(text: str) -> Callable[..., str]:
    def replace(old: str, new: str, count: int = -1) -> str:
        grows = max(len(new) - len(old), 0) * (text.count(old) if old else len(text) + 1)
        if len(text) + grows > MAX_STRING_LENGTH:
            raise ValueError(f"replace would make a string over {MAX_STRING_LENGTH} characters")
        return text.replace(old, new, count)

    return replace


STR_METHODS: dict[str, Callable[[str], Callable[..., Any]]] = {
    "startswith": lambda text: text.startswith,
    "endswith": lambda text: text.endswith,
    "lower": lambda text: text.lower,
    "upper": lambda text: text.upper,
    "strip": lambda text: text.strip,
    "replace": _replace,
    "split": lambda text: text.split,
}


def _power(base: Any, exponent: Any) -> Any:
    if (
        isinstance(base, int)
        and isinstance(exponent, int)
        and abs(base) > 1
        and exponent > 0
        and exponent * math.log2(abs(base)) > MAX_POWER_BITS
    ):
        raise OverflowError(f"{base} ** {exponent} is larger than {MAX_POWER_BITS} bits")
    return operator.pow(base, exponent)


def attribute(value: Any, name: str) -> Any:
    """`value.name` in an expression: a mapping's key (None when missing), or a method in STR_METHODS of a string."""
    if isinstance(value, dict):
        return value.get(name)
    if isinstance(value, str) and name in STR_METHODS:
        return STR_METHODS[name](value)
    raise AttributeError(f"{type(value).__name__} has no attribute {name!r}")


class Names:
    """What an expression's names mean for one message; simpleeval reads it as a mapping."""

    __slots__ = ("payload", "context", "kafka")

    def __init__(self) -> None:
        self.payload: dict = {}
        self.context: Callable[[], dict] = dict
        self.kafka: dict | None = None  # built at the first `kafka` of a message, then shared by its stages

    def __getitem__(self, name: str) -> Any:
        if name == "message":
            return self.payload
        if name == "kafka":
            return self.read_kafka()
        return self.payload.get(name)

    def read_kafka(self) -> dict:
        if self.kafka is None:
            self.kafka = self.context()
        return self.kafka

    def reader(self, name: str) -> Callable[[], Any]:
        """`self[name]` as a function of the bound message alone, for the compiled expressions (compiled.py)."""
        if name == "message":
            return lambda: self.payload
        if name == "kafka":
            return self.read_kafka
        return lambda: self.payload.get(name)


class Evaluator(EvalWithCompoundTypes):
    """simpleeval with streamd's functions, a bounded power, and attributes that read mapping keys."""

    def __init__(self) -> None:
        super().__init__(functions=dict(FUNCTIONS), names=Names())
        self.operators[ast.Pow] = _power
        # Only expressions: the statements simpleeval also runs cannot come out of ast.parse(mode="eval").
        for statement in (ast.Expr, ast.Assign, ast.AugAssign, ast.Import):
            self.nodes.pop(statement, None)

    def _eval_attribute(self, node: ast.Attribute) -> Any:
        return attribute(self._eval(node.value), node.attr)

    def _eval(self, node: ast.AST) -> Any:
        # simpleeval checks every intermediate result for modules and forbidden builtins (a third of the
        # time of a stage). Nothing here can produce one: names are JSON values, datetimes and the `kafka`
        # mapping, calls reach only FUNCTIONS and STR_METHODS (checked at compile time), and attributes
        # only mapping keys and STR_METHODS (_eval_attribute). Node types were checked at compile time too.
        return self.nodes[type(node)](node)

    def _eval_call(self, node: ast.Call) -> Any:
        # Positional arguments only (keywords are refused at compile time); no generator per call.
        func = node.func
        function = self._eval(func) if type(func) is ast.Attribute else self.functions[func.id]
        return function(*[self._eval(argument) for argument in node.args])

    def _eval_name(self, node: ast.Name) -> Any:
        return self.names[node.id]  # Names answers every name (None for a field the message lacks)

    def _eval_constant(self, node: ast.Constant) -> Any:
        return node.value  # literal lengths are checked once, at compile time

    def bind(self, payload: dict, context: Callable[[], dict]) -> None:
        """The message the next runs see: its payload, and how to build its `kafka` mapping if read."""
        names = self.names
        names.payload = payload
        names.context = context
        names.kafka = None

    def run(self, tree: ast.expr) -> Any:
        self.start_run()
        return self._eval(tree)

    def start_run(self) -> None:
        self._max_count = 0  # simpleeval's comprehension budget, per evaluation as in its own eval()

    def run_part(self, node: ast.expr) -> Any:
        """One part of the expression being run, within the budget left since `start_run` (see compiled.py)."""
        return self._eval(node)


# Nodes that are parts of the ones the evaluator runs, never run on their own.
_PARTS = (ast.Expression, ast.expr_context, ast.operator, ast.cmpop, ast.boolop, ast.unaryop, ast.comprehension)


def compile_expression(text: str, evaluator: Evaluator) -> ast.expr:
    """The parsed expression, once it is known to use only what the evaluator allows; raises ExpressionError."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"{exc.msg} (column {exc.offset or 1})") from None
    except (ValueError, RecursionError, MemoryError) as exc:  # NUL bytes, absurd nesting
        raise ExpressionError(f"cannot be parsed ({type(exc).__name__})") from None
    try:
        for node in ast.walk(tree):
            _check(node, evaluator)
    except RecursionError:
        raise ExpressionError("is nested too deeply") from None
    return tree.body


def _check(node: ast.AST, evaluator: Evaluator) -> None:
    at = f"(column {getattr(node, 'col_offset', 0) + 1})"
    if isinstance(node, ast.operator | ast.cmpop | ast.unaryop):  # and/or: simpleeval runs them itself
        if type(node) not in evaluator.operators:
            raise ExpressionError(f"the operator {type(node).__name__} is not available {at}")
        return
    if isinstance(node, _PARTS):
        return
    if type(node) not in evaluator.nodes:
        raise ExpressionError(f"{_syntax(node)} is not available in stage expressions {at}")
    if isinstance(node, ast.Constant) and isinstance(node.value, str | bytes) and len(node.value) > MAX_STRING_LENGTH:
        raise ExpressionError(f"a literal longer than {MAX_STRING_LENGTH} characters {at}")
    if isinstance(node, ast.FormattedValue) and node.format_spec is not None:
        # simpleeval bounds an f-string's length only after formatting: `{x:>999999999}` would come first.
        raise ExpressionError(f"format specifications in f-strings are not available {at}")
    if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
        raise ExpressionError(f"attributes starting with _ are not available ({node.attr}) {at}")
    if isinstance(node, ast.Call):
        if node.keywords:
            raise ExpressionError(f"functions take positional arguments only {at}")
        func = node.func
        if isinstance(func, ast.Name):
            if func.id not in FUNCTIONS:
                raise ExpressionError(
                    f"unknown function {func.id}; the functions are {', '.join(sorted(FUNCTIONS))} {at}"
                )
        elif isinstance(func, ast.Attribute):
            if func.attr not in STR_METHODS:
                raise ExpressionError(
                    f"unknown method {func.attr}; the string methods are {', '.join(STR_METHODS)} {at}"
                )
        else:
            raise ExpressionError(f"only named functions can be called {at}")


def _syntax(node: ast.AST) -> str:
    return {
        ast.Lambda: "lambda",
        ast.NamedExpr: "assignment (:=)",
        ast.Starred: "unpacking (*)",
        ast.Await: "await",
        ast.Yield: "yield",
        ast.YieldFrom: "yield",
    }.get(type(node), type(node).__name__)
