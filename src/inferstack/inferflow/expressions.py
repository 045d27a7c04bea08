"""The expression language of model configs: parse once, evaluate per request with numpy.

A model config computes per-candidate values such as `score: pctr * pcvr ** 0.5` or
`position: rank(score)`. This module reads that text with its own tokenizer and parser
(never Python's eval on user text), reports the names it references so the graph compiler can
order the work, and compiles the tree once into nested closures over numpy ufuncs, so a
request pays for little more than the array operations. Values are float32, one per row.

Operators, loosest first, bind as in Python: `or`, `and`, `not`, comparisons
(< <= > >= == !=, not chainable), `+ -`, `* / %`, unary `- +`, then `**` (right-associative,
and tighter than a unary minus on its left: -2 ** 2 == -4). Comparisons and logic give 1.0 or
0.0, and any non-zero value (NaN included) counts as true.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import reduce
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

from inferstack.core.errors import InvalidArgumentError

Array: TypeAlias = npt.NDArray[np.float32]
# Intermediate values are float32 arrays of shape (rows,) or float32 scalars (constants and
# scalar inputs), which numpy broadcasts; evaluate() makes the result (rows,).
Value: TypeAlias = Any
Env: TypeAlias = dict[str, Value]
Compiled: TypeAlias = Callable[[Env, int], Value]
Input: TypeAlias = npt.NDArray[Any] | float | np.generic  # one (rows,) array or one scalar


class ExpressionError(InvalidArgumentError):
    """An expression that does not parse, or values that do not fit it.

    The message reads `<reason> at column <n> of '<text>'[; <hint>]` when there is a position.
    """

    def __init__(
        self, reason: str, text: str | None = None, position: int | None = None, hint: str = ""
    ) -> None:
        self.reason = reason
        self.text = text
        self.position = position  # 0-based offset into text
        message = reason
        if text is not None and position is not None:
            message = f"{reason} at column {position + 1} of {text!r}"
        super().__init__(f"{message}; {hint}" if hint else message)

    @property
    def column(self) -> int | None:
        """1-based column of the problem, when it has one."""
        return None if self.position is None else self.position + 1


# ---- tokens ---------------------------------------------------------------------------------

_NUMBER = re.compile(r"(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_NUMBER_TAIL = re.compile(r"(?:[0-9A-Za-z_.]|(?<=[eE])[+-])+")  # glued on: `1e`, `2x`, `1.2.3`
# Later parts may start with a digit, as in model config references (`user.30d_orders`).
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*")
_SYMBOLS = ("**", "<=", ">=", "==", "!=", "+", "-", "*", "/", "%", "<", ">", "(", ")", ",")
_KEYWORDS = frozenset({"and", "or", "not"})
_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "number", "name", "op" (symbols and keywords) or "end"
    text: str
    position: int

    def describe(self) -> str:
        return "end of text" if self.kind == "end" else repr(self.text)


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    position = 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position == len(text):
            tokens.append(_Token("end", "", position))
            return tokens
        if number := _NUMBER.match(text, position):
            if tail := _NUMBER_TAIL.match(text, number.end()):
                raise ExpressionError(f"bad number {text[position : tail.end()]!r}", text, position)
            token = _Token("number", number.group(), position)
        elif name := _NAME.match(text, position):
            if text.startswith(".", name.end()):
                raise ExpressionError("expected a name after '.'", text, name.end() + 1)
            token = _Token("op" if name.group() in _KEYWORDS else "name", name.group(), position)
        elif symbol := next((s for s in _SYMBOLS if text.startswith(s, position)), None):
            token = _Token("op", symbol, position)
        else:
            hint = "did you mean '=='?" if text[position] == "=" else ""
            raise ExpressionError(f"unexpected character {text[position]!r}", text, position, hint)
        tokens.append(token)
        position += len(token.text)


# ---- syntax tree ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Constant:
    value: np.float32


@dataclass(frozen=True, slots=True)
class _Name:
    name: str


@dataclass(frozen=True, slots=True)
class _Apply:
    """An operator (unary or binary, told apart by the count) or a function, on arguments."""

    operator: str
    arguments: tuple[_Node, ...]


_Node: TypeAlias = _Constant | _Name | _Apply


# ---- operations -----------------------------------------------------------------------------


def _flags(condition: Any) -> Value:
    """Booleans as the 1.0 / 0.0 every value of the language is."""
    return np.asarray(condition, dtype=np.float32)


def _sigmoid(x: Value) -> Value:
    one = np.float32(1.0)
    return np.divide(one, np.add(one, np.exp(np.negative(x))))


def _rank(x: Value, rows: int, descending: bool) -> Array:
    # Stable sort: equal values are ranked in row order. Negating sorts descending and keeps
    # that order; NaN sorts last either way.
    column = np.broadcast_to(x, (rows,))
    order = np.argsort(np.negative(column) if descending else column, kind="stable")
    ranks = np.empty(rows, dtype=np.float32)
    ranks[order] = np.arange(1, rows + 1, dtype=np.float32)
    return ranks


@dataclass(frozen=True, slots=True)
class _Function:
    usage: str
    min_arguments: int
    max_arguments: int | None  # None: any number, folded pairwise (min, max)
    apply: Callable[..., Value]
    needs_rows: bool = False  # called as apply(x, rows): rank


def _clip(x: Value, low: Value, high: Value) -> Value:
    return np.minimum(np.maximum(x, low), high)


_FUNCTIONS: dict[str, _Function] = {
    "log": _Function("log(x)", 1, 1, np.log),
    "log1p": _Function("log1p(x)", 1, 1, np.log1p),
    "exp": _Function("exp(x)", 1, 1, np.exp),
    "sqrt": _Function("sqrt(x)", 1, 1, np.sqrt),
    "abs": _Function("abs(x)", 1, 1, np.abs),
    "sigmoid": _Function("sigmoid(x)", 1, 1, _sigmoid),
    "min": _Function("min(a, b, ...)", 2, None, np.minimum),
    "max": _Function("max(a, b, ...)", 2, None, np.maximum),
    "clip": _Function("clip(x, lo, hi)", 3, 3, _clip),
    "where": _Function("where(cond, a, b)", 3, 3, lambda c, a, b: np.where(c != 0, a, b)),
    "rank": _Function("rank(x)", 1, 1, lambda x, rows: _rank(x, rows, True), True),
    "rank_asc": _Function("rank_asc(x)", 1, 1, lambda x, rows: _rank(x, rows, False), True),
}
FUNCTION_NAMES = frozenset(_FUNCTIONS)

_UNARY: dict[str, Callable[[Value], Value]] = {
    "-": np.negative,
    "+": np.positive,
    "not": lambda x: _flags(np.logical_not(x)),
}
_BINARY: dict[str, Callable[[Value, Value], Value]] = {
    "+": np.add,
    "-": np.subtract,
    "*": np.multiply,
    "/": np.divide,
    "%": np.mod,  # the sign of the divisor, as in Python
    "**": np.power,
    "<": lambda a, b: _flags(np.less(a, b)),
    "<=": lambda a, b: _flags(np.less_equal(a, b)),
    ">": lambda a, b: _flags(np.greater(a, b)),
    ">=": lambda a, b: _flags(np.greater_equal(a, b)),
    "==": lambda a, b: _flags(np.equal(a, b)),
    "!=": lambda a, b: _flags(np.not_equal(a, b)),
    "and": lambda a, b: _flags(np.logical_and(a, b)),
    "or": lambda a, b: _flags(np.logical_or(a, b)),
}

# ---- parser (precedence climbing) -----------------------------------------------------------

_COMPARISON_BINDING = 4
_BINDING = {"or": 1, "and": 2, "+": 5, "-": 5, "*": 6, "/": 6, "%": 6, "**": 8}
_BINDING.update(dict.fromkeys(("<", "<=", ">", ">=", "==", "!="), _COMPARISON_BINDING))
_NOT_BINDING = 3  # `not a == b` is `not (a == b)`; `not a and b` is `(not a) and b`
_UNARY_BINDING = 7  # between `*` and `**`: -a * b == (-a) * b, -a ** b == -(a ** b)


class _Parser:
    """Tokens are never names that look like symbols, so `.text` alone identifies a symbol."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.index = 0

    def peek(self) -> _Token:
        return self.tokens[self.index]

    def advance(self) -> _Token:
        self.index += 1
        return self.tokens[self.index - 1]

    def error(self, reason: str, token: _Token, hint: str = "") -> ExpressionError:
        return ExpressionError(reason, self.text, token.position, hint)

    def parse(self) -> _Node:
        if self.peek().kind == "end":
            raise ExpressionError("expression is empty", self.text, 0)
        node = self.expression(0)
        token = self.peek()
        if token.text == ")":
            raise self.error("unbalanced ')': there is no '(' to close", token)
        if token.kind != "end":
            raise self.error(
                f"expected an operator or end of text, found {token.describe()}", token
            )
        return node

    def expression(self, min_binding: int) -> _Node:
        left = self.operand(min_binding)
        while (binding := _BINDING.get(self.peek().text, 0)) and binding >= min_binding:
            operator = self.advance().text
            # `**` is right-associative and takes a unary operand on its right (2 ** -1);
            # the others are left-associative.
            right = self.expression(_UNARY_BINDING if operator == "**" else binding + 1)
            left = _Apply(operator, (left, right))
            following = self.peek()
            if binding == _COMPARISON_BINDING == _BINDING.get(following.text):
                hint = "join them with 'and'"
                raise self.error("comparisons cannot be chained", following, hint)
        return left

    def operand(self, min_binding: int) -> _Node:
        token = self.advance()
        if token.kind == "number":
            value = float(token.text)
            if abs(value) > _FLOAT32_MAX:
                raise self.error(f"number {token.text} is beyond the float32 range", token)
            return _Constant(np.float32(value))
        if token.kind == "name":
            return self.call(token) if self.peek().text == "(" else _Name(token.text)
        if token.text in ("-", "+"):
            return _Apply(token.text, (self.expression(_UNARY_BINDING),))
        if token.text == "not":
            if min_binding > _NOT_BINDING:
                raise self.error("'not' must be in parentheses here", token)
            return _Apply("not", (self.expression(_NOT_BINDING),))
        if token.text == "(":
            node = self.expression(0)
            close = self.advance()
            if close.text != ")":
                reason = f"expected ')' to close the '(' at column {token.position + 1}"
                raise self.error(f"{reason}, found {close.describe()}", close)
            return node
        raise self.error(f"expected a value, found {token.describe()}", token)

    def call(self, name: _Token) -> _Apply:
        function = _FUNCTIONS.get(name.text)
        if function is None:
            known = "known functions: " + ", ".join(sorted(_FUNCTIONS))
            raise self.error(f"unknown function {name.text!r}", name, known)
        self.advance()  # (
        arguments = [] if self.peek().text == ")" else [self.expression(0)]
        while arguments and self.peek().text == ",":
            self.advance()
            arguments.append(self.expression(0))
        close = self.advance()
        if close.text != ")":
            found = close.describe()
            raise self.error(f"expected ',' or ')' in {name.text}(), found {found}", close)
        low, high = function.min_arguments, function.max_arguments
        if len(arguments) < low or (high is not None and len(arguments) > high):
            count = f"{low} argument{'' if low == 1 else 's'}"
            wanted = count if high == low else f"at least {count}"
            reason = f"{name.text}() takes {wanted}, got {len(arguments)}"
            raise self.error(reason, name, f"usage: {function.usage}")
        return _Apply(name.text, tuple(arguments))


# ---- compiler -------------------------------------------------------------------------------


def _compile(node: _Node) -> Compiled:
    """One closure per node, so evaluation walks no tree and looks nothing up by name."""
    if isinstance(node, _Constant):
        value = node.value
        return lambda env, rows: value
    if isinstance(node, _Name):
        name = node.name
        return lambda env, rows: env[name]
    args = [_compile(argument) for argument in node.arguments]
    function = _FUNCTIONS.get(node.operator)
    if function is not None and function.needs_rows:
        apply_with_rows, (only,) = function.apply, args
        return lambda env, rows: apply_with_rows(only(env, rows), rows)
    if function is not None and function.max_arguments is None:  # min(a, b, c): min(min(a, b), c)
        return reduce(lambda left, right: _pair(function.apply, left, right), args)
    if function is not None:
        apply = function.apply
    else:
        apply = (_UNARY if len(args) == 1 else _BINARY)[node.operator]
    if len(args) == 1:
        (only,) = args
        return lambda env, rows: apply(only(env, rows))
    if len(args) == 2:
        return _pair(apply, *args)
    return lambda env, rows: apply(*[arg(env, rows) for arg in args])


def _pair(apply: Callable[[Value, Value], Value], left: Compiled, right: Compiled) -> Compiled:
    return lambda env, rows: apply(left(env, rows), right(env, rows))


def _references(node: _Node) -> set[str]:
    if isinstance(node, _Name):
        return {node.name}
    if isinstance(node, _Apply):
        return set().union(*map(_references, node.arguments))
    return set()


class Expression:
    """A parsed expression: the names it reads, and a fast element-wise evaluation."""

    __slots__ = ("_compiled", "_is_name", "references", "text")

    def __init__(self, text: str, tree: _Node) -> None:
        self.text = text
        self.references: frozenset[str] = frozenset(_references(tree))
        self._compiled = _compile(tree)
        self._is_name = isinstance(tree, _Name)  # its result would be the input array itself

    def __repr__(self) -> str:
        return f"Expression({self.text!r})"

    def evaluate(self, values: Mapping[str, Input], rows: int) -> Array:
        """The value of every row: float32, shape (rows,).

        `values` holds one (rows,) array (any numeric dtype) or one scalar per referenced
        name. log(0), division by zero and the like give inf or NaN without warnings.
        """
        env = {name: self._input(name, values, rows) for name in self.references}
        with np.errstate(all="ignore"):
            result = self._compiled(env, rows)
        if self._is_name or np.shape(result) != (rows,):
            return np.full(rows, result, dtype=np.float32)  # a fresh, writable (rows,) array
        return result  # type: ignore[no-any-return]

    def _input(self, name: str, values: Mapping[str, Input], rows: int) -> Value:
        if name not in values:
            raise ExpressionError(f"{self.text!r} references {name!r}, which has no value")
        value = values[name]
        if not isinstance(value, np.ndarray):
            return np.float32(value)
        if value.shape not in ((rows,), ()):
            raise ExpressionError(
                f"{name!r} has shape {value.shape}, expected ({rows},) for {self.text!r}"
            )
        return value.astype(np.float32, copy=False)


def parse(text: str) -> Expression:
    """Parse and compile `text`; raises ExpressionError naming the column and what was expected."""
    try:
        return Expression(text, _Parser(text).parse())
    except RecursionError:  # thousands of nested brackets or signs: no real config has them
        raise ExpressionError("expression is nested too deeply", text, 0) from None
