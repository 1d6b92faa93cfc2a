"""Answer extraction: boxed (nested, fbox, brace-less), "the answer is", last number, GSM8K gold."""

import pytest

from sq_jax.eval.extract import (
    extract_all_boxed,
    extract_answer,
    gsm8k_gold,
    last_number,
    stated_parts,
    strip_math_delimiters,
)


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


@pytest.mark.parametrize(
    "text,expected",
    [
        # Several boxes linked by connectives are one (list) answer; boxes with prose between them are not.
        ("$$\\boxed{(2, 2)} \\quad \\text{and} \\quad \\boxed{(6, 2)}$$", "(2, 2), (6, 2)"),
        ("\\boxed{1},\\boxed{2},\\boxed{3}", "1, 2, 3"),
        ("\\($y_1 = \\boxed{-2(x - 1)^2 + 5} \\) and \\( y_2 = \\boxed{3(x + 2)^2 - 2} \\)",
         "-2(x - 1)^2 + 5, 3(x + 2)^2 - 2"),
        ("\\boxed{004}.\n\nBut let me check again: the sum is 2,552,004.\n\n**Final Answer**\n\\boxed{004}", "004"),
        ("\\boxed{1} no no no no no \\boxed{2}", "2"),
        # An answer statement after the last box is the final word; one without math leaves the box.
        ("so \\boxed{255}. Then $10,200 + $255 = $10,455. Final Answer: The final answer is $10,455$.", "10,455"),
        ("\\boxed{5}. So the answer is correct.", "5"),
        # Unboxed replies: the last math span, tuple, inequality or fraction before a bare last number.
        ("So x = 2/3.", "2/3"),
        ("The solution is (7, 6)", "(7, 6)"),
        ("hence x \\geq 5", "x \\geq 5"),
        ("Answer \\( (9+1) \\)", "(9+1)"),
        ("we get \\frac{10}{9}", "\\frac{10}{9}"),
        ("So x = 4 4/9", "4 4/9"),
        ("$21,16$ or $11$", "21,16, 11"),
        ("Thus $5+3=8$ and $8 \\times 2=16$", "16"),  # a worked solution's last span states its value
        ("so we solve\n$$\n\\begin{aligned}\n4 x & =17 \\\\\nx & =4.25\n\\end{aligned}\n$$", "4.25"),
        ("so $x+y=4027$.", "4027"),
        ("$x^2/16 + y^2/12 = 1/4$", "x^2/16 + y^2/12 = 1/4"),  # the whole reply is the equation: it is the answer
        ("With $T=17, n=19$.", "19"),
        ("there are 41 such integers $n$.", "41"),
        ("I paid $5 and $6 so the total is 11", "11"),
        ("and 1 000", "1000"),
        # Prose answer statements give their value.
        ("Final Answer: The largest $n$ is 34.", "34"),
        ("Final Answer: Jane started growing Sphere 3 hours ago. I hope it is correct.", "3"),
        ("The final answer is \\\"$12 $ and $13 $\\\". I hope it is correct.", "12  and 13"),
    ],
)
def test_extract_answer_multi_part_and_unboxed(text: str, expected: str) -> None:
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    "text,expected",
    [
        # Every stating sentence's math and numbers; a sentence that states nothing is working.
        ("$A \\times B=[1.5, 2]$. So the area is 9.", ["9"]),
        ("The rank is 3 , so both have one solution. The first is $(1,0,1)$, and the second is $(1,1,2)$.",
         ["3", "(1,0,1)", "(1,1,2)"]),
        ("$s(t)=t$, $v(t)=1$, maximum speed is $2 / \\pi$", ["s(t)=t", "v(t)=1", "2 / \\pi"]),
        ("Linearly independent subset: $\\{u_1, u_3\\}$. Since the rank is 2 , this is the smallest possible.",
         ["\\{u_1, u_3\\}", "2"]),
        ("$(1,0,1), (1,1,2)$", None),  # not prose
        ("concave up on $(0, 1)$ and $(2, 3)$", None),  # prose that states nothing
    ],
)
def test_stated_parts(text: str, expected: list[str] | None) -> None:
    assert stated_parts(text) == expected
