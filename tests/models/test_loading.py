"""Loading onto a device mesh, and the errors a user sees for bad checkpoints, configs and meshes."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import hf_tiny
from sq_jax.models.config import ConfigError, load_config
from sq_jax.models.hf_io import CheckpointError, load_pretrained, save_pretrained
from sq_jax.parallel.mesh import make_mesh
from sq_jax.parallel.sharding import ShardingError


@pytest.fixture(scope="module")
def wide_checkpoint(tmp_path_factory):
    """8 heads / 4 kv heads so tensor parallelism of 4 divides every sharded axis."""
    import transformers

    path = tmp_path_factory.mktemp("wide") / "hf"
    cfg = transformers.Qwen2Config(
        **{**hf_tiny.BASE, "num_attention_heads": 8, "num_key_value_heads": 4, "hidden_size": 64, "head_dim": 8}
    )
    torch_model = transformers.Qwen2ForCausalLM(cfg).eval()
    hf_tiny.save(torch_model, path)
    return path


def _logits(model, ids, mask):
    positions = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
    return np.asarray(jax.jit(lambda m, i, p, s: m(i, p, s).logits)(model, ids, positions, mask))


@pytest.mark.parametrize("shape", [(2, 2, 2), (1, 2, 4), (1, 8, 1)])
def test_mesh_loading_matches_single_device_and_is_sharded(wide_checkpoint, shape):
    ids, mask = hf_tiny.batch(lengths=(12, 8, 10, 5, 12, 3, 7, 9))
    single = _logits(load_pretrained(wide_checkpoint), ids, mask)
    mesh = make_mesh(*shape)
    model = load_pretrained(wide_checkpoint, mesh=mesh)
    q = model.layers[0].attn.q_proj[...]  # [heads, head_dim, embed] -> (tensor, None, fsdp)
    assert q.sharding.mesh.shape == dict(zip(("data", "fsdp", "tensor"), shape))
    assert q.sharding.spec == jax.sharding.PartitionSpec("tensor", None, "fsdp")
    shard_shape = q.addressable_shards[0].data.shape
    assert shard_shape == (8 // shape[2], 8, 64 // shape[1])
    assert model.embed[...].addressable_shards[0].data.shape == (hf_tiny.VOCAB // shape[2], 64 // shape[1])
    sharded_ids = jax.device_put(ids, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp"))))
    with jax.set_mesh(mesh):
        got = _logits(model, sharded_ids, mask)
    real = mask.astype(bool)
    assert np.abs(got[real] - single[real]).max() <= 1e-4


def test_mesh_that_does_not_divide_heads_is_a_clear_error(wide_checkpoint):
    with pytest.raises(ShardingError, match=r"kv_heads.*size 4.*not divisible.*tensor.*size 8"):
        load_pretrained(wide_checkpoint, mesh=make_mesh(1, 1, 8))


def test_missing_config_json(tmp_path):
    (tmp_path / "model").mkdir()
    with pytest.raises(ConfigError, match=r"model/config.json: no config.json"):
        load_pretrained(tmp_path / "model")


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such model directory"):
        load_pretrained(tmp_path / "nope")


def test_unknown_model_type_lists_supported(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "hidden_size": 8}))
    with pytest.raises(ConfigError, match=r"config.json: unsupported model_type 'gpt2'; supported: llama, mistral, qwen2"):
        load_config(tmp_path)


def test_unknown_rope_scaling_lists_supported(tmp_path):
    cfg = {**json.loads(json.dumps(hf_tiny.BASE)), "model_type": "llama", "rope_scaling": {"rope_type": "yarn"}}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=r"unsupported rope scaling type 'yarn'; supported: default, linear, llama3"):
        load_config(tmp_path)


def test_invalid_json_names_line(tmp_path):
    (tmp_path / "config.json").write_text('{\n "model_type": "llama",\n oops\n}')
    with pytest.raises(ConfigError, match=r"config.json: invalid JSON at line 3"):
        load_config(tmp_path)


@pytest.fixture
def checkpoint(tmp_path):
    return hf_tiny.save(hf_tiny.make_model("llama_gqa"), tmp_path / "hf")


def test_checkpoint_missing_a_tensor(checkpoint):
    tensors = load_file(str(checkpoint / "model.safetensors"))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(checkpoint / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"no tensor 'model.layers.1.mlp.up_proj.weight'"):
        load_pretrained(checkpoint)


def test_checkpoint_tensor_with_wrong_shape_names_both_shapes(checkpoint):
    tensors = load_file(str(checkpoint / "model.safetensors"))
    tensors["model.layers.0.self_attn.k_proj.weight"] = np.zeros((24, 32), np.float32)
    save_file(tensors, str(checkpoint / "model.safetensors"))
    with pytest.raises(
        CheckpointError, match=r"model.safetensors: tensor 'model.layers.0.self_attn.k_proj.weight' has shape \(24, 32\).*needs \(16, 32\)"
    ):
        load_pretrained(checkpoint)


def test_no_safetensors_lists_what_is_there(checkpoint):
    (checkpoint / "model.safetensors").rename(checkpoint / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"no \*.safetensors files \(found: config.json.*pytorch_model.bin"):
        load_pretrained(checkpoint)


def test_index_pointing_at_missing_shard(checkpoint, tmp_path):
    model = load_pretrained(checkpoint)
    out = save_pretrained(model, tmp_path / "sharded", dtype="float32", max_shard_bytes=20_000)
    victim = sorted(out.glob("model-*.safetensors"))[-1]
    victim.unlink()
    with pytest.raises(CheckpointError, match=rf"{victim.name}: listed in model.safetensors.index.json"):
        load_pretrained(out)


def test_causal_lm_loaded_as_score_model_keeps_trunk(checkpoint):
    lm = load_pretrained(checkpoint)
    scorer = load_pretrained(checkpoint, head="score", seed=3)
    assert scorer.config.head == "score" and scorer.score[...].shape == (32, 1)
    np.testing.assert_array_equal(np.asarray(scorer.layers[1].mlp.up_proj[...]), np.asarray(lm.layers[1].mlp.up_proj[...]))
    assert float(jnp.abs(scorer.score[...]).max()) > 0
