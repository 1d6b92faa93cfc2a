"""Pull the final answer out of a model's chain-of-thought text.

The order follows the paper's evaluation (SCALEQUEST.md section 6): the last ``\\boxed{}`` first, then a
"the answer is" statement, then the last number. Everything here is a linear scan or a regex without
nested quantifiers, so a 16k-character completion is handled in microseconds and nothing here needs the
timeout protection that symbolic comparison does.
"""

from __future__ import annotations

import re

__all__ = [
    "extract_all_boxed",
    "extract_answer",
    "gsm8k_gold",
    "last_number",
    "matching_brace",
    "strip_math_delimiters",
]

_BOX_COMMANDS = ("\\boxed", "\\fbox")
# "The final answer is", "the answer is:", "Final Answer: The final answer is" ... (case-insensitive).
_ANSWER_IS = re.compile(r"(?:final\s+answer|the\s+answer)\s*(?:is|:)\s*:?", re.IGNORECASE)
# Thousands groups must be exactly three digits so that "1,2" (a list) is not read as 12.
_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|(?<![\w.])-?\.\d+")
_BARE_TOKEN = re.compile(r"[^\s$]+")
# A sentence ends at a period followed by whitespace (not the period inside 3.5).
_SENTENCE_END = re.compile(r"\.(?:\s|$)")


def matching_brace(text: str, open_pos: int) -> int:
    """Index of the ``}`` closing the ``{`` at ``open_pos``, or -1; ``\\{`` and ``\\}`` do not count."""
    depth = 0
    i = open_pos
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2  # skip the escaped character: \{ and \} are literal braces inside the answer
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def _brace_pairs(text: str) -> dict[int, int]:
    """Every balanced ``{`` -> its ``}``, in one pass (a per-box scan is quadratic on cut-off outputs)."""
    pairs: dict[int, int] = {}
    stack: list[int] = []
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            stack.append(i)
        elif c == "}" and stack:
            pairs[stack.pop()] = i
        i += 1
    return pairs


def _boxed_spans(text: str) -> list[str]:
    found: list[tuple[int, str]] = []
    pairs: dict[int, int] | None = None
    for cmd in _BOX_COMMANDS:
        start = 0
        while True:
            pos = text.find(cmd, start)
            if pos < 0:
                break
            after = pos + len(cmd)
            start = after
            if after < len(text) and text[after].isalpha():
                continue  # \boxedx or \fboxsep: a different command
            j = after
            while j < len(text) and text[j] in " \t":
                j += 1
            if j < len(text) and text[j] == "{":
                if pairs is None:
                    pairs = _brace_pairs(text)
                end = pairs.get(j, -1)
                if end < 0:
                    continue  # unbalanced: the completion was probably cut off mid-answer
                found.append((pos, text[j + 1 : end]))
                start = end + 1
            elif j > after:
                # `\boxed 5`: TeX takes one token; models write the answer up to the next space or `$`.
                m = _BARE_TOKEN.match(text, j)
                if m:
                    found.append((pos, m.group(0)))
                    start = m.end()
    found.sort(key=lambda t: t[0])
    return [s.strip() for _, s in found]


def extract_all_boxed(text: str) -> list[str]:
    """Contents of every ``\\boxed{...}`` / ``\\fbox{...}`` in order of appearance (nested braces kept)."""
    return _boxed_spans(text)


def strip_math_delimiters(s: str) -> str:
    """Remove one pair of surrounding ``$``, ``$$``, ``\\(..\\)`` or ``\\[..\\]`` and surrounding whitespace."""
    s = s.strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
            return s[len(left) : len(s) - len(right)].strip()
    return s


def _answer_statement(text: str) -> str | None:
    matches = list(_ANSWER_IS.finditer(text))
    if not matches:
        return None
    rest = text[matches[-1].end() :].lstrip()
    if not rest:
        return None
    # A math span right after "is" holds the whole answer, periods and all.
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if rest.startswith(left):
            close = rest.find(right, len(left))
            if close > len(left):
                return rest[len(left) : close].strip()
    line = rest.split("\n", 1)[0]
    end = _SENTENCE_END.search(line)
    if end:
        line = line[: end.start()]
    # Stray `$` (e.g. "x = $5$") carry no meaning once the span is cut out.
    line = line.replace("\\$", "\x00").replace("$", "").replace("\x00", "\\$").strip().rstrip(".").strip()
    return line or None


def last_number(text: str) -> str | None:
    """The last plain number in ``text`` with thousands separators removed (``-1,000.5`` -> ``-1000.5``)."""
    last = None
    for last in _NUMBER.finditer(text):
        pass
    return last.group(0).replace(",", "") if last else None


def extract_answer(text: str) -> str | None:
    """The final answer of a solution: last boxed, else "the answer is X", else the last number; or None."""
    if not text:
        return None
    boxed = _boxed_spans(text)
    if boxed:
        return boxed[-1]
    stated = _answer_statement(text)
    if stated is not None:
        inner = _boxed_spans(stated)
        return inner[-1] if inner else stated
    return last_number(text)


def gsm8k_gold(answer_field: str) -> str:
    """The GSM8K gold answer: the text after ``####`` with thousands commas removed.

    Raises ValueError when there is no ``####`` marker, so a malformed row is reported, not graded as "".
    """
    marker = answer_field.rfind("####")
    if marker < 0:
        raise ValueError("GSM8K answer has no '####' final-answer marker")
    return answer_field[marker + 4 :].strip().replace(",", "")
