"""Tokenizer loading and the chat/prompt formats of the model families ScaleQuest uses.

Every string a model is trained on or prompted with is built here, so the question generator,
the judge, the responder and the SFT data all agree byte for byte with the formats the released
checkpoints were trained with (see SCALEQUEST.md, sections 1, 3 and 5).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "JUDGE_PROMPTS",
    "JUDGE_VERDICT_PREFIX",
    "PROMPT_FORMATS",
    "SOLVER_INSTRUCTION",
    "PromptFormat",
    "RemoteCodeError",
    "detect_prompt_format",
    "encode_prompt",
    "get_prompt_format",
    "load_tokenizer",
    "parse_judge_verdict",
    "prompt_format_mismatch",
    "stop_token_ids",
]

SOLVER_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."

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


_PROBE = ({"role": "user", "content": "What is 1 + 1?"},)


def _rendered_like_template(
    tokenizer: PreTrainedTokenizerBase, candidates: Sequence[PromptFormat]
) -> PromptFormat | None:
    """The candidate that renders a probe question exactly as the tokenizer's own chat template does, if any."""
    if not isinstance(getattr(tokenizer, "chat_template", None), str):
        return None
    try:
        rendered = tokenizer.apply_chat_template(list(_PROBE), tokenize=False, add_generation_prompt=True)
    except Exception:  # a template is arbitrary Jinja (it may raise on any input); the vocabulary decides then
        return None
    return next((f for f in candidates if f.chat(_PROBE, add_generation_prompt=True) == rendered), None)


def detect_prompt_format(tokenizer: PreTrainedTokenizerBase) -> PromptFormat:
    """Guess the chat style from the special tokens in the tokenizer's vocabulary; among the ChatML formats (Qwen2,
    Qwen2.5, Qwen2.5-Math, InternLM2), the one that renders like the tokenizer's chat template."""
    vocab = tokenizer.get_vocab()
    if "<|im_start|>" in vocab:
        chatml = [f for f in PROMPT_FORMATS.values() if f.chat_family == "qwen"]
        return _rendered_like_template(tokenizer, chatml) or PROMPT_FORMATS["qwen"]
    if "<|start_header_id|>" in vocab:
        return PROMPT_FORMATS["llama3"]
    if _DS_BOS in vocab:
        return PROMPT_FORMATS["deepseek"]
    template = getattr(tokenizer, "chat_template", None)
    # Mistral v0.1/v0.2 spell [INST] as text, so fall back to SentencePiece's Llama/Mistral layout.
    sp_layout = vocab.get("<unk>") == 0 and vocab.get("<s>") == 1 and vocab.get("</s>") == 2
    if "[INST]" in vocab or sp_layout or (isinstance(template, str) and "[INST]" in template):
        return PROMPT_FORMATS["mistral"]
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    raise ValueError(
        f"cannot detect the prompt format of tokenizer {name!r}: none of the special tokens of the "
        f"known formats ({', '.join(PROMPT_FORMATS)}) are in its vocabulary. Pick one explicitly, "
        "e.g. get_prompt_format('qwen')."
    )


def encode_prompt(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of a rendered prompt; the format text already carries any BOS it needs."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def looks_local(path: str) -> bool:
    # Hub ids are "name" or "org/name"; anything else can only be meant as a filesystem path.
    return (
        path.startswith(("/", ".", "~"))
        or (os.sep != "/" and os.sep in path)
        or path.count("/") > 1
        or os.path.exists(path)
    )


class RemoteCodeError(ValueError):
    """A tokenizer that only its repository's own Python code can load, which the config did not allow."""


def _remote_tokenizer_class(path: str) -> str | None:
    """The `auto_map` class a local tokenizer_config.json names for AutoTokenizer (remote code), if any."""
    config = os.path.join(path, "tokenizer_config.json")
    try:
        with open(config, encoding="utf-8") as f:
            auto = (json.load(f).get("auto_map") or {}).get("AutoTokenizer")
    except (OSError, ValueError, AttributeError):
        return None
    names = [a for a in (auto if isinstance(auto, list) else [auto]) if a]
    return names[-1] if names else None


def load_tokenizer(path_or_hub_id: str, *, trust_remote_code: bool = False,
                   setting: str = "trust_remote_code", **kwargs: Any) -> PreTrainedTokenizerBase:
    """``AutoTokenizer.from_pretrained`` with clear errors for paths that do not exist and for remote code.

    Real InternLM2 checkpoints (internlm2-7b-reward) ship their tokenizer as Python code in the repository
    (tokenizer_config.json ``auto_map``); it runs only when ``trust_remote_code`` is on, which the caller's config
    key ``setting`` controls (off by default: it executes code from the model repository).
    """
    # Imported here so the prompt formats stay usable without paying for a transformers import.
    from transformers import AutoTokenizer

    path = os.path.expanduser(str(path_or_hub_id))
    if looks_local(path) and not os.path.isdir(path):
        raise FileNotFoundError(f"tokenizer directory not found: {path!r}")
    remote = _remote_tokenizer_class(path) if os.path.isdir(path) else None
    if remote and not trust_remote_code:
        # Checked before transformers, which would otherwise ask on the terminal (and fail without one).
        raise RemoteCodeError(
            f"the tokenizer of {path!r} is remote code ({remote} in tokenizer_config.json auto_map): set "
            f"{setting}: true to run that repository's Python code, after reading it"
        )
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, **kwargs)
    except (OSError, ValueError) as exc:
        if "trust_remote_code" in str(exc) and not trust_remote_code:
            raise RemoteCodeError(f"the tokenizer of {path!r} needs remote code: set {setting}: true to run "
                                  f"that repository's Python code ({exc})") from exc
        where = "local directory" if os.path.isdir(path) else "local directory or hub id"
        raise OSError(f"could not load a tokenizer from {where} {path!r}: {exc}") from exc


def stop_token_ids(
    tokenizer: PreTrainedTokenizerBase, fmt: PromptFormat, strict: bool = True
) -> list[int]:
    """Ids generation must stop at: the format's stop strings plus the tokenizer's EOS."""
    vocab = tokenizer.get_vocab()
    ids: list[int] = []
    for text in fmt.stop_strings:
        token_id = vocab.get(text)
        if token_id is None:
            # Vocab keys can be spelled differently from the text (byte-level "Ġ", SentencePiece
            # "▁"), so also accept a single id that decodes back to the text, unless it is <unk>.
            encoded = encode_prompt(tokenizer, text)
            if (
                len(encoded) == 1
                and encoded[0] != getattr(tokenizer, "unk_token_id", None)
                and tokenizer.decode(encoded) == text
            ):
                token_id = encoded[0]
        if token_id is None:
            if strict:
                raise ValueError(
                    f"stop string {text!r} of prompt format {fmt.name!r} is not a single token "
                    "in this tokenizer; is it the right format? (strict=False skips it)"
                )
            continue
        if token_id not in ids:
            ids.append(token_id)
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is not None and eos not in ids:
        ids.append(eos)
    if not ids:
        raise ValueError(
            f"tokenizer has no EOS and none of {fmt.stop_strings} are tokens: generation "
            "would never stop"
        )
    return ids


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
