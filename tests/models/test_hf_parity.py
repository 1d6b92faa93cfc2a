"""Logit parity with `transformers` (torch CPU, float32) for every family and variant, and export round trips."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import hf_tiny
from sq_jax.models.hf_io import load_pretrained, save_pretrained
from sq_jax.models.transformer import pool_last_token

TOL = 1e-4


def ours(model, ids, mask, positions=None):
    if positions is None:
        positions = np.broadcast_to(np.arange(ids.shape[1], dtype=np.int32), ids.shape)
    out = model(jnp.asarray(ids), jnp.asarray(positions), jnp.asarray(mask))
    return np.asarray(out.logits)


def assert_close_on_tokens(a, b, mask):
    real = mask.astype(bool)
    diff = np.abs(a[real] - b[real]).max()
    assert diff <= TOL, f"max abs logit diff {diff}"


@pytest.mark.parametrize("variant", sorted(hf_tiny.VARIANTS))
def test_causal_lm_logits_match_transformers(variant, tmp_path):
    torch_model = hf_tiny.make_model(variant)
    hf_tiny.save(torch_model, tmp_path / "hf")
    ids, mask = hf_tiny.batch()
    expected = hf_tiny.torch_logits(torch_model, ids, mask)
    model = load_pretrained(tmp_path / "hf")
    got = ours(model, ids, mask)
    assert_close_on_tokens(got, expected, mask)
    assert np.abs(expected).max() > 0.1  # not a degenerate comparison


def test_left_padding_with_positions_matches(tmp_path):
    torch_model = hf_tiny.make_model("qwen2_untied")
    hf_tiny.save(torch_model, tmp_path / "hf")
    ids, mask = hf_tiny.batch(seed=3)
    ids, mask = ids[:, ::-1].copy(), mask[:, ::-1].copy()  # left padded
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)
    expected = hf_tiny.torch_logits(torch_model, ids, mask, positions)
    got = ours(load_pretrained(tmp_path / "hf"), ids, mask, positions)
    assert_close_on_tokens(got, expected, mask)


def test_sliding_window_is_really_applied(tmp_path):
    # A window of 4 must change logits of late tokens relative to full attention, in both implementations.
    torch_model = hf_tiny.make_model("mistral_window")
    hf_tiny.save(torch_model, tmp_path / "hf")
    ids, mask = hf_tiny.batch()
    model = load_pretrained(tmp_path / "hf")
    windowed = ours(model, ids, mask)
    model.config = model.config.replace(sliding_window=None)
    for layer in model.layers:
        layer.attn.cfg = model.config
    full = ours(model, ids, mask)
    assert np.abs(windowed[0, :4] - full[0, :4]).max() < 1e-5
    assert np.abs(windowed[0, 8:] - full[0, 8:]).max() > 1e-3


@pytest.mark.parametrize("variant", sorted(hf_tiny.SCORE_VARIANTS))
def test_score_head_matches_sequence_classification(variant, tmp_path):
    torch_model = hf_tiny.make_model(variant)
    hf_tiny.save(torch_model, tmp_path / "hf")
    ids, mask = hf_tiny.batch(seed=1)
    expected = hf_tiny.torch_logits(torch_model, ids, mask)  # [b, num_labels], pooled at last non-pad token
    model = load_pretrained(tmp_path / "hf")
    assert model.config.head == "score"
    pooled = np.asarray(pool_last_token(jnp.asarray(ours(model, ids, mask)), jnp.asarray(mask)))
    assert pooled.shape == expected.shape
    np.testing.assert_allclose(pooled, expected, atol=TOL)


def test_internlm2_packed_wqkv_matches_llama(tmp_path):
    torch_model = hf_tiny.make_model("llama_gqa")
    tensors, config = hf_tiny.llama_to_internlm2(torch_model)
    hf_tiny.write_checkpoint(tmp_path / "internlm2", tensors, config)
    ids, mask = hf_tiny.batch()
    expected = hf_tiny.torch_logits(torch_model, ids, mask)
    model = load_pretrained(tmp_path / "internlm2")
    assert model.config.family == "internlm2"
    assert_close_on_tokens(ours(model, ids, mask), expected, mask)
    # Export writes the packed layout back, bit for bit.
    save_pretrained(model, tmp_path / "export", dtype="float32")
    from safetensors.numpy import load_file

    exported = load_file(str(tmp_path / "export" / "model.safetensors"))
    assert set(exported) == set(tensors)
    for name, value in tensors.items():
        np.testing.assert_array_equal(exported[name], value, err_msg=name)


def test_internlm2_reward_v_head(tmp_path):
    torch_model = hf_tiny.make_model("llama_gqa")
    tensors, config = hf_tiny.llama_to_internlm2(torch_model, {"architectures": ["InternLM2ForRewardModel"]})
    tensors.pop("output.weight")
    v_head = np.random.default_rng(0).normal(size=(1, 32)).astype(np.float32)
    tensors["v_head.weight"] = v_head
    hf_tiny.write_checkpoint(tmp_path / "reward", tensors, config)
    ids, mask = hf_tiny.batch(seed=2)
    with torch.no_grad():
        hidden = torch_model.model(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask))
    hidden = hidden.last_hidden_state.numpy()
    last = mask.sum(axis=1) - 1
    expected = hidden[np.arange(len(ids)), last] @ v_head.T
    model = load_pretrained(tmp_path / "reward")
    assert model.config.head == "score"
    got = np.asarray(pool_last_token(jnp.asarray(ours(model, ids, mask)), jnp.asarray(mask)))
    np.testing.assert_allclose(got, expected, atol=TOL)


@pytest.mark.parametrize("variant", ["qwen2_tied", "llama3_rope", "mistral_window"])
def test_export_round_trip_through_transformers(variant, tmp_path):
    torch_model = hf_tiny.make_model(variant)
    hf_tiny.save(torch_model, tmp_path / "hf")
    ids, mask = hf_tiny.batch()
    expected = hf_tiny.torch_logits(torch_model, ids, mask)
    model = load_pretrained(tmp_path / "hf")
    save_pretrained(model, tmp_path / "export", dtype="float32", max_shard_bytes=40_000)
    files = sorted(p.name for p in (tmp_path / "export").glob("*.safetensors"))
    assert len(files) > 1 and (tmp_path / "export" / "model.safetensors.index.json").is_file()
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "export", attn_implementation="eager")
    assert type(reloaded) is type(torch_model)
    got = hf_tiny.torch_logits(reloaded.eval(), ids, mask)
    assert_close_on_tokens(got, expected, mask)
    # And our own loader reads the sharded export (index file) back to the same logits.
    assert_close_on_tokens(ours(load_pretrained(tmp_path / "export"), ids, mask), expected, mask)


def test_score_export_round_trip(tmp_path):
    torch_model = hf_tiny.make_model("qwen2_score")
    hf_tiny.save(torch_model, tmp_path / "hf")
    ids, mask = hf_tiny.batch()
    expected = hf_tiny.torch_logits(torch_model, ids, mask)
    save_pretrained(load_pretrained(tmp_path / "hf"), tmp_path / "export", dtype="float32")
    reloaded = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "export")
    np.testing.assert_allclose(hf_tiny.torch_logits(reloaded.eval(), ids, mask), expected, atol=TOL)


def test_bf16_checkpoint_loads_and_exports_bf16(tmp_path):
    torch_model = hf_tiny.make_model("qwen2_untied").to(torch.bfloat16)
    hf_tiny.save(torch_model, tmp_path / "hf")
    model = load_pretrained(tmp_path / "hf", param_dtype="bfloat16", dtype="bfloat16")
    assert model.layers[0].attn.q_proj[...].dtype == jnp.bfloat16
    ref = torch_model.state_dict()["model.layers.0.self_attn.q_proj.weight"].float().numpy()
    ours_q = np.asarray(model.layers[0].attn.q_proj[...].astype(jnp.float32))
    np.testing.assert_array_equal(ours_q.reshape(ref.shape), ref)  # [heads, head_dim, embed]: HF's rows
    save_pretrained(model, tmp_path / "export")
    assert json.loads((tmp_path / "export" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "export", dtype=torch.bfloat16)
    assert reloaded.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    np.testing.assert_array_equal(reloaded.model.layers[0].self_attn.q_proj.weight.detach().float().numpy(), ref)
