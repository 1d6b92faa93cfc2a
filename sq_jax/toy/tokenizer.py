"""A small Qwen-style byte-level BPE tokenizer, trained in seconds, for the tiny embedded model.

It lets the whole pipeline (QFT, QPO, generation, filtering, SFT) run end to end offline: it has
the same special tokens, chat template and pre-tokenisation as Qwen2, so code that works with it
works with the real Qwen2-Math tokenizer.
"""

from __future__ import annotations

from typing import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

__all__ = ["QWEN2_CHAT_TEMPLATE", "SPECIAL_TOKENS", "train_tiny_tokenizer"]

# Trainer special tokens get the first ids, in this order: <|endoftext|>=0, <|im_start|>=1,
# <|im_end|>=2.
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

# Qwen2-Instruct's chat template, verbatim, so apply_chat_template matches PROMPT_FORMATS["qwen"].
QWEN2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}"
    "{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Qwen2's pre-tokenisation regex: single digits keep numbers compositional, which matters far
# more for math text than compressing them.
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

_MIN_VOCAB = 256 + len(SPECIAL_TOKENS)


def train_tiny_tokenizer(
    texts: Iterable[str], vocab_size: int = 2048, *, model_max_length: int = 2048
) -> PreTrainedTokenizerFast:
    """Train a deterministic byte-level BPE with Qwen2's special tokens and chat template.

    The vocabulary may come out smaller than ``vocab_size`` when the texts have too few distinct
    pairs to merge; every string stays encodable through the 256 byte tokens.
    """
    if vocab_size < _MIN_VOCAB:
        raise ValueError(
            f"vocab_size must be at least {_MIN_VOCAB} (256 bytes + {len(SPECIAL_TOKENS)} "
            f"special tokens), got {vocab_size}"
        )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,  # a pair seen once is noise, and skipping it keeps the vocab stable
        special_tokens=list(SPECIAL_TOKENS),
        # The full byte alphabet, not just the bytes seen, so no input ever needs an <unk>.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
        extra_special_tokens=["<|im_start|>", "<|im_end|>"],
        model_max_length=model_max_length,
        chat_template=QWEN2_CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )
