"""The pipeline YAML: named stages in run order, each a kind, its inputs (upstream stages by role) and its config.

Every stage config is checked against its kind's dataclass when the file is loaded, so a typo in the last stage
fails before the first one spends an hour of TPU time.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from sq_jax.configlib import ConfigError, apply_overrides, from_dict, load_yaml
from sq_jax.pipeline.stages import KINDS


@dataclasses.dataclass(frozen=True)
class StageSpec:
    kind: str
    inputs: dict[str, str] = dataclasses.field(default_factory=dict)  # role -> upstream stage name
    config: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    output_dir: str
    stages: dict[str, StageSpec]
    seed: int = 0
    shared: dict[str, Any] = dataclasses.field(default_factory=dict)  # YAML anchors reused by stages; not read

    def order(self) -> list[str]:
        return list(self.stages)


def stage_config(kind_config: type, spec: StageSpec, name: str, where: str) -> Any:
    """The stage's typed config; unknown or mistyped keys name the stage."""
    try:
        return from_dict(kind_config, spec.config, where=where, prefix=f"stages.{name}.config")
    except ConfigError as e:
        raise ConfigError(f"stage {name!r} ({spec.kind}): {e}") from None


def validate(cfg: PipelineConfig, kinds: dict[str, Any], where: str) -> None:
    seen: set[str] = set()
    for name, spec in cfg.stages.items():
        if spec.kind not in kinds:
            raise ConfigError(f"{where}: stage {name!r} has unknown kind {spec.kind!r}; known: {', '.join(kinds)}")
        kind = kinds[spec.kind]
        missing = [r for r in kind.required_inputs if r not in spec.inputs]
        unknown = [r for r in spec.inputs if r not in kind.required_inputs + kind.optional_inputs]
        if kind.any_inputs:
            missing, unknown = ([] if spec.inputs else ["(at least one, under any role name)"]), []
        if missing or unknown:
            raise ConfigError(f"{where}: stage {name!r} ({spec.kind}) needs inputs {list(kind.required_inputs)}"
                              f" (optional {list(kind.optional_inputs)}); missing {missing}, unknown {unknown}")
        for role, upstream in spec.inputs.items():
            if upstream not in seen:
                raise ConfigError(f"{where}: stage {name!r} input {role!r} is {upstream!r}, which is not an "
                                  "earlier stage (stages run in the order written)")
        typed = stage_config(kind.config, spec, name, where)
        if kind.check_inputs is not None:
            try:
                kind.check_inputs(typed, spec.inputs)
            except ValueError as e:
                raise ConfigError(f"{where}: stage {name!r} ({spec.kind}): {e}") from None
        seen.add(name)


def load_pipeline(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    data = apply_overrides(load_yaml(path), overrides)
    cfg = from_dict(PipelineConfig, data, where=str(path))
    validate(cfg, KINDS, str(path))
    return cfg
