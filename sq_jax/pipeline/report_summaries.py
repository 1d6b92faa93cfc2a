"""What the run report shows of each stage, read from its folder through the dataset layer, streaming.

One pass over a stage's records/ and dropped/ parts gives a JSON summary of bounded size (see report_stats): a
few kept and dropped examples (reservoirs, a few per drop reason), the drop reasons' counts, length and score
distributions as bounded samples, and a train stage's curves from metrics.jsonl. A summary is cached in
`<output_dir>/.report/<stage>.json` under a key of the stage's manifest (fingerprint, content digest, upstream
digests, status), so the report rewritten after every stage reads each stage's outputs once, not once a stage."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from sq_jax.data.dataset import iter_part, iter_rows, list_parts, read_json, write_json_atomic
from sq_jax.pipeline.report_stats import NumericSummary, Reservoir, words
from sq_jax.pipeline.score_job import load_scores
from sq_jax.pipeline.stages import DROPPED, RECORDS, STAGE_MANIFEST

SUMMARY_VERSION = 1  # bump when a summary or a plot changes: cached ones are recomputed
CACHE_DIR = ".report"
EXAMPLES = 3  # kept examples per filter, and dropped examples per reason
MAX_REASONS = 12  # distinct drop reasons with their own examples; later ones share one "other reasons" sample
TEXT_CHARS = 600  # example texts are cut to this many characters
CURVE_POINTS = 2000  # a train curve is thinned to at most this many points
MODEL_ROLES = frozenset({"model", "scorer"})  # input roles that carry a model, not rows
# Fields of a dropped row that say why it was dropped (what the filters and the judge write).
EVIDENCE = ("reason", "finish", "judge_finish", "judge_reply_end", "duplicate_of", "duplicate_question",
            "contaminated_with", "contaminated_ngram", "difficulty")
CURVE_METRICS = ("loss", "reward_accuracy", "reward_margin")


def text_of(row: Mapping[str, Any]) -> str:
    for field in ("question", "query", "chosen", "prompt"):
        if isinstance(row.get(field), str):
            return row[field]
    return json.dumps(row)[:TEXT_CHARS]


def _cut(text: Any, chars: int = TEXT_CHARS) -> str:
    text = str(text)
    return text if len(text) <= chars else text[: chars - 1] + "…"


def drop_reason(kind: str, row: Mapping[str, Any]) -> str:
    if row.get("reason"):
        return str(row["reason"])
    if row.get("duplicate_of") is not None:
        return "near_duplicate"
    if row.get("contaminated_with"):
        return f"contaminated: {row['contaminated_with']}"
    return {"filter_difficulty": "easiest"}.get(kind, "unknown")


def example(row: Mapping[str, Any]) -> dict[str, Any]:
    """An example as the report shows it: id, text (cut), the response if any, and the evidence fields."""
    out = {"id": str(row.get("id", "")), "text": _cut(text_of(row))}
    if isinstance(row.get("response"), str):
        out["response"] = _cut(row["response"], 400)
    out["evidence"] = {k: _cut(row[k], 400) if isinstance(row[k], str) else row[k] for k in EVIDENCE if k in row}
    return out


def _dropped(kind: str, folder: Path, seed: int) -> dict[str, Any]:
    """Drop reasons' counts and a few examples per reason, from a dropped/ folder, in one pass."""
    counts: dict[str, int] = {}
    samples: dict[str, Reservoir] = {}
    for row in iter_rows(folder):
        reason = drop_reason(kind, row)
        counts[reason] = counts.get(reason, 0) + 1
        key = reason if reason in samples or len(samples) < MAX_REASONS else "other reasons"
        samples.setdefault(key, Reservoir(EXAMPLES, seed)).add(example(row))
    return {"reasons": counts, "examples": {r: s.items for r, s in samples.items()}}


def _partners(examples: dict[str, list[dict[str, Any]]], folder: Path) -> None:
    """Fill in the kept question a sampled near-duplicate was matched to (one streaming pass over the kept records,
    stopping once every partner is found: the few sampled ids, never an index of all)."""
    wanted = {str(e["evidence"]["duplicate_of"]): e for es in examples.values() for e in es
              if e["evidence"].get("duplicate_of") is not None}
    for row in iter_rows(folder) if wanted else ():
        found = wanted.pop(str(row.get("id")), None)
        if found is not None:
            found["evidence"]["duplicate_question"] = _cut(text_of(row), 400)
        if not wanted:
            break


def _text_lengths(rows: Iterator[Mapping[str, Any]], field: str, seed: int,
                  kept: Reservoir | None = None) -> dict[str, Any]:
    """Word counts of `field` ("question": the row's question text, see `text_of`), and a few example rows."""
    lengths = NumericSummary(seed=seed)
    for row in rows:
        lengths.add(words(text_of(row) if field == "question" else row.get(field)))
        if kept is not None:
            kept.add(example(row))
    return lengths.to_json()


def _difficulty(stage_dir: Path, seed: int) -> dict[str, Any]:
    out = {}
    for side, folder in (("kept", RECORDS), ("dropped", DROPPED)):
        scores = NumericSummary(seed=seed)
        scores.extend(r["difficulty"] for r in iter_rows(stage_dir / folder) if r.get("difficulty") is not None)
        out[side] = scores.to_json()
    return out


def _rewards(stage_dir: Path, responses_dir: Path | None, seed: int) -> dict[str, Any]:
    """Reward scores of the chosen response vs the other samples of each question, and the majority-answer share.

    The scores of every response are the stage's `scores/part-k.npz`, aligned with the responses' parts; a
    question's responses are consecutive rows (the reward stage's own rule), and the stage's records, in the same
    question order, name the chosen one (`response_id`)."""
    chosen, others, share = NumericSummary(seed=seed), NumericSummary(seed=seed), NumericSummary(seed=seed)
    ranked = iter_rows(stage_dir / RECORDS)
    for row in iter_rows(stage_dir / RECORDS):
        if row.get("majority_share") is not None:
            share.add(row["majority_share"])
    parts = list_parts(responses_dir / RECORDS) if responses_dir is not None else []
    if parts and (stage_dir / "scores").is_dir():
        current, best = None, None
        for part, scores in zip(parts, load_scores(stage_dir / "scores", len(parts)), strict=True):
            for response, score in zip(iter_part(part), scores["scores"], strict=True):
                if response["question_id"] != current:
                    current, best = response["question_id"], next(ranked)
                (chosen if response["id"] == best["response_id"] else others).add(float(score))
    else:  # no per-response scores (cleaned up): the chosen ones only, from the records
        chosen.extend(r["reward"] for r in iter_rows(stage_dir / RECORDS) if r.get("reward") is not None)
    return {"chosen": chosen.to_json(), "others": others.to_json(), "majority_share": share.to_json()}


def _thin(points: list[list[float]]) -> list[list[float]]:
    stride = max(1, -(-len(points) // CURVE_POINTS))
    return points[::stride] if stride > 1 else points


def training_curves(path: Path) -> dict[str, dict[str, list[list[float]]]]:
    """metric -> {"train": [[step, value], ...], "eval": [...]} from a train stage's metrics.jsonl, streamed."""
    curves: dict[str, dict[str, list[list[float]]]] = {}
    if not path.is_file():
        return curves
    for row in iter_part(path):
        side = "eval" if row.get("kind") == "eval" else "train"
        for name in CURVE_METRICS:
            if isinstance(row.get(name), (int, float)) and "step" in row:
                curves.setdefault(name, {"train": [], "eval": []})[side].append([row["step"], row[name]])
    return {n: {side: _thin(p) for side, p in c.items()} for n, c in curves.items()}


def stage_summary(name: str, kind: str, stage_dir: Path, inputs: Mapping[str, Path], seed: int) -> dict[str, Any]:
    """The streamed part of a stage's section (see the module doc); the manifest's numbers are read apart."""
    out: dict[str, Any] = {}
    records, dropped = stage_dir / RECORDS, stage_dir / DROPPED
    if kind == "train":
        out["curves"] = training_curves(stage_dir / "metrics.jsonl")
    if records.is_dir():
        kept = Reservoir(EXAMPLES, seed)
        field = "response" if kind in ("respond", "reward", "export") else "question"
        out["lengths"] = {"field": field, **_text_lengths(iter_rows(records), field, seed, kept)}
        out["kept_examples"] = kept.items
    if dropped.is_dir():
        out["dropped"] = _dropped(kind, dropped, seed)
        if kind == "dedup":
            _partners(out["dropped"]["examples"], records)
    if kind == "filter_difficulty":
        out["difficulty"] = _difficulty(stage_dir, seed)
    if kind == "reward":
        out["rewards"] = _rewards(stage_dir, inputs.get("responses"), seed)
    return out


def _key(manifest: Mapping[str, Any]) -> str:
    fields = {k: manifest.get(k) for k in ("fingerprint", "content", "upstream", "status", "seconds")}
    return hashlib.sha256(json.dumps([SUMMARY_VERSION, fields], sort_keys=True, default=str).encode()).hexdigest()


def cached_summary(name: str, kind: str, out: Path, inputs: Mapping[str, str], seed: int) -> dict[str, Any]:
    """`stage_summary`, from the cache when the stage's manifest is unchanged since it was computed."""
    stage_dir = out / name
    manifest = read_json(stage_dir / STAGE_MANIFEST)
    if manifest.get("status") != "done":
        return {}
    key, cache = _key(manifest), out / CACHE_DIR / f"{name}.json"
    hit = read_json(cache)
    if hit.get("key") == key:
        return hit["summary"]
    summary = stage_summary(name, kind, stage_dir, {r: out / u for r, u in inputs.items()}, seed)
    write_json_atomic(cache, {"key": key, "summary": summary})
    return summary
