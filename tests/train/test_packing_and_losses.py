"""Packing plans, row assembly and the LM loss: every example once, no attention or loss across examples."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sq_jax.data.packing import assemble_row, plan_packing
from sq_jax.models.config import ModelConfig
from sq_jax.models.init import init_model
from sq_jax.train.losses import masked_cross_entropy_sum, next_token_targets, token_cross_entropy


def test_plan_puts_every_example_in_exactly_one_row_within_length():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 60, 500)
    order = rng.permutation(500)
    rows = plan_packing(lengths, order, 64, open_bins=8)
    flat = sorted(i for r in rows for i in r)
    assert flat == list(range(500))
    assert all(sum(lengths[i] for i in r) <= 64 for r in rows)
    next_fit = plan_packing(lengths, order, 64, open_bins=1)
    assert len(rows) < 0.9 * len(next_fit)  # first fit over 8 open rows packs far tighter than next fit
    assert lengths.sum() / (64 * len(rows)) > 0.85


def test_plan_errors_and_full_rows():
    assert plan_packing([4, 4, 2], [0, 1, 2], 4) == [[0], [1], [2]]
    with pytest.raises(ValueError, match="example 1 has 9 tokens, more than the row length 8"):
        plan_packing([3, 9], [0, 1], 8)
    with pytest.raises(ValueError, match="example 0 is empty"):
        plan_packing([0], [0], 8)


def test_assemble_row_segments_and_positions():
    row = assemble_row([(np.array([5, 6, 7]), np.array([1, 1, 1])), (np.array([8, 9]), np.array([0, 1]))], 7, pad_id=3)
    assert row["tokens"].tolist() == [5, 6, 7, 8, 9, 3, 3]
    assert row["segment_ids"].tolist() == [1, 1, 1, 2, 2, 0, 0]
    assert row["positions"].tolist() == [0, 1, 2, 0, 1, 0, 0]
    assert row["loss_mask"].tolist() == [1, 1, 1, 0, 1, 0, 0]


def test_targets_never_cross_a_boundary():
    tokens = jnp.asarray([[5, 6, 7, 8, 9, 3, 3]])
    segments = jnp.asarray([[1, 1, 1, 2, 2, 0, 0]])
    mask = jnp.asarray([[1, 1, 1, 1, 1, 0, 0]])
    targets, weights = next_token_targets(tokens, segments, mask)
    assert targets[0, :4].tolist() == [6, 7, 8, 9]
    # 7->8 crosses from example 1 to 2, 9->pad leaves example 2: both weightless.
    assert weights[0].tolist() == [1, 1, 0, 1, 0, 0, 0]


def test_masked_cross_entropy_matches_numpy():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 5, 11)).astype(np.float32)
    targets = rng.integers(0, 11, (2, 5))
    weights = rng.integers(0, 2, (2, 5)).astype(np.float32)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    total, count = masked_cross_entropy_sum(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights))
    np.testing.assert_allclose(float(total), (nll * weights).sum(), rtol=1e-5)
    assert float(count) == weights.sum()


def test_packed_logits_and_token_losses_equal_example_alone():
    cfg = ModelConfig(family="qwen2", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                      num_heads=4, num_kv_heads=2, head_dim=8, qkv_bias=True)
    model = init_model(cfg, seed=0)
    rng = np.random.default_rng(2)
    examples = [(rng.integers(1, 64, n).astype(np.int32), np.ones(n, np.int32)) for n in (6, 9, 4)]
    row = assemble_row(examples, 24)
    batch = {k: jnp.asarray(v[None]) for k, v in row.items()}

    @jax.jit
    def losses(tokens, positions, segment_ids, loss_mask):
        logits = model(tokens, positions, segment_ids).logits
        targets, weights = next_token_targets(tokens, segment_ids, loss_mask)
        return logits, token_cross_entropy(logits, targets) * weights

    packed_logits, packed_losses = losses(**batch)
    offset = 0
    for tokens, mask in examples:
        alone = assemble_row([(tokens, mask)], 24)
        alone_logits, alone_losses = losses(**{k: jnp.asarray(v[None]) for k, v in alone.items()})
        n = len(tokens)
        np.testing.assert_allclose(packed_logits[0, offset : offset + n], alone_logits[0, :n], atol=1e-5)
        np.testing.assert_allclose(packed_losses[0, offset : offset + n], alone_losses[0, :n], atol=1e-5)
        assert float(packed_losses[0, offset + n - 1]) == 0.0  # the last token predicts nothing
        offset += n


def _examples(lengths: list[int], first_id: int = 0):
    from sq_jax.data.batching import TokenizedExamples

    tokens = [np.full(n, first_id + i + 1, np.int32) for i, n in enumerate(lengths)]
    return TokenizedExamples(tokens, [np.ones(n, np.int32) for n in lengths],
                             [f"ex{first_id + i}" for i in range(len(lengths))], {"records": len(lengths)})


def test_data_shares_give_the_same_batches_in_one_process_as_in_two():
    from sq_jax.data.batching import PackedBatches, concat_examples

    rng = np.random.default_rng(0)
    shares = [_examples(rng.integers(3, 20, 40).tolist()), _examples(rng.integers(3, 20, 37).tolist(), 100)]
    pack = dict(seq_len=32, epochs=2, seed=5, pad_id=0)
    # Two processes: each packs its own share into half of every batch.
    per_process = [list(PackedBatches(s, rows_per_batch=2, **pack).iterator()) for s in shares]
    # One process holding both shares: the same rows, share 0's then share 1's, in every batch.
    joined = concat_examples(shares)
    groups = [range(0, 40), range(40, 77)]
    one = PackedBatches(joined, rows_per_batch=4, groups=groups, **pack)
    assert one.num_batches == min(len(b) for b in per_process)
    for b, batch in enumerate(one.iterator()):
        for key in ("tokens", "segment_ids", "positions"):
            expected = np.concatenate([per_process[0][b][key], per_process[1][b][key]])
            np.testing.assert_array_equal(batch[key], expected)
    assert joined.ids[40] == "ex100" and joined.stats == {"records": 77}
    with pytest.raises(ValueError, match="do not split evenly over 2 data shares"):
        PackedBatches(joined, rows_per_batch=3, groups=groups, **pack)
