"""Pull the final answer out of a model's chain-of-thought text.

The order follows the paper's evaluation (SCALEQUEST.md section 6): the last ``\\boxed{}`` first (with the boxes
just before it when only "and" / commas / spacing separate them: a multi-answer reply), then a "the answer is"
statement (which wins over a box it follows), then the last of: inline math span, tuple, fraction, number.
Everything here is a linear scan or a regex without nested quantifiers, so a 16k-character completion is
handled in microseconds and nothing here needs the timeout protection that symbolic comparison does.
"""

from __future__ import annotations

import re

__all__ = [
    "extract_all_boxed",
    "extract_answer",
    "gsm8k_gold",
    "is_prose",
    "prose_value",
    "last_number",
    "stated_parts",
    "matching_brace",
    "strip_math_delimiters",
]

_BOX_COMMANDS = ("\\boxed", "\\fbox")
# "The final answer is", "the answer is:", "Final Answer: The final answer is" ... (case-insensitive).
_ANSWER_IS = re.compile(r"(?:final\s+answer|the\s+answer)\s*(?:is|:)\s*:?", re.IGNORECASE)
# Thousands groups must be exactly three digits so that "1,2" (a list) is not read as 12.
_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d{1,3}(?: \d{3})+(?![\d/])|\d+)(?:\.\d+)?|(?<![\w.])-?\.\d+")
_BARE_TOKEN = re.compile(r"[^\s$]+")
# A sentence ends at a period followed by whitespace (not the period inside 3.5).
_SENTENCE_END = re.compile(r"\.(?:\s|$)")
# What may stand between two boxes of one multi-answer reply: `\boxed{(2, 2)} \quad \text{and} \quad \boxed{(6, 2)}`,
# `\boxed{1},\boxed{2}`, `y_1 = \boxed{..} \) and \( y_2 = \boxed{..}`; any other word means prose between them.
_LINK = re.compile(
    r"(?:\s|[,;.$]|\\[()\[\]]|\\q?quad(?![a-zA-Z])|\\[,;: !]|\\text\s*\{|\}"
    r"|\b(?:[A-Za-z]+\s+)?(?:and|or)\b|\bfor\s+part\s*\(\w\)"
    r"|[A-Za-z](?:_\{?\w+\}?)?\s*=)*"
)
# Fallback candidates on a reply with neither box nor answer statement (the last one in the text wins).
_TUPLE = re.compile(r"\(\s*-?\d+(?:\.\d+)?(?:\s*,\s*-?\d+(?:\.\d+)?)+\s*\)")
_FRACTION = re.compile(r"(?<![\w./])-?(?:\d+ )?\d+/\d+(?![\w/]|\.\d)|-?\\[dt]?frac(?:\{[^{}]*\}|\d){2}")
_RELATION = re.compile(r"[A-Za-z]\s*(?:\\[gl]eq?(?![a-zA-Z])|[<>]=?)\s*-?\d+(?:\.\d+)?")  # "x \geq 5", not "5"
_DERIVATION = re.compile(r"\\begin\{(?:aligned|align\*?|gathered|eqnarray\*?)\}")
_INEQUALITY = re.compile(r"[<>!]|\\(?:le|ge|leq|geq|leqslant|geqslant|ne|neq|lt|gt)(?![a-zA-Z])")
_WORD_PAIR = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}(?![A-Za-z])")
_IS = re.compile(r"\s(?:is|are|equals|=)\s")


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
    return [content for _, _, content in _boxes(text)]


def _boxes(text: str) -> list[tuple[int, int, str]]:
    """(start, end, content) of every box, in order of appearance."""
    found: list[tuple[int, int, str]] = []
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
                found.append((pos, end + 1, text[j + 1 : end]))
                start = end + 1
            elif j > after:
                # `\boxed 5`: TeX takes one token; models write the answer up to the next space or `$`.
                m = _BARE_TOKEN.match(text, j)
                if m:
                    found.append((pos, m.end(), m.group(0)))
                    start = m.end()
    found.sort(key=lambda t: t[0])
    return [(a, b, c.strip()) for a, b, c in found]


def _linked_tail(text: str, spans: list[tuple[int, int, str]]) -> list[str]:
    """The last span and those before it joined to it by nothing but connectives (one multi-part answer)."""
    group = [spans[-1]]
    for prev in reversed(spans[:-1]):
        if not _LINK.fullmatch(text, prev[1], group[0][0]):
            break
        group.insert(0, prev)
    return [c for _, _, c in group if c]


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


def _answer_statement(text: str) -> tuple[int, str] | None:
    """(position, text) of the last "the answer is X" statement."""
    matches = list(_ANSWER_IS.finditer(text))
    if not matches:
        return None
    found = _statement_after(text[matches[-1].end() :].lstrip())
    return (matches[-1].start(), found) if found is not None else None


def _statement_after(rest: str) -> str | None:
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
    line = re.sub(r'^(?:\\?")(.*?)(?:\\?")$', r"\1", line).strip()  # a quoted answer: "\"$12$ and $13$\""
    return prose_value(line) if line else None


def prose_value(line: str) -> str:
    """The value a sentence states: after its last "is" ("The largest n is 34"), or its only number ("Jane
    started growing Sphere 3 hours ago"); a sentence without one ("No solution") and a formula stay whole."""
    if not is_prose(line):
        return line
    tail = list(_IS.finditer(line))
    value = line[tail[-1].end() :].strip() if tail else ""
    if value and not is_prose(value) and re.search(r"[\d\\]", value):
        return value
    numbers = _NUMBER.findall(line)
    return numbers[0] if len(numbers) == 1 and not re.search(r"[\\^_{}]", line) else line


def is_prose(s: str) -> bool:
    """Two adjacent plain words ("the distribution", "no solution"): a sentence, not a formula."""
    words = list(_WORD_PAIR.finditer(s))
    return any(
        max(len(a.group(0)), len(b.group(0))) >= 3 and not s[a.end() : b.start()].strip()
        for a, b in zip(words, words[1:])
    )


def _math_spans(text: str) -> list[tuple[int, int, str]]:
    """(start, end, content) of each ``$..$``, ``$$..$$``, ``\\(..\\)``, ``\\[..\\]`` span; ``\\$`` is a dollar sign."""
    spans: list[tuple[int, int, str]] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n and text[i + 1] in "([":
            close = text.find("\\)" if text[i + 1] == "(" else "\\]", i + 2)
            if close < 0:
                return spans
            spans.append((i, close + 2, text[i + 2 : close].strip()))
            i = close + 2
        elif c == "\\":
            i += 2
        elif c == "$":
            left = "$$" if text.startswith("$$", i) else "$"
            j = i + len(left)
            while True:
                close = text.find(left, j)
                if close < 0 or text[close - 1] != "\\":
                    break
                j = close + 1
            if close < 0:
                return spans
            spans.append((i, close + len(left), text[i + len(left) : close].strip()))
            i = close + len(left)
        else:
            i += 1
    return spans


# A sentence of a worked answer that states something: "the area is $9$", "subset: $\\{u_1, u_3\\}$".
_STATES = re.compile(r"\b(?:is|are|equals)\b|:")
_SPAN_MARK = re.compile("\x00(\\d+)\x00")
# Sentences end at a period or semicolon outside math (a period inside `$..$` is masked before this runs).
_CLAUSE_END = re.compile(r"[.;](?=\s|$)")


def stated_parts(text: str) -> list[str] | None:
    """Every math span and number of the sentences of a worked, prose answer that state something, in order.

    "The solution of the first system is $(1,0,1)$, and of the second $(1,1,2)$" gives both tuples, and
    "$s(t)=..$, $v(t)=..$, maximum speed is $2/\\pi$" all three spans; a sentence that states nothing ("$A \\times
    B = C$.") is working and left out. `prose_value` keeps only the value after the last "is", which is right
    for a one-statement sentence but drops the other parts of a multi-part answer. None for a non-prose text, and
    for one without math delimiters, whose formulas cannot be told from its words.
    """
    spans = _math_spans(text)
    if not spans:
        return None
    pieces, pos = [], 0
    for i, (start, end, _) in enumerate(spans):
        pieces += [text[pos:start], f"\x00{i}\x00"]
        pos = end
    masked = "".join(pieces) + text[pos:]
    if not is_prose(_SPAN_MARK.sub(" ", masked)):
        return None
    parts: list[str] = []
    for sentence in _CLAUSE_END.split(masked):
        if not _STATES.search(_SPAN_MARK.sub(" ", sentence)):
            continue
        for m in re.finditer(f"{_SPAN_MARK.pattern}|{_NUMBER.pattern}", sentence):
            parts.append(spans[int(m.group(1))][2] if m.group(1) is not None else m.group(0))
    return parts or None


def _last_candidate(text: str) -> str | None:
    """The answer-like item that ends last: math span, else tuple, fraction or number (longest on a tie)."""
    # "$5 and $6" (currency) pairs up as a span of prose: not math. A span without a digit ("the substring
    # $A B B A$", "independent of $T$") names something; it is the answer only when the text has no number at all.
    spans = [sp for sp in _math_spans(text) if sp[2] and ("\\" in sp[2] or not is_prose(sp[2]))]
    if _NUMBER.search(text):
        spans = [sp for sp in spans if re.search(r"\d", sp[2])]
    best: tuple[int, int, str] | None = None
    if spans:
        group = _linked_tail(text, spans)
        if any("=" in g for g in group):  # "$5+3=8$ and $8 \times 2=16$" is working, not a list of answers
            group = group[-1:]
        answer = ", ".join(group)
        if text.strip(" \t\n.$") != answer:  # inside a worked solution, "$x+y=4027$" states the value 4027
            answer = _stated_value(answer)
        best = (spans[-1][1], -spans[-1][0], answer)
    for pattern in (_TUPLE, _RELATION, _FRACTION, _NUMBER):
        last = None
        for last in pattern.finditer(text):
            pass
        if last is not None:
            value = re.sub("[, ]", "", last.group(0)) if pattern is _NUMBER else last.group(0)
            cand = (last.end(), -last.start(), value)
            best = cand if best is None or cand[:2] > best[:2] else best
    return best[2] if best else None


def _stated_value(span: str) -> str:
    """``L/2=180180`` -> ``180180``, ``T=17, n=19`` -> ``19``, an ``aligned`` block -> its last line's value;
    the span itself when its last side is not a plain number."""
    if _DERIVATION.search(span):
        span = re.sub(r"\\(?:begin|end)\{[a-z*]+\}", "", span).split("\\\\")[-1].replace("&", "")
    elif "\\begin" in span or _INEQUALITY.search(span):
        return span  # a matrix or an inequality is an answer in itself
    side = re.split(r"=|\\doteq(?![a-zA-Z])|\\approx(?![a-zA-Z])", span)[-1].strip(" .\n\t")
    if side != span.strip() and re.fullmatch(r"-?[\d,.]+\s*(?:\\?%)?|\\mathbf\{-?[\d.]+\}", side):
        return side
    return span


def last_number(text: str) -> str | None:
    """The last plain number in ``text`` with thousands separators removed (``-1,000.5`` -> ``-1000.5``)."""
    last = None
    for last in _NUMBER.finditer(text):
        pass
    return last.group(0).replace(",", "") if last else None


def extract_answer(text: str) -> str | None:
    """The final answer of a solution: boxes, else "the answer is X", else the last answer-like item; or None.

    Several linked boxes are returned joined by ", " (a list answer). A statement after the last box wins when
    it holds a number or math ("... \\boxed{255} ... Final Answer: The final answer is $10,455$").
    """
    if not text:
        return None
    boxes = _boxes(text)
    stated = _answer_statement(text)
    if stated is not None and boxes and stated[0] > boxes[-1][0] and not re.search(r"[\d$\\]", stated[1]):
        stated = None  # "\boxed{5}. So the answer is correct": the box holds the answer
    if boxes and (stated is None or stated[0] < boxes[-1][0]):
        return ", ".join(_linked_tail(text, boxes)) or None
    if stated is not None:
        inner = _boxes(stated[1])
        return ", ".join(_linked_tail(stated[1], inner)) if inner else stated[1]
    return _last_candidate(text)


def gsm8k_gold(answer_field: str) -> str:
    """The GSM8K gold answer: the text after ``####`` with thousands commas removed.

    Raises ValueError when there is no ``####`` marker, so a malformed row is reported, not graded as "".
    """
    marker = answer_field.rfind("####")
    if marker < 0:
        raise ValueError("GSM8K answer has no '####' final-answer marker")
    return answer_field[marker + 4 :].strip().replace(",", "")
