"""REDCap branching logic and calculations: a lark grammar, a JSON AST, and a safe evaluator.

``parse`` turns ``[age] >= 18 and ([visit_1_arm_1][smoker(2)] = '1' or if([bmi] > 30, 1, 0) = 1)``
into plain dicts (``{"op": ..., "args": [...]}``) that are stored, sent to the browser as JSON and
evaluated by ``evaluate`` here or by ``static/crf-logic.js`` there, with the same rules; nothing is
ever passed to ``eval``.  The value rules (REDCap's, made explicit so both sides agree):

- a field's value is text (``""`` when blank); an unticked checkbox option is ``"0"``;
- arithmetic converts text to numbers; blank or non-numeric text gives "no value" (NaN), which
  spreads, except in ``sum``/``mean``/``min``/``max``, which skip it; dividing by zero gives no value;
- ``=`` and ``<>`` compare numerically when both sides are numbers, as text when both are text,
  and a number never equals non-numeric text; ``<``, ``>``, ``<=``, ``>=`` are false when a side is blank;
- ``and``/``or``/``if`` treat true and non-zero numbers as true.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from lark import Lark, Transformer, v_args
from lark.exceptions import LarkError, VisitError

MAX_LENGTH = 10_000
MAX_DEPTH = 100

GRAMMAR = r"""
?start: or_expr
?or_expr: and_expr | or_expr _OR and_expr -> or_
?and_expr: comparison | and_expr _AND comparison -> and_
?comparison: additive | additive COMPARATOR additive -> compare
?additive: multiplicative | additive "+" multiplicative -> add | additive "-" multiplicative -> sub
?multiplicative: unary | multiplicative "*" unary -> mul | multiplicative "/" unary -> div
?unary: power | "-" unary -> neg
?power: atom | atom "^" unary -> pow
?atom: NUMBER -> number
     | STRING -> string
     | BOOLEAN -> boolean
     | FIELD -> field
     | FUNCTION "(" [or_expr ("," or_expr)*] ")" -> call
     | "(" or_expr ")"
_OR.2: /or(?![A-Za-z0-9_])/i
_AND.2: /and(?![A-Za-z0-9_])/i
COMPARATOR: "<>" | "!=" | "<=" | ">=" | "==" | "=" | "<" | ">"
FIELD: /(\[[a-z][a-z0-9_]*\])?\[[a-z][a-z0-9_]*(\([A-Za-z0-9_.\-]+\))?\]/
BOOLEAN.2: /(true|false)(?![A-Za-z0-9_])/i
FUNCTION: /[A-Za-z_][A-Za-z0-9_]*/
NUMBER: /[0-9]+(\.[0-9]*)?|\.[0-9]+/
STRING: /'[^']*'|"[^"]*"/
%ignore /[ \t\r\n]+/
"""

# name -> (fewest, most) arguments
FUNCTIONS = {"if": (3, 3), "sum": (1, 100), "mean": (1, 100), "min": (1, 100), "max": (1, 100),
             "round": (1, 2), "roundup": (1, 2), "rounddown": (1, 2), "abs": (1, 1), "datediff": (3, 5)}
DATEDIFF_UNITS = {"y": 365.2425 * 86400, "M": 30.44 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}
_FIELD = re.compile(r"^(?:\[([a-z][a-z0-9_]*)\])?\[([a-z][a-z0-9_]*)(?:\(([A-Za-z0-9_.\-]+)\))?\]$")
_NUMERIC = re.compile(r"^[ \t]*[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?[ \t]*$")
_DATE = re.compile(r"^([0-9]{4})-([0-9]{2})-([0-9]{2})(?: ([0-9]{2}):([0-9]{2})(?::([0-9]{2}))?)?$")


class LogicError(ValueError):
    """Branching logic or a calculation that does not parse; the message says where."""


@v_args(inline=True)
class _ToAst(Transformer):
    def number(self, token):
        value = float(token)
        if not math.isfinite(value):
            raise LogicError(f"number {str(token)[:20]}... at column {token.column} is too large")
        return {"op": "num", "value": value}

    def boolean(self, token):
        return {"op": "bool", "value": str(token).lower() == "true"}

    def string(self, token):
        return {"op": "str", "value": str(token)[1:-1]}

    def field(self, token):
        event, name, code = _FIELD.match(str(token)).groups()
        return {"op": "field", "event": event, "name": name, "code": code}

    def call(self, name, *args):
        fn = str(name).lower()
        if fn not in FUNCTIONS:
            raise LogicError(f"unknown function {str(name)!r} at column {name.column}; known: {', '.join(FUNCTIONS)}")
        args = [a for a in args if a is not None]
        low, high = FUNCTIONS[fn]
        if not low <= len(args) <= high:
            raise LogicError(f"{fn}() takes {low}{'' if low == high else f' to {high}'} arguments, got {len(args)}")
        return {"op": "call", "fn": fn, "args": args}

    def compare(self, left, comparator, right):
        op = {"!=": "<>", "==": "="}.get(str(comparator), str(comparator))
        return {"op": "cmp", "cmp": op, "args": [left, right]}

    def neg(self, value):
        return {"op": "neg", "args": [value]}

    def _binary(self, op, left, right):
        return {"op": op, "args": [left, right]}

    def or_(self, left, right):
        return self._binary("or", left, right)

    def and_(self, left, right):
        return self._binary("and", left, right)

    def add(self, left, right):
        return self._binary("+", left, right)

    def sub(self, left, right):
        return self._binary("-", left, right)

    def mul(self, left, right):
        return self._binary("*", left, right)

    def div(self, left, right):
        return self._binary("/", left, right)

    def pow(self, left, right):
        return self._binary("^", left, right)


_PARSER = Lark(GRAMMAR, parser="lalr", maybe_placeholders=True)


def parse(text: str) -> dict:
    """The AST of a branching-logic or calculation expression; raises only ``LogicError``."""
    if not isinstance(text, str):
        raise LogicError("logic must be text")
    if len(text) > MAX_LENGTH:
        raise LogicError(f"logic longer than {MAX_LENGTH} characters")
    try:
        tree = _ToAst().transform(_PARSER.parse(text))
    except VisitError as exc:
        if isinstance(exc.orig_exc, LogicError):
            raise exc.orig_exc from None
        raise LogicError(f"cannot read the logic: {exc.orig_exc}") from None
    except LarkError as exc:
        raise LogicError(f"cannot read the logic: {_short(exc)}") from None
    except RecursionError:
        raise LogicError("logic nested too deeply") from None
    if _depth(tree) > MAX_DEPTH:
        raise LogicError(f"logic nested more than {MAX_DEPTH} deep")
    return tree


def _depth(tree: dict) -> int:
    deepest, todo = 0, [(tree, 1)]
    while todo:
        node, depth = todo.pop()
        deepest = max(deepest, depth)
        todo.extend((child, depth + 1) for child in node.get("args", ()))
    return deepest


def _short(exc: LarkError) -> str:
    column = getattr(exc, "column", None)
    token = getattr(exc, "token", None) or getattr(exc, "char", None)
    if column is not None and column != -1:
        return f"unexpected {str(token)!r} at column {column}" if token is not None else f"error at column {column}"
    return "the expression ends too early"


@dataclass
class Record:
    """Values one evaluation can see: this event's fields, and other events' by event name."""
    values: Mapping[str, str]
    events: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    today: str = field(default_factory=lambda: datetime.now().strftime("%Y-%m-%d"))

    def lookup(self, event: str | None, name: str, code: str | None) -> str:
        source = self.values if event is None else self.events.get(event, {})
        if code is not None:
            return source.get(f"{name}___{code.lower().replace('-', '_').replace('.', '_')}", "") or "0"
        return source.get(name, "")


def to_number(value: Any) -> float:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, float):
        return value
    return float(value) if _NUMERIC.match(value) else math.nan


def truthy(value: Any) -> bool:
    number = to_number(value)
    return not math.isnan(number) and number != 0


def _compare(op: str, a: Any, b: Any) -> bool:
    na, nb = to_number(a), to_number(b)
    if not math.isnan(na) and not math.isnan(nb):
        return {"=": na == nb, "<>": na != nb, "<": na < nb, ">": na > nb, "<=": na <= nb, ">=": na >= nb}[op]
    both_text = isinstance(a, str) and isinstance(b, str)
    if op in ("=", "<>"):
        equal = both_text and a == b
        return equal if op == "=" else not equal
    if not both_text or a == "" or b == "":
        return False
    return {"<": a < b, ">": a > b, "<=": a <= b, ">=": a >= b}[op]


def _finite(x: float) -> float:
    return x if math.isfinite(x) else math.nan


def _round(fn: str, x: float, digits: float) -> float:
    if math.isnan(x) or math.isnan(digits):
        return math.nan
    scale = 10.0 ** math.trunc(digits) if abs(digits) < 300 else math.nan
    if not math.isfinite(scale) or scale == 0:
        return math.nan
    magnitude = abs(x) * scale
    step = {"round": math.floor(magnitude + 0.5) if math.isfinite(magnitude) else magnitude,
            "roundup": math.ceil(magnitude) if math.isfinite(magnitude) else magnitude,
            "rounddown": math.floor(magnitude) if math.isfinite(magnitude) else magnitude}[fn]
    return _finite(math.copysign(step / scale, x) if x != 0 else 0.0)


def _seconds(value: Any, today: str) -> float:
    text = value if isinstance(value, str) else ""
    if text.lower() == "today":
        text = today
    m = _DATE.match(text)
    if not m:
        return math.nan
    y, mo, d, h, mi, s = (int(g) if g else 0 for g in m.groups())
    try:
        moment = datetime(y, mo, d, h, mi, s)
    except ValueError:
        return math.nan
    return (moment - datetime(1970, 1, 1)).total_seconds()


def evaluate(tree: dict, record: Record) -> Any:
    """Value of an AST: a bool, a float (NaN for no value) or text."""
    op = tree["op"]
    if op == "num":
        return tree["value"]
    if op in ("str", "bool"):
        return tree["value"]
    if op == "field":
        return record.lookup(tree["event"], tree["name"], tree["code"])
    args = tree["args"]
    if op == "and":
        return truthy(evaluate(args[0], record)) and truthy(evaluate(args[1], record))
    if op == "or":
        return truthy(evaluate(args[0], record)) or truthy(evaluate(args[1], record))
    if op == "cmp":
        return _compare(tree["cmp"], evaluate(args[0], record), evaluate(args[1], record))
    if op == "neg":
        return -to_number(evaluate(args[0], record))
    if op in ("+", "-", "*", "/", "^"):
        a, b = to_number(evaluate(args[0], record)), to_number(evaluate(args[1], record))
        if op == "+":
            return a + b
        if op == "-":
            return a - b
        if op == "*":
            return a * b
        if op == "/":
            return math.nan if b == 0 else a / b
        if not (math.isfinite(a) and math.isfinite(b)):
            return math.nan
        try:
            return _finite(math.pow(a, b))
        except (ValueError, OverflowError):
            return math.nan
    return _call(tree["fn"], args, record)


def _call(fn: str, args: list[dict], record: Record) -> Any:
    if fn == "if":
        return evaluate(args[1] if truthy(evaluate(args[0], record)) else args[2], record)
    values = [evaluate(a, record) for a in args]
    if fn == "datediff":
        start, end = _seconds(values[0], record.today), _seconds(values[1], record.today)
        unit = values[2] if isinstance(values[2], str) else ""
        if unit not in DATEDIFF_UNITS or math.isnan(start) or math.isnan(end):
            return math.nan
        signed = len(values) == 5 and truthy(values[4])
        difference = (end - start) / DATEDIFF_UNITS[unit]
        return difference if signed else abs(difference)
    numbers = [to_number(v) for v in values]
    if fn in ("round", "roundup", "rounddown"):
        return _round(fn, numbers[0], numbers[1] if len(numbers) > 1 else 0.0)
    if fn == "abs":
        return abs(numbers[0])
    present = [n for n in numbers if not math.isnan(n)]
    if not present:
        return math.nan
    if fn == "sum":
        return _sequential_sum(present)
    if fn == "mean":
        return _sequential_sum(present) / len(present)
    return min(present) if fn == "min" else max(present)


def _sequential_sum(numbers: list[float]) -> float:
    """Left-to-right addition, as the browser does it (``math.fsum`` would round differently)."""
    total = 0.0
    for n in numbers:
        total += n
    return total


def shows(tree: dict | None, record: Record) -> bool:
    """Whether a field with this branching logic is shown (no logic: always)."""
    return tree is None or truthy(evaluate(tree, record))


def calculated(tree: dict, record: Record) -> str:
    """A calc field's stored text: blank for no value, whole numbers without a decimal point."""
    value = to_number(evaluate(tree, record))
    if math.isnan(value) or not math.isfinite(value):
        return ""
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
