"""The one training loop: sharding invariance, gradient accumulation, resume after SIGKILL, bad inputs."""

from __future__ import annotations

import json
import sys
from collections import Counter

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from conftest import base_config, kill_then_resume, make_config, train_losses, write_config
from sq_jax.data.sources import DataError
from sq_jax.train.trainer import Trainer


losses_of = train_losses


@pytest.mark.slow
def test_same_losses_on_every_mesh_and_params_sharded_as_rules_say(micro_model, tmp_path):
    curves = {}
    for shape in [(8, 1, 1), (2, 2, 2), (1, 4, 2), (1, 1, 8)]:
        out = tmp_path / "x".join(map(str, shape))
        mesh = dict(zip(("data", "fsdp", "tensor"), shape))
        trainer = Trainer(make_config(micro_model, out, mesh=mesh))
        q = trainer.params["layers"][0]["attn"]["q_proj"][...]
        assert q.sharding.spec == P("tensor", None, "fsdp")
        assert q.addressable_shards[0].data.shape == (8 // shape[2], 8, 64 // shape[1])
        up = trainer.params["layers"][1]["mlp"]["up_proj"][...]
        assert up.addressable_shards[0].data.shape == (128 // shape[2], 64 // shape[1])
        result = trainer.train()
        assert result.steps == 20
        curves[shape] = losses_of(out)
        # Optimizer state mirrors the param layout (no replicated Adam moments).
        mu = jax.tree.leaves(trainer.opt_state)[1]
        assert len({s.data.shape for s in mu.addressable_shards}) == 1
    reference = np.array([curves[(8, 1, 1)][s] for s in range(1, 21)])
    assert reference[-1] < reference[0] - 0.5  # it learns
    for shape, curve in curves.items():
        np.testing.assert_allclose([curve[s] for s in range(1, 21)], reference, atol=1e-5, err_msg=str(shape))


def test_gradient_accumulation_equals_one_big_batch(micro_model, tmp_path):
    common = dict(max_steps=3, **{"mesh.data": 2, "mesh.fsdp": 1, "mesh.tensor": 4})
    big = Trainer(make_config(micro_model, tmp_path / "big", global_batch_size=8, **common))
    big.train()
    accum = Trainer(make_config(micro_model, tmp_path / "accum", global_batch_size=8, micro_batch_size=2, **common))
    assert accum.cfg.grad_accum_steps == 4
    accum.train()
    # Same math, other summation order: float32 losses of ~6 agree to a few ulp (3e-7 relative seen).
    np.testing.assert_allclose(list(losses_of(tmp_path / "accum").values()),
                               list(losses_of(tmp_path / "big").values()), rtol=1e-6, atol=0)
    for a, b in zip(jax.tree.leaves(accum.params), jax.tree.leaves(big.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-6)


@pytest.mark.slow
def test_resume_after_sigkill_reproduces_losses_and_sees_each_example_once(micro_model, tmp_path):
    overrides = {"max_steps": None, "epochs": 1, "log_example_ids": True,
                 "checkpoint.every_steps": 1, "checkpoint.keep": 2, "data.sources": [{"path": "procedural:240:5"}]}
    # The uninterrupted run needs no checkpoints (their cadence is outside the resume hash; losses are the same).
    straight = Trainer(make_config(micro_model, tmp_path / "straight",
                                   **{**overrides, "checkpoint.every_steps": 1000}))
    total = straight.total_steps
    straight.train()
    expected = losses_of(tmp_path / "straight")
    assert len(expected) == total >= 20

    config = write_config(tmp_path / "resume.yaml", base_config(micro_model, tmp_path / "killed", **overrides))
    kill_then_resume([sys.executable, "-m", "sq_jax.cli", "qft", str(config)], tmp_path / "killed", after_lines=8)
    got = losses_of(tmp_path / "killed")
    assert sorted(got) == list(range(1, total + 1))
    np.testing.assert_allclose([got[s] for s in range(1, total + 1)], [expected[s] for s in range(1, total + 1)],
                               atol=1e-6)
    # Data order: the last record of each step (resumed steps override) covers every example exactly once.
    per_step = {}
    for line in (tmp_path / "killed" / "example_ids.jsonl").read_text().splitlines():
        row = json.loads(line)
        per_step[row["step"]] = row["ids"]
    seen = Counter(i for ids in per_step.values() for i in ids)
    straight_ids = {json.loads(l)["step"]: json.loads(l)["ids"]
                    for l in (tmp_path / "straight" / "example_ids.jsonl").read_text().splitlines()}
    assert per_step == straight_ids
    assert max(seen.values()) == 1
    assert len(seen) == sum(len(v) for v in straight_ids.values())


def test_bad_inputs_are_clear(micro_model, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "What is 2 + 2?"}\n{"question": oops}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: malformed JSON"):
        Trainer(make_config(micro_model, tmp_path / "o1", **{"data.sources": [{"path": str(bad)}]}))

    missing = tmp_path / "missing.jsonl"
    missing.write_text('{"query": "q", "response": "r"}\n{"response": "r2"}\n')
    with pytest.raises(DataError, match=r"missing.jsonl:2: required field 'query' is missing"):
        Trainer(make_config(micro_model, tmp_path / "o2", task="sft", **{"data.sources": [{"path": str(missing)}]}))

    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match=r"empty.jsonl: no records found"):
        Trainer(make_config(micro_model, tmp_path / "o3", **{"data.sources": [{"path": str(empty)}]}))

    with pytest.raises(ValueError, match=r"micro_batch_size=6 is not divisible by the data-parallel size 4"):
        Trainer(make_config(micro_model, tmp_path / "o4", global_batch_size=6,
                            mesh={"data": 4, "fsdp": 1, "tensor": 2}))


def test_overlong_examples_are_truncated_or_dropped_and_counted(micro_model, tmp_path):
    long = tmp_path / "long.jsonl"
    rows = [{"question": "How many apples? " * 40}] + [{"question": f"What is {i} plus {i}?"} for i in range(40)]
    long.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    common = {"data.sources": [{"path": str(long)}], "max_steps": 1}
    truncated = Trainer(make_config(micro_model, tmp_path / "t", **common))
    assert truncated.data_stats["truncated"] == 1 and truncated.data_stats["examples"] == 41
    assert max(len(t) for t in truncated.train_batches.examples.tokens) == 64
    dropped = Trainer(make_config(micro_model, tmp_path / "d", **common, **{"data.overlong": "drop"}))
    assert dropped.data_stats["dropped_overlong"] == 1 and dropped.data_stats["examples"] == 40
