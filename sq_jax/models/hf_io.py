"""Hugging Face safetensors <-> sq-jax params: per-family name maps, sharded loading, export `transformers` reads.

Loading reads one checkpoint tensor at a time into host memory, converts it to our layout and hands each device
only its own slice (`jax.make_array_from_callback`), so a 7B model never needs a full host copy per device.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from safetensors import safe_open
from safetensors.numpy import save_file

from sq_jax.models.config import ModelConfig, load_config, save_config
from sq_jax.models.init import ParamPath, init_model, param_shardings
from sq_jax.models.tokenizer import looks_local
from sq_jax.models.transformer import Transformer
from sq_jax.parallel.sharding import MeshAxes

log = logging.getLogger(__name__)

SAFE_INDEX = "model.safetensors.index.json"
SAFE_SINGLE = "model.safetensors"
# Checkpoint tensors that carry no parameters (old rotary caches) or are tied to the embedding.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class CheckpointError(ValueError):
    """A checkpoint that does not match the model config; the message names the tensor and file."""


@dataclass(frozen=True)
class TensorRule:
    """One checkpoint tensor and the sq-jax params it holds (InternLM2's packed `wqkv` holds three)."""

    hf_name: str
    params: tuple[ParamPath, ...]
    to_ours: Callable[[np.ndarray], tuple[np.ndarray, ...]]
    to_hf: Callable[..., np.ndarray]


def _transposed(path: ParamPath) -> tuple:
    # HF Linear weight [out, in] <-> our [in, out] (the score head only; projections keep HF's layout).
    return (path,), lambda w: (w.T,), lambda k: k.T


def _heads_in(path: ParamPath, heads: int, head_dim: int) -> tuple:
    # HF [heads * head_dim, embed] <-> ours [heads, head_dim, embed].
    return (
        (path,),
        lambda w: (w.reshape(heads, head_dim, -1),),
        lambda k: k.reshape(heads * head_dim, -1),
    )


def _heads_out(path: ParamPath, heads: int, head_dim: int) -> tuple:
    # HF [embed, heads * head_dim] <-> ours [embed, heads, head_dim].
    return (
        (path,),
        lambda w: (w.reshape(-1, heads, head_dim),),
        lambda k: k.reshape(k.shape[0], -1),
    )


def _heads_bias(path: ParamPath, heads: int, head_dim: int) -> tuple:
    return (path,), lambda b: (b.reshape(heads, head_dim),), lambda b: b.reshape(heads * head_dim)


def _same(path: ParamPath) -> tuple:
    return (path,), lambda w: (w,), lambda w: w


def _packed_qkv(layer: ParamPath, cfg: ModelConfig, suffix: str) -> tuple:
    """InternLM2 `wqkv`: rows grouped per kv head as [q_0 .. q_{g-1}, k, v] (each head_dim rows)."""
    kv, g, d = cfg.num_kv_heads, cfg.num_kv_groups, cfg.head_dim
    names = ("q", "k", "v")
    paths = tuple(layer + ("attn", f"{n}_{suffix}") for n in names)

    def to_ours(w: np.ndarray) -> tuple[np.ndarray, ...]:
        grouped = w.reshape(kv, g + 2, d, -1)  # trailing dim: embed (weight) or 1 (bias)
        q, k, v = grouped[:, :g].reshape(kv * g, d, -1), grouped[:, g], grouped[:, g + 1]
        if suffix == "bias":
            return q[..., 0], k[..., 0], v[..., 0]
        return q, k, v

    def to_hf(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
        if suffix == "bias":
            q, k, v = q[..., None], k[..., None], v[..., None]
        grouped = np.concatenate([q.reshape(kv, g, d, -1), k[:, None], v[:, None]], axis=1)
        out = grouped.reshape(kv * (g + 2) * d, -1)
        return out[:, 0] if suffix == "bias" else out

    return paths, to_ours, to_hf


def tensor_rules(cfg: ModelConfig) -> list[TensorRule]:
    """Every checkpoint tensor of `cfg`'s family, in checkpoint order."""
    n, k, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    rules: list[TensorRule] = []

    def add(hf_name: str, spec: tuple) -> None:
        rules.append(TensorRule(hf_name, *spec))

    internlm = cfg.family == "internlm2"
    add("model.tok_embeddings.weight" if internlm else "model.embed_tokens.weight", _same(("embed",)))
    for i in range(cfg.num_layers):
        layer: ParamPath = ("layers", i)
        if internlm:
            pre = f"model.layers.{i}."
            add(pre + "attention.wqkv.weight", _packed_qkv(layer, cfg, "proj"))
            if cfg.qkv_bias:
                add(pre + "attention.wqkv.bias", _packed_qkv(layer, cfg, "bias"))
            add(pre + "attention.wo.weight", _heads_out(layer + ("attn", "o_proj"), n, d))
            if cfg.o_bias:
                add(pre + "attention.wo.bias", _same(layer + ("attn", "o_bias")))
            add(pre + "feed_forward.w1.weight", _same(layer + ("mlp", "gate_proj")))
            add(pre + "feed_forward.w3.weight", _same(layer + ("mlp", "up_proj")))
            add(pre + "feed_forward.w2.weight", _same(layer + ("mlp", "down_proj")))
            add(pre + "attention_norm.weight", _same(layer + ("input_norm", "scale")))
            add(pre + "ffn_norm.weight", _same(layer + ("post_attention_norm", "scale")))
            continue
        pre = f"model.layers.{i}."
        for name, heads in (("q", n), ("k", k), ("v", k)):
            add(pre + f"self_attn.{name}_proj.weight", _heads_in(layer + ("attn", f"{name}_proj"), heads, d))
            if cfg.qkv_bias:
                add(pre + f"self_attn.{name}_proj.bias", _heads_bias(layer + ("attn", f"{name}_bias"), heads, d))
        add(pre + "self_attn.o_proj.weight", _heads_out(layer + ("attn", "o_proj"), n, d))
        if cfg.o_bias:
            add(pre + "self_attn.o_proj.bias", _same(layer + ("attn", "o_bias")))
        for name in ("gate", "up", "down"):
            add(pre + f"mlp.{name}_proj.weight", _same(layer + ("mlp", f"{name}_proj")))
            if cfg.mlp_bias:
                add(pre + f"mlp.{name}_proj.bias", _same(layer + ("mlp", f"{name}_bias")))
        add(pre + "input_layernorm.weight", _same(layer + ("input_norm", "scale")))
        add(pre + "post_attention_layernorm.weight", _same(layer + ("post_attention_norm", "scale")))
    add("model.norm.weight", _same(("final_norm", "scale")))
    if cfg.head == "score":
        add("v_head.weight" if internlm else "score.weight", _transposed(("score",)))
    elif not cfg.tie_word_embeddings:
        add("output.weight" if internlm else "lm_head.weight", _same(("lm_head",)))
    return rules


# ----------------------------------------------------------------------------------------------- reading


def missing_model(text: str, why: str = "") -> FileNotFoundError:
    """The error for a model path with nothing there: where it looked, and how to build, convert or fetch one."""
    return FileNotFoundError(
        f"{text}: no such model directory ({Path(text).expanduser().absolute()}){why}. Build the tiny model there "
        f"with `sq-jax init-tiny {text}`, convert a checkpoint with `sq-jax convert SRC {text} --to hf`, or name a "
        "Hugging Face Hub model (org/name) on a machine that reaches the hub")


def resolve_model_dir(path_or_hub_id: str | os.PathLike, revision: str | None = None) -> Path:
    """A local directory as is; anything else is a hub id fetched (config, safetensors, tokenizer) to the cache.

    "runs/tiny" reads as a local path and as a hub id alike: when neither a folder nor the hub has it (or the hub
    cannot be reached), the error says it is not a local folder either, instead of the hub client's connection
    error."""
    path = Path(path_or_hub_id).expanduser()
    if path.is_dir():
        return path
    text = str(path_or_hub_id)
    if looks_local(text):
        raise missing_model(text, " and not a hub id of the form 'org/name'")
    # The hub client only for hub ids: a local checkpoint loads without it (and without its network stack).
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    patterns = ["*.json", "*.safetensors", "*.model", "*.tiktoken", "*.txt", "*.py"]
    try:
        return Path(snapshot_download(text, revision=revision, allow_patterns=patterns))
    except GatedRepoError:
        raise  # it exists; its message says how to get access
    except (LocalEntryNotFoundError, RepositoryNotFoundError) as e:
        raise missing_model(text, f", nor a model the Hugging Face Hub gave ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else 'not found'})") from e


class SafetensorsReader:
    """Name -> tensor over a model dir's single or sharded (`model.safetensors.index.json`) safetensors files."""

    def __init__(self, model_dir: Path):
        self.model_dir = model_dir
        index = model_dir / SAFE_INDEX
        if index.is_file():
            weight_map: Mapping[str, str] = json.loads(index.read_text())["weight_map"]
            self.files = {name: model_dir / f for name, f in weight_map.items()}
        else:
            files = sorted(model_dir.glob("*.safetensors"))
            if not files:
                found = ", ".join(sorted(p.name for p in model_dir.iterdir())) or "nothing"
                raise CheckpointError(f"{model_dir}: no *.safetensors files (found: {found})")
            self.files = {}
            for f in files:
                with safe_open(f, framework="numpy") as handle:
                    for name in handle.keys():
                        self.files[name] = f
        self._stack = ExitStack()
        self._handles: dict[Path, Any] = {}

    def __enter__(self) -> "SafetensorsReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def names(self) -> set[str]:
        return set(self.files)

    def read(self, name: str) -> np.ndarray:
        if name not in self.files:
            raise CheckpointError(f"{self.model_dir}: checkpoint has no tensor {name!r}")
        path = self.files[name]
        if path not in self._handles:
            if not path.is_file():
                raise CheckpointError(f"{path}: listed in {SAFE_INDEX} for {name!r} but missing")
            self._handles[path] = self._stack.enter_context(safe_open(path, framework="numpy"))
        return self._handles[path].get_tensor(name)


def _place(array: np.ndarray, sharding: Any, dtype: jnp.dtype) -> jax.Array:
    array = np.asarray(array).astype(dtype, copy=False)
    if sharding is None:
        return jax.device_put(array)
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def load_pretrained(
    path_or_hub_id: str | os.PathLike,
    *,
    mesh: Mesh | None = None,
    rules: Mapping[str, MeshAxes] | None = None,
    head: str | None = None,
    revision: str | None = None,
    seed: int = 0,
    **runtime: Any,
) -> Transformer:
    """Load a HF checkpoint into a `Transformer`, each param placed in its sharded layout on `mesh`.

    `runtime` sets `dtype`, `param_dtype`, `remat`. `head="score"` loads a causal LM as a scalar-score model (the
    difficulty scorer): the LM head is skipped and a fresh score head is initialised from `seed`.
    """
    model_dir = resolve_model_dir(path_or_hub_id, revision)
    cfg = load_config(model_dir, **runtime)
    fresh_head = head is not None and head != cfg.head
    if fresh_head:
        cfg = cfg.replace(head=head)
    abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(seed)))
    graphdef, state = nnx.split(abstract)
    variables = dict(nnx.to_flat_state(state))
    shardings = param_shardings(abstract, mesh, rules)
    loaded: set[ParamPath] = set()
    with SafetensorsReader(model_dir) as reader:
        rules_list = tensor_rules(cfg)
        if fresh_head:
            rules_list = [r for r in rules_list if ("score",) not in r.params]
        for rule in rules_list:
            tensor = reader.read(rule.hf_name)
            converted = rule.to_ours(tensor)
            for path, array in zip(rule.params, converted):
                var = variables[path]
                if tuple(array.shape) != tuple(var.get_value().shape):
                    expected_hf = rule.to_hf(*(np.zeros(variables[p].get_value().shape, np.int8) for p in rule.params))
                    raise CheckpointError(
                        f"{reader.files[rule.hf_name]}: tensor {rule.hf_name!r} has shape {tuple(tensor.shape)}, "
                        f"but the config ({model_dir / 'config.json'}) needs {tuple(expected_hf.shape)}"
                    )
                var.set_value(_place(array, shardings[path], var.get_value().dtype))
                loaded.add(path)
        # The model's own head, or an LM head left behind on purpose when a fresh score head replaces it.
        known = {r.hf_name for c in (cfg, cfg.replace(head="lm", tie_word_embeddings=False)) for r in tensor_rules(c)}
        unused = sorted(n for n in reader.names() - known if not n.endswith(_IGNORED_SUFFIXES))
        if unused:
            log.warning("%s: %d checkpoint tensors not used: %s", model_dir, len(unused), ", ".join(unused[:8]))
    missing = [p for p in variables if p not in loaded]
    if missing and not fresh_head:
        raise CheckpointError(f"{model_dir}: params not in checkpoint: {missing}")
    if fresh_head:
        # Only the new head is initialised; every other param came from the checkpoint.
        init_state = nnx.state(init_model(cfg, mesh=mesh, rules=rules, seed=seed), nnx.Param)
        for path, var in nnx.to_flat_state(init_state):
            if path not in loaded:
                variables[path].set_value(var.get_value())
    model = nnx.merge(graphdef, nnx.from_flat_state(variables))
    return model


# ----------------------------------------------------------------------------------------------- writing


def _to_host(x: jax.Array) -> np.ndarray:
    if x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _iter_hf_tensors(model: Transformer, dtype: np.dtype) -> Iterator[tuple[str, np.ndarray]]:
    params = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    for rule in tensor_rules(model.config):
        ours = [_to_host(params[p].get_value()).astype(np.float32) for p in rule.params]
        yield rule.hf_name, np.ascontiguousarray(rule.to_hf(*ours)).astype(dtype)


_NP_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


def save_pretrained(
    model: Transformer,
    out_dir: str | os.PathLike,
    *,
    dtype: str | None = None,
    tokenizer: Any | None = None,
    max_shard_bytes: int = 5 * 1024**3,
) -> Path:
    """Write safetensors (sharded past `max_shard_bytes`, with an index), `config.json` and the tokenizer.

    On multi-host every process must call this (params are gathered collectively); only process 0 writes.
    """
    out = Path(out_dir)
    dtype = dtype or model.config.param_dtype
    if dtype not in _NP_DTYPES:
        raise ValueError(f"export dtype {dtype!r} not supported; choose one of {', '.join(_NP_DTYPES)}")
    writer = jax.process_index() == 0
    if writer:
        out.mkdir(parents=True, exist_ok=True)
        for stale in list(out.glob("model*.safetensors")) + [out / SAFE_INDEX]:
            stale.unlink(missing_ok=True)
    # Shards are written as they fill (one shard in host memory at a time) under temporary names; their final
    # names need the shard count, known only at the end.
    written: list[tuple[Path, list[str]]] = []
    current: dict[str, np.ndarray] = {}
    total_size = 0

    def flush() -> None:
        path = out / f".partial-{len(written):05d}.safetensors"
        if writer:
            save_file(current, str(path), metadata={"format": "pt"})
        written.append((path, list(current)))
        current.clear()

    for name, tensor in _iter_hf_tensors(model, _NP_DTYPES[dtype]):
        if current and sum(t.nbytes for t in current.values()) + tensor.nbytes > max_shard_bytes:
            flush()
        current[name] = tensor
        total_size += tensor.nbytes
    flush()
    if writer:
        if len(written) == 1:
            written[0][0].rename(out / SAFE_SINGLE)
        else:
            weight_map: dict[str, str] = {}
            for i, (temp, names) in enumerate(written, start=1):
                final = out / f"model-{i:05d}-of-{len(written):05d}.safetensors"
                temp.rename(final)
                weight_map.update(dict.fromkeys(names, final.name))
            index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
            (out / SAFE_INDEX).write_text(json.dumps(index, indent=2) + "\n")
        save_config(model.config, out, torch_dtype=dtype)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(out))
    return out
