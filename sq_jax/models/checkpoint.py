"""sq-jax's native checkpoint (orbax params + HF `config.json` + tokenizer files) and conversion to/from HF.

The native format restores straight into any mesh layout (orbax reads only each device's slices), which is what
training and serving on a pod want; HF safetensors is what users bring and take away.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh

from sq_jax.models.config import load_config, save_config
from sq_jax.models.hf_io import load_pretrained, resolve_model_dir, save_pretrained
from sq_jax.models.init import param_shardings
from sq_jax.models.transformer import Transformer
from sq_jax.parallel.sharding import MeshAxes

PARAMS_DIR = "params"
# Files that travel with a model besides its weights and config.
SIDE_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "vocab.json",
    "merges.txt", "added_tokens.json", "chat_template.jinja", "generation_config.json",
)


def copy_side_files(src: Path, dst: Path) -> list[str]:
    copied = []
    for name in SIDE_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
            copied.append(name)
    return copied


def save_native(model: Transformer, out_dir: str | Path) -> Path:
    out = Path(out_dir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(out / PARAMS_DIR, nnx.state(model, nnx.Param), force=True)
    if jax.process_index() == 0:
        save_config(model.config, out)
    return out


def load_native(
    model_dir: str | Path, *, mesh: Mesh | None = None, rules: Mapping[str, MeshAxes] | None = None, **runtime: Any
) -> Transformer:
    """Restore a native checkpoint, each param directly into its sharded layout on `mesh`."""
    model_dir = Path(model_dir).absolute()
    cfg = load_config(model_dir, **runtime)
    if not (model_dir / PARAMS_DIR).is_dir():
        raise FileNotFoundError(f"{model_dir}: no {PARAMS_DIR}/ (not an sq-jax native checkpoint)")
    abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    shardings = param_shardings(abstract, mesh, rules)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    flat = []
    for path, var in nnx.to_flat_state(state):
        value = var.get_value()
        var.set_value(jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=shardings[path] or device))
        flat.append((path, var))
    target = nnx.from_flat_state(flat)
    with ocp.StandardCheckpointer() as ckptr:
        restored = ckptr.restore(model_dir / PARAMS_DIR, target)
    model = nnx.merge(graphdef, restored)
    return model


def _checkpoint_dtype(model_dir: Path) -> str:
    hf = json.loads((model_dir / "config.json").read_text())
    return str(hf.get("torch_dtype") or hf.get("dtype") or "float32")


def convert(src: str | Path, dst: str | Path, *, to: str, dtype: str | None = None) -> Path:
    """HF safetensors dir / hub id -> native (`to="orbax"`), or native -> HF safetensors (`to="hf"`)."""
    dst = Path(dst)
    if to == "orbax":
        src_dir = resolve_model_dir(src)
        model = load_pretrained(src_dir, param_dtype=dtype or _checkpoint_dtype(src_dir))
        out = save_native(model, dst)
    elif to == "hf":
        src_dir = Path(src)
        model = load_native(src_dir, param_dtype=dtype or _checkpoint_dtype(src_dir))
        out = save_pretrained(model, dst, dtype=dtype or model.config.param_dtype)
    else:
        raise ValueError(f"unknown conversion target {to!r}; choose 'orbax' or 'hf'")
    if jax.process_index() == 0:
        copy_side_files(src_dir, out)
    return out


def load_model(
    path_or_hub_id: str | Path, *, mesh: Mesh | None = None, rules: Mapping[str, MeshAxes] | None = None,
    **runtime: Any,
) -> Transformer:
    """A native checkpoint (has params/) or an HF checkpoint (dir or hub id), placed on `mesh`."""
    path = Path(path_or_hub_id)
    if (path / PARAMS_DIR).is_dir():
        return load_native(path, mesh=mesh, rules=rules, **runtime)
    return load_pretrained(path_or_hub_id, mesh=mesh, rules=rules, **runtime)
