"""Compiled stage expressions: the same value or the same exception as simpleeval's Evaluator, limits included."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamd.stages.compiled import compile_tree
from streamd.stages.expressions import FUNCTIONS, STR_METHODS, Evaluator, compile_expression

FIELDS = ("n", "f", "s", "b", "d", "l", "missing")
KAFKA = {"topic": "readings", "partition": 1, "offset": 7, "key": "k", "timestamp": None}


def run_both(text: str, payload: dict) -> tuple[Any, Any]:
    """What the Evaluator and the compiled closures give for `text` on `payload`: a value or ('raised', type, text)."""
    evaluator = Evaluator()
    tree = compile_expression(text, evaluator)
    compiled = compile_tree(tree, evaluator)
    results = []
    for run in (lambda: evaluator.run(tree), compiled):
        evaluator.bind(payload, lambda: dict(KAFKA))
        try:
            results.append(run())
        except Exception as exc:  # noqa: BLE001 - what is compared is which exception
            results.append(("raised", type(exc), str(exc)))
    return results[0], results[1]


def same(left: Any, right: Any) -> bool:
    """Equal, of the same types all the way down; NaN is NaN, and methods are compared by what they are."""
    if type(left) is not type(right):
        return False
    if isinstance(left, float) and math.isnan(left):
        return math.isnan(right)
    if isinstance(left, list | tuple):
        return len(left) == len(right) and all(same(a, b) for a, b in zip(left, right, strict=True))
    if isinstance(left, dict):
        return list(left) == list(right) and all(same(left[key], right[key]) for key in left)
    if callable(left):
        return left.__qualname__ == right.__qualname__ and getattr(left, "__self__", None) == getattr(
            right, "__self__", None
        )
    return left == right


# --- the grammar ------------------------------------------------------------------------------------


def parenthesized(template: str, *parts: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.tuples(*parts).map(lambda texts: "(" + template.format(*texts) + ")")


CONSTANTS = st.one_of(
    st.integers(-300, 300).map(str),
    st.sampled_from(["0", "1", "2", "-1", "3.5", "0.0", "1e308", "10 ** 20", "True", "False", "None"]),
    st.floats(allow_nan=False, allow_infinity=False, width=32).map(repr),
    st.sampled_from(["", " ", "a,b", "12", "DEBUG x", "2024-06-01T12:00:00Z", "é"]).map(repr),
)
NAMES = st.sampled_from([*FIELDS, "message", "kafka", "item"])
LEAVES = CONSTANTS | NAMES


def compound(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    binary = st.sampled_from(["+", "-", "*", "/", "//", "%", "**", "|", "&", "^", "<<", ">>"])
    comparison = st.sampled_from(["==", "!=", "<", "<=", ">", ">=", "in", "not in", "is", "is not"])
    arguments = st.lists(inner, max_size=3).map(", ".join)
    return st.one_of(
        parenthesized("{} {} {}", inner, binary, inner),
        parenthesized("{} {} {}", inner, comparison, inner),
        parenthesized("{} < {} <= {}", inner, inner, inner),
        parenthesized("{} {} {}", inner, st.sampled_from(["and", "or"]), inner),
        parenthesized("{} and {} or {} and {}", inner, inner, inner, inner),
        parenthesized("{}{}", st.sampled_from(["not ", "-", "+", "~"]), inner),
        parenthesized("{} if {} else {}", inner, inner, inner),
        st.tuples(st.sampled_from(sorted(FUNCTIONS)), arguments).map(lambda call: f"{call[0]}({call[1]})"),
        st.tuples(inner, st.sampled_from(sorted(STR_METHODS)), arguments).map(lambda c: f"({c[0]}).{c[1]}({c[2]})"),
        st.tuples(inner, st.sampled_from([*FIELDS, *STR_METHODS, "partition"])).map(lambda a: f"({a[0]}).{a[1]}"),
        st.tuples(inner, inner).map(lambda s: f"{s[0]}[{s[1]}]"),
        st.tuples(inner, inner, inner).map(lambda s: f"{s[0]}[{s[1]}:{s[2]}]"),
        st.tuples(inner, inner).map(lambda s: f"{s[0]}[::{s[1]}]"),
        st.lists(inner, max_size=3).map(lambda items: "[" + ", ".join(items) + "]"),
        st.lists(inner, max_size=3).map(lambda items: "(" + "".join(item + ", " for item in items) + ")"),
        st.lists(inner, min_size=1, max_size=3).map(lambda items: "{" + ", ".join(items) + "}"),
        st.lists(st.tuples(inner, inner), max_size=3).map(lambda kv: "{" + ", ".join(f"{k}: {v}" for k, v in kv) + "}"),
        st.tuples(inner, inner).map(lambda d: f"{{'a': 1, **{d[0]}, 'b': {d[1]}}}"),
        st.tuples(inner, inner, inner).map(lambda c: f"[{c[0]} for item in {c[1]} if {c[2]}]"),
        st.tuples(inner, inner).map(lambda c: f"{{str(item): {c[0]} for item in {c[1]}}}"),
        st.tuples(inner, inner).map(lambda c: f"max({c[0]} for item in {c[1]})"),
        st.tuples(NAMES, NAMES).map(lambda f: f"f'{{{f[0]}}}-{{{f[1]}!r}}'"),
    )


EXPRESSIONS = st.recursive(LEAVES, compound, max_leaves=10)
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
    | st.sampled_from(["12", "DEBUG", "a,b", "2024-06-01T12:00:00Z"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(FIELDS), inner, max_size=3),
    max_leaves=8,
)
PAYLOADS = st.fixed_dictionaries({}, optional={field: JSON for field in FIELDS if field != "missing"})


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(EXPRESSIONS, PAYLOADS)
def test_compiled_expressions_give_what_the_evaluator_gives(text, payload):
    expected, compiled = run_both(text, payload)
    assert same(expected, compiled), (text, payload, expected, compiled)


@pytest.mark.parametrize(
    "text",
    [
        "{(1 + s): s.nothing}",  # a dict's value before its key, as simpleeval's `result[key] = value`
        "n.upper(1 + s)",  # the callee before its arguments
        "(1 + s) - s.nothing",  # left before right
        "(n < 1 < s) or s.nothing",  # a chain stops at the first false comparison
        "[s.nothing, 1 + s]",
        "s[1 + s:s.nothing]",
    ],
)
def test_parts_run_in_the_evaluators_order(text):
    expected, compiled = run_both(text, {"n": 5, "s": "x"})
    assert same(expected, compiled), (expected, compiled)


# --- the limits -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "payload"),
    [
        ("9 ** 4000", {}),  # the power bound
        ("n ** n", {"n": 3000}),
        ("'a' * 100001", {}),  # string length, by multiplying
        ("s + s", {"s": "x" * 60_000}),  # and by adding
        ("[item for item in s]", {"s": "x" * 10_001}),  # the comprehension budget
        ("[a for a in s] + [b for b in s]", {"s": "x" * 6000}),  # spent across the expression
        ("len([a for a in s]) + len([[b for b in s] for c in 'xy'])", {"s": "x" * 4000}),
        ("s.replace('', s)", {"s": "x" * 400}),
    ],
)
def test_limits_hold_exactly_as_in_the_evaluator(text, payload):
    expected, compiled = run_both(text, payload)
    assert isinstance(expected, tuple) and expected[0] == "raised", expected
    assert same(expected, compiled)


def test_the_comprehension_budget_is_per_message_not_per_expression_lifetime():
    evaluator = Evaluator()
    compiled = compile_tree(compile_expression("len([a for a in s])", evaluator), evaluator)
    for _ in range(3):
        evaluator.bind({"s": "x" * 6000}, dict)
        assert compiled() == 6000


def test_the_kafka_mapping_is_built_once_per_message_and_only_when_read():
    evaluator = Evaluator()
    built: list[int] = []

    def context() -> dict:
        built.append(1)
        return dict(KAFKA)

    reads: Callable[[], Any] = compile_tree(compile_expression("kafka.offset + kafka.partition", evaluator), evaluator)
    other = compile_tree(compile_expression("n + 1", evaluator), evaluator)
    evaluator.bind({"n": 1}, context)
    assert other() == 2 and built == []
    assert reads() == 8 and reads() == 8 and built == [1]
