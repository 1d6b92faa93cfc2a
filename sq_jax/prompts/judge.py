"""The solvability judge: its prompts (sq-jax's own and the authors') and the parser of its verdict."""

from __future__ import annotations

import re

__all__ = ["JUDGE_PROMPTS", "JUDGE_VERDICT_PREFIX", "parse_judge_verdict"]

JUDGE_VERDICT_PREFIX = "Final verdict:"

# The judge must say *why* before it commits, and the verdict line has a fixed spelling so that
# filtering never depends on free-form phrasing.
_JUDGE_TEMPLATE = (
    "Decide whether the following text is a well-posed math problem that can be solved exactly "
    "as stated.\n\n"
    "Problem:\n{question}\n\n"
    "Check each of these points:\n"
    "1. It is a genuine mathematics problem that asks for something specific to find, compute "
    "or prove.\n"
    "2. It is stated clearly, without ambiguity and without contradictory conditions.\n"
    "3. All information needed to reach a single definite answer is given in the problem itself "
    "(no missing numbers, figures, tables or earlier context).\n"
    "4. The answer can actually be determined with mathematics.\n\n"
    "Reason step by step about these points. Then end your reply with exactly one final line, "
    f"either `{JUDGE_VERDICT_PREFIX} Yes` if every point holds, or `{JUDGE_VERDICT_PREFIX} No` "
    "if any point fails."
)

# The authors' solvability instruction (yyDing1/ScaleQuest, src/data_generation/question_filtering/
# language_solvability_check.py), byte for byte (tabs included): the paper configs' judge prompt. It asks only to
# "conclude with either 'Yes' or 'No'", so its verdicts are read by `parse_judge_verdict`'s last-line fallback.
_PAPER_JUDGE_TEMPLATE = (
    "Please act as a professional math teacher.\n"
    "Your goal is to determine if the given problem is a valuable math problem. You need to consider two aspects:\n"
    "1.\tThe given problem is a math problem.\n"
    "2.\tThe given math problem can be solved based on the conditions provided in the problem (You can first try "
    "to solve it and then judge its solvability).\n\n"
    "Please reason step by step and conclude with either 'Yes' or 'No'.\n\n"
    "Given Problem: {question}"
)
JUDGE_PROMPTS = {"sq-jax": _JUDGE_TEMPLATE, "paper": _PAPER_JUDGE_TEMPLATE}


# Markup a judge wraps its verdict in: LaTeX boxes and text commands (unwrapped), math delimiters and markdown
# emphasis / headings / quotes (removed), so `**Final verdict:** Yes`, `Final verdict: \\boxed{Yes}` and
# `$\\boxed{\\text{Yes}}$` all read as their plain words.
_LATEX_WRAPPER = re.compile(r"\\(?:boxed|fbox|text|textbf|textit|textrm|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")
_MARKUP = re.compile(r"\\[()\[\]]|[$*_`#>]")
_EXPLICIT_VERDICT = re.compile(r"\bverdict\s*(?:is\s*)?[:\-]?\s*(yes|no)\b", re.IGNORECASE)
_LABELLED_ANSWER = re.compile(
    r"^(?:(?:so|thus|hence|therefore)\s*,?\s*)?(?:(?:the\s+)?(?:final\s+)?(?:answer|conclusion|judge?ment|result)"
    r"\s*(?:is\s*)?[:\-]?\s*)?(yes|no)[\s.!]*$", re.IGNORECASE)
_TRAILING_ANSWER = re.compile(r"(?:\b(?:answer|conclusion|judge?ment)\s*(?:is\s*)?[:\-]?\s*|[:,]\s*)(yes|no)[\s.!]*$",
                              re.IGNORECASE)


def _plain(text: str) -> str:
    for _ in range(3):  # nested wrappers: \boxed{\text{Yes}}
        text = _LATEX_WRAPPER.sub(r"\1", text)
    return _MARKUP.sub("", text)


def parse_judge_verdict(text: str, *, fallback: bool = True) -> bool | None:
    """True/False from the judge's reply; None when it holds no verdict.

    The last ``... verdict: Yes|No`` anywhere decides (markdown, boxes, ``\\text{}``, case and punctuation
    allowed). Without one, and with ``fallback``, the reply's last non-empty line decides when it is a bare or
    labelled answer (``Yes.``, ``\\boxed{No}``, ``The answer is: Yes``, ``..., so the answer is no``); a word
    such as "no" inside prose ("there is no missing data") never counts. A reply cut at the length limit should
    be read with ``fallback=False``: its last line is mid-reasoning.
    """
    plain = _plain(text)
    explicit = _EXPLICIT_VERDICT.findall(plain)
    if explicit:
        return explicit[-1].lower() == "yes"
    if not fallback:
        return None
    lines = [line.strip() for line in plain.splitlines() if line.strip()]
    if not lines:
        return None
    last = lines[-1]
    match = _LABELLED_ANSWER.match(last) or _TRAILING_ANSWER.search(last)
    return match.group(1).lower() == "yes" if match else None
