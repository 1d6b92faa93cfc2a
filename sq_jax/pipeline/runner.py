"""The resumable stage runner: `sq-jax pipeline run|status CONFIG`.

Each stage has a fingerprint: its kind, its config, the pipeline seed, the fingerprints of its upstream stages and
of any local file or folder its config names. A stage whose manifest says `done` with the same fingerprint is
skipped; any change reruns that stage and, through their fingerprints, exactly the stages downstream of it. A
stage that reruns starts from an empty folder, except that generation inside it resumes at shard granularity
(its own manifest guards against mixing configs). Stage outputs are written atomically, so a kill at any point
leaves either the previous state or the finished output, never half a file.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from sq_jax.configlib import config_hash
from sq_jax.data.dataset import parts_digest, read_json, write_json_atomic
from sq_jax.data.fingerprint import content_hash, external_fingerprints, verify_parts
from sq_jax.parallel.distributed import failed_processes, is_lead, sync
from sq_jax.pipeline.config import PipelineConfig, stage_config
from sq_jax.pipeline.plan import refuse_unfit_stages
from sq_jax.pipeline.report_html import write_html_report
from sq_jax.pipeline.report_markdown import report_markdown
from sq_jax.pipeline.stages import DROPPED, KINDS, RECORDS, STAGE_MANIFEST, StageContext, StageError

log = logging.getLogger(__name__)
MANIFEST = STAGE_MANIFEST


def fingerprints(cfg: PipelineConfig) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, spec in cfg.stages.items():
        out[name] = config_hash({"kind": spec.kind, "config": spec.config, "seed": cfg.seed,
                                 "inputs": {role: out[up] for role, up in sorted(spec.inputs.items())},
                                 "external": external_fingerprints(spec.config)})
    return out


def upstream_content(stage_dir: Path, writer: bool = False) -> str:
    """The content digest of a finished stage's output as it is on disk: its record parts (checked against its
    manifest: names, sizes, SHA-256 through the fingerprint cache), else its exported model, else its fingerprint.

    Parts edited by hand are taken as they are, with a warning: the stages that read them rerun, and `writer`
    (process 0) records the edit in the stage's manifest."""
    manifest = read_manifest(stage_dir)
    if (stage_dir / RECORDS).is_dir():
        parts, problems = verify_parts(stage_dir / RECORDS, manifest.get("parts", []))
        digest = parts_digest(parts)
        if problems:
            log.warning("stage %s: its records on disk are not the ones it wrote (%s); using them as they are, so "
                        "the stages that read them are recomputed", stage_dir.name, "; ".join(problems))
            if writer:
                counts = {**manifest.get("counts", {}), "records": sum(p["rows"] for p in parts)}
                _write_manifest(stage_dir, {**manifest, "parts": parts, "content": digest, "counts": counts,
                                            "edited": manifest.get("edited", []) + problems})
        return digest
    if (stage_dir / "hf").is_dir():
        return content_hash(stage_dir / "hf")
    return str(manifest.get("fingerprint"))


def _changed_since(manifest: dict[str, Any], fingerprint: str, upstream: dict[str, str]) -> str | None:
    """Why a stage's earlier output (done or partial) cannot be kept; None when it can, or when there is none."""
    if manifest.get("fingerprint") not in (None, fingerprint):
        return "config or inputs changed"
    was = manifest.get("upstream", {}) if manifest else upstream
    changed = [f"{u} (content {str(was.get(u))[:12]}, now {str(upstream.get(u))[:12]})"
               for u in sorted(set(was) | set(upstream)) if was.get(u) != upstream.get(u)]
    return f"the output of input stage {', '.join(changed)} changed since this stage read it" if changed else None


def read_manifest(stage_dir: Path) -> dict[str, Any]:
    return read_json(stage_dir / MANIFEST)


def _write_manifest(stage_dir: Path, manifest: dict[str, Any]) -> None:
    write_json_atomic(stage_dir / MANIFEST, manifest)


def stage_status(cfg: PipelineConfig) -> list[dict[str, Any]]:
    """Per stage: done (current), stale (done under another fingerprint or from other upstream content), partial
    or pending."""
    fps, rows = fingerprints(cfg), []
    for name, spec in cfg.stages.items():
        manifest = read_manifest(Path(cfg.output_dir) / name)
        if manifest.get("status") == "done":
            current = manifest.get("fingerprint") == fps[name] and _changed_since(manifest, fps[name], {
                u: upstream_content(Path(cfg.output_dir) / u) for u in sorted(set(spec.inputs.values()))}) is None
            state = "done" if current else "stale"
        else:
            state = "partial" if manifest else "pending"
        rows.append({"stage": name, "kind": spec.kind, "state": state, "counts": manifest.get("counts", {})})
    return rows


def _select(cfg: PipelineConfig, only: str | None, start: str | None, until: str | None) -> list[str]:
    order = cfg.order()
    for label, name in (("--only", only), ("--from", start), ("--until", until)):
        if name is not None and name not in cfg.stages:
            raise ValueError(f"{label} {name!r}: no such stage; stages: {', '.join(order)}")
    if only:
        return [only]
    first = order.index(start) if start else 0
    last = order.index(until) if until else len(order) - 1
    return order[first : last + 1]


def run_pipeline(cfg: PipelineConfig, *, only: str | None = None, start: str | None = None,
                 until: str | None = None) -> dict[str, Any]:
    """Run the selected stages (all by default), skipping those already done; returns the run report.

    Multi-host (every process runs this with the same config and a shared `output_dir`): collective stages run in
    every process, the others in process 0 while the rest wait; process 0 alone writes manifests, records and
    reports, and every stage ends at a barrier, so all processes see the same state when the next one starts.
    """
    out = Path(cfg.output_dir)
    lead = is_lead()
    if lead:
        out.mkdir(parents=True, exist_ok=True)
    fps = fingerprints(cfg)
    selected = _select(cfg, only, start, until)
    refuse_unfit_stages(cfg, selected)  # before hours of earlier stages, not at the stage that runs out of memory
    for name in selected:
        spec = cfg.stages[name]
        stage_dir = out / name
        for role, upstream in spec.inputs.items():
            up = read_manifest(out / upstream)
            if up.get("status") != "done" or up.get("fingerprint") != fps[upstream]:
                raise StageError(name, f"input {role!r} comes from stage {upstream!r}, which is not done with its "
                                       "current config; run it first (drop --only / --from)")
        # What this stage reads, by content: an upstream regenerated or edited since this stage started (or
        # finished) makes it start over, never resume on, or keep, outputs of other inputs.
        upstream = {u: upstream_content(out / u, writer=lead) for u in sorted(set(spec.inputs.values()))}
        manifest = read_manifest(stage_dir)
        changed = _changed_since(manifest, fps[name], upstream)
        if manifest.get("status") == "done" and changed is None:
            log.info("stage %s: done, skipped", name)
            continue
        if lead:
            if changed is not None:
                (log.info if changed.startswith("config") else log.warning)(
                    "stage %s: %s; rerunning from scratch", name, changed)
                shutil.rmtree(stage_dir)
            for written in () if KINDS[spec.kind].parts_are_work else (RECORDS, DROPPED):
                shutil.rmtree(stage_dir / written, ignore_errors=True)  # rewritten from the stage's work (scores/)
            stage_dir.mkdir(parents=True, exist_ok=True)
            _write_manifest(stage_dir, {"stage": name, "kind": spec.kind, "fingerprint": fps[name],
                                        "status": "running", "upstream": upstream})
        sync(f"pipeline-start:{name}")
        kind = KINDS[spec.kind]
        ctx = StageContext(name=name, dir=stage_dir, inputs={r: out / u for r, u in spec.inputs.items()},
                           seed=cfg.seed, output_dir=out, collective=kind.collective, writer=lead)
        started = time.perf_counter()
        stats: dict[str, Any] = {}
        error: BaseException | None = None
        if kind.collective or lead:
            try:
                stats = kind.run(ctx, stage_config(kind.config, spec, name, "pipeline"))
                if lead and kind.produces == "records" and ctx.count_records() == 0:
                    raise StageError(name, f"produced no records (stats: {json.dumps(stats, default=str)}); "
                                           "every later stage would have nothing to work on")
            except StageError as e:
                error = e
            except (ValueError, FileNotFoundError) as e:  # bad input data or settings: say which stage met it
                error = StageError(name, str(e))
                error.__cause__ = e
            except Exception as e:  # noqa: BLE001 - re-raised below, once the other processes know
                error = e
        failed = failed_processes(error is None)
        if error is not None:
            raise error
        if failed:
            raise StageError(name, f"failed in process(es) {failed}; see their logs")
        seconds = time.perf_counter() - started
        counts = {}
        if kind.produces == "records" and lead:  # only process 0 writes records (the others may not have read any)
            counts = {"records": ctx.count_records()}
            counts["rows_per_s"] = round(counts["records"] / max(seconds, 1e-9), 1)
        if lead:
            _write_manifest(stage_dir, {"stage": name, "kind": spec.kind, "fingerprint": fps[name],
                                        "status": "done", "seconds": seconds, "counts": counts, "stats": stats,
                                        "upstream": upstream,
                                        "parts": ctx.record_parts(), "content": parts_digest(ctx.record_parts())})
            write_report(cfg)  # after every stage: a later stage (the export's card) and a watcher can read it
        sync(f"pipeline-done:{name}")
    return write_report(cfg) if lead else {}


def write_report(cfg: PipelineConfig) -> dict[str, Any]:
    """`report.json` and `report.md` from every stage manifest (also the ones skipped this time)."""
    out = Path(cfg.output_dir)
    stages = []
    for name, spec in cfg.stages.items():
        m = read_manifest(out / name)
        stages.append({"stage": name, "kind": spec.kind, "status": m.get("status", "pending"),
                       "seconds": m.get("seconds"), "counts": m.get("counts", {}), "stats": m.get("stats", {})})
    report = {"output_dir": str(out), "seed": cfg.seed, "stages": stages}
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / "report.md").write_text(report_markdown(report))
    write_html_report(cfg, report)  # report.html; never raises (a failed plot or section is logged and left out)
    return report
