"""The model config expression language: parsing, references, errors and numpy evaluation."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from inferstack.core.errors import InvalidArgumentError
from inferstack.inferflow.expressions import FUNCTION_NAMES, ExpressionError, parse

F32 = npt.NDArray[np.float32]


def _scalar(text: str) -> float:
    """The value of an expression without names, evaluated over one row."""
    return float(parse(text).evaluate({}, 1)[0])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("10 - 4 - 3", 3),  # left-associative
        ("64 / 4 / 2", 8),
        ("7 % 3 * 2", 2),
        ("-7 % 3", 2),  # the sign of the divisor, as in Python
        ("7 % -3", -2),
        ("-2 ** 2", -4),  # ** binds tighter than a unary minus on its left
        ("(-2) ** 2", 4),
        ("2 ** 3 ** 2", 512),  # right-associative
        ("(2 ** 3) ** 2", 64),
        ("2 ** -1", 0.5),  # a unary operand on the right of **
        ("-3 * 2", -6),
        ("2 * -3", -6),
        ("- - 3", 3),
        ("+3 - +1", 2),
        ("1e-3 * 1000", 1),
        (".5 + 1.", 1.5),
        ("2E2", 200),
        ("1.5e+1", 15),
        ("1 + 1 == 2", 1),
        ("3 >= 3", 1),
        ("3 > 3", 0),
        ("3 <= 2", 0),
        ("3 < 4", 1),
        ("3 != 2", 1),
        ("2 == 3", 0),
        ("not 1 == 2", 1),  # not (1 == 2)
        ("not 0 and 0", 0),  # (not 0) and 0
        ("not not 5", 1),
        ("1 or 0 and 0", 1),  # 1 or (0 and 0)
        ("0 and 1 or 1", 1),  # (0 and 1) or 1
        ("2 and 3", 1),  # logic gives 1.0 / 0.0, not an operand
        ("0 or 0", 0),
        ("1 < 2 and 3 < 2", 0),
        ("(1 < 2) < 3", 1),  # parenthesised comparisons may be compared again
        ("2 * (3 + (4 - 1)) / 4", 3),
    ],
)
def test_precedence_and_associativity(text: str, expected: float) -> None:
    assert _scalar(text) == pytest.approx(expected)


def test_names_bind_like_numbers() -> None:
    values = {"pctr": np.array([0.1, 0.5], np.float32), "pcvr": np.array([0.25, 0.04])}
    result = parse("pctr * pcvr ** 0.5").evaluate(values, 2)
    np.testing.assert_allclose(result, [0.05, 0.1], rtol=1e-6)


RNG = np.random.default_rng(7)
ROWS = 257
X = RNG.normal(0, 3, ROWS).astype(np.float32)
Y = RNG.normal(0, 3, ROWS).astype(np.float32)
Z = RNG.normal(0, 3, ROWS).astype(np.float32)
VALUES = {"x": X, "y": Y, "z": Z}

FUNCTION_CASES: list[tuple[str, Callable[[F32, F32, F32], Any]]] = [
    ("log(x)", lambda x, y, z: np.log(x)),
    ("log1p(x)", lambda x, y, z: np.log1p(x)),
    ("exp(x)", lambda x, y, z: np.exp(x)),
    ("sqrt(x)", lambda x, y, z: np.sqrt(x)),
    ("abs(x)", lambda x, y, z: np.abs(x)),
    ("sigmoid(x)", lambda x, y, z: 1 / (1 + np.exp(-x.astype(np.float64)))),
    ("min(x, y)", lambda x, y, z: np.minimum(x, y)),
    ("min(x, y, z, 0.5)", lambda x, y, z: np.minimum(np.minimum(x, y), np.minimum(z, 0.5))),
    ("max(x, y)", lambda x, y, z: np.maximum(x, y)),
    ("max(x, 1, z)", lambda x, y, z: np.maximum(np.maximum(x, 1), z)),
    ("clip(x, -1, 2)", lambda x, y, z: np.clip(x, -1, 2)),
    (
        "clip(x, min(y, z), max(y, z))",
        lambda x, y, z: np.clip(x, np.minimum(y, z), np.maximum(y, z)),
    ),
    ("where(y > 0, x, z)", lambda x, y, z: np.where(y > 0, x, z)),
    ("where(y, x, 0)", lambda x, y, z: np.where(y != 0, x, 0)),
    ("x % y", lambda x, y, z: np.mod(x, y)),
    ("x / y", lambda x, y, z: x / y),
    ("abs(x) ** y", lambda x, y, z: np.abs(x) ** y),
    ("x > y or z > 0", lambda x, y, z: ((x > y) | (z > 0)).astype(np.float32)),
    ("not x > y and z <= 1", lambda x, y, z: (~(x > y) & (z <= 1)).astype(np.float32)),
    ("x == x", lambda x, y, z: np.ones(ROWS)),
    (
        "where(z > 0, y * (1 + 0.1 * log(1 + abs(x))), 0)",
        lambda x, y, z: np.where(z > 0, y * (1 + 0.1 * np.log(1 + np.abs(x))), 0),
    ),
    ("rank(x)", lambda x, y, z: _ranks(-x)),
    ("rank_asc(x)", lambda x, y, z: _ranks(x)),
]


def _ranks(keys: F32) -> F32:
    """Ranks of ascending keys by a Python sort, ties in row order."""
    order = sorted(range(len(keys)), key=lambda row: float(keys[row]))
    ranks = np.empty(len(keys), np.float32)
    for rank, row in enumerate(order, start=1):
        ranks[row] = rank
    return ranks


def test_every_function_is_checked() -> None:
    checked = {text.split("(")[0] for text, _ in FUNCTION_CASES}
    assert checked >= FUNCTION_NAMES


@pytest.mark.parametrize(("text", "expected"), FUNCTION_CASES, ids=[c[0] for c in FUNCTION_CASES])
def test_functions_match_numpy(text: str, expected: Callable[[F32, F32, F32], Any]) -> None:
    with np.errstate(all="ignore"):
        wanted = expected(X, Y, Z)
    result = parse(text).evaluate(VALUES, ROWS)
    assert result.dtype == np.float32
    assert result.shape == (ROWS,)
    np.testing.assert_allclose(result, wanted, rtol=2e-6, atol=1e-30, equal_nan=True)


def test_rank_orders_ties_by_row() -> None:
    values = {"s": np.array([3, 1, 3, 2, 3], np.float32)}
    np.testing.assert_array_equal(parse("rank(s)").evaluate(values, 5), [1, 5, 2, 4, 3])
    np.testing.assert_array_equal(parse("rank_asc(s)").evaluate(values, 5), [3, 1, 4, 2, 5])


def test_rank_orders_many_ties_by_row() -> None:
    # Long enough that an unstable sort (introsort beyond 16 elements) would reorder ties.
    score = RNG.integers(0, 3, 300).astype(np.float32)
    np.testing.assert_array_equal(parse("rank(s)").evaluate({"s": score}, 300), _ranks(-score))
    np.testing.assert_array_equal(parse("rank_asc(s)").evaluate({"s": score}, 300), _ranks(score))


def test_rank_puts_nan_last_and_broadcasts_scalars() -> None:
    values = {"s": np.array([np.nan, 0.5, -np.inf, 2.0], np.float32)}
    np.testing.assert_array_equal(parse("rank(s)").evaluate(values, 4), [4, 2, 3, 1])
    np.testing.assert_array_equal(parse("rank(3)").evaluate({}, 3), [1, 2, 3])
    np.testing.assert_array_equal(parse("rank(s) * 2").evaluate(values, 4), [8, 4, 6, 2])
    assert parse("rank(s)").evaluate({"s": np.empty(0)}, 0).shape == (0,)


def test_references_are_the_dotted_names() -> None:
    assert parse("pctr * product.price").references == {"pctr", "product.price"}
    expression = parse("log(pctr) + product.price * user.30d_orders - pctr")
    assert expression.references == {"pctr", "product.price", "user.30d_orders"}
    assert parse("a and not b or _c1").references == {"a", "b", "_c1"}
    assert parse("max(1, 2) * 3").references == frozenset()
    assert parse("log + 1").references == {"log"}  # a function name without a call is a name


def test_expression_keeps_its_text() -> None:
    expression = parse(" score * 2 ")
    assert expression.text == " score * 2 "
    assert repr(expression) == "Expression(' score * 2 ')"


@pytest.mark.parametrize(
    ("text", "column", "message"),
    [
        ("", 1, "expression is empty at column 1 of ''"),
        ("   ", 1, "expression is empty"),
        ("(a + b", 7, "expected ')' to close the '(' at column 1, found end of text at column 7"),
        ("(a b)", 4, "expected ')' to close the '(' at column 1, found 'b'"),
        ("a + b)", 6, "unbalanced ')': there is no '(' to close at column 6 of 'a + b)'"),
        ("a b", 3, "expected an operator or end of text, found 'b' at column 3"),
        ("a + 2 3", 7, "expected an operator or end of text, found '3'"),
        ("1.2.3", 1, "bad number '1.2.3' at column 1"),
        ("x * 1e", 5, "bad number '1e' at column 5"),
        ("1e-", 1, "bad number '1e-'"),
        ("2x", 1, "bad number '2x'"),
        ("1e99", 1, "number 1e99 is beyond the float32 range"),
        ("lg(x)", 1, "unknown function 'lg' at column 1 of 'lg(x)'; known functions: abs, clip"),
        ("1 + product.price(x)", 5, "unknown function 'product.price'"),
        (
            "clip(x, 1)",
            1,
            "clip() takes 3 arguments, got 2 at column 1 of 'clip(x, 1)'; usage: clip(",
        ),
        ("2 * min(x)", 5, "min() takes at least 2 arguments, got 1"),
        ("log()", 1, "log() takes 1 argument, got 0"),
        ("rank(a, b)", 1, "rank() takes 1 argument, got 2"),
        (
            "where(a, b, c, d)",
            1,
            "where() takes 3 arguments, got 4 at column 1",
        ),
        ("max(a,)", 7, "expected a value, found ')'"),
        ("max(a b)", 7, "expected ',' or ')' in max(), found 'b'"),
        ("log(a", 6, "expected ',' or ')' in log(), found end of text"),
        ("a +", 4, "expected a value, found end of text at column 4"),
        ("* a", 1, "expected a value, found '*'"),
        ("a < b < c", 7, "comparisons cannot be chained at column 7 of 'a < b < c'; join them"),
        ("a == b + c != d", 12, "comparisons cannot be chained"),
        ("a == not b", 6, "'not' must be in parentheses here"),
        ("-not a", 2, "'not' must be in parentheses here"),
        ("product.", 9, "expected a name after '.'"),
        ("a..b", 3, "expected a name after '.'"),
        ("a = b", 3, "unexpected character '=' at column 3 of 'a = b'; did you mean '=='?"),
        ("a $ b", 3, "unexpected character '$'"),
        ("a & b", 3, "unexpected character '&'"),
    ],
)
def test_errors_name_the_column_and_what_was_expected(text: str, column: int, message: str) -> None:
    with pytest.raises(ExpressionError) as caught:
        parse(text)
    assert message in str(caught.value)
    assert caught.value.column == column
    assert isinstance(caught.value, InvalidArgumentError)
    assert caught.value.status == "INVALID_ARGUMENT"


def test_absurd_nesting_is_an_error_not_a_crash() -> None:
    with pytest.raises(ExpressionError, match="nested too deeply"):
        parse("(" * 5000 + "1" + ")" * 5000)
    with pytest.raises(ExpressionError, match="nested too deeply"):
        parse("-" * 5000 + "1")
    assert _scalar("(" * 50 + "-" * 50 + "1" + ")" * 50) == 1


def test_inputs_of_any_numeric_type_give_float32() -> None:
    values = {
        "clicks": np.array([0, 1, 2**40], np.int64),
        "stock": np.array([True, False, True]),
        "price": np.array([1.5, 2.5, 3.5], np.float64),
    }
    result = parse("clicks + stock + price").evaluate(values, 3)
    assert result.dtype == np.float32
    np.testing.assert_array_equal(result, np.array([2.5, 3.5, 2**40 + 4.5], np.float32))


def test_scalars_broadcast_to_every_row() -> None:
    result = parse("base * 2 + bonus").evaluate({"base": 1.5, "bonus": np.float32(1)}, 3)
    np.testing.assert_array_equal(result, [4, 4, 4])
    assert result.dtype == np.float32
    np.testing.assert_array_equal(parse("7").evaluate({}, 2), [7, 7])
    result = parse("x + 1").evaluate({"x": np.array(2.0)}, 2)  # a 0-d array is a scalar
    np.testing.assert_array_equal(result, [3, 3])


def test_result_never_aliases_an_input() -> None:
    price = np.array([1, 2, 3], np.float32)
    result = parse("price").evaluate({"price": price}, 3)
    result[0] = 100
    assert price[0] == 1
    assert parse("7").evaluate({}, 2).flags.writeable


def test_undefined_math_flows_on_without_warnings() -> None:
    values = {"zero": np.zeros(2, np.float32), "big": np.full(2, 1e30, np.float32)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert parse("log(zero)").evaluate(values, 2)[0] == -np.inf
        assert parse("1 / zero").evaluate(values, 2)[0] == np.inf
        assert np.isnan(parse("zero / zero + sqrt(-1) + zero % zero").evaluate(values, 2)).all()
        assert parse("exp(big) * big").evaluate(values, 2)[0] == np.inf
        assert parse("sigmoid(-big)").evaluate(values, 2)[0] == 0
        assert parse("where(log(zero) < 0, 1, 2)").evaluate(values, 2)[0] == 1


def test_a_missing_value_is_named() -> None:
    with pytest.raises(ExpressionError, match=r"'a \* b' references 'b', which has no value"):
        parse("a * b").evaluate({"a": np.ones(2)}, 2)


def test_a_value_of_the_wrong_shape_is_named() -> None:
    with pytest.raises(ExpressionError, match=r"'emb' has shape \(2, 4\), expected \(2,\)"):
        parse("emb + 1").evaluate({"emb": np.ones((2, 4))}, 2)
    with pytest.raises(ExpressionError, match=r"'x' has shape \(3,\), expected \(2,\)"):
        parse("x").evaluate({"x": np.ones(3)}, 2)


# ---- property: random trees against numpy --------------------------------------------------

# A tree is ("num", text) | ("name", name) | ("neg", t) | ("paren", t) | ("call", f, t...) |
# (operator, left, right). It is rendered with the fewest parentheses Python's rules need
# (plus the random "paren" ones) and computed directly with the same numpy ufuncs.
NAMES = ("a", "b", "product.price")
BINARY: dict[str, tuple[int, Callable[[Any, Any], Any]]] = {
    "+": (5, np.add),
    "-": (5, np.subtract),
    "*": (6, np.multiply),
    "/": (6, np.divide),
    "%": (6, np.mod),
    "**": (8, np.power),
    "<": (4, lambda a, b: np.asarray(np.less(a, b), np.float32)),
    ">=": (4, lambda a, b: np.asarray(np.greater_equal(a, b), np.float32)),
    "==": (4, lambda a, b: np.asarray(np.equal(a, b), np.float32)),
}
CALLS: dict[str, Callable[..., Any]] = {
    "log": np.log,
    "sqrt": np.sqrt,
    "abs": np.abs,
    "exp": np.exp,
    "min": np.minimum,
    "max": np.maximum,
}
ATOM, UNARY = 10, 7

numbers = st.floats(0, 1e6, allow_nan=False).map(lambda value: ("num", repr(value)))
leaves = numbers | st.sampled_from([("name", name) for name in NAMES])


def _branches(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return (
        st.tuples(st.sampled_from(["neg", "paren"]), children)
        | st.tuples(st.sampled_from(sorted(BINARY)), children, children)
        | st.tuples(st.just("call"), st.sampled_from(["log", "sqrt", "abs", "exp"]), children)
        | st.tuples(st.just("call"), st.sampled_from(["min", "max"]), children, children)
    )


trees = st.recursive(leaves, _branches, max_leaves=12)


def _render(tree: Any) -> tuple[str, int]:
    """The text of a tree and how tightly its outermost operator binds."""
    kind = tree[0]
    if kind in ("num", "name"):
        return tree[1], ATOM
    if kind == "paren":
        return f"({_render(tree[1])[0]})", ATOM
    if kind == "call":
        return f"{tree[1]}({', '.join(_render(arg)[0] for arg in tree[2:])})", ATOM
    if kind == "neg":
        text, binding = _render(tree[1])
        return f"-{text}" if binding >= UNARY else f"-({text})", UNARY
    binding = BINARY[kind][0]
    (left, left_binding), (right, right_binding) = _render(tree[1]), _render(tree[2])
    if kind == "**":  # right-associative; a unary operand on the right needs no parentheses
        left_needs, right_needs = left_binding <= binding, right_binding < UNARY
    elif binding == 4:  # comparisons do not chain
        left_needs, right_needs = left_binding <= binding, right_binding <= binding
    else:
        left_needs, right_needs = left_binding < binding, right_binding <= binding
    left = f"({left})" if left_needs else left
    right = f"({right})" if right_needs else right
    return f"{left} {kind} {right}", binding


def _compute(tree: Any, values: dict[str, F32]) -> Any:
    kind = tree[0]
    if kind == "num":
        return np.float32(float(tree[1]))
    if kind == "name":
        return values[tree[1]]
    if kind == "paren":
        return _compute(tree[1], values)
    if kind == "neg":
        return np.negative(_compute(tree[1], values))
    if kind == "call":
        return CALLS[tree[1]](*[_compute(arg, values) for arg in tree[2:]])
    return BINARY[kind][1](_compute(tree[1], values), _compute(tree[2], values))


def _names(tree: Any) -> set[str]:
    if tree[0] == "name":
        return {tree[1]}
    if tree[0] == "num":
        return set()
    return set().union(*(_names(child) for child in tree[1:] if isinstance(child, tuple)))


@settings(max_examples=300, deadline=None)
@given(tree=trees, rows=st.integers(1, 12), data=st.data())
def test_random_trees_match_numpy(tree: Any, rows: int, data: st.DataObject) -> None:
    column = hnp.arrays(np.float32, rows, elements=st.floats(width=32))
    values = {name: data.draw(column, label=name) for name in NAMES}
    text = _render(tree)[0]
    expression = parse(text)
    assert expression.references == _names(tree)
    with np.errstate(all="ignore"):
        expected = np.broadcast_to(_compute(tree, values), (rows,))
    np.testing.assert_array_equal(expression.evaluate(values, rows), expected, err_msg=text)
