"""Is a predicted answer the same as the gold answer?

Two layers. The fast layer (`quick_match`) normalises both strings and compares them as strings, then as
plain numbers; it is pure Python, cannot stall, and settles most benchmark answers without sympy. What it
cannot settle (expressions, intervals, matrices ...) is parsed to sympy and compared with math-verify's
`verify` in `answers_match`. Sympy can hang on inputs like ``10^{10^{10^{10}}}`` inside C-level integer code
that no signal interrupts, so callers that need a hard per-sample bound use `sq_jax.eval.grading`, which
runs this module in worker processes it can kill.

Conventions: tuples and intervals are ordered (``(1,2)`` != ``(2,1)``, ``[0,1)`` != ``[0,1]``); top-level
comma lists, ``\\{...\\}`` sets and multiple answers are order-free; numbers match exactly, or a decimal of 4+
significant digits matches the exact value it rounds to (never a fixed tolerance: a number with one digit changed,
at any magnitude, is not equal), and a percentage matches its value and value / 100. Equations match when one is
a non-zero multiple of the other; an equation chain ``x = 5+5+1 = 11`` is its ends.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from sq_jax.eval.extract import prose_value, stated_parts
from sq_jax.eval.normalize import (
    answer_key,
    elements,
    is_prose,
    nesting_depth,
    normalize_answer,
    numbers_close,
    parse_number,
    simple_lhs_rhs,
    split_eq,
)
from sq_jax.eval.symbolic import (
    MAX_SYMBOLIC_CHARS,
    MAX_SYMBOLIC_DEPTH,
    compare_constants,
    differ_at_a_point,
    proportional,
    signal_timeout,
    to_sympy,
)

__all__ = ["answers_match", "normalize_answer", "quick_match"]

MAX_QUICK_CHARS = 5000
_BASE_SUBSCRIPT = re.compile(r"\d\s*_")
_NAME = re.compile(r"[A-Za-z](?:_\{?\w+\}?)?(?:\([^()=]*\))?")
_LABEL_COLON = re.compile(r"(?:[<>]|\\[lg]e(?:q)?(?![a-zA-Z]))[^:]*:")
_WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}")  # a plain word, not a command name
_VARIABLE = re.compile(r"(?<![\\A-Za-z])[A-Za-z]")  # a letter that is not part of a command like \frac
_SEQUENCE = re.compile(r"([(\[])(.*)([)\]])", re.DOTALL)



def _symbolic(pred: str, gold: str, timeout_s: float | None) -> bool:
    too_big = max(len(pred), len(gold)) > MAX_SYMBOLIC_CHARS
    if too_big or max(nesting_depth(pred), nesting_depth(gold)) > MAX_SYMBOLIC_DEPTH:
        return False
    if _BASE_SUBSCRIPT.search(pred) or _BASE_SUBSCRIPT.search(gold):
        return False  # 204_6 vs 204_5: the parser drops a number's subscript (its base)
    if any(_LABEL_COLON.search(x) for x in (pred, gold)):
        return False  # "n>8: (8, \\infty)": the parser reads the label's colon as a division
    from math_verify import verify  # lazy: the fast path and its callers never pay for sympy

    t = signal_timeout(timeout_s)
    gold_expr = to_sympy(gold, t)
    pred_expr = to_sympy(pred, t) if gold_expr is not None else None
    if gold_expr is None or pred_expr is None:
        return False
    constant = compare_constants(gold_expr, pred_expr, answer_key(gold), answer_key(pred), t)
    if constant is not None:
        return constant
    if differ_at_a_point(gold_expr, pred_expr, t):
        return False
    return bool(verify(gold_expr, pred_expr, timeout_seconds=t))


def _perfect_matching(n: int, edge: Callable[[int, int], bool]) -> bool:
    """Kuhn's augmenting paths on an n x n bipartite graph (n is a handful of answers)."""
    match_of_gold: list[int] = [-1] * n

    def augment(p: int, seen: list[bool]) -> bool:
        for g in range(n):
            if not seen[g] and edge(p, g):
                seen[g] = True
                if match_of_gold[g] < 0 or augment(match_of_gold[g], seen):
                    match_of_gold[g] = p
                    return True
        return False

    return all(augment(p, [False] * n) for p in range(n))


def _distinct(items: list[str]) -> list[str]:
    """Items without repeats, by value where they are numbers (``15\\frac{39}{40}`` or ``\\frac{639}{40}``)."""
    def key(x: str) -> object:
        return parse_number(answer_key(x)) or answer_key(x)

    return list({key(x): x for x in reversed(items)}.values())[::-1]


def _match_lists(preds: list[str], golds: list[str], symbolic: bool, timeout_s: float | None) -> bool | None:
    if len(preds) != len(golds):
        preds, golds = _distinct(preds), _distinct(golds)  # a set written with a repeated element
    if len(preds) != len(golds):
        return False
    n = len(golds)
    quick = [[_match_single(p, g, False, None) for g in golds] for p in preds]
    if _perfect_matching(n, lambda i, j: quick[i][j] is True):
        return True
    if not _perfect_matching(n, lambda i, j: quick[i][j] is not False):
        return False
    if not symbolic:
        return None
    cache: dict[tuple[int, int], bool] = {}

    def edge(i: int, j: int) -> bool:
        if quick[i][j] is not None:
            return bool(quick[i][j])
        if (i, j) not in cache:
            cache[(i, j)] = bool(_match_single(preds[i], golds[j], True, timeout_s))
        return cache[(i, j)]

    return _perfect_matching(n, edge)


def _match_equations(
    preds: list[str], golds: list[str], symbolic: bool, timeout_s: float | None
) -> bool | None:
    # Compared side by side, never as sympy Eq objects: math-verify turns equations into solution sets,
    # so any two equations without real solutions (x^2+4x+20=0, x^2+4x+30=0) would match.
    if len(preds) == len(golds):
        quick = [_match_single(p, g, False, None) for p, g in zip(preds, golds)]
        if all(q is True for q in quick):
            return True
        # With a variable alone on one side in both ("y = ..."), no rearrangement can make the other sides agree.
        # (Only a name: with a shared `0`, -34x-45y+20z-100=0 is 34x+45y-20z+100=0.)
        shared = any(answer_key(p) == answer_key(g) and _NAME.fullmatch(answer_key(p)) for p, g in zip(preds, golds))
        if not symbolic:
            if shared and False in quick:
                return False
            return None if False not in quick or len(preds) == 2 else False
        if False not in quick and all(
            q or _match_single(p, g, True, timeout_s) for q, p, g in zip(quick, preds, golds)
        ):
            return True
        if shared:
            return False
    if len(preds) != 2 or len(golds) != 2:
        return False
    if not symbolic:
        return None
    # The same equation rearranged or scaled: L1 - R1 == c (L2 - R2) for a constant c != 0.
    return proportional(f"({preds[0]})-({preds[1]})", f"({golds[0]})-({golds[1]})", timeout_s)


def _match_single(pred: str, gold: str, symbolic: bool, timeout_s: float | None) -> bool | None:
    if answer_key(pred) == answer_key(gold):
        return True
    # A sentence gold ("About 30.12 miles per hour") states its value the way an extracted answer statement does.
    pred, gold = prose_value(pred), prose_value(gold)
    if answer_key(pred) == answer_key(gold):
        return True
    if is_prose(pred) or is_prose(gold):
        # math-verify would grade some formula it finds inside the sentence; sentences compare as text.
        return False
    if "\\approx" in pred and "\\approx" in gold:  # both give a decimal value: it must agree too
        p_parts, g_parts = split_eq(pred), split_eq(gold)
    else:
        p_parts, g_parts = split_eq(_exact_part(pred)), split_eq(_exact_part(gold))
    if len(p_parts) > 1 and len(g_parts) > 1:
        return _match_equations(_chain_ends(p_parts), _chain_ends(g_parts), symbolic, timeout_s)
    p, g = pred, gold
    # "x = 3" against a bare "3": compare the value (only when the other side is not an equation).
    if len(p_parts) > 1:
        p = _relation_value(p_parts) or pred
    elif len(g_parts) > 1:
        g = _relation_value(g_parts) or gold
    elif "\\in" in pred and "\\in" not in gold:
        p = simple_lhs_rhs(pred) or pred
    elif "\\in" in gold and "\\in" not in pred:
        g = simple_lhs_rhs(gold) or gold
    if len(split_eq(p)) > 1 or len(split_eq(g)) > 1:
        return False  # "x + y = 3" is not the value 3
    if (p, g) != (pred, gold) and answer_key(p) == answer_key(g):
        return True
    seq = _match_sequences(p, g, symbolic, timeout_s)
    if seq is not None:
        return seq
    pn, gn = parse_number(answer_key(p)), parse_number(answer_key(g))
    if pn is not None and gn is not None:  # both plain numbers: decided without sympy
        return numbers_close(pn, gn, answer_key(p), answer_key(g))
    if not symbolic:
        return None
    return _symbolic(p, g, timeout_s)


def _match_sequences(pred: str, gold: str, symbolic: bool, timeout_s: float | None) -> bool | None:
    """Tuples and intervals entry by entry (ordered, the same brackets), so each entry gets the number rules
    (``(0.6,2.6667]`` is ``(\\frac{3}{5},\\frac{8}{3}]``); None when they are not both such sequences."""
    mp, mg = _SEQUENCE.fullmatch(pred.strip()), _SEQUENCE.fullmatch(gold.strip())
    if not (mp and mg) or (mp.group(1), mp.group(3)) != (mg.group(1), mg.group(3)):
        return None
    ps, gs = elements(mp.group(2)), elements(mg.group(2))
    if len(ps) < 2 or len(ps) != len(gs) or any(nesting_depth(x) and not _balanced(x) for x in ps + gs):
        return None
    verdicts = [_match_single(a, b, symbolic, timeout_s) for a, b in zip(ps, gs)]
    if False in verdicts:
        return False
    return None if None in verdicts else True


def _balanced(s: str) -> bool:
    depth = 0
    for c in s:
        depth += c in "([{"
        depth -= c in ")]}"
        if depth < 0:
            return False
    return depth == 0


def _plus_minus(items: list[str]) -> list[str]:
    """``\\pm 2021`` is the two answers -2021 and 2021 (math-verify expands it the same way)."""
    if len(items) == 1 and items[0].startswith("\\pm") and not items[0][3:4].isalpha():
        rest = items[0][3:].strip()
        return [f"-{rest}", rest] if rest else items
    return items


def _exact_part(s: str) -> str:
    """``x = 1/3 \\approx 0.33`` -> ``x = 1/3``: an approximation after an exact value is not the answer."""
    i = s.find("\\approx")
    return s[:i].strip() if i > 0 and len(split_eq(s[:i])) > 1 else s


def _chain_ends(parts: list[str]) -> list[str]:
    """``z = 1 + 1 = 2`` -> ``z = 2``: the intermediate steps of a chain are working, not the answer. Not when
    words stand between the signs ("p = 1/2 for y = 1"): that is a statement, not a chain."""
    if len(parts) > 2 and not any(_WORD.search(x) for x in parts):
        return [parts[0], parts[-1]]
    return parts


def _relation_value(parts: list[str]) -> str | None:
    """The value a relation states, to compare with a bare gold: ``x = 3`` / ``x = 5+5+1 = 11`` /
    ``5 \\times 6 = 30`` -> the last side; None for an equation such as ``x + y = 3`` or ``7 = 11a+c``."""
    last = parts[-1]
    named = simple_lhs_rhs(f"{parts[0]}={last}") is not None
    if _VARIABLE.search(last) and not named:
        return None
    if named or all(not _VARIABLE.search(x) for x in parts):
        return last
    return last if len(parts) > 2 else None


def _parts_differ(pred: str, gold: str, unit: str | None, symbolic: bool, timeout_s: float | None) -> bool | None:
    """Two worked, prose answers of the same shape (the same number of stated parts, two or more) must agree on
    every part, not only on the value after their last "is" (`stated_parts`): "the first system's solution is
    (2,0,1), the second's (1,1,2)" is not "(1,0,1) ... (1,1,2)". None: a part needs sympy."""
    p_parts, g_parts = stated_parts(pred), stated_parts(gold)
    if not p_parts or not g_parts or len(p_parts) != len(g_parts) or len(g_parts) < 2:
        return False
    verdicts = [
        _match_single(normalize_answer(p, unit), normalize_answer(g, unit), symbolic, timeout_s)
        for p, g in zip(p_parts, g_parts)
    ]
    if False in verdicts:
        return True
    return None if None in verdicts else False


def _golds(gold: str | Sequence[str]) -> list[str]:
    golds = [gold] if isinstance(gold, str) else list(gold)
    if not golds or not all(isinstance(g, str) for g in golds):
        raise ValueError(f"gold must be a string or a non-empty list of strings, got {gold!r}")
    return golds


def _match(
    prediction: str,
    gold: str | Sequence[str],
    multiple: bool,
    unit: str | None,
    symbolic: bool,
    timeout_s: float | None,
) -> bool | None:
    golds = _golds(gold)
    if not symbolic and max(len(prediction), *map(len, golds)) > MAX_QUICK_CHARS:
        # The parent process has no timeout: leave giant strings to the killable workers.
        return True if not multiple and prediction.strip() in {g.strip() for g in golds} else None
    pred = prose_value(normalize_answer(prediction, unit))
    normed = [prose_value(normalize_answer(g, unit)) for g in golds]
    if multiple:
        # A multiple-answer gold is the union of its items, each of which may itself be a list.
        return _match_lists(elements(pred), [e for g in normed for e in elements(g)], symbolic, timeout_s)
    undecided = False
    for raw, g in zip(golds, normed):  # a non-multiple list gold holds alternative spellings of one answer
        differ = _parts_differ(prediction, raw, unit, symbolic, timeout_s)
        if differ is not False:
            undecided = undecided or differ is None
            continue
        if answer_key(pred) == answer_key(g):
            return True
        p_el, g_el = _plus_minus(elements(pred)), _plus_minus(elements(g))
        if len(p_el) == 1 and len(g_el) > 1 and pred.startswith("("):
            r = _match_single(pred, f"({g})", symbolic, timeout_s)  # a tuple against "1,3": read it as (1,3)
        elif len(g_el) == 1 and len(p_el) > 1 and g.startswith("("):
            r = _match_single(f"({pred})", g, symbolic, timeout_s)
        elif len(p_el) > 1 or len(g_el) > 1:
            r = _match_lists(p_el, g_el, symbolic, timeout_s)
        else:
            r = _match_single(pred, g, symbolic, timeout_s)
        if r:
            return True
        undecided = undecided or r is None
    return None if undecided else False


def quick_match(
    prediction: str, gold: str | Sequence[str], *, multiple: bool = False, unit: str | None = None
) -> bool | None:
    """Decide by normalised strings and plain numbers only: True / False, or None when sympy is needed."""
    return _match(prediction, gold, multiple, unit, False, None)


def answers_match(
    prediction: str,
    gold: str | Sequence[str],
    *,
    multiple: bool = False,
    unit: str | None = None,
    timeout_s: float | None = 5.0,
) -> bool:
    """True when ``prediction`` (an extracted answer, not a whole solution) equals ``gold``.

    ``gold`` may be a list: with ``multiple`` its items together are the answer set (order-free);
    otherwise they are alternative forms of one answer. ``unit`` (OlympiadBench) is stripped from both
    sides. ``timeout_s`` bounds each math-verify call via signals (main thread only); for a hard bound
    on any input use `sq_jax.eval.grading.grade_many`.
    """
    return bool(_match(prediction, gold, multiple, unit, True, timeout_s))
