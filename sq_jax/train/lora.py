"""LoRA adapters on chosen projections, through Google's qwix (the library Tunix uses for LoRA).

qwix intercepts the einsums of matched modules and adds `x @ A @ B * alpha / rank` to each, creating `A` and `B`
as `nnx.LoRAParam`s beside the weight, so the model code stays as it is. The base weights stay `nnx.Param`s: the
trainer differentiates only the adapters (and a fresh score head), holds optimizer state only for them and passes
the frozen base in without a copy; with the adapters left out the same weights are the base model (the QPO
reference). Export folds `A @ B` into the kernels (a plain checkpoint `transformers` loads) and can also write the
adapters alone in PEFT's format.

Adapter dropout (qwix's, on each adapter's input) runs only where `enable_dropout` gave the model a key, i.e. in
the train step; every other use of the adapted model (eval, generation, export) is deterministic.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import qwix
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from qwix._src.providers import ptq  # the plain (unadapted) einsum of qwix's provider chain
from qwix._src.utils import flax_util  # which param an einsum operand is
from safetensors.numpy import save_file

from sq_jax.models.hf_io import tensor_rules
from sq_jax.models.transformer import Transformer
from sq_jax.train.config import PROJECTIONS, LoraSection

# Every projection kernel is stored [out..., in...] (models/transformer.py), so A holds the trailing (contracted)
# axes and B the leading ones; merge and PEFT export rely on it.


class _TargetedLoraProvider(qwix.LoraProvider):
    """qwix's LoRA, restricted to weights named in `targets`.

    What qwix alone cannot say for this model: its rules match module paths only, and q/k/v/o share one module
    (as gate/up/down do), so `targets: [q_proj, v_proj]` needs the weight's name as well."""

    def __init__(self, targets: tuple[str, ...], **rule: Any):
        super().__init__(**rule)
        self.targets = frozenset(targets)

    def einsum(self, einsum_str: str, *operands: Any, **kwargs: Any) -> jax.Array:
        name = flax_util.find_param(operands[1]) if len(operands) == 2 else None
        if name not in self.targets:
            return ptq.PtqProvider.einsum(self, einsum_str, *operands, **kwargs)
        # qwix adds the float32 adapters' delta as it is, which would promote a bfloat16 projection (and all
        # that follows it, residuals included) to float32; the adapted projection keeps the plain product's dtype.
        return super().einsum(einsum_str, *operands, **kwargs).astype(jnp.result_type(*operands))

    def _get_current_rule_and_op_id(self, op_name: str, **kwargs: Any) -> tuple[Any, Any]:
        # qwix applies a rule's dropout on every call and fails without a key; here a module drops out only when
        # `enable_dropout` gave it a "dropout" stream (not in qwix's first, adapter-making call: same init).
        rule, op_id = super()._get_current_rule_and_op_id(op_name, **kwargs)
        if isinstance(rule, qwix.LoraRule) and rule.dropout and not _has_dropout_key(flax_util.get_current_module()):
            rule = dataclasses.replace(rule, dropout=0.0)
        return rule, op_id


def _has_dropout_key(module: nnx.Module) -> bool:
    rngs = getattr(module, "qwix_rngs", None)
    return isinstance(rngs, nnx.Rngs) and "dropout" in rngs


def enable_dropout(model: Transformer, key: jax.Array) -> None:
    """Give every module of `model` its own dropout stream from `key`, so qwix drops out the adapters' inputs.

    One stream per module rather than one shared: a remat'd layer runs on a copy of its state, so a shared
    stream's count would not advance past it and every layer would draw the same masks."""
    for index, (_, module) in enumerate(model.iter_modules()):
        module.qwix_rngs = nnx.Rngs(dropout=jax.random.fold_in(key, index))


def add_adapters(model: Transformer, cfg: LoraSection, mesh: Mesh | None, seed: int = 0) -> Transformer:
    """`model` with float32 adapters (A random, B zero: the same function at step 0) on `cfg.targets`,
    replicated on the mesh (a few MB; the base keeps its sharding)."""
    provider = _TargetedLoraProvider(cfg.targets, module_path=r"layers/\d+/(attn|mlp)", rank=cfg.rank,
                                     alpha=cfg.alpha, dropout=cfg.dropout)
    # qwix creates the adapters on a first call; under remat they would be created in a discarded inner copy.
    config = model.config
    model.config = dataclasses.replace(config, remat="none")
    try:
        adapted = qwix.apply_lora_to_model(model, provider, jnp.zeros((1, 1), jnp.int32), rngs=nnx.Rngs(seed))
    finally:
        model.config = config
    adapted.config = config
    replicated = NamedSharding(mesh, PartitionSpec()) if mesh is not None else None
    for _, var in nnx.to_flat_state(nnx.state(adapted, nnx.LoRAParam)):
        value = var.get_value().astype(jnp.float32)
        var.set_value(jax.device_put(value, replicated) if replicated is not None else value)
        var.set_metadata("logical_axes", (None,) * value.ndim)  # qwix copies the base weight's axis names
    found = {path[-1] for path in _adapters(nnx.state(adapted, nnx.LoRAParam))}
    if found != set(cfg.targets):
        raise ValueError(f"lora.targets {list(cfg.targets)}: adapters were made for {sorted(found)}")
    return adapted


def trainable_filter(model: Transformer) -> Any:
    """What a LoRA run trains: the adapters, and a score head (fresh when a causal LM becomes a scorer)."""
    if model.config.head == "score":
        return nnx.Any(nnx.LoRAParam, nnx.PathContains("score"))
    return nnx.LoRAParam


def _adapters(state: nnx.State) -> dict[tuple, tuple[jax.Array, jax.Array]]:
    """Weight path -> (A, B) for every adapted weight in a flat view of `state`."""
    flat = dict(nnx.to_flat_state(state))
    out = {}
    for path, var in flat.items():
        if str(path[-1]).endswith("_lora_a"):
            weight = path[:-1] + (str(path[-1]).removesuffix("_lora_a"),)
            out[weight] = (var.get_value(), flat[path[:-1] + (f"{weight[-1]}_lora_b",)].get_value())
    return out


def weight_delta(a: jax.Array, b: jax.Array, scale: float, shape: tuple[int, ...]) -> jax.Array:
    """The kernel change A @ B * scale in the kernel's own [out..., in...] layout."""
    rank = a.shape[-1]
    flat = (a.reshape(-1, rank) @ b.reshape(rank, -1)).T * scale  # [out, in]
    expected = (int(np.prod(b.shape[1:])), int(np.prod(a.shape[:-1])))
    if flat.shape != expected or tuple(b.shape[1:]) + tuple(a.shape[:-1]) != tuple(shape):
        raise ValueError(f"adapter shapes A{a.shape} B{b.shape} do not factor a kernel of shape {shape}")
    return flat.reshape(shape)


def merged_params(base: nnx.State, adapters: nnx.State, cfg: LoraSection) -> nnx.State:
    """The base params with every adapter folded in (W + A @ B * alpha / rank), as the base model's state."""
    scale = cfg.alpha / cfg.rank
    pairs = _adapters(adapters)
    flat = []
    for path, var in nnx.to_flat_state(base):
        if path in pairs:
            w = var.get_value()
            merged = (w.astype(jnp.float32) + weight_delta(*pairs[path], scale, w.shape)).astype(w.dtype)
            var = var.replace(merged)
        flat.append((path, var))
    return nnx.from_flat_state(flat)


def _peft_names(model_config: Any) -> dict[tuple, str]:
    """Our weight path -> the module name PEFT gives it (the HF tensor name without `.weight`)."""
    if model_config.family == "internlm2":
        raise ValueError("PEFT adapter export: internlm2 packs q/k/v into one tensor (wqkv); export merged instead")
    return {rule.params[0]: rule.hf_name.removesuffix(".weight") for rule in tensor_rules(model_config)
            if len(rule.params) == 1 and rule.params[0][-1] in PROJECTIONS}


def save_peft_adapter(adapters: nnx.State, model_config: Any, cfg: LoraSection, out_dir: Path,
                      base_model: str) -> Path:
    """`adapter_model.safetensors` + `adapter_config.json` that `peft.PeftModel.from_pretrained` loads onto the
    base model (lora_A [rank, in], lora_B [out, rank], scaling alpha / rank)."""
    def _to_host(x: jax.Array) -> np.ndarray:  # adapters are replicated: every host holds them whole
        return np.asarray(x.addressable_data(0))

    names = _peft_names(model_config)
    tensors = {}
    for path, (a, b) in sorted(_adapters(adapters).items(), key=lambda kv: names[kv[0]]):
        rank = a.shape[-1]
        prefix = f"base_model.model.{names[path]}"
        tensors[f"{prefix}.lora_A.weight"] = np.ascontiguousarray(_to_host(a).reshape(-1, rank).T)
        tensors[f"{prefix}.lora_B.weight"] = np.ascontiguousarray(_to_host(b).reshape(rank, -1).T)
    if jax.process_index() == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(out_dir / "adapter_model.safetensors"), metadata={"format": "pt"})
        config = {
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model, "r": cfg.rank,
            "lora_alpha": cfg.alpha, "lora_dropout": cfg.dropout, "target_modules": sorted(cfg.targets),
            "bias": "none", "fan_in_fan_out": False, "use_rslora": False, "inference_mode": True,
        }
        (out_dir / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out_dir
