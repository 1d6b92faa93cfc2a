"""The tiny embedded model's tokenizer: byte-level coverage, Qwen compatibility, offline reload."""

from __future__ import annotations

import random

import pytest
from transformers import AutoTokenizer

from sq_jax.toy.tokenizer import train_tiny_tokenizer
from sq_jax.models.tokenizer import (
    detect_prompt_format,
    encode_prompt,
    load_tokenizer,
    stop_token_ids,
)
from sq_jax.prompts.formats import PROMPT_FORMATS

QWEN = PROMPT_FORMATS["qwen"]


def _math_sentences(n: int = 300, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    names = ["Tom", "Ann", "Sara", "Li", "Omar", "Maria"]
    items = ["apples", "pencils", "books", "coins", "marbles", "stickers"]
    templates = [
        "{a} has {x} {i}. {b} gives {a} {y} more {i}. How many {i} does {a} have now?",
        "What is {x} times {y}? Put the answer in \\boxed{{}}.",
        "A rectangle has length {x} cm and width {y} cm. What is its area?",
        "Solve for $x$: {x}x + {y} = {z}.",
        "{a} buys {x} {i} at ${y} each. How much does {a} spend in total?",
        "The sum of two numbers is {z} and their difference is {y}. Find the larger number.",
    ]
    out = []
    for _ in range(n):
        out.append(
            rng.choice(templates).format(
                a=rng.choice(names), b=rng.choice(names), i=rng.choice(items),
                x=rng.randint(1, 99), y=rng.randint(1, 99), z=rng.randint(100, 999),
            )
        )
    return out


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return _math_sentences()


@pytest.fixture(scope="module")
def tok(texts):
    return train_tiny_tokenizer(texts, vocab_size=1024)


def test_trained_merges_and_vocab_bound(tok) -> None:
    # 256 bytes + 3 specials; anything beyond that proves the trainer actually learned merges.
    assert 259 < len(tok) <= 1024
    assert len(encode_prompt(tok, "How many apples does Sara have now?")) < 15


def test_special_tokens(tok) -> None:
    for i, special in enumerate(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]):
        assert encode_prompt(tok, special) == [i]
        assert tok.convert_tokens_to_ids(special) == i
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 2
    assert tok.pad_token == "<|endoftext|>" and tok.pad_token_id == 0
    assert tok.bos_token is None
    assert tok.model_max_length == 2048
    # Specials inside running text are still single ids, not split into bytes.
    ids = encode_prompt(tok, "hi<|im_end|>\n<|im_start|>user")
    assert ids.count(2) == 1 and ids.count(1) == 1
    # No BOS is added even when special tokens are requested.
    assert tok("What is 2+2?")["input_ids"] == encode_prompt(tok, "What is 2+2?")


@pytest.mark.parametrize(
    "text",
    [
        "".join(chr(c) for c in range(32, 127)),
        "tabs\tand\nnewlines\r\n  double  spaces  ",
        "Größe: 5 m² · π ≈ 3.14159 — 你好, мир! 🙂👍",
        "\\frac{1}{2} + \\sqrt{x^2} = \\boxed{42}",
        "",
    ],
)
def test_roundtrip(tok, text: str) -> None:
    ids = encode_prompt(tok, text)
    assert tok.decode(ids) == text
    assert all(0 <= i < len(tok) for i in ids)


def test_unseen_bytes_are_encodable(tok) -> None:
    # Characters never in the training texts must fall back to byte tokens, never to <unk>.
    text = "Ω∑∫ ẞ 🧮"
    ids = encode_prompt(tok, text)
    assert tok.unk_token_id is None and len(ids) >= len(text.encode("utf-8")) // 4
    assert tok.decode(ids) == text


def test_qft_text_roundtrip(tok) -> None:
    text = QWEN.qft_text("What is $3 \\times 4$?")
    ids = encode_prompt(tok, text)
    assert ids[-1] == tok.eos_token_id
    assert tok.decode(ids) == text


CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+2?"}],
    [
        {"role": "system", "content": "You are a math tutor."},
        {"role": "user", "content": "Solve x+1=3."},
        {"role": "assistant", "content": "x = 2, so the answer is \\boxed{2}."},
        {"role": "user", "content": "And x+2=3?"},
    ],
    [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!\n\nHow can I help?"},
    ],
]


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_matches_qwen_format(tok, messages, add_generation_prompt: bool) -> None:
    rendered = tok.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    assert rendered == QWEN.chat(messages, add_generation_prompt=add_generation_prompt)


def test_chat_template_literal(tok) -> None:
    rendered = tok.apply_chat_template(
        [{"role": "user", "content": "What is 1+1?"}], tokenize=False, add_generation_prompt=True
    )
    assert rendered == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nWhat is 1+1?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_save_load_roundtrip(tok, tmp_path) -> None:
    tok.save_pretrained(tmp_path)
    samples = [QWEN.solver_prompt("Find $x$ if 2x = 10."), "naïve café 🙂", "<|endoftext|>"]
    for loaded in (AutoTokenizer.from_pretrained(tmp_path), load_tokenizer(str(tmp_path))):
        for text in samples:
            assert encode_prompt(loaded, text) == encode_prompt(tok, text)
        assert loaded.get_vocab() == tok.get_vocab()
        assert loaded.eos_token_id == tok.eos_token_id
        assert loaded.pad_token_id == tok.pad_token_id
        assert loaded.model_max_length == tok.model_max_length
        msgs = CONVERSATIONS[1]
        assert loaded.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == (
            QWEN.chat(msgs, add_generation_prompt=True)
        )


def test_deterministic(texts, tok) -> None:
    again = train_tiny_tokenizer(iter(texts), vocab_size=1024)  # an iterator works too
    assert again.backend_tokenizer.to_str() == tok.backend_tokenizer.to_str()
    other = train_tiny_tokenizer(_math_sentences(seed=1) + ["zebra zebra quokka quokka"] * 5)
    assert other.get_vocab() != tok.get_vocab()


def test_detect_and_stop_ids(tok) -> None:
    assert detect_prompt_format(tok) is QWEN
    ids = stop_token_ids(tok, QWEN)
    assert set(ids) == {tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>"),
                        tok.convert_tokens_to_ids("<|im_start|>")}
    assert set(ids) == {0, 1, 2}
    with pytest.raises(ValueError, match="<｜end▁of▁sentence｜>"):
        stop_token_ids(tok, PROMPT_FORMATS["deepseek"])


def test_vocab_size_too_small(texts) -> None:
    with pytest.raises(ValueError, match="at least 259"):
        train_tiny_tokenizer(texts, vocab_size=100)
