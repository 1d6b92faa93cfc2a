"""Stage kinds: what each pipeline stage does, its typed config and the inputs it takes. No scheduling here.

One stage per module; each imports what stages share from `base`, and this package gathers their kinds in `KINDS`.
"""

from __future__ import annotations

# `base` first: a stage module that takes these names from the package finds them there.
from sq_jax.pipeline.stages.base import DROPPED, PART_ROWS, RECORDS, STAGE_MANIFEST, Kind, StageContext, StageError
from sq_jax.pipeline.stages import evaluation, export, filtering, generation, mixing, questions, scored, training

__all__ = ["DROPPED", "KINDS", "PART_ROWS", "RECORDS", "STAGE_MANIFEST", "Kind", "StageContext", "StageError"]

KINDS: dict[str, Kind] = {}
for _module in (questions, generation, filtering, mixing, training, scored, export, evaluation):
    KINDS.update(_module.KINDS)
