"""`sq-jax plan CONFIG --device v5e-1`: the memory plan of every stage of a pipeline (or of one training config)
per chip, from the model shapes and stage settings alone; a stage that does not fit is refused with what to
change. The byte math is train/memory_plan.py; this module only finds each stage's model and settings."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import jax

from sq_jax.configlib import load_yaml
from sq_jax.configlib import load_config as load_typed
from sq_jax.models.config import ModelConfig, from_hf_config, load_config
from sq_jax.parallel.mesh import resolve_mesh_shape
from sq_jax.pipeline.config import PipelineConfig, load_pipeline, stage_config
from sq_jax.pipeline.known_shapes import KNOWN_SHAPES
from sq_jax.pipeline.stages import KINDS
from sq_jax.toy.tiny import tiny_config
from sq_jax.train.config import TrainConfig
from sq_jax.train.memory_plan import (
    Device, StagePlan, format_plans, generation_plan, parse_device, too_big, train_plan, train_shape,
)

log = logging.getLogger(__name__)

_GENERATION_KINDS = ("synthesize", "judge", "respond", "difficulty_labels", "eval")


def model_shape(path: str, **runtime: Any) -> ModelConfig:
    """A model's config from its folder, the known shapes of the shipped configs' models, or its config.json."""
    if (Path(path) / "config.json").is_file():
        return load_config(path, **runtime)
    if path in KNOWN_SHAPES:
        return from_hf_config(KNOWN_SHAPES[path], where=f"known shape of {path}", **runtime)
    # The hub client only for a model neither local nor known; it fetches the config.json alone, through its cache.
    from huggingface_hub import hf_hub_download

    try:
        hf = json.loads(Path(hf_hub_download(path, "config.json")).read_text())
    except Exception as e:  # offline, unknown repo, no such folder: all the same to the user
        raise ValueError(f"model {path!r}: no local folder with config.json, not a shape sq-jax knows, and its "
                         f"config.json could not be fetched from the hub ({type(e).__name__})") from None
    return from_hf_config(hf, where=f"{path}/config.json", **runtime)


def _tiny_shape() -> ModelConfig:
    return tiny_config(2048)


def plan_train(cfg: TrainConfig, device: Device, stage: str = "train", shape: ModelConfig | None = None) -> StagePlan:
    runtime = dict(dtype=cfg.model.dtype, param_dtype=cfg.model.param_dtype, remat=cfg.model.remat)
    model = shape or model_shape(cfg.model.path, **runtime)
    model = dataclasses.replace(model, **runtime, **({"head": cfg.model.head} if cfg.model.head else {}))
    return train_plan(model, train_shape(cfg, device.chips), stage)


class _Pipeline:
    """Walks the stages in order, remembering the base shape of every model a stage produces."""

    def __init__(self, cfg: PipelineConfig, device: Device):
        self.cfg, self.device, self.kinds = cfg, device, KINDS
        self.produced: dict[str, ModelConfig] = {}

    def _input_model(self, spec, own: str | None, role: str = "model") -> ModelConfig | None:
        if own:
            return model_shape(own)
        upstream = spec.inputs.get(role)
        return self.produced.get(upstream) if upstream else None

    def plans(self, strict: bool = True) -> list[StagePlan]:
        """Every stage's plan; not `strict`: a stage whose model shape cannot be found is left out."""
        out = []
        for name, spec in self.cfg.stages.items():
            config = stage_config(self.kinds[spec.kind].config, spec, name, "plan")
            try:
                plan = self._stage(name, spec, config)
            except ValueError as e:
                if strict:
                    raise
                log.warning("memory plan: stage %s left out (%s)", name, e)
                continue
            if plan is not None:
                out.append(plan)
        return out

    def _stage(self, name: str, spec, config) -> StagePlan | None:
        if spec.kind == "tiny_model":
            self.produced[name] = _tiny_shape()
            return None
        if spec.kind == "train":
            own = config.train.model.path
            base = model_shape(own) if own else self._input_model(spec, None)
            self.produced[name] = base
            # The stage's config is a TrainConfig with the paths left to the pipeline: the plan reads its shapes.
            return plan_train(config.train, self.device, name, base) if base is not None else None
        engine = getattr(config, "engine", None)
        if spec.kind in _GENERATION_KINDS or (spec.kind == "optimise" and config.backend == "local"):
            model = self._input_model(spec, config.model)
            if model is None:
                return None
            _, _, tensor = resolve_mesh_shape((engine.mesh_data, engine.mesh_fsdp, engine.mesh_tensor),
                                              self.device.chips)
            return generation_plan(model, slots=engine.max_slots, cache_length=engine.max_cache_length,
                                   prefill_length=engine.max_prefill_length, dtype=engine.dtype, devices=tensor,
                                   stage=name)
        if spec.kind == "reward":
            model = self._input_model(spec, config.model)
            if model is None:
                return None
            # A forward pass over batch_size x max_length tokens; no cache.
            return generation_plan(model, slots=0, cache_length=0, prefill_length=config.max_length,
                                   prefill_rows=config.batch_size, dtype=config.dtype, stage=name)
        return None


def plan_config(path: str | Path, overrides: list[str] | tuple[str, ...], device_name: str) -> list[StagePlan]:
    device = parse_device(device_name)
    if "stages" in load_yaml(path):
        return _Pipeline(load_pipeline(path, overrides), device).plans()
    return [plan_train(load_typed(TrainConfig, path, overrides), device)]


def report(path: str | Path, overrides: list[str] | tuple[str, ...], device_name: str) -> str:
    """The plan table; raises ValueError naming each stage that does not fit and what to change."""
    device = parse_device(device_name)
    plans = plan_config(path, overrides, device_name)
    table = format_plans(plans, device)
    problems = [p for p in (too_big(plan, device) for plan in plans) if p]
    if problems:
        raise ValueError(f"{path} does not fit {device.name}:\n" + "\n".join(problems) + "\n\n" + table)
    return table


def refuse_unfit_stages(cfg: PipelineConfig, stages: list[str]) -> None:
    """At the start of a run on chips that report their memory (TPU, GPU): stop before the first stage if one of
    `stages` would not fit, naming what to change. CPUs report none and are never refused."""
    limit = (jax.local_devices()[0].memory_stats() or {}).get("bytes_limit")
    if not limit:
        return
    device = Device(f"this {jax.local_devices()[0].device_kind}", jax.device_count(), int(limit))
    plans = [p for p in _Pipeline(cfg, device).plans(strict=False) if p.stage in stages]
    problems = [p for p in (too_big(plan, device, headroom=1.0) for plan in plans) if p]
    if problems:
        raise ValueError("\n".join(problems) + "\n\n" + format_plans(plans, device))
