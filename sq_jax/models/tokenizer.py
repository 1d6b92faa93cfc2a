"""Tokenizer loading, and what a prompt format needs from a tokenizer: detecting the family's format from its
vocabulary and chat template, encoding rendered prompts, and the token ids generation stops at.

The formats themselves are text and live in `sq_jax.prompts.formats`.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any, Sequence

from sq_jax.prompts.formats import PROMPT_FORMATS, PromptFormat

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "RemoteCodeError",
    "detect_prompt_format",
    "encode_prompt",
    "load_tokenizer",
    "looks_local",
    "stop_token_ids",
]


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
    if PROMPT_FORMATS["deepseek"].bos_text in vocab:
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
    # Heavy (seconds): imported on first load, so what needs only a tokenizer object never pays for it.
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
