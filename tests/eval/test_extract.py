"""Answer extraction: boxed (nested, fbox, brace-less), "the answer is", last number, GSM8K gold."""

import pytest

from sq_jax.eval.extract import extract_all_boxed, extract_answer, gsm8k_gold, last_number, strip_math_delimiters


@pytest.mark.parametrize(
    "text,expected",
    [
        ("so the result is $\\boxed{42}$.", "42"),
        ("first \\boxed{1} then \\boxed{2}", "2"),
        ("$\\boxed{\\frac{\\sqrt{3}}{2}}$", "\\frac{\\sqrt{3}}{2}"),
        ("\\boxed{\\left\\{ 1, 2 \\right\\}}", "\\left\\{ 1, 2 \\right\\}"),
        ("\\boxed{a_{1}^{2}+\\{b\\}}", "a_{1}^{2}+\\{b\\}"),
        ("\\fbox{7} and nothing else", "7"),
        ("\\boxed{3} then finally \\fbox{4}", "4"),
        ("The answer is \\boxed 5$.", "5"),
        ("\\boxed {  12 }", "12"),
        # A boxed answer cut off mid-way (max length) does not count; fall back to the last number.
        ("we get 17 so \\boxed{\\frac{1}{", "1"),
        ("The answer is 18.", "18"),
        ("The answer is: 18", "18"),
        ("Thus, the final answer is $x = 5$. I hope it is correct.", "x = 5"),
        ("The final answer is 3.5. Done", "3.5"),
        ("the answer is \\$1,000.", "\\$1,000"),
        ("The answer is 7\nand some trailing text with 99", "7"),
        ("Final Answer: The final answer is $\\frac{1}{2}$. I hope", "\\frac{1}{2}"),
        ("We need 3 apples and -4 pears", "-4"),
        ("total is 1,000,000 dollars", "1000000"),
        ("it costs 3.25 now", "3.25"),
        ("x2 is a name, 12.", "12"),
        ("no numbers here", None),
        ("", None),
    ],
)
def test_extract_answer(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


def test_extract_all_boxed_in_order() -> None:
    text = "\\boxed{1}, \\fbox{x^{2}} and \\boxed{\\{2,3\\}} and \\boxedfoo{9}"
    assert extract_all_boxed(text) == ["1", "x^{2}", "\\{2,3\\}"]
    assert extract_all_boxed("nothing") == []


def test_last_number() -> None:
    assert last_number("a -3 b") == "-3"
    assert last_number("1,2") == "2"  # not a thousands group: a list
    assert last_number("1,234.5 then") == "1234.5"
    assert last_number("none") is None


def test_strip_math_delimiters() -> None:
    assert strip_math_delimiters(" $x$ ") == "x"
    assert strip_math_delimiters("$$x+1$$") == "x+1"
    assert strip_math_delimiters("\\(x\\)") == "x"
    assert strip_math_delimiters("\\[x\\]") == "x"
    assert strip_math_delimiters("$a$ and $b$") == "a$ and $b"


def test_gsm8k_gold() -> None:
    assert gsm8k_gold("She makes 9 * 2 = $<<9*2=18>>18.\n#### 18") == "18"
    assert gsm8k_gold("...\n#### 1,200") == "1200"
    assert gsm8k_gold("#### -5") == "-5"
    with pytest.raises(ValueError, match="####"):
        gsm8k_gold("no marker 18")
