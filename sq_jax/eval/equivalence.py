"""Is a predicted answer the same as the gold answer?

Two layers. The fast layer (`quick_match`) normalises both strings and compares them as strings, then as
plain numbers; it is pure Python, cannot stall, and settles most benchmark answers without sympy. What it
cannot settle (expressions, intervals, matrices ...) is parsed to sympy and compared with math-verify's
`verify` in `answers_match`. Sympy can hang on inputs like ``10^{10^{10^{10}}}`` inside C-level integer code
that no signal interrupts, so callers that need a hard per-sample bound use `sq_jax.eval.grading`, which
runs this module in worker processes it can kill.

Conventions: tuples and intervals are ordered (``(1,2)`` != ``(2,1)``, ``[0,1)`` != ``[0,1]``); top-level
comma lists, ``\\{...\\}`` sets and multiple answers are order-free; numbers match within relative 1e-9 or
absolute 1e-8, and a percentage matches both its value and its value / 100.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections.abc import Callable, Sequence
from typing import Any

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

__all__ = ["answers_match", "normalize_answer", "quick_match"]

# Beyond these sizes an answer is compared as a string only: nothing sensible is that long or deep, and
# sympy on it is how graders stall.
MAX_SYMBOLIC_CHARS = 600
MAX_SYMBOLIC_DEPTH = 30
MAX_QUICK_CHARS = 5000
_BASE_SUBSCRIPT = re.compile(r"\d\s*_")

logging.getLogger("math_verify").setLevel(logging.ERROR)  # it warns on every parse timeout it handles


def _signal_timeout(timeout_s: float | None) -> int | None:
    # math-verify's timeout is signal.alarm: whole seconds, and only in the main thread.
    if timeout_s and threading.current_thread() is threading.main_thread():
        return max(1, int(timeout_s))
    return None


def _to_sympy(latex: str, timeout: int | None) -> Any:
    """The whole string as one sympy object, or None.

    math-verify's `parse` is not used: when the LaTeX does not parse it falls back to the first number
    it can find, so "-3 b^{4}+23 b^{3}-" became -3 and matched any other answer starting with -3.
    """
    from math_verify.errors import TimeoutException
    from math_verify.parser import LatexExtractionConfig, convert_to_pct, normalize_latex, parse_latex_cached
    from math_verify.utils import timeout as with_timeout

    pct = latex.endswith("%")
    text = normalize_latex(latex[:-1] if pct else latex, config=LatexExtractionConfig().normalization_config)
    try:
        expr = with_timeout(timeout_seconds=timeout)(parse_latex_cached)(text)
    except TimeoutException:
        return None
    except Exception:  # latex2sympy raises many unrelated types for LaTeX it cannot read: not an answer
        return None
    return convert_to_pct(expr) if pct else expr


def _symbolic(pred: str, gold: str, timeout_s: float | None) -> bool:
    too_big = max(len(pred), len(gold)) > MAX_SYMBOLIC_CHARS
    if too_big or max(nesting_depth(pred), nesting_depth(gold)) > MAX_SYMBOLIC_DEPTH:
        return False
    if _BASE_SUBSCRIPT.search(pred) or _BASE_SUBSCRIPT.search(gold):
        return False  # 204_6 vs 204_5: the parser drops a number's subscript (its base)
    from math_verify import verify  # lazy: the fast path and its callers never pay for sympy

    t = _signal_timeout(timeout_s)
    gold_expr = _to_sympy(gold, t)
    pred_expr = _to_sympy(pred, t) if gold_expr is not None else None
    if gold_expr is None or pred_expr is None:
        return False
    if _differ_at_a_point(gold_expr, pred_expr, t):
        return False
    return bool(verify(gold_expr, pred_expr, timeout_seconds=t))


# Values chosen to avoid poles and branch cuts of common answers (positive, not 0, 1, pi or e).
_PROBE_VALUES = (0.5772156649, 1.3247179572, 0.6931471806, 1.4142135624, 0.9159655942, 1.2020569032)


def _differ_at_a_point(a: Any, b: Any, timeout: int | None) -> bool:
    """True when two expressions take clearly different values at one point: then they are not equal.

    A sound shortcut for the common wrong answer (a changed coefficient): it saves math-verify's
    simplify, which costs most of the symbolic time. Anything it cannot evaluate is inconclusive.
    """
    import sympy
    from math_verify.errors import TimeoutException
    from math_verify.utils import timeout as with_timeout

    if not (isinstance(a, sympy.Expr) and isinstance(b, sympy.Expr)):
        return False
    if isinstance(a, sympy.MatrixExpr) or isinstance(b, sympy.MatrixExpr):
        return False
    hard = (sympy.Sum, sympy.Product, sympy.Integral, sympy.Limit, sympy.Derivative, sympy.Piecewise)
    if a.has(*hard) or b.has(*hard):
        return False  # numeric evaluation of these is slow or unreliable
    symbols = sorted(a.free_symbols | b.free_symbols, key=str)
    n = len(_PROBE_VALUES)
    point = {s: sympy.Float(_PROBE_VALUES[i % n] + i // n) for i, s in enumerate(symbols)}

    def values() -> tuple[complex, complex]:
        return complex(a.evalf(30, subs=point)), complex(b.evalf(30, subs=point))

    try:
        va, vb = with_timeout(timeout_seconds=timeout)(values)()
    except TimeoutException:
        return False
    except Exception:  # sympy's evalf fails in many ways (TypeError, RecursionError ...): inconclusive
        return False
    if not all(math.isfinite(x) for v in (va, vb) for x in (v.real, v.imag)):
        return False
    return abs(va - vb) > 1e-6 * max(1.0, abs(va), abs(vb))


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


def _match_lists(preds: list[str], golds: list[str], symbolic: bool, timeout_s: float | None) -> bool | None:
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
        # With one side literally shared ("y = ..."), no rearrangement can make the other sides agree.
        shared = any(answer_key(p) == answer_key(g) for p, g in zip(preds, golds))
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
    # The same equation rearranged: L1 - R1 == +-(L2 - R2).
    diff = f"({preds[0]})-({preds[1]})"
    return bool(
        _match_single(diff, f"({golds[0]})-({golds[1]})", True, timeout_s)
        or _match_single(diff, f"({golds[1]})-({golds[0]})", True, timeout_s)
    )


def _match_single(pred: str, gold: str, symbolic: bool, timeout_s: float | None) -> bool | None:
    if answer_key(pred) == answer_key(gold):
        return True
    if is_prose(pred) or is_prose(gold):
        # math-verify would grade some formula it finds inside the sentence; sentences compare as text.
        return False
    p_parts, g_parts = split_eq(pred), split_eq(gold)
    if len(p_parts) > 1 and len(g_parts) > 1:
        return _match_equations(p_parts, g_parts, symbolic, timeout_s)
    p, g = pred, gold
    # "x = 3" against a bare "3": compare the value (only when the other side is not an equation).
    if len(p_parts) > 1 or "\\in" in pred and "\\in" not in gold:
        p = simple_lhs_rhs(pred) or pred
    elif len(g_parts) > 1 or "\\in" in gold and "\\in" not in pred:
        g = simple_lhs_rhs(gold) or gold
    if len(split_eq(p)) > 1 or len(split_eq(g)) > 1:
        return False  # "x + y = 3" is not the value 3
    if (p, g) != (pred, gold) and answer_key(p) == answer_key(g):
        return True
    pn, gn = parse_number(answer_key(p)), parse_number(answer_key(g))
    if pn is not None and gn is not None:
        return numbers_close(pn, gn)  # both plain numbers: decided without sympy
    if not symbolic:
        return None
    return _symbolic(p, g, timeout_s)


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
    pred = normalize_answer(prediction, unit)
    normed = [normalize_answer(g, unit) for g in golds]
    if multiple:
        # A multiple-answer gold is the union of its items, each of which may itself be a list.
        return _match_lists(elements(pred), [e for g in normed for e in elements(g)], symbolic, timeout_s)
    undecided = False
    for g in normed:  # a non-multiple list gold holds alternative spellings of one answer
        if answer_key(pred) == answer_key(g):
            return True
        p_el, g_el = elements(pred), elements(g)
        if len(p_el) > 1 or len(g_el) > 1:
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
