"""QFT and SFT on the tiny embedded model, end to end through the configs users run."""

from __future__ import annotations

from pathlib import Path

import pytest

from sq_jax.configlib import load_config
from sq_jax.models.hf_io import load_pretrained
from sq_jax.models.tokenizer import encode_prompt, load_tokenizer, stop_token_ids
from sq_jax.prompts.formats import PROMPT_FORMATS
from sq_jax.sampling.simple import generate
from sq_jax.toy.tiny import build_tiny
from sq_jax.train.config import TrainConfig
from sq_jax.train.trainer import Trainer

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny(tmp_path_factory.mktemp("tiny") / "model")


@pytest.mark.slow
def test_qft_lowers_heldout_perplexity_and_writes_questions(tiny, tmp_path):
    cfg = load_config(TrainConfig, CONFIGS / "qft/tiny.yaml",
                      [f"model.path={tiny}", f"output_dir={tmp_path}", "max_steps=80", "checkpoint.every_steps=1000"])
    trainer = Trainer(cfg)
    before = trainer.evaluate()
    result = trainer.train()
    assert result.eval_loss is not None and result.eval_loss < 0.3 * before["loss"]
    assert (tmp_path / "tensorboard").is_dir() and any((tmp_path / "tensorboard").iterdir())

    model = load_pretrained(tmp_path / "hf")  # the exported HF checkpoint
    tokenizer = load_tokenizer(str(tmp_path / "hf"))
    fmt = PROMPT_FORMATS["qwen"]
    prompt = encode_prompt(tokenizer, fmt.pre_query_template)
    out = generate(model, [prompt], max_new_tokens=96, stop_ids=stop_token_ids(tokenizer, fmt))[0]
    text = tokenizer.decode(out)
    assert len(out) < 96, f"greedy output never stopped: {text!r}"
    assert text.isascii() and text.strip().endswith("?") and len(text.split()) >= 8, text
    assert "<|im_start|>" not in text


@pytest.mark.slow
def test_sft_on_scalequest_samples_lowers_response_loss(tiny, tmp_path, shared_data):
    cfg = load_config(TrainConfig, CONFIGS / "sft/tiny.yaml", [
        f"model.path={tiny}", f"output_dir={tmp_path}", "max_steps=25", "checkpoint.every_steps=1000",
        f"data.sources=[{{path: {shared_data / 'scalequest/samples.jsonl'}}}]", "data.max_length=1024",
        "data.eval_count=10",
    ])
    trainer = Trainer(cfg)
    assert trainer.data_stats["records"] == 90 and trainer.data_stats["eval_examples"] == 10
    assert trainer.data_stats["truncated"] > 0  # long solutions are cut at 1024 tokens, and counted
    # The loss mask covers the response (and its end-of-turn) only.
    tokens, mask = trainer.train_batches.examples.tokens[0], trainer.train_batches.examples.loss_masks[0]
    prompt_len = int((mask == 0).sum())
    decoded_prompt = trainer.tokenizer.decode(tokens[:prompt_len].tolist())
    assert decoded_prompt.endswith("<|im_start|>assistant\n") and mask[prompt_len:].all()
    before = trainer.evaluate()
    result = trainer.train()
    assert result.eval_loss < before["loss"] - 1.0
