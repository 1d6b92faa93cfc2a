"""Sympy-level comparisons for `equivalence`: parse a whole answer, compare two numbers, probe two expressions at
a point, test two equations for proportionality. Each call is bounded by math-verify's signal timeout where it
can be (main thread only); `sq_jax.eval.grading` runs all of this in killable worker processes.
"""

from __future__ import annotations

import logging
import math
import threading
from fractions import Fraction
from typing import Any

from sq_jax.eval.normalize import nesting_depth, rounds_to

__all__ = [
    "MAX_SYMBOLIC_CHARS",
    "MAX_SYMBOLIC_DEPTH",
    "compare_constants",
    "differ_at_a_point",
    "proportional",
    "signal_timeout",
    "to_sympy",
]

# Beyond these sizes an answer is compared as a string only: nothing sensible is that long or deep, and
# sympy on it is how graders stall.
MAX_SYMBOLIC_CHARS = 600
MAX_SYMBOLIC_DEPTH = 30

_SAME_VALUE_RELATIVE = 1e-45

logging.getLogger("math_verify").setLevel(logging.ERROR)  # it warns on every parse timeout it handles


def signal_timeout(timeout_s: float | None) -> int | None:
    # math-verify's timeout is signal.alarm: whole seconds, and only in the main thread.
    if timeout_s and threading.current_thread() is threading.main_thread():
        return max(1, int(timeout_s))
    return None


def to_sympy(latex: str, timeout: int | None) -> Any:
    """The whole string as one sympy object, or None.

    math-verify's `parse` is not used: when the LaTeX does not parse it falls back to the first number
    it can find, so "-3 b^{4}+23 b^{3}-" became -3 and matched any other answer starting with -3.
    """
    # math-verify and sympy take seconds to import: only the grading workers' symbolic comparisons load them.
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


def compare_constants(gold: Any, pred: Any, gold_key: str, pred_key: str, timeout: int | None) -> bool | None:
    """Two numbers: equal values (to 1e-45, relative), or one a 4+ digit decimal rounding of the other; None if
    not two numbers.

    math-verify's `verify` rounds to 6 decimal places, so 1/10^9 "equals" 2/10^9 and 11.6e-24 equals 4.6e-24.
    """
    # sympy and math-verify, slow to import, only where symbolic comparison runs (see `to_sympy`).
    import sympy
    from math_verify.errors import TimeoutException
    from math_verify.utils import timeout as with_timeout

    exprs = (gold, pred)
    if not all(isinstance(e, sympy.Expr) and not isinstance(e, sympy.MatrixExpr) for e in exprs):
        return None
    if gold.free_symbols or pred.free_symbols:
        return None
    def values() -> tuple[Any, Any, Any]:
        return gold.evalf(50), pred.evalf(50), (gold - pred).evalf(50)

    try:
        g, p, diff = with_timeout(timeout_seconds=timeout)(values)()
        g_c, p_c, diff_abs = complex(g), complex(p), abs(complex(diff))
    except TimeoutException:
        return None
    except Exception:  # sympy's evalf fails in many ways: leave it to verify
        return None
    if not all(math.isfinite(x) for v in (g_c, p_c) for x in (v.real, v.imag)):
        return None
    # evalf gets the difference itself to 50 significant digits (an exact zero comes out below 1e-150), so only
    # floating noise is this small; 1e-30 passed 1-5052/2^{100} for 1-5051/2^{100} (apart by 8e-31).
    if diff_abs <= _SAME_VALUE_RELATIVE * max(abs(g_c), abs(p_c)):
        return True
    if g_c.imag == 0 and p_c.imag == 0:
        return rounds_to(pred_key, Fraction(str(g))) or rounds_to(gold_key, Fraction(str(p)))
    return False


# Values chosen to avoid poles and branch cuts of common answers (positive, not 0, 1, pi or e).
_PROBE_VALUES = (0.5772156649, 1.3247179572, 0.6931471806, 1.4142135624, 0.9159655942, 1.2020569032)


def differ_at_a_point(a: Any, b: Any, timeout: int | None) -> bool:
    """True when two expressions take clearly different values at one point: then they are not equal.

    A sound shortcut for the common wrong answer (a changed coefficient): it saves math-verify's
    simplify, which costs most of the symbolic time. Anything it cannot evaluate is inconclusive.
    """
    # sympy and math-verify, slow to import, only where symbolic comparison runs (see `to_sympy`).
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


def proportional(a: str, b: str, timeout_s: float | None) -> bool:
    # sympy and math-verify, slow to import, only where symbolic comparison runs (see `to_sympy`).
    import sympy
    from math_verify.errors import TimeoutException
    from math_verify.utils import timeout as with_timeout

    t = signal_timeout(timeout_s)
    if max(len(a), len(b)) > MAX_SYMBOLIC_CHARS or max(nesting_depth(a), nesting_depth(b)) > MAX_SYMBOLIC_DEPTH:
        return False
    ea, eb = to_sympy(a, t), to_sympy(b, t)
    if not (isinstance(ea, sympy.Expr) and isinstance(eb, sympy.Expr)) or not (ea.free_symbols or eb.free_symbols):
        return False
    try:
        ratio = with_timeout(timeout_seconds=t)(lambda: sympy.simplify(ea / eb))()
    except TimeoutException:
        return False
    except Exception:  # sympy fails in many ways on odd input: not shown proportional
        return False
    return bool(ratio.is_number and ratio.is_finite and ratio != 0)
