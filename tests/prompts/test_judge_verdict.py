"""The solvability judge's verdict in the forms 7B judges really write, and what never counts as one."""

from __future__ import annotations

import pytest

from sq_jax.prompts.judge import parse_judge_verdict

REASONING = "The problem gives the speed and the time, so the distance follows.\n\n"


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        # The forms the issue found dropped: markdown, boxed, boxed text.
        ("**Final verdict:** Yes", True),
        ("Final verdict: \\boxed{Yes}", True),
        ("$\\boxed{\\text{Yes}}$", True),
        # Markdown headings, emphasis, case and punctuation around the prescribed line.
        ("### Final verdict\nNo", False),
        ("**Final Verdict: NO.**", False),
        ("Final verdict - yes!", True),
        ("> *Final verdict*: `Yes`", True),
        ("Final verdict: $\\boxed{\\textbf{No}}$.", False),
        ("Final verdict: \\(\\boxed{\\text{yes}}\\)", True),
        # The last explicit verdict wins over an earlier one and over a trailing remark.
        ("Final verdict: Yes\nOn second thought the radius is missing.\nFinal verdict: No", False),
        ("Final verdict: Yes\n\nI hope this helps.", True),
        # No verdict line: the reply's last line as a bare or labelled answer (the paper's prompt asks to
        # "conclude with either 'Yes' or 'No'").
        (REASONING + "Yes", True),
        (REASONING + "**No.**", False),
        (REASONING + "\\[\\boxed{\\text{No}}\\]", False),
        (REASONING + "Therefore, the answer is: Yes.", True),
        (REASONING + "Conclusion: No", False),
        (REASONING + "So, yes", True),
        (REASONING + "The problem is solvable, so the answer is yes.", True),
        (REASONING + "It can be solved exactly: Yes", True),
    ],
)
def test_verdicts_models_write(reply: str, verdict: bool) -> None:
    assert parse_judge_verdict(reply) is verdict


@pytest.mark.parametrize(
    "reply",
    [
        "",
        "Final verdict: Not sure",
        REASONING + "There is no missing information.",
        REASONING + "Yes, the speed is given. Now compute the distance as 3 * 4 = 12",
        "I think yes, but let me check the units first",
        REASONING + "No doubt the answer is 12 km",
    ],
)
def test_prose_is_not_a_verdict(reply: str) -> None:
    assert parse_judge_verdict(reply) is None


def test_a_truncated_reply_counts_only_an_explicit_verdict() -> None:
    cut = REASONING + "Checking point 3.\nYes"
    assert parse_judge_verdict(cut) is True
    assert parse_judge_verdict(cut, fallback=False) is None
    assert parse_judge_verdict("Final verdict: No\nLet me double-check", fallback=False) is False


# The authors' solvability instruction, as language_solvability_check.py writes it (yyDing1/ScaleQuest), and how it
# builds the judge's prompt: system "You are a helpful assistant." + that instruction, through the model's template.
AUTHORS_INSTRUCTION = """
Please act as a professional math teacher.
Your goal is to determine if the given problem is a valuable math problem. You need to consider two aspects:
1.\tThe given problem is a math problem.
2.\tThe given math problem can be solved based on the conditions provided in the problem (You can first try to solve it and then judge its solvability).

Please reason step by step and conclude with either 'Yes' or 'No'.

Given Problem: {problem}
""".strip()


def test_the_paper_judge_prompt_is_the_authors_byte_for_byte():
    import json
    from pathlib import Path

    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from sq_jax.prompts.formats import PROMPT_FORMATS

    fixture = Path(__file__).parents[1] / "models" / "fixtures" / "chat_templates" / "qwen2-math-7b-instruct.json"
    template = json.loads(fixture.read_text(encoding="utf-8"))["chat_template"]
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")))
    tok.chat_template = template
    question = "A rectangle has sides $3$ and {x}. What is its area if \\boxed{x} = 4?"
    messages = [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": AUTHORS_INSTRUCTION.format(problem=question)}]
    expected = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert PROMPT_FORMATS["qwen"].judge_prompt(question, "paper") == expected
