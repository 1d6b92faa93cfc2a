"""The optimiser's rewrite requests and the parser of its replies (SCALEQUEST.md section 2).

Each question goes one of two directions, picked by a hash of (seed, id) so reruns and resumed runs agree. The
optimiser answers in sections whose last one, `### Final Question`, holds the rewrite.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

__all__ = ["DIRECTIONS", "FINAL_HEADING", "INSTRUCTIONS", "check_directions", "choose_direction",
           "optimiser_messages", "parse_final_question"]

DIRECTIONS = ("solvability", "difficulty")
FINAL_HEADING = "### Final Question"

_SYSTEM = (
    "You are an expert author and editor of mathematics competition and textbook problems. "
    "You follow the requested output format exactly."
)
_FORMAT = (
    "Format your reply as the sections below, in this order, and write nothing after the last one:\n"
    "### Analysis\n<your reasoning, briefly>\n"
    f"{FINAL_HEADING}\n<only the final question: no heading, label, answer, solution or comment>"
)
# `{question}` is substituted with str.replace: math text is full of braces that str.format would misread.
INSTRUCTIONS: dict[str, str] = {
    "solvability": (
        "Below is a math question written by a question-generation model. Make sure it is a real, solvable "
        "math problem.\n\n<question>\n{question}\n</question>\n\n"
        "Steps:\n"
        "1. Check it: is it a genuine mathematics problem asking for one specific quantity? Does it state every "
        "number, condition and definition needed, without relying on a figure, table or earlier context? Is it "
        "free of contradictions and ambiguity? Does it have exactly one numeric answer?\n"
        "2. If every check passes, keep the question as it is; fix only grammar or wording.\n"
        "3. If any check fails, change as little as possible to fix it: add the missing information, remove "
        "contradictions, and make it ask for a single numeric answer. The final question must restate all the "
        "information needed to solve it.\n"
        "4. Do not solve the problem and do not reveal its answer.\n\n" + _FORMAT
    ),
    "difficulty": (
        "Below is a math question written by a question-generation model. Rewrite it into a harder problem.\n\n"
        "<question>\n{question}\n</question>\n\n"
        "Steps:\n"
        "1. Work out what it asks and how it is solved.\n"
        "2. Make the solution need more reasoning steps: for example ask for a quantity that must be derived "
        "from the original answer, add a condition or constraint, or combine it with a second concept.\n"
        "3. Add only 10 to 20 words to the original question; do not pad it with story or irrelevant detail.\n"
        "4. The new problem must stay self-contained, unambiguous and solvable, with a single numeric answer.\n"
        "5. Do not solve the problem and do not reveal its answer.\n\n" + _FORMAT
    ),
}


def check_directions(directions: Sequence[str]) -> tuple[str, ...]:
    """`directions` as a tuple, refused when empty, repeated or naming an unknown direction."""
    directions = tuple(directions)
    unknown = [d for d in directions if d not in DIRECTIONS]
    if not directions or unknown or len(set(directions)) != len(directions):
        raise ValueError(f"optimise: directions must be distinct names from {DIRECTIONS}, got {list(directions)}")
    return directions


def choose_direction(question_id: str, seed: int, directions: Sequence[str] = DIRECTIONS) -> str:
    """The rewrite direction of one question: a hash of (seed, id), evenly over `directions`, stable across runs."""
    # Its own namespace, so the choice is uncorrelated with `request_seed(seed, id)` used for sampling.
    digest = hashlib.sha256(f"sq-jax/optimise-direction/{seed}/{question_id}".encode()).digest()
    return directions[digest[0] % len(directions)]


def optimiser_messages(question: str, direction: str) -> list[dict[str, str]]:
    """OpenAI chat messages (system + user) asking the optimiser to rewrite `question` in `direction`."""
    if direction not in INSTRUCTIONS:
        raise ValueError(f"optimise: unknown direction {direction!r}; expected one of {DIRECTIONS}")
    return [
        {"role": "system", "content": _SYSTEM},
        {"role": "user", "content": INSTRUCTIONS[direction].replace("{question}", question.strip())},
    ]


# --- parsing ---------------------------------------------------------------------------------------------------
# A heading line in any common markdown spelling: "### Final Question", "**Final Question:**", "Final question:",
# "## 3. Final Rewritten Question", "> **Final Question**:". It must end the line or carry a colon, so prose such
# as "Final question is whether ..." is not a heading; after a colon the line may already hold the question.
_HEADING = re.compile(
    r"^[ \t]*(?:>[ \t]*)?(?:#{1,6}[ \t]*)?(?:\d+[.)][ \t]*)?[*_]{0,3}[ \t]*final[ \t]+"
    r"(?:(?:rewritten|revised|optimi[sz]ed|improved|new|refined|harder)[ \t]+)?question[ \t]*[*_]{0,3}[ \t]*"
    r"(?::[ \t]*[*_]{0,3}|(?=[ \t]*$))[ \t]*",
    re.IGNORECASE | re.MULTILINE,
)
# Special tokens a model or a server may leave in a reply; from the first one after the text on, it is junk.
_ROLE_TOKEN = re.compile(r"<\|[A-Za-z_]+\|>|</s>|<｜[^｜]*｜>|\[/?INST\]")
_LEADING_ROLE = re.compile(r"^\s*(?:(?:<\|[A-Za-z_]+\|>|<s>|<｜[^｜]*｜>)(?:assistant|system|user)?[ \t:]*\n?\s*)+")
_NEXT_SECTION = re.compile(r"^[ \t]*(?:#{1,6}[ \t]|(?:-{3,}|\*{3,}|_{3,})[ \t]*$)", re.MULTILINE)
_FENCE = re.compile(r"^```(?:[\w+-]*[ \t]*\n)?(.*?)(?:\n?```.*)?$", re.DOTALL)
_LABEL = re.compile(r"^[*_]{0,2}(?:(?:rewritten|revised|new)[ \t]+)?(?:question|problem|q)[ \t]*:[ \t]*[*_]{0,2}[ \t]*",
                    re.IGNORECASE)
_QUOTES = (("**", "**"), ('"', '"'), ("'", "'"), ("“", "”"), ("‘", "’"), ("«", "»"), ("`", "`"), ("*", "*"),
           ("_", "_"))


def _unwrap(body: str) -> str:
    """Remove quotes or emphasis wrapped around the whole text, twice at most (e.g. *"..."*)."""
    for _ in range(2):
        for left, right in _QUOTES:
            inner = body[len(left): len(body) - len(right)]
            wrapped = len(body) >= len(left) + len(right) and body.startswith(left) and body.endswith(right)
            # Emphasis around a quoted question (*"..."*) is markup even when the maths inside uses "*".
            quoted = left in "*_**" and inner[:1] in "\"“'" and inner[-1:] in "\"”'"
            if wrapped and (quoted or (left not in inner and right not in inner)):
                body = inner.strip()
                break
    return body


def parse_final_question(reply: str) -> str | None:
    """The question under the reply's last `Final Question` heading, cleaned of markup; None if missing or empty."""
    if not isinstance(reply, str):
        return None
    text = _LEADING_ROLE.sub("", reply.replace("\r\n", "\n"), count=1)
    text = _ROLE_TOKEN.split(text, maxsplit=1)[0]
    heads = list(_HEADING.finditer(text))
    if not heads:
        return None
    body = text[heads[-1].end():].strip()
    # The section ends at the next heading or horizontal rule (a trailing note the model added anyway).
    nxt = _NEXT_SECTION.search(body, pos=1)
    if nxt:
        body = body[: nxt.start()].strip()
    fence = _FENCE.match(body)
    if fence:
        body = fence.group(1).strip()
    lines = body.splitlines()
    if lines and all(line.lstrip().startswith(">") for line in lines if line.strip()):
        body = "\n".join(re.sub(r"^[ \t]*>[ \t]?", "", line) for line in lines).strip()
    body = _unwrap(_LABEL.sub("", body, count=1).strip())
    return body or None
