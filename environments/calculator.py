"""The `calculator` tool: exact arithmetic on an expression, with no `eval` of arbitrary code.

The expression is parsed with `ast` and only numbers, + - * / // % **, unary signs and parentheses are
walked; anything else (names, calls, attributes, strings) is refused. Numbers are exact fractions, so
`0.1 + 0.2` is `0.3` and `1/3` is `1/3`. Sizes are bounded before they are computed (an exponent of at most
10,000 on a base of at most 10,000 bits), so `9**9**9` is an error, not a hung worker. `^` means power and
`×`/`÷` are accepted, as a person would write them.
"""

from __future__ import annotations

import ast
from fractions import Fraction

from temper.environments.tools import tool

MAX_CHARS = 500
MAX_BITS = 10_000
MAX_EXPONENT = 10_000


class CalculatorError(ValueError):
    pass


_BINARY = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.FloorDiv: lambda a, b: Fraction(a // b),
    ast.Mod: lambda a, b: a % b,
}


def _size_ok(x: Fraction) -> Fraction:
    if x.numerator.bit_length() > MAX_BITS or x.denominator.bit_length() > MAX_BITS:
        raise CalculatorError("number too large")
    return x


def _walk(node: ast.AST, source: str) -> Fraction:
    if isinstance(node, ast.Expression):
        return _walk(node.body, source)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return Fraction(ast.get_source_segment(source, node) or repr(node.value))  # the written digits, exactly
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _walk(node.operand, source)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp):
        left, right = _walk(node.left, source), _walk(node.right, source)
        if isinstance(node.op, ast.Pow):
            if right.denominator != 1:
                raise CalculatorError("only whole-number exponents are exact")
            if abs(right) > MAX_EXPONENT or max(left.numerator.bit_length(), left.denominator.bit_length()) * abs(
                right
            ) > MAX_BITS:
                raise CalculatorError("number too large")
            if left == 0 and right < 0:
                raise CalculatorError("division by zero")
            return _size_ok(left ** int(right))
        op = _BINARY.get(type(node.op))
        if op is None:
            raise CalculatorError(f"operator {type(node.op).__name__} is not supported")
        if isinstance(node.op, ast.Div | ast.FloorDiv | ast.Mod) and right == 0:
            raise CalculatorError("division by zero")
        return _size_ok(op(left, right))
    raise CalculatorError(f"only numbers and + - * / // % ** ( ) are allowed, not {type(node).__name__}")


def format_number(x: Fraction) -> str:
    """An integer as digits; a terminating fraction as a decimal; anything else as p/q."""
    if x.denominator == 1:
        return str(x.numerator)
    d, twos, fives = x.denominator, 0, 0
    while d % 2 == 0:
        d, twos = d // 2, twos + 1
    while d % 5 == 0:
        d, fives = d // 5, fives + 1
    if d != 1:
        return f"{x.numerator}/{x.denominator}"
    places = max(twos, fives)
    digits = str(abs(x.numerator) * 10**places // x.denominator).rjust(places + 1, "0")
    return f"{'-' if x < 0 else ''}{digits[:-places]}.{digits[-places:]}"


def evaluate(expression: str) -> str:
    """The exact value of an arithmetic expression; CalculatorError saying why when there is none."""
    if len(expression) > MAX_CHARS:
        raise CalculatorError(f"expression longer than {MAX_CHARS} characters")
    text = expression.replace("^", "**").replace("×", "*").replace("÷", "/").strip()
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise CalculatorError("not an arithmetic expression") from None
    return format_number(_walk(tree, text))


@tool(timeout_s=5.0)
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression exactly, e.g. "347 * 58" or "(2 + 3) / 4"."""
    return evaluate(expression)
