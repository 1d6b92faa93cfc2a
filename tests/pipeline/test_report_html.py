"""report.html: the streaming statistics behind it (bounded memory, exact counts), each stage's summary read from
synthetic stage folders, the decontamination evidence, and a report that survives a plot that cannot be drawn.
(The tiny pipeline's real report.html is checked in test_tiny_pipeline.py.)"""

from __future__ import annotations

import json
import math
import re
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from sq_jax.data.dataset import PartWriter, write_json_atomic
from sq_jax.pipeline import report_html, report_plots, report_summaries
from sq_jax.pipeline.config import PipelineConfig, StageSpec
from sq_jax.pipeline.filters import Decontaminator
from sq_jax.pipeline.report_stats import NumericSummary, Reservoir
from sq_jax.pipeline.report_summaries import EXAMPLES, stage_summary, training_curves
from sq_jax.pipeline.runner import write_report
from sq_jax.pipeline.stages.filtering import matched_words


def test_reservoir_is_bounded_and_uniform():
    hits = np.zeros(20)
    for seed in range(2000):
        sample = Reservoir(5, seed)
        sample.extend(range(20))
        assert len(sample.items) == 5 and len(set(sample.items)) == 5 and sample.seen == 20
        hits[sample.items] += 1
    assert np.all(np.abs(hits - 500) < 100), hits  # each item kept 2000 * 5/20 = 500 times, give or take
    small = Reservoir(10)
    small.extend(range(3))
    assert small.items == [0, 1, 2]


def test_numeric_summary_is_exact_on_counts_and_range_and_bounded_in_its_sample():
    values = np.random.default_rng(0).normal(3.0, 2.0, 50_000)
    summary = NumericSummary(sample_size=1000)
    summary.extend(values)
    summary.extend([math.nan, math.inf])
    out = summary.to_json()
    assert out["count"] == 50_000 and out["non_finite"] == 2
    assert out["mean"] == pytest.approx(values.mean(), rel=1e-9)
    assert (out["min"], out["max"]) == (values.min(), values.max())
    assert len(out["sample"]) == 1000 and set(out["sample"]) <= set(values.tolist())
    assert abs(np.mean(out["sample"]) - values.mean()) < 0.3  # a uniform sample, not the first 1000


def _parts(folder: Path, rows: list[dict], part_rows: int = 1000) -> None:
    with PartWriter(folder, part_rows) as writer:
        writer.write_all(rows)


def test_filter_summary_counts_every_reason_and_keeps_a_few_examples(tmp_path):
    stage = tmp_path / "language"
    _parts(stage / "records", [{"id": f"k{i}", "question": "word " * (3 + i % 7)} for i in range(3000)])
    reasons = ["empty"] * 50 + ["non_ascii"] * 400 + ["too_short"] * 7
    _parts(stage / "dropped", [{"id": f"d{i}", "question": "x", "reason": r} for i, r in enumerate(reasons)], 100)
    summary = stage_summary("language", "filter_language", stage, {}, seed=0)
    assert summary["dropped"]["reasons"] == {"empty": 50, "non_ascii": 400, "too_short": 7}
    examples = summary["dropped"]["examples"]
    assert {r: len(e) for r, e in examples.items()} == {"empty": EXAMPLES, "non_ascii": EXAMPLES, "too_short": EXAMPLES}
    assert all(e["evidence"]["reason"] == r for r, es in examples.items() for e in es)
    assert len(summary["kept_examples"]) == EXAMPLES
    lengths = summary["lengths"]
    assert lengths["count"] == 3000 and lengths["mean"] == pytest.approx(np.mean([3 + i % 7 for i in range(3000)]))
    assert (lengths["min"], lengths["max"]) == (3, 9)


def test_summary_streams_in_bounded_memory(tmp_path):
    stage = tmp_path / "dedup"
    text = "A farmer has many sheep and goats on the hill; how many legs are there in all? " * 3
    _parts(stage / "records", [{"id": f"k{i}", "question": f"{i} {text * 3}"} for i in range(6000)], 2000)
    size = sum(p.stat().st_size for p in (stage / "records").iterdir())
    tracemalloc.start()
    summary = stage_summary("dedup", "dedup", stage, {}, seed=0)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert summary["lengths"]["count"] == 6000
    assert size > 4e6 and peak < 0.25 * size, (peak, size)  # the rows as dicts would take several times `size`


def test_dedup_examples_name_their_near_duplicate_partner(tmp_path):
    stage = tmp_path / "dedup"
    _parts(stage / "records", [{"id": f"q{i}", "question": f"question number {i}"} for i in range(50)], 20)
    _parts(stage / "dropped", [{"id": "q90", "question": "question number 7 again", "duplicate_of": "q7"},
                               {"id": "q91", "question": "question number 44 again", "duplicate_of": "q44"}])
    examples = stage_summary("dedup", "dedup", stage, {}, seed=0)["dropped"]["examples"]["near_duplicate"]
    partners = {e["id"]: e["evidence"]["duplicate_question"] for e in examples}
    assert partners == {"q90": "question number 7", "q91": "question number 44"}


def test_decontamination_evidence_is_the_matching_words():
    long = "a train leaves the station at noon and travels at sixty miles per hour for three hours straight"
    index = Decontaminator({"gsm8k": [long], "math500": ["compute the sum of all the positive divisors of 120"]})
    question = "Tom says: A train leaves the station at noon and travels at sixty miles per hour. How far?"
    gram = matched_words(index, question)
    assert len(gram.split()) == 13 and gram in long and index.match(gram) == "gsm8k"
    inner = "First, compute the sum of all the positive divisors of 120 and then tell me."
    assert matched_words(index, inner) == "compute the sum of all the positive divisors of 120"
    assert matched_words(index, "the positive divisors of 120") == "the positive divisors of 120"


def _scores(folder: Path, index: int, scores: list[float]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / f"part-{index:05d}.npz", scores=np.asarray(scores, np.float32),
             lengths=np.ones(len(scores), np.int32))


def _manifest(stage: Path, kind: str, seconds: float, records: int | None, stats: dict) -> None:
    counts = {"records": records} if records is not None else {}
    write_json_atomic(stage / "_stage.json", {"stage": stage.name, "kind": kind, "status": "done", "stats": stats,
                                              "seconds": seconds, "counts": counts, "fingerprint": stage.name})


@pytest.fixture
def synthetic_run(tmp_path):
    """A small run: synthesis -> language -> difficulty -> responses (2 a question) -> rewards -> export, and a
    QPO train stage, each folder as the stages write it."""
    out = tmp_path / "run"
    questions = [{"id": f"q{i}", "question": f"How many apples are {i} plus {i}?"} for i in range(12)]
    _parts(out / "questions" / "records", questions)
    _parts(out / "questions" / "dropped", [{"id": "q99", "question": "How many", "reason": "length"}])
    _manifest(out / "questions", "synthesize", 10.0, 12, {"requests": 13, "dropped_length": 1,
                                                          "last_run_tokens_per_s": 50.0})
    _parts(out / "language" / "records", questions[:10])
    _parts(out / "language" / "dropped", [{**q, "reason": "non_ascii"} for q in questions[10:]])
    _manifest(out / "language", "filter_language", 0.5, 10, {"input": 12, "kept": 10, "dropped_non_ascii": 2})
    scores = np.linspace(0.1, 1.0, 10)
    _parts(out / "difficulty" / "records", [{**q, "difficulty": s} for q, s in zip(questions[2:10], scores[2:])])
    _parts(out / "difficulty" / "dropped", [{**q, "difficulty": s} for q, s in zip(questions[:2], scores[:2])])
    _manifest(out / "difficulty", "filter_difficulty", 2.0, 8,
              {"input": 10, "kept": 8, "dropped_easy": 2, "threshold": float(scores[1])})
    responses = [{"id": f"{q['id']}#{k}", "question_id": q["id"], "query": q["question"],
                  "response": "so " * (5 + k) + "The answer is \\boxed{2}."} for q in questions[2:10] for k in (0, 1)]
    _parts(out / "responses" / "records", responses[:10])  # two parts; question q6 straddles them
    _parts(out / "responses" / "records2", responses[10:])
    (out / "responses" / "records2" / "part-00000.jsonl").rename(out / "responses" / "records" / "part-00001.jsonl")
    _manifest(out / "responses", "respond", 4.0, 16, {"requests": 16, "last_run_tokens_per_s": 80.0})
    rewards = [0.5, -0.5] * 4 + [-1.0, 2.0] * 4  # first sample wins for 4 questions, the second for 4
    _scores(out / "rewards" / "scores", 0, rewards[:10])
    _scores(out / "rewards" / "scores", 1, rewards[10:])
    best = [{"id": q["id"], "query": q["question"], "response": "x", "reward": max(rewards[2 * i : 2 * i + 2]),
             "response_id": f"{q['id']}#{0 if i < 4 else 1}", "majority_share": 1.0 if i % 2 else 0.5}
            for i, q in enumerate(questions[2:10])]
    _parts(out / "rewards" / "records", best)
    _manifest(out / "rewards", "reward", 3.0, 8, {"responses": 16, "questions": 8})
    _parts(out / "export" / "records", best)
    _manifest(out / "export", "export", 0.1, 8, {"rows": 8})
    metrics = [{"kind": "train", "step": s, "loss": 1.0 / s, "reward_accuracy": 0.5, "reward_margin": 0.1 * s}
               for s in range(1, 6)] + [{"kind": "eval", "step": 5, "loss": 0.3, "reward_accuracy": 0.9}]
    (out / "qpo").mkdir(parents=True)
    (out / "qpo" / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    _manifest(out / "qpo", "train", 20.0, None, {"task": "qpo", "steps": 5, "final_loss": 0.2,
                                                  "eval": {"reward_accuracy": 0.9}})
    stages = {"questions": StageSpec("synthesize"), "language": StageSpec("filter_language", {"questions": "questions"}),
              "difficulty": StageSpec("filter_difficulty", {"questions": "language", "scorer": "qpo"}),
              "responses": StageSpec("respond", {"questions": "difficulty", "model": "qpo"}),
              "rewards": StageSpec("reward", {"responses": "responses"}),
              "export": StageSpec("export", {"data": "rewards"}), "qpo": StageSpec("train")}
    return PipelineConfig(output_dir=str(out), stages=stages), out


def test_reward_summary_splits_chosen_from_other_samples(synthetic_run):
    cfg, out = synthetic_run
    summary = stage_summary("rewards", "reward", out / "rewards", {"responses": out / "responses"}, seed=0)["rewards"]
    assert sorted(summary["chosen"]["sample"]) == [0.5] * 4 + [2.0] * 4
    assert sorted(summary["others"]["sample"]) == [-1.0] * 4 + [-0.5] * 4
    assert summary["majority_share"]["mean"] == 0.75


def test_training_curves_from_metrics(synthetic_run):
    _, out = synthetic_run
    curves = training_curves(out / "qpo" / "metrics.jsonl")
    assert curves["loss"]["train"] == [[s, 1.0 / s] for s in range(1, 6)] and curves["loss"]["eval"] == [[5, 0.3]]
    assert curves["reward_margin"]["eval"] == [] and curves["reward_accuracy"]["eval"] == [[5, 0.9]]


def _plot_ids(html: str) -> set[str]:
    return set(re.findall(r'<figure id="plot-([\w-]+)"><img class="plot" alt="[^"]*"\s+src="data:image/png;base64,', html))


def test_report_html_holds_every_section_and_is_cached(synthetic_run, monkeypatch):
    cfg, out = synthetic_run
    write_report(cfg)
    html = (out / "report.html").read_text()
    assert _plot_ids(html) == {"funnel", "question-lengths", "response-lengths", "difficulty", "rewards",
                               "majority-share", "train-qpo", "wall-time"}
    assert "http://" not in html.replace("http://www.w3.org", "") and "https://" not in html  # nothing fetched
    for name in ("questions", "language", "difficulty"):
        assert f'id="filter-{name}"' in html
    assert "non_ascii (2 rows)" in html and "length (1 rows)" in html and "easiest (2 rows)" in html
    assert 'id="funnel-difficulty"' in html and "× 125,000" in html  # 1M / 8 final rows
    cost = report_html.cost_projection(cfg, {s["stage"]: s for s in json.loads((out / "report.json").read_text())["stages"]})
    scaled = {r["stage"] for r in cost["rows"] if r["factor"] > 1}
    assert scaled == {"questions", "language", "difficulty", "responses", "rewards", "export"}  # not qpo
    assert cost["total_hours"] == pytest.approx((19.6 * 125_000 + 20.0) / 3600)
    # A second report reads no stage folder (every summary comes from the cache) and draws no plot.
    def no_reading(*args, **kwargs):
        raise AssertionError("a stage was read or a plot drawn again though nothing changed")

    monkeypatch.setattr(report_summaries, "stage_summary", no_reading)
    for name in ("funnel", "histograms", "curves", "bars"):
        monkeypatch.setattr(report_plots, name, no_reading)
    write_report(cfg)
    again = (out / "report.html").read_text()
    assert "could not be drawn" not in again and "<p class=\"note\">stage" not in again  # a redraw would be a note
    assert _plot_ids(again) == _plot_ids(html)


def test_a_plot_that_fails_is_a_note_not_a_failed_run(synthetic_run, monkeypatch, caplog):
    cfg, out = synthetic_run

    def broken(*args, **kwargs):
        raise RuntimeError("no fonts")

    monkeypatch.setattr(report_plots, "histograms", broken)
    report = write_report(cfg)  # the runner's call after every stage
    assert [s["stage"] for s in report["stages"]] == list(cfg.stages)
    html = (out / "report.html").read_text()
    assert "could not be drawn: RuntimeError: no fonts" in html and "plot-funnel" in html
    assert "plot difficulty failed" in caplog.text
