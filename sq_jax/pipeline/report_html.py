"""`report.html`: the run report a person looks at, beside report.md. One self-contained file (plots embedded
as base64 PNG, no network): the funnel with drop reasons, distributions, kept and dropped examples of every
filter, training curves, wall time and throughput, and a projection of the cost at the paper's 1M scale.

Written by `sq-jax pipeline report CONFIG` and by the runner after every stage. Nothing here may fail a run: a
plot or a stage section that cannot be drawn is logged and replaced by a note saying why."""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from sq_jax.data.dataset import atomic_open, read_json, write_json_atomic
from sq_jax.pipeline.config import PipelineConfig
from sq_jax.pipeline.report_summaries import CACHE_DIR, MODEL_ROLES, SUMMARY_VERSION, cached_summary
from sq_jax.pipeline.report_template import TEMPLATE

log = logging.getLogger(__name__)
REPORT_HTML = "report.html"
PAPER_ROWS = 1_000_000  # the paper's final dataset: 1M (question, response) pairs
FILTER_KINDS = ("synthesize", "filter_language", "dedup", "decontaminate", "judge", "filter_difficulty")
GENERATION_KINDS = ("synthesize", "judge", "difficulty_labels", "respond", "optimise")


class Plots:
    """Draws each plot, keeping what failed as a note instead of raising (a report never fails a run).

    A plot is kept in `<cache>/<id>.json` with a hash of what it was drawn from: the report rewritten after every
    stage redraws only the plots whose data changed (matplotlib takes ~0.1-0.3 s a figure)."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache
        self.images: dict[str, dict[str, str]] = {}  # plot id -> {title, png | error}

    def draw(self, plot_id: str, title: str, draw: Callable[..., str], *args: Any, **kwargs: Any) -> None:
        try:
            # sorted keys: a summary read back from its cache (written sorted) is the same data, the same key
            key = hashlib.sha256(json.dumps([SUMMARY_VERSION, args, kwargs], sort_keys=True, default=str).encode()
                                 ).hexdigest()
            path = self.cache / f"{plot_id}.json"
            png = read_json(path).get("png") if read_json(path).get("key") == key else None
            if png is None:
                png = draw(*args, **kwargs)
                write_json_atomic(path, {"key": key, "png": png})
            self.images[plot_id] = {"title": title, "png": png}
        except Exception as e:  # noqa: BLE001 - any plotting error becomes a note in the report
            log.warning("report.html: plot %s failed: %s: %s", plot_id, type(e).__name__, e)
            self.images[plot_id] = {"title": title, "error": f"{type(e).__name__}: {e}"}


def _data_lineage(cfg: PipelineConfig, final: str) -> set[str]:
    """Stages whose rows flow into `final` (rows, not models: the model roles are left out), and `final`."""
    todo, seen = [final], set()
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += [up for role, up in cfg.stages[name].inputs.items() if role not in MODEL_ROLES]
    return seen


def _final_stage(cfg: PipelineConfig, stages: Mapping[str, Mapping[str, Any]]) -> str | None:
    """The stage whose records are the run's dataset: the last export, else the last reward stage."""
    for kind in ("export", "reward"):
        names = [n for n, s in stages.items() if s["kind"] == kind]
        if names:
            return names[-1]
    return None


def _records_in(name: str, stage: Mapping[str, Any], cfg: PipelineConfig,
                stages: Mapping[str, Mapping[str, Any]]) -> int | None:
    """A filter's input; the requests of n samples a question (respond) and the responses a reward stage ranks;
    else the records of its input stages; else (synthesis from nothing) its requests."""
    stats = stage["stats"]
    key = {"respond": "requests", "reward": "responses"}.get(stage["kind"], "input")
    if isinstance(stats.get(key), int):
        return stats[key]
    ups = [u for r, u in cfg.stages[name].inputs.items() if r not in MODEL_ROLES]
    known = [stages[u]["counts"].get("records") for u in ups]
    if ups and all(isinstance(k, int) for k in known):
        return sum(known)
    return stats["requests"] if isinstance(stats.get("requests"), int) else None


def funnel_rows(cfg: PipelineConfig, stages: Mapping[str, Mapping[str, Any]],
                summaries: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Records in and out of every records stage, the drop counts of its stats and its dropped/ rows' reasons."""
    rows = []
    for name, s in stages.items():
        if "records" not in s["counts"]:
            continue
        drops = {k.removeprefix("dropped_"): v for k, v in s["stats"].items()
                 if k.startswith("dropped_") and isinstance(v, int) and v}
        if len(drops) > 1:
            drops.pop("contaminated", None)  # the sum of the per-benchmark counts beside it
        rows.append({"stage": name, "kind": s["kind"], "in": _records_in(name, s, cfg, stages),
                     "out": s["counts"]["records"], "drops": drops,
                     "dropped_rows": summaries.get(name, {}).get("dropped", {}).get("reasons", {})})
    return rows


def cost_projection(cfg: PipelineConfig, stages: Mapping[str, Mapping[str, Any]]) -> dict[str, Any] | None:
    """Each stage's time at the paper's 1M final rows, from this run's measured seconds (see `assumptions`)."""
    final = _final_stage(cfg, stages)
    final_rows = stages[final]["counts"].get("records") if final else None
    if not final_rows:
        return None
    scale = PAPER_ROWS / final_rows
    # The rows of the final dataset flow from the synthesis through the filters; the student trains on them.
    scaled = _data_lineage(cfg, final)
    scaled = {n for n in scaled if any(stages[m]["kind"] == "synthesize" for m in _data_lineage(cfg, n))}
    scaled |= {n for n in stages if final in _data_lineage(cfg, n)}
    rows, total = [], 0.0
    for name, s in stages.items():
        if s["seconds"] is None:
            continue
        factor = scale if name in scaled else 1.0
        hours = s["seconds"] * factor / 3600
        total += hours
        rows.append({"stage": name, "kind": s["kind"], "seconds": s["seconds"], "factor": factor, "hours": hours})
    return {"final_stage": final, "final_rows": final_rows, "scale": scale, "rows": rows, "total_hours": total}


def _distribution_plots(plots: Plots, stages: Mapping[str, Mapping[str, Any]],
                        summaries: Mapping[str, Mapping[str, Any]]) -> None:
    from sq_jax.pipeline import report_plots  # matplotlib: slow to import, and only the plots need it

    def of(kind: str) -> list[str]:
        return [n for n, s in stages.items() if s["kind"] == kind and summaries.get(n)]

    question_sets = {f"{n} ({stages[n]['kind']})": summaries[n]["lengths"]["sample"] for n in stages
                     if summaries.get(n, {}).get("lengths", {}).get("field") == "question"
                     and stages[n]["kind"] in ("synthesize", "filter_difficulty", "mix")}
    if any(question_sets.values()):  # a run without synthesis (or not that far yet) has no such plot
        plots.draw("question-lengths", "Question length (words): synthesized vs after the filters",
                   report_plots.histograms, question_sets, "words per question")
    responses = {f"{n} (all samples)": summaries[n]["lengths"]["sample"] for n in of("respond")}
    responses |= {f"{n} (chosen)": summaries[n]["lengths"]["sample"] for n in of("reward")}
    if any(responses.values()):
        plots.draw("response-lengths", "Response length (words): every sample vs the chosen best of n",
                   report_plots.histograms, responses, "words per response")
    for n in of("filter_difficulty"):
        d = summaries[n]["difficulty"]
        plots.draw("difficulty", f"Predicted difficulty (fail rate) in {n}, the cut drawn", report_plots.histograms,
                   {"kept": d["kept"]["sample"], "dropped (easiest)": d["dropped"]["sample"]}, "predicted fail rate",
                   threshold=stages[n]["stats"].get("threshold"))
    for n in of("reward"):
        r = summaries[n]["rewards"]
        plots.draw("rewards", f"Reward scores in {n}: the chosen response vs the other samples",
                   report_plots.histograms, {"chosen": r["chosen"]["sample"], "other samples": r["others"]["sample"]},
                   "reward")
        plots.draw("majority-share", f"Majority-answer share per question in {n}", report_plots.histograms,
                   {"questions": r["majority_share"]["sample"]},
                   "share of a question's samples giving its majority answer", bins=10)


def build_context(cfg: PipelineConfig, report: Mapping[str, Any], every_plot: bool = False) -> dict[str, Any]:
    """Everything the template shows; stage sections that fail to read become notes.

    The funnel and wall-time plots change with every stage, so while stages are left to run (the report rewritten
    after each) they are drawn only with `every_plot`; the other plots are drawn once, when their stage is done."""
    from sq_jax.pipeline import report_plots  # matplotlib: slow to import, and only the plots need it

    stages = {s["stage"]: s for s in report["stages"]}
    out, summaries, problems = Path(cfg.output_dir), {}, []
    for name, s in stages.items():
        try:
            summaries[name] = cached_summary(name, s["kind"], out, cfg.stages[name].inputs, cfg.seed)
        except Exception as e:  # noqa: BLE001 - a stage that cannot be read is a note, not a failed run
            log.warning("report.html: stage %s: %s: %s", name, type(e).__name__, e)
            problems.append(f"stage {name}: {type(e).__name__}: {e}")
            summaries[name] = {}
    plots = Plots(out / CACHE_DIR / "plots")
    funnel = funnel_rows(cfg, stages, summaries)
    finished = every_plot or all(s["status"] == "done" for s in stages.values())
    if finished:
        plots.draw("funnel", "Records in and out of every stage", report_plots.funnel,
                   [(r["stage"], r["in"] or r["out"], r["out"]) for r in funnel])
    _distribution_plots(plots, stages, summaries)
    for name in stages:
        if summaries[name].get("curves"):
            plots.draw(f"train-{name}", f"Training curves of {name}", report_plots.curves, summaries[name]["curves"])
    timed = {n: round(s["seconds"], 1) for n, s in stages.items() if s["seconds"] is not None}
    if finished:
        plots.draw("wall-time", "Wall time per stage (seconds)", report_plots.bars, timed, "seconds")
    return {"finished": finished, "cfg": cfg, "report": report, "stages": stages, "summaries": summaries, "plots": plots.images,
            "funnel": funnel, "problems": problems, "cost": cost_projection(cfg, stages),
            "filters": [n for n, s in stages.items() if s["kind"] in FILTER_KINDS or summaries[n].get("dropped")],
            "trains": [n for n, s in stages.items() if s["kind"] == "train"],
            "generation_kinds": GENERATION_KINDS, "paper_rows": PAPER_ROWS,
            "written": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def render(context: Mapping[str, Any]) -> str:
    return TEMPLATE.render(**context)


def write_html_report(cfg: PipelineConfig, report: Mapping[str, Any], every_plot: bool = False) -> Path | None:
    """`<output_dir>/report.html` from the run report (`runner.write_report`'s); None, logged, when it fails.
    `every_plot`: draw the funnel and wall-time plots even while stages are left to run (see `build_context`)."""
    path = Path(cfg.output_dir) / REPORT_HTML
    try:
        html = render(build_context(cfg, report, every_plot))
        with atomic_open(path) as f:
            f.write(html)
        return path
    except Exception as e:  # noqa: BLE001 - the report is for people; the run goes on without it
        log.warning("report.html not written: %s: %s", type(e).__name__, e)
        return None
