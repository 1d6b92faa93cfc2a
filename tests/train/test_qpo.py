"""QPO on the one training loop: reference modes agree, sharding invariance, resume after SIGKILL, bad pair data,
and a tiny model that learns to prefer the solvable question."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import base_config, kill_then_resume, make_config, train_losses, write_config
from sq_jax.configlib import load_config
from sq_jax.data.sources import DataError
from sq_jax.toy.tiny import build_tiny
from sq_jax.train.config import TrainConfig
from sq_jax.train.trainer import Trainer

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
QPO = {"task": "qpo", "data.sources": [{"path": "procedural-pairs:400:3"}], "data.max_length": 64,
       "data.eval_count": 24, "preference.max_pairs_per_row": 3, "optim.lr": 1e-3, "max_steps": 8}


def write_pairs(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_precomputed_and_online_reference_give_the_same_losses(micro_model, tmp_path):
    pre = Trainer(make_config(micro_model, tmp_path / "pre", **QPO))
    cache = tmp_path / "pre" / "reference_logps" / "train-0.npz"
    assert cache.is_file() and pre.train_batches.examples.reference_logps.shape == (len(pre.train_batches.examples), 2)
    pre_result = pre.train()
    online = Trainer(make_config(micro_model, tmp_path / "online", **QPO, **{"preference.reference": "online"}))
    assert not (tmp_path / "online" / "reference_logps").exists()  # nothing precomputed: scored per batch
    online_result = online.train()
    a, b = train_losses(tmp_path / "pre"), train_losses(tmp_path / "online")
    assert sorted(a) == list(range(1, 9))
    np.testing.assert_allclose([a[s] for s in a], [b[s] for s in a], atol=1e-5)
    for key in ("loss", "reward_accuracy", "reward_margin", "policy_chosen_logp"):
        np.testing.assert_allclose(pre_result.eval_metrics[key], online_result.eval_metrics[key], atol=1e-4)
    held_out = pre.data_stats
    assert held_out["eval_records"] == 24 and pre_result.eval_metrics["pairs"] == held_out["eval_pairs"] >= 20
    assert a[8] < a[1]  # it trains


@pytest.mark.slow
def test_same_losses_on_two_meshes_and_reference_cache_reused(micro_model, tmp_path):
    curves = {}
    for shape in [(8, 1, 1), (1, 4, 2)]:
        out = tmp_path / "x".join(map(str, shape))
        Trainer(make_config(micro_model, out, mesh=dict(zip(("data", "fsdp", "tensor"), shape)), **QPO)).train()
        curves[shape] = train_losses(out)
    np.testing.assert_allclose(list(curves[(1, 4, 2)].values()), list(curves[(8, 1, 1)].values()), atol=1e-5)

    # A second run in the same directory reads the stored reference log-probs instead of recomputing them.
    cache = tmp_path / "8x1x1" / "reference_logps" / "train-0.npz"
    before = cache.stat().st_mtime_ns
    again = Trainer(make_config(micro_model, tmp_path / "8x1x1", mesh={"data": 8, "fsdp": 1, "tensor": 1}, **QPO))
    assert cache.stat().st_mtime_ns == before
    np.testing.assert_array_equal(np.load(cache)["logps"], again.train_batches.examples.reference_logps)


@pytest.mark.slow
def test_qpo_resumes_after_sigkill_with_the_same_losses(micro_model, tmp_path):
    overrides = {**QPO, "max_steps": None, "data.sources": [{"path": "procedural-pairs:260:3"}],
                 "checkpoint.every_steps": 1, "checkpoint.keep": 2}
    # The uninterrupted run needs no checkpoints (their cadence is outside the resume hash; losses are the same).
    straight = Trainer(make_config(micro_model, tmp_path / "straight",
                                   **{**overrides, "checkpoint.every_steps": 1000}))
    total = straight.total_steps
    straight.train()
    expected = train_losses(tmp_path / "straight")
    assert total >= 20 and len(expected) == total

    config = write_config(tmp_path / "qpo.yaml", base_config(micro_model, tmp_path / "killed", **overrides))
    resumed = kill_then_resume([sys.executable, "-m", "sq_jax.cli", "qpo", str(config)], tmp_path / "killed",
                               after_lines=6)
    summary = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert summary["steps"] == total and summary["eval"]["pairs"] == summary["data"]["eval_pairs"]
    got = train_losses(tmp_path / "killed")
    np.testing.assert_allclose([got[s] for s in range(1, total + 1)], [expected[s] for s in range(1, total + 1)],
                               atol=1e-6)


def test_bad_pair_data_is_dropped_and_counted_or_rejected_clearly(micro_model, tmp_path):
    bad = {**QPO, "data.eval_count": 0}
    good = [{"chosen": f"Ann has {i} pens and buys {i + 2} more. How many pens does she have?",
             "rejected": f"Ann has pens and buys {i + 2} more. How many pens does she have?"} for i in range(30)]
    rows = good + [{"chosen": "  ", "rejected": "What is 2 + 2?"}, {"chosen": "What is 3 + 3?", "rejected": ""},
                   {"chosen": "What is 4 + 4?", "rejected": " What is 4 + 4? "}]
    path = write_pairs(tmp_path / "pairs.jsonl", rows)
    trainer = Trainer(make_config(micro_model, tmp_path / "ok", **{**bad, "data.sources": [{"path": path}]}))
    stats = trainer.data_stats
    assert (stats["dropped_empty_side"], stats["dropped_identical"], stats["pairs"]) == (2, 1, 30)
    # Questions end with the generator's end-of-question text, exactly as QFT taught it.
    pairs = trainer.train_batches.examples
    end = trainer.tokenizer(trainer.prompt_format.query_end, add_special_tokens=False)["input_ids"]
    assert pairs.chosen[0][-len(end):].tolist() == end and pairs.rejected[0][-len(end):].tolist() == end
    prompt = trainer.tokenizer.decode(pairs.prompts[0].tolist())
    assert prompt == trainer.prompt_format.pre_query_template  # no prompt field: the pre-query template

    missing = write_pairs(tmp_path / "missing.jsonl", good[:3] + [{"chosen": "What is 1 + 1?"}])
    with pytest.raises(DataError, match=r"missing.jsonl:4: required field 'rejected' is missing"):
        Trainer(make_config(micro_model, tmp_path / "m", **{**bad, "data.sources": [{"path": missing}]}))

    llama_prompt = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
    foreign = write_pairs(tmp_path / "foreign.jsonl", good[:2] + [{**good[2], "prompt": llama_prompt}])
    with pytest.raises(DataError, match=r"foreign.jsonl:3: field 'prompt': .*llama3 template marker.*qwen format"):
        Trainer(make_config(micro_model, tmp_path / "f", **{**bad, "data.sources": [{"path": foreign}]}))

    plain = write_pairs(tmp_path / "plain.jsonl", [{**good[0], "prompt": "Write a math question."}])
    with pytest.raises(DataError, match=r"plain.jsonl:1: field 'prompt': prompt has none of the qwen"):
        Trainer(make_config(micro_model, tmp_path / "p", **{**bad, "data.sources": [{"path": plain}]}))

    with pytest.raises(ValueError, match="label_smoothing applies to the sigmoid loss only"):
        make_config(micro_model, tmp_path / "x", **{**QPO, "preference.loss_type": "hinge",
                                                    "preference.label_smoothing": 0.1})


@pytest.mark.slow
def test_tiny_model_learns_to_prefer_solvable_questions(tmp_path):
    tiny = build_tiny(tmp_path / "tiny")
    cfg = load_config(TrainConfig, CONFIGS / "qpo/tiny.yaml", [
        f"model.path={tiny}", f"output_dir={tmp_path / 'run'}", "checkpoint.every_steps=1000", "tensorboard=false",
        "max_steps=20",
    ])
    trainer = Trainer(cfg)
    before = trainer.evaluate()
    assert before["reward_accuracy"] == 0.0 and before["pairs"] == 100  # policy == reference: no margin yet
    result = trainer.train()
    after = result.eval_metrics
    assert after["reward_accuracy"] >= 0.8, after
    assert after["reward_margin"] > 1.0
    assert (after["policy_chosen_logp"] - after["policy_rejected_logp"]) > \
        (before["policy_chosen_logp"] - before["policy_rejected_logp"]) + 10.0
    assert (tmp_path / "run" / "hf" / "config.json").is_file()  # the tuned generator is exported for sampling
