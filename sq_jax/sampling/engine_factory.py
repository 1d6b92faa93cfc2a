"""The one place a model becomes an engine: load it onto this host's mesh, pick its tokenizer, prompt format and
stop ids, and hand back a typed bundle. Serving, generation jobs, the eval runner and the optimiser's local
backend all build their engines here; none of them is a server."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax

from sq_jax.models.checkpoint import load_model
from sq_jax.models.hf_io import resolve_model_dir
from sq_jax.models.tokenizer import detect_prompt_format, load_tokenizer, stop_token_ids
from sq_jax.parallel.mesh import make_mesh
from sq_jax.prompts.formats import PromptFormat, get_prompt_format
from sq_jax.sampling.engine import Engine
from sq_jax.sampling.jetstream_compat import jetstream_engine_class
from sq_jax.sampling.sampling import SamplingParams


@dataclasses.dataclass(frozen=True)
class EngineSettings:
    max_slots: int = 64
    max_cache_length: int = 2048
    max_prefill_length: int = 1024
    decode_steps: int = 8
    overlong_prompt: str = "error"  # or "truncate_left"
    prefix_cache_size: int = 32
    dtype: str = "bfloat16"
    prompt_format: str | None = None
    mesh_data: int = 1
    mesh_fsdp: int = 1
    mesh_tensor: int = -1
    # A tokenizer shipped as Python code in the model repository (InternLM2) runs only when allowed.
    trust_remote_code: bool = False


@dataclasses.dataclass(frozen=True)
class LoadedEngine:
    """An engine with what its users need beside it: the tokenizer, the prompt format, where the model lives and
    the sampling settings a request that names none gets."""

    engine: Engine  # a JetStream engine (also an `Engine`) unless built with jetstream_api=False
    tokenizer: Any  # transformers PreTrainedTokenizerBase
    prompt_format: PromptFormat
    model_dir: Path
    default_sampling: SamplingParams


def build_engine(model_path: str, settings: EngineSettings, default_sampling: SamplingParams,
                 jetstream_api: bool = True) -> LoadedEngine:
    """Load a model (HF or native; a hub id is resolved to its local copy) onto this host's mesh and wrap it in
    an engine, JetStream-capable by default."""
    # This host's devices only: on a multi-host slice each host serves its own share of the requests.
    mesh = make_mesh(settings.mesh_data, settings.mesh_fsdp, settings.mesh_tensor, devices=jax.local_devices())
    model_dir = resolve_model_dir(model_path)
    model = load_model(model_dir, mesh=mesh, dtype=settings.dtype, param_dtype=settings.dtype)
    tokenizer = load_tokenizer(str(model_dir), trust_remote_code=settings.trust_remote_code,
                               setting="engine.trust_remote_code")
    fmt = get_prompt_format(settings.prompt_format) if settings.prompt_format else detect_prompt_format(tokenizer)
    kwargs = dict(
        stop_ids=stop_token_ids(tokenizer, fmt), max_slots=settings.max_slots,
        max_cache_length=settings.max_cache_length, max_prefill_length=settings.max_prefill_length,
        decode_steps=settings.decode_steps, overlong_prompt=settings.overlong_prompt,
        prefix_cache_size=settings.prefix_cache_size, mesh=mesh,
    )
    engine = (jetstream_engine_class()(model, tokenizer, default_sampling=default_sampling, **kwargs)
              if jetstream_api else Engine(model, **kwargs))
    return LoadedEngine(engine, tokenizer, fmt, Path(model_dir), default_sampling)
