"""DPO-family losses against numpy written from the papers' formulas, gradient signs, and completion log-probs of
packed, padded, sharded rows against a plain per-example forward pass."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sq_jax.data.pairs import PreferencePairs
from sq_jax.data.sources import Record
from sq_jax.models.hf_io import load_pretrained
from sq_jax.parallel.mesh import make_mesh
from sq_jax.train.losses import completion_logps, preference_losses
from sq_jax.train.tasks.qpo import pair_logps

RNG = np.random.default_rng(7)
POLICY_CHOSEN = RNG.normal(-40, 8, 16)
POLICY_REJECTED = RNG.normal(-42, 8, 16)
REF_CHOSEN = POLICY_CHOSEN + RNG.normal(0, 3, 16)
REF_REJECTED = POLICY_REJECTED + RNG.normal(0, 3, 16)


def np_log_sigmoid(x):
    return -np.log1p(np.exp(-x))


def numpy_loss(kind, beta, smoothing=0.0, reference_free=False):
    rc, rr = (0.0, 0.0) if reference_free else (REF_CHOSEN, REF_REJECTED)
    h = (POLICY_CHOSEN - rc) - (POLICY_REJECTED - rr)
    if kind == "sigmoid":  # DPO eq. 7; conservative DPO mixes in the flipped label with weight `smoothing`
        return -(1 - smoothing) * np_log_sigmoid(beta * h) - smoothing * np_log_sigmoid(-beta * h)
    if kind == "ipo":  # IPO eq. 17: (h - 1 / (2 tau))^2
        return (h - 1 / (2 * beta)) ** 2
    return np.maximum(0.0, 1 - beta * h)  # SLiC hinge


CASES = [("sigmoid", 0.1, 0.0, False), ("sigmoid", 0.5, 0.2, False), ("sigmoid", 0.1, 0.0, True),
         ("sigmoid", 0.1, 0.3, True), ("ipo", 0.1, 0.0, False), ("ipo", 0.5, 0.0, True),
         ("hinge", 0.1, 0.0, False), ("hinge", 0.05, 0.0, True)]


@pytest.mark.parametrize("kind,beta,smoothing,reference_free", CASES)
def test_losses_and_metrics_equal_numpy(kind, beta, smoothing, reference_free):
    losses, m = preference_losses(
        jnp.asarray(POLICY_CHOSEN), jnp.asarray(POLICY_REJECTED), jnp.asarray(REF_CHOSEN), jnp.asarray(REF_REJECTED),
        beta=beta, loss_type=kind, label_smoothing=smoothing, reference_free=reference_free,
    )
    expected = numpy_loss(kind, beta, smoothing, reference_free)
    np.testing.assert_allclose(np.asarray(losses), expected, rtol=1e-5, atol=1e-5)
    rc, rr = (0.0, 0.0) if reference_free else (REF_CHOSEN, REF_REJECTED)
    np.testing.assert_allclose(m["chosen_reward"], beta * (POLICY_CHOSEN - rc), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(m["rejected_reward"], beta * (POLICY_REJECTED - rr), rtol=1e-5, atol=1e-5)
    accuracy = (beta * (POLICY_CHOSEN - rc) > beta * (POLICY_REJECTED - rr)).astype(np.float32)
    np.testing.assert_array_equal(m["reward_accuracy"], accuracy)
    assert 0 < accuracy.mean() < 1  # the fixture has pairs on both sides, so the test can tell
    np.testing.assert_allclose(m["reward_margin"], beta * ((POLICY_CHOSEN - rc) - (POLICY_REJECTED - rr)),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(m["policy_chosen_logp"], POLICY_CHOSEN, rtol=1e-6)
    np.testing.assert_allclose(m["reference_rejected_logp"], np.broadcast_to(rr, (16,)), rtol=1e-6)


@pytest.mark.parametrize("kind", ["sigmoid", "ipo", "hinge"])
def test_gradients_push_chosen_up_and_rejected_down(kind):
    # Policy equal to the reference: every loss wants a larger chosen and a smaller rejected log-prob.
    def total(pc, pr):
        losses, _ = preference_losses(pc, pr, jnp.full(3, -10.0), jnp.full(3, -12.0), beta=0.1, loss_type=kind)
        return jnp.sum(losses)

    g_chosen, g_rejected = jax.grad(total, argnums=(0, 1))(jnp.full(3, -10.0), jnp.full(3, -12.0))
    assert np.isfinite(g_chosen).all() and np.isfinite(g_rejected).all()
    assert (g_chosen < 0).all() and (g_rejected > 0).all()
    np.testing.assert_allclose(g_chosen, -g_rejected)
    if kind == "sigmoid":
        np.testing.assert_allclose(g_chosen, -0.1 * 0.5, rtol=1e-6)  # -beta * sigmoid(0)


def test_bad_loss_settings_are_rejected():
    args = [jnp.zeros(2)] * 4
    with pytest.raises(ValueError, match="unknown preference loss 'kto'"):
        preference_losses(*args, beta=0.1, loss_type="kto")
    with pytest.raises(ValueError, match="label_smoothing only applies to the sigmoid loss"):
        preference_losses(*args, beta=0.1, loss_type="ipo", label_smoothing=0.1)
    with pytest.raises(ValueError, match="beta must be > 0"):
        preference_losses(*args, beta=0.0)


def plain_completion_logp(model, prompt: list[int], completion: list[int]) -> float:
    """log p(completion | prompt) from one unpacked, unpadded forward pass, summed in numpy float64."""
    tokens = np.asarray([prompt + completion], np.int32)
    logits = np.asarray(model(jnp.asarray(tokens)).logits[0], np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    return float(sum(logp[len(prompt) + i - 1, t] for i, t in enumerate(completion)))


def test_batched_padded_sharded_pair_logps_equal_per_example_forward(micro_model):
    rng = np.random.default_rng(3)
    prompts = [rng.integers(3, 500, n).tolist() for n in (5, 9, 2, 7, 4)]
    chosen = [rng.integers(3, 500, n).tolist() for n in (6, 3, 11, 2, 8)]
    rejected = [rng.integers(3, 500, n).tolist() for n in (4, 10, 5, 9, 1)]
    pairs = PreferencePairs([np.asarray(p) for p in prompts], [np.asarray(c) for c in chosen],
                            [np.asarray(r) for r in rejected], [str(i) for i in range(5)], {}, max_pairs=3)
    rows = [pairs.assemble(r, 96, pad_id=0) for r in ([0, 1, 2], [3], [4], [])]  # packed, padded, empty rows
    batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}

    plain = load_pretrained(micro_model)
    expected = np.array([[plain_completion_logp(plain, prompts[i], c[i]) for c in (chosen, rejected)]
                         for i in range(5)])
    mesh = make_mesh(1, 4, 2)
    sharded = load_pretrained(micro_model, mesh=mesh)
    got = np.asarray(jax.jit(lambda b: pair_logps(sharded, b, 3))({k: jnp.asarray(v) for k, v in batch.items()}))
    assert got.shape == (4, 3, 2)
    for row, (members) in enumerate(([0, 1, 2], [3], [4], [])):
        for slot in range(3):
            if slot < len(members):
                np.testing.assert_allclose(got[row, slot], expected[members[slot]], rtol=1e-5, atol=1e-4)
            else:
                np.testing.assert_array_equal(got[row, slot], 0.0)  # empty slots sum nothing


def test_completion_logps_ignores_prompt_padding_and_other_segments():
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(1, 6, 5)), jnp.float32)
    tokens = jnp.asarray([[1, 2, 3, 4, 2, 0]])
    segments = jnp.asarray([[1, 1, 1, 2, 2, 0]])
    mask = jnp.asarray([[0, 1, 1, 0, 1, 0]])
    got = np.asarray(completion_logps(logits, tokens, segments, mask, 3))
    logp = np.asarray(jax.nn.log_softmax(logits[0]))
    np.testing.assert_allclose(got[0], [logp[0, 2] + logp[1, 3], logp[3, 2], 0.0], rtol=1e-6)


def test_pairs_keep_both_sides_in_one_row_and_count_drops():
    from sq_jax.data.pairs import tokenize_pairs

    records = [Record({"chosen": c, "rejected": r}, "pairs.jsonl", i + 1) for i, (c, r) in enumerate(
        [("a b c", "a b"), ("", "x"), ("same", " same "), ("long " * 30, "short"), ("d e", "f")])]
    encode = lambda d: ([1, 2], [ord(ch) for ch in d["chosen"]][:200], [ord(ch) for ch in d["rejected"]])  # noqa
    pairs = tokenize_pairs(records, encode, max_length=40, overlong="truncate", max_pairs=2)
    assert pairs.stats == {"records": 5, "truncated": 1, "dropped_overlong": 0, "dropped_empty_side": 1,
                           "dropped_identical": 1, "pairs": 3, "examples": 3}
    assert len(pairs.chosen[1]) == 38  # cut to max_length - prompt
    dropped = tokenize_pairs(records, encode, max_length=40, overlong="drop", max_pairs=2)
    assert dropped.stats["dropped_overlong"] == 1 and len(dropped) == 2
    row = pairs.assemble([0, 2], 120, pad_id=0)
    assert row["example_index"].tolist() == [0, 2]
    assert sorted(set(row["segment_ids"].tolist())) == [0, 1, 2, 3, 4]
    assert row["loss_mask"][row["segment_ids"] == 1].tolist() == [0, 0] + [1] * 5  # loss on the completion only
