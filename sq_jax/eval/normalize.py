"""String-level answer normalisation: the fast, sympy-free half of answer equivalence.

Everything here is pure Python over short strings (linear scans and regexes without nested
quantifiers), so it runs in the parent process without any timeout protection.
"""

from __future__ import annotations

import re
from fractions import Fraction

from sq_jax.eval.extract import is_prose, matching_brace, strip_math_delimiters

__all__ = [
    "answer_key",
    "elements",
    "is_prose",
    "nesting_depth",
    "normalize_answer",
    "numbers_close",
    "parse_number",
    "rounds_to",
    "simple_lhs_rhs",
    "split_eq",
]

# Numbers are compared exactly, or as a rounding (`rounds_to`): any fixed tolerance passes a changed digit somewhere
# (an absolute 1e-8 made 11.6e-24 equal 4.6e-24; a relative 1e-9 made 11111111101 equal 11111111100).
ROUNDED_MIN_DIGITS = 4  # a decimal rounded to this many significant digits may stand for the exact value
_MAX_NUMBER_CHARS = 60  # keeps exact Fraction arithmetic on the fast path trivially cheap

_UNIT_WORDS = (
    "square units|square unit|sq units|units|unit|cubic units|cm|mm|km|meters|meter|metres|metre|centimeters|"
    "centimeter|millimeters|kilometers|inches|inch|feet|foot|ft|yards|yard|miles|mile|degrees|degree|deg|"
    "radians|dollars|dollar|cents|cent|hours|hour|hrs|hr|minutes|minute|mins|min|seconds|second|secs|sec|"
    "days|day|weeks|week|months|month|years|year|kg|kilograms|grams|gram|lbs|lb|pounds|pound|ounces|oz|"
    "liters|liter|litres|litre|ml|gallons|gallon|mph|km/h|kmh|m/s|sq ft|square feet|square meters|"
    "square inches|square cm"
)
# Inside \text{} a single letter is unambiguous as a unit; outside it `m` or `g` may be a variable.
_TEXT_UNIT_RE = re.compile(rf"\s*(?:{_UNIT_WORDS}|m|g|s|h|l|in)\s*(?:\^\s*\{{?\d\}}?)?\s*", re.IGNORECASE)
_TRAILING_UNIT_RE = re.compile(
    rf"(?<=[\d}})\s])\s*(?:square\s+|sq\.?\s+|cubic\s+)?(?:{_UNIT_WORDS})(?:\s*\^\s*\{{?\d\}}?)?\s*\.?\s*$",
    re.IGNORECASE,
)
_TEXT_CMD_RE = re.compile(r"\\(?:text|textbf|textit|textrm|textnormal|mathrm|mathbf|mbox)\s*\{")
# Only `^\circ` is a degree sign; a bare `\circ` is function composition.
_DEGREE_RE = re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|°|\\degree")
_LEFT_RIGHT_RE = re.compile(r"\\(?:left|right)(?![a-zA-Z])\s*\.?")
# `(?<!\\)` so that the row break `\\` followed by a space is not read as the control space `\ `.
_SPACING_RE = re.compile(r"(?<!\\)\\[,;: ]|\\q?quad(?![a-zA-Z])|~")
_THOUSANDS_RE = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?%?")
_DEC = r"(?:\d+(?:\.\d*)?|\.\d+)"
_PLAIN_RE = re.compile(rf"[+-]?{_DEC}(?:[eE][+-]?\d{{1,3}})?")
_SCI_RE = re.compile(rf"([+-]?{_DEC})(?:\\times|\\cdot)10\^(?:\{{([+-]?\d{{1,3}})\}}|(\d))")
_SLASH_RE = re.compile(rf"([+-]?{_DEC})/([+-]?{_DEC})")
_FRAC_RE = re.compile(rf"([+-]?)\\frac\{{([+-]?{_DEC})\}}\{{([+-]?{_DEC})\}}")
_MIXED_RE = re.compile(r"([+-]?)(\d+)\\frac\{(\d+)\}\{(\d+)\}")
# "4 4/9" is four and four ninths; removing the space first made it 44/9.
_SPACED_MIXED_RE = re.compile(r"(?<![\d.])(\d+)\s+(\d+)/(\d+)(?![\d.])")
_SPACED_THOUSANDS_RE = re.compile(r"[+-]?\d{1,3}(?: \d{3})+(?:\.\d+)?")
_ASSIGNMENT_GROUP_RE = re.compile(r"\s*[A-Za-z]\w*\s*=\s*[^,;=]+(?:,\s*[A-Za-z]\w*\s*=\s*[^,;=]+)+\s*")
_LABEL_RATIO_RE = re.compile(r"\\frac\{[A-Za-z]+\}\{[A-Za-z]+\}")
_LHS_FORBIDDEN = re.compile(r"[+\-*/^<>]|\\(?:frac|sqrt|cdot|times)")

_OPEN = "([{"
_CLOSE = ")]}"


def _unwrap_text(s: str) -> str:
    """``\\text{ cm}`` (a unit) is dropped with any ``^2`` after it; other ``\\text{X}`` become X."""
    out: list[str] = []
    pos = 0
    first = len(s) - len(s.lstrip())
    for _ in range(len(s)):  # bounded: each pass consumes at least one command
        m = _TEXT_CMD_RE.search(s, pos)
        if not m:
            break
        end = matching_brace(s, m.end() - 1)
        if end < 0:
            break
        inner = s[m.end() : end]
        out.append(s[pos : m.start()])
        pos = end + 1
        if _TEXT_UNIT_RE.fullmatch(inner) and m.start() > first:  # a unit after something
            power = re.match(r"\s*\^\s*(?:\{\s*\d\s*\}|\d)", s[pos:])
            if power:
                pos += power.end()
        else:
            out.append(f" {inner} " if inner.strip() in ("or", "and") else inner)
    out.append(s[pos:])
    return "".join(out)


def _brace_args(s: str, cmd: str, nargs: int) -> str:
    """``\\frac12`` -> ``\\frac{1}{2}``, ``\\sqrt2`` -> ``\\sqrt{2}``: TeX's one-token arguments, braced."""
    out: list[str] = []
    pos = 0
    while True:
        i = s.find(cmd, pos)
        if i < 0:
            out.append(s[pos:])
            return "".join(out)
        j = i + len(cmd)
        if j < len(s) and s[j].isalpha():  # \fracx is not \frac
            out.append(s[pos:j])
            pos = j
            continue
        out.append(s[pos:j])
        for _ in range(nargs):
            while j < len(s) and s[j] == " ":
                j += 1
            if j >= len(s):
                break
            if s[j] == "{":
                end = matching_brace(s, j)
                if end < 0:
                    break
                out.append(s[j : end + 1])
                j = end + 1
            elif s[j] == "\\":
                m = re.match(r"\\[a-zA-Z]+|\\.", s[j:])
                tok = m.group(0) if m else s[j]
                out.append("{" + tok + "}")
                j += len(tok)
            elif s[j] == "[" and cmd == "\\sqrt":
                break  # \sqrt[3]{x}: already explicit
            else:
                out.append("{" + s[j] + "}")
                j += 1
        pos = j


def normalize_answer(answer: str, unit: str | None = None) -> str:
    """Canonical LaTeX for an answer: delimiters, units, spacing macros and TeX shorthands removed."""
    s = answer.strip().replace("\\$", "").replace("\\%", "%").replace("{,}", ",")
    s = strip_math_delimiters(s).replace("$", "")
    s = re.sub(r"\\[dt]frac(?![a-zA-Z])", r"\\frac", s)
    s = _LEFT_RIGHT_RE.sub("", s)
    s = s.replace("\\displaystyle", "")
    s = re.sub(r",\\!\s*", ",", s)  # a thousands comma with a negative thin space: 32,\! 348
    s = re.sub(r"(?<!\\)\\!", "", s)
    s = _SPACING_RE.sub(" ", s)
    s = _DEGREE_RE.sub("", s)
    s = _unwrap_text(s)
    if unit:
        u = normalize_answer(unit).strip()
        if u and s.rstrip().endswith(u) and s.rstrip()[: -len(u)].strip():
            s = s.rstrip()[: -len(u)]
    s = re.sub(r"\s*percent\s*$", "%", s)
    s = _brace_args(s, "\\frac", 2)
    s = _brace_args(s, "\\sqrt", 1)
    prev = None
    while prev != s:  # "5 square cm." -> "5": units and a final period in either order
        prev = s
        s = _TRAILING_UNIT_RE.sub("", s).strip()
        s = s[:-1].strip() if s.endswith(".") else s
    if _THOUSANDS_RE.fullmatch(s):
        s = s.replace(",", "")
    elif _SPACED_THOUSANDS_RE.fullmatch(s):
        s = s.replace(" ", "")
    s = _SPACED_MIXED_RE.sub(r"\1\\frac{\2}{\3}", s)
    s = _assignments_as_tuples(_unbrace(s.strip()))
    return s.strip()


def _unbrace(s: str) -> str:
    """``{1,2,3}``: TeX grouping braces around the whole answer (a set written without ``\\{``)."""
    if s.startswith("{") and s.endswith("}") and matching_brace(s, 0) == len(s) - 1:
        return s[1:-1].strip()
    return s


def _assignments_as_tuples(s: str) -> str:
    """``p=5,q=2;p=7,q=2`` -> ``(5,2),(7,2)``: solution groups written as assignments (math-verify reads only
    the last assignment of each group)."""
    groups = s.split(";")
    if len(groups) < 2 or not all(_ASSIGNMENT_GROUP_RE.fullmatch(g) for g in groups):
        return s
    return ",".join("(" + ",".join(a.split("=", 1)[1].strip() for a in g.split(",")) + ")" for g in groups)


def answer_key(s: str) -> str:
    """String-comparison form: no whitespace (except after a macro before a letter), ``^{2}`` -> ``^2``."""
    k = re.sub(r"(\\[a-zA-Z]+)\s+(?=[a-zA-Z])", "\\1\x00", s)
    k = re.sub(r"\s+", "", k).replace("\x00", " ")
    k = re.sub(r"([\^_])\{(\w)\}", r"\1\2", k)
    m = re.fullmatch(r"\(([A-Z])\)", k)  # multiple choice "(C)" == "C"
    if m:
        k = m.group(1)
    if re.fullmatch(r"[A-Za-z ]+", k):  # plain words ("Yes", "Evelyn") are case-insensitive
        k = k.lower()
    return k


def parse_number(key: str) -> tuple[Fraction, bool] | None:
    """Exact value of a plain number, ``a/b``, ``\\frac{a}{b}`` or mixed number; percent flag."""
    if len(key) > _MAX_NUMBER_CHARS:
        return None
    pct = key.endswith("%")
    if pct:
        key = key[:-1]
    try:
        if _PLAIN_RE.fullmatch(key):
            return Fraction(key), pct
        m = _SCI_RE.fullmatch(key)
        if m:
            return Fraction(m.group(1)) * Fraction(10) ** int(m.group(2) or m.group(3)), pct
        m = _SLASH_RE.fullmatch(key)
        if m:
            return Fraction(m.group(1)) / Fraction(m.group(2)), pct
        m = _FRAC_RE.fullmatch(key)
        if m:
            v = Fraction(m.group(2)) / Fraction(m.group(3))
            return (-v if m.group(1) == "-" else v), pct
        m = _MIXED_RE.fullmatch(key)
        if m:
            v = int(m.group(2)) + Fraction(int(m.group(3)), int(m.group(4)))
            return (-v if m.group(1) == "-" else v), pct
    except ZeroDivisionError:
        return None
    return None


def numbers_close(a: tuple[Fraction, bool], b: tuple[Fraction, bool], a_key: str = "", b_key: str = "") -> bool:
    """Equal values (a percentage also as value / 100), or one side a 4+ digit decimal rounding of the other."""
    def candidates(x: tuple[Fraction, bool]) -> tuple[Fraction, ...]:
        return (x[0], x[0] / 100) if x[1] else (x[0],)

    if any(x == y for x in candidates(a) for y in candidates(b)):
        return True
    if a[1] or b[1]:
        return False
    return rounds_to(a_key, b[0]) or rounds_to(b_key, a[0]) or _float_noise(a_key, b_key, a[0], b[0])


def _significant_digits(key: str) -> int:
    m = re.fullmatch(r"[+-]?(\d*)(?:\.(\d*))?(?:[eE][+-]?\d+)?", key)
    return len((m.group(1) + (m.group(2) or "")).lstrip("0")) if m else 0


def _float_noise(a_key: str, b_key: str, a: Fraction, b: Fraction) -> bool:
    """``2.0000000000001`` for 2: binary floating-point noise in a long decimal against a much shorter number.
    (A changed digit keeps both sides equally long, so it is never taken for noise.)"""
    long, short = sorted((_significant_digits(a_key), _significant_digits(b_key)), reverse=True)
    return long >= 13 and short <= long - 4 and abs(a - b) <= Fraction(1, 10**12) * max(abs(a), abs(b))


def rounds_to(key: str, value: Fraction) -> bool:
    """``key`` is a decimal of at least `ROUNDED_MIN_DIGITS` significant digits that ``value`` rounds to
    (``2.6667`` for 8/3, ``0.3333`` for 1/3): a model's rounding of an exact answer, with no looser tolerance
    that would pass a number with one digit changed."""
    m = re.fullmatch(r"[+-]?(\d*)\.(\d+)", key)
    if not m or len((m.group(1) + m.group(2)).lstrip("0")) < ROUNDED_MIN_DIGITS:
        return False
    decimals = len(m.group(2))
    return abs(Fraction(key) - value) * 2 * 10**decimals <= 1


def _split_top(s: str) -> list[str]:
    """Split at top-level commas / semicolons / "or" / "and" / line breaks; brackets of any kind (and ``\\{``)
    nest. A line break separates answers ("y_1 = ...\\n y_2 = ...") except inside a ``\\begin`` environment."""
    separators = ",;" if "\\begin" in s else ",;\n"
    parts: list[str] = []
    depth = 0
    start = 0
    i = 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s) and s[i + 1] in "{}":
            depth += 1 if s[i + 1] == "{" else -1
            i += 2
            continue
        if c in _OPEN:
            depth += 1
        elif c in _CLOSE:
            depth -= 1
        elif depth == 0 and c in separators:
            parts.append(s[start:i])
            start = i + 1
        i += 1
    parts.append(s[start:])
    out: list[str] = []
    for p in parts:  # "2 or 3" is a list too, unless the brackets did not balance (then leave it whole)
        out.extend(re.split(r"\s+(?:or|and)\s+|(?<=[)\]])\s*(?:or|and)\s*(?=[(\[])", p) if depth == 0 else [p])
    return [p.strip() for p in out if p.strip()]


def _first_group_end(s: str) -> int:
    """Index where the bracket opened at s[0] (``\\{`` counts as one) closes, or -1."""
    depth = 0
    i = 0
    while i < len(s):
        c = s[i]
        step = 2 if c == "\\" and i + 1 < len(s) and s[i + 1] in "{}" else 1
        if step == 2:
            depth += 1 if s[i + 1] == "{" else -1
        elif c in _OPEN:
            depth += 1
        elif c in _CLOSE:
            depth -= 1
        if depth == 0:
            return i
        i += step
    return -1


def elements(s: str) -> list[str]:
    """An answer as a list of order-free elements (a single element unless it is a list or a set)."""
    t = s.strip()
    # "\{1,2\}" is a set, but "\{1\} \cup \{2\}" is not one set: the first brace must close at the end.
    if t.startswith("\\{") and t.endswith("\\}") and _first_group_end(t) == len(t) - 2:
        return _split_top(t[2:-2]) or [t]
    return _split_top(t) or [t]


def simple_lhs_rhs(s: str) -> str | None:
    """``x = 3`` -> ``3``, ``f(x)=2x`` -> ``2x``, ``x \\in [0,1]`` -> ``[0,1]``; None if not that shape."""
    m = re.match(r"^(.{1,24}?)(?:=|\\in(?![a-zA-Z]))(.+)$", s, re.DOTALL)
    if not m or "=" in m.group(2):
        return None
    lhs = m.group(1).strip()
    if _LABEL_RATIO_RE.fullmatch(lhs):
        return m.group(2).strip()  # a named ratio, "\frac{NO}{BO} = \frac{1}{\sqrt{6}}"
    if not lhs or _LHS_FORBIDDEN.search(lhs) or not re.search(r"[A-Za-z]", lhs):
        return None
    return m.group(2).strip()


def nesting_depth(s: str) -> int:
    """Deepest bracket nesting (any of ``([{``)."""
    depth = best = 0
    for c in s:
        if c in _OPEN:
            depth += 1
            best = max(best, depth)
        elif c in _CLOSE:
            depth -= 1
    return best


def split_eq(s: str) -> list[str]:
    """Split at top-level ``=`` / ``\\approx`` (not inside brackets, not part of ``<=`` / ``>=``)."""
    # `\approx` counts as `=`: the LaTeX parser silently drops it and everything after it.
    s = re.sub(r"\\approx(?![a-zA-Z])", "=", s)
    parts: list[str] = []
    depth = start = 0
    for i, c in enumerate(s):
        if c in _OPEN:
            depth += 1
        elif c in _CLOSE:
            depth -= 1
        elif c == "=" and depth == 0 and (i == 0 or s[i - 1] not in "<>!"):
            parts.append(s[start:i])
            start = i + 1
    parts.append(s[start:])
    return [p.strip() for p in parts]
