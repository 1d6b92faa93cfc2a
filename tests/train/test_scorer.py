"""The scalar scorer task (difficulty scorer): last-token readout, regression that learns, export as a score model."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import make_config
from sq_jax.data.sources import DataError
from sq_jax.models.hf_io import load_pretrained
from sq_jax.models.transformer import pool_last_token
from sq_jax.train.losses import segment_last_values
from sq_jax.train.trainer import Trainer

SCORER = {"task": "scorer", "model.head": "score", "optim.lr": 2e-3, "max_steps": 150, "epochs": 4, "data.eval_count": 64,
          "data.sources": [{"path": "procedural:600:4", "field_map": {"score": "steps"}}],
          "data.max_length": 96, "checkpoint.export_hf": True}


def test_segment_last_values_reads_each_segment_at_its_last_token():
    per_token = jnp.arange(8, dtype=jnp.float32)[None, :]
    segments = jnp.asarray([[1, 1, 1, 2, 2, 3, 0, 0]])
    np.testing.assert_array_equal(segment_last_values(per_token, segments, 4), [[2.0, 4.0, 5.0, 0.0]])


def test_scorer_learns_a_difficulty_signal_and_exports_a_score_model(micro_model, tmp_path):
    trainer = Trainer(make_config(micro_model, tmp_path, **SCORER))
    targets = np.asarray(trainer.eval_examples.targets)
    constant_mse = float(np.mean((targets - targets.mean()) ** 2))  # the best a scorer blind to text can do
    result = trainer.train()
    assert result.eval_metrics["loss"] < 0.7 * constant_mse, (result.eval_metrics, constant_mse)

    # The export is a sequence-scoring checkpoint whose last-token score equals the trainer's prediction.
    exported = load_pretrained(tmp_path / "hf")
    assert exported.config.head == "score"
    examples = trainer.eval_examples
    row = examples.assemble([0], 96, 0)
    model = trainer.current_model()
    ours = segment_last_values(model(jnp.asarray(row["tokens"][None]), jnp.asarray(row["positions"][None]),
                                     jnp.asarray(row["segment_ids"][None])).logits[..., 0],
                               jnp.asarray(row["segment_ids"][None]), 16)[0, 0]
    tokens = jnp.asarray(examples.tokens[0][None])
    theirs = pool_last_token(exported(tokens).logits, jnp.ones_like(tokens))[0, 0]
    np.testing.assert_allclose(float(ours), float(theirs), rtol=1e-4, atol=1e-4)


def test_scorer_input_errors(micro_model, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "What is 1 + 1?", "score": 0.5}\n{"question": "What is 2 + 2?", "score": "hard"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: field 'score' is not a number: 'hard'"):
        Trainer(make_config(micro_model, tmp_path / "a", **{**SCORER, "data.sources": [{"path": str(bad)}],
                                                           "data.eval_count": 0}))
    with pytest.raises(ValueError, match="task scorer needs model.head: score"):
        Trainer(make_config(micro_model, tmp_path / "b", **{**SCORER, "model.head": None}))
