"""The chat/prompt formats of the model families ScaleQuest uses, rendered with plain string operations.

Every string a model is trained on or prompted with is built here, so the question generator, the judge, the
responder and the SFT data all agree byte for byte with the formats the released checkpoints were trained with
(see SCALEQUEST.md, sections 1, 3 and 5).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping, Sequence

from sq_jax.prompts.judge import JUDGE_PROMPTS
from sq_jax.prompts.solver import SOLVER_INSTRUCTION

__all__ = ["PROMPT_FORMATS", "PromptFormat", "get_prompt_format", "prompt_format_mismatch"]

_ROLES = ("system", "user", "assistant")
_CONTENT = "{content}"


@dataclass(frozen=True)
class PromptFormat:
    """One chat style, rendered with plain string operations (no Jinja) so it is exact and fast.

    Turn templates hold the literal placeholder ``{content}``; substitution uses ``str.replace``
    because math text is full of braces (``\\boxed{}``) that ``str.format`` would choke on.
    """

    name: str
    bos_text: str
    system_turn: str
    user_turn: str
    assistant_turn: str
    assistant_start: str
    # What closes the question in QFT text; the generator learns to emit it, so it must be
    # (or start with) one of ``stop_strings``.
    query_end: str
    stop_strings: tuple[str, ...]
    default_system: str | None = None
    # Llama 3's official template strips every message.
    strip_content: bool = False
    # Mistral's template has no system role; the system text is prefixed to the first user turn.
    system_into_first_user: bool = False
    # The chat family whose special tokens the format shares (ChatML for Qwen and InternLM2); empty: its own name.
    family: str = ""

    def __post_init__(self) -> None:
        if not self.assistant_turn.startswith(self.assistant_start):
            raise ValueError(f"format {self.name!r}: assistant_turn {self.assistant_turn!r} must start with "
                             f"assistant_start {self.assistant_start!r} (a reply follows the generation prompt)")

    @property
    def chat_family(self) -> str:
        """The family whose special tokens the format uses: its markers are what give a foreign prompt away."""
        return self.family or self.name

    @property
    def pre_query_template(self) -> str:
        """Everything up to where the user's question starts: the generator's only prompt."""
        prefix = self.bos_text
        if self.default_system is not None and not self.system_into_first_user:
            prefix += self.system_turn.replace(_CONTENT, self.default_system)
        return prefix + self.user_turn.split(_CONTENT, 1)[0]

    @property
    def turn_end(self) -> str:
        """What closes an assistant turn (the SFT response's end-of-turn), without a trailing newline."""
        return self.assistant_turn.split(_CONTENT, 1)[1].rstrip("\n")

    def response_text(self, response: str) -> str:
        """An assistant reply as it follows the generation prompt in a rendered chat, up to its end-of-turn: SFT's
        target. It keeps what the template writes between the generation prompt and the reply (DeepSeek's
        "Assistant:" is followed by a space), so prompt + response_text is the template's own (user, assistant)
        rendering."""
        turn = self.assistant_turn.replace(_CONTENT, response)
        return turn[len(self.assistant_start):].rstrip("\n")

    def qft_text(self, question: str) -> str:
        """One QFT training example: the generator learns to write a question, then stop."""
        return self.pre_query_template + question + self.query_end

    def solver_prompt(self, question: str) -> str:
        """The responder's prompt, ending where the assistant's answer begins."""
        content = f"{question}\n{SOLVER_INSTRUCTION}"
        return self.chat([{"role": "user", "content": content}], add_generation_prompt=True)

    def judge_prompt(self, question: str, style: str = "sq-jax") -> str:
        """The solvability judge's prompt (`style`: a key of `JUDGE_PROMPTS`); parse the reply with
        :func:`parse_judge_verdict`."""
        if style not in JUDGE_PROMPTS:
            raise ValueError(f"unknown judge prompt {style!r}; expected one of {sorted(JUDGE_PROMPTS)}")
        content = JUDGE_PROMPTS[style].replace("{question}", question)
        return self.chat([{"role": "user", "content": content}], add_generation_prompt=True)

    def chat(
        self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = False
    ) -> str:
        """Render messages the way the family's official chat template does."""
        msgs = [_check_message(i, m) for i, m in enumerate(messages)]
        if self.strip_content:
            msgs = [(role, content.strip()) for role, content in msgs]
        if self.system_into_first_user:
            msgs = _merge_system(self.name, msgs, self.default_system)
        elif msgs and msgs[0][0] != "system" and self.default_system is not None:
            # Same condition as Qwen2's template: only a non-empty conversation gets it.
            msgs.insert(0, ("system", self.default_system))
        turns = {"system": self.system_turn, "user": self.user_turn,
                 "assistant": self.assistant_turn}
        out = [self.bos_text]
        out += [turns[role].replace(_CONTENT, content) for role, content in msgs]
        if add_generation_prompt:
            out.append(self.assistant_start)
        return "".join(out)


def _check_message(index: int, message: Mapping[str, str]) -> tuple[str, str]:
    try:
        role, content = message["role"], message["content"]
    except (KeyError, TypeError):
        raise ValueError(
            f"message {index} must be a mapping with 'role' and 'content' keys, got {message!r}"
        ) from None
    if role not in _ROLES:
        raise ValueError(f"message {index} has unsupported role {role!r}; expected one of {_ROLES}")
    if not isinstance(content, str):
        raise ValueError(f"message {index} content must be a string, got {type(content).__name__}")
    return role, content


def _merge_system(
    name: str, msgs: list[tuple[str, str]], default_system: str | None
) -> list[tuple[str, str]]:
    system = default_system
    if msgs and msgs[0][0] == "system":
        system, msgs = msgs[0][1], msgs[1:]
    if any(role == "system" for role, _ in msgs):
        raise ValueError(f"format {name!r} supports a system message only as the first message")
    if system is not None and msgs and msgs[0][0] == "user":
        msgs = [("user", f"{system}\n\n{msgs[0][1]}")] + msgs[1:]
    return msgs


_QWEN_SYSTEM = "You are a helpful assistant."
_DS_BOS = "<｜begin▁of▁sentence｜>"
_DS_EOS = "<｜end▁of▁sentence｜>"

PROMPT_FORMATS: dict[str, PromptFormat] = {
    # ChatML as in Qwen2/Qwen2.5/Qwen2-Math-Instruct.
    "qwen": PromptFormat(
        name="qwen",
        bos_text="",
        system_turn="<|im_start|>system\n{content}<|im_end|>\n",
        user_turn="<|im_start|>user\n{content}<|im_end|>\n",
        assistant_turn="<|im_start|>assistant\n{content}<|im_end|>\n",
        assistant_start="<|im_start|>assistant\n",
        query_end="<|im_end|>",
        # <|im_start|> as the authors stop synthesis: a generator that runs past its end-of-turn would write a
        # second turn into the question.
        stop_strings=("<|im_end|>", "<|endoftext|>", "<|im_start|>"),
        default_system=_QWEN_SYSTEM,
    ),
    # DeepSeekMath-RL/Instruct. ScaleQuest ends QFT questions with "\n\n" + EOS, which is what the
    # released DeepSeekMath generator emits.
    "deepseek": PromptFormat(
        name="deepseek",
        bos_text=_DS_BOS,
        system_turn="{content}\n\n",
        user_turn="User: {content}\n\n",
        assistant_turn="Assistant: {content}" + _DS_EOS,
        assistant_start="Assistant:",
        query_end="\n\n" + _DS_EOS,
        # BOS too, as the authors stop synthesis: a run-on generator starts a new conversation with it.
        stop_strings=(_DS_EOS, _DS_BOS),
    ),
    # Llama-3-Instruct (no default system message, as in the 3.0 template).
    "llama3": PromptFormat(
        name="llama3",
        bos_text="<|begin_of_text|>",
        system_turn="<|start_header_id|>system<|end_header_id|>\n\n{content}<|eot_id|>",
        user_turn="<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
        assistant_turn="<|start_header_id|>assistant<|end_header_id|>\n\n{content}<|eot_id|>",
        assistant_start="<|start_header_id|>assistant<|end_header_id|>\n\n",
        query_end="<|eot_id|>",
        stop_strings=("<|eot_id|>", "<|end_of_text|>"),
        strip_content=True,
    ),
    # Mistral-Instruct v0.1/v0.2. The user turn has no end-of-turn token of its own, so a QFT
    # question ends with EOS, as ScaleQuest does for DeepSeek.
    "mistral": PromptFormat(
        name="mistral",
        bos_text="<s>",
        system_turn="",  # never used: merged into the first user turn
        user_turn="[INST] {content} [/INST]",
        assistant_turn="{content}</s>",
        assistant_start="",
        query_end="</s>",
        stop_strings=("</s>",),
        system_into_first_user=True,
    ),
}
# Qwen2.5 and Qwen2.5-Math-Instruct keep Qwen2's ChatML and change only the default system message their templates
# write (tests/models/fixtures/chat_templates holds the real templates these are checked against).
PROMPT_FORMATS["qwen2.5"] = dataclasses.replace(
    PROMPT_FORMATS["qwen"], name="qwen2.5", family="qwen",
    default_system="You are Qwen, created by Alibaba Cloud. You are a helpful assistant.")
PROMPT_FORMATS["qwen2.5-math"] = dataclasses.replace(
    PROMPT_FORMATS["qwen"], name="qwen2.5-math", family="qwen", default_system=SOLVER_INSTRUCTION)
# InternLM2-Chat: ChatML after a BOS the template writes, no default system message.
PROMPT_FORMATS["internlm2"] = dataclasses.replace(
    PROMPT_FORMATS["qwen"], name="internlm2", family="qwen", bos_text="<s>", default_system=None,
    stop_strings=("<|im_end|>", "</s>", "<|im_start|>"))


def get_prompt_format(name: str) -> PromptFormat:
    """Look up a format by name (``qwen``, ``qwen2.5``, ``qwen2.5-math``, ``deepseek``, ``llama3``, ``mistral``,
    ``internlm2``)."""
    try:
        return PROMPT_FORMATS[name.lower()]
    except (KeyError, AttributeError):
        raise ValueError(
            f"unknown prompt format {name!r}; known formats: {', '.join(PROMPT_FORMATS)}"
        ) from None


# Text that only one family's prompts contain: how a prompt built for another model gives itself away.
_FORMAT_MARKERS = {
    "qwen": ("<|im_start|>",),  # ChatML: every Qwen format and InternLM2 (their `family`)
    "llama3": ("<|start_header_id|>", "<|begin_of_text|>"),
    "deepseek": (_DS_BOS,),
    "mistral": ("[INST]",),
}


def prompt_format_mismatch(prompt: str, fmt: PromptFormat) -> str | None:
    """Why `prompt` was not rendered in `fmt` (another family's markers, or none of its own); None if it fits."""
    for name, markers in _FORMAT_MARKERS.items():
        found = [m for m in markers if m in prompt]
        if name != fmt.chat_family and found:
            return f"prompt contains {found[0]!r}, a {name} template marker, but the model uses the {fmt.name} format"
    own = _FORMAT_MARKERS.get(fmt.chat_family, ())
    if own and not any(m in prompt for m in own):
        return f"prompt has none of the {fmt.name} template markers {list(own)}; render it with the model's format"
    return None
