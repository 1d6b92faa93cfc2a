"""`sq-jax generate CONFIG`: prompts (records, or the pre-query template and a count) -> sharded JSONL outputs.

Shards are written atomically once every request in them is done, and listed in `_manifest.json` (each with the
dataset layer's part entry: name, rows, bytes, sha256); a rerun skips finished shards, so a killed job resumes
without losing or duplicating a record. The prompts stream from their file or records folder: a process renders
only the shards it generates, and only while they are in flight. A `sink` (the pipeline's generation stages) turns
each finished shard into the stage's own record parts instead of a raw shard file, so outputs are on disk once. Each request's seed derives
from the job seed and the request's stable id, so outputs do not depend on batching, order or resumption.

With several JAX processes (a multi-host slice), process p generates shards p, p + P, p + 2P, ... on its own
devices and lists them in its own `_manifest.process<p>.json`; the shard files are the ones a single process
writes, byte for byte. At the end process 0 merges the manifests into `_manifest.json`. The output folder must be
shared by the hosts (a local disk in tests; NFS/Filestore or a gcsfuse-mounted bucket on a pod).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import jax
from tqdm.auto import tqdm

from sq_jax.configlib import config_hash, to_dict
from sq_jax.data.dataset import write_json_atomic, write_part
from sq_jax.data.fingerprint import local_content_hash
from sq_jax.data.sources import Record, stream_records
from sq_jax.models.tokenizer import encode_prompt
from sq_jax.parallel.distributed import sync
from sq_jax.prompts.formats import PromptFormat
from sq_jax.sampling.engine_factory import EngineSettings, build_engine
from sq_jax.sampling.loop import Completion, Request, run_loop
from sq_jax.sampling.offline import run_driver
from sq_jax.sampling.sampling import SamplingDefaults

log = logging.getLogger(__name__)
MANIFEST = "_manifest.json"


@dataclasses.dataclass(frozen=True)
class PromptSection:
    mode: Literal["pre_query", "solver", "judge", "text"] = "pre_query"
    count: int = 0  # pre_query: how many questions to synthesise
    path: str | None = None  # solver / judge / text: records to read
    field: str = "question"  # the field holding the question (solver, judge) or the full prompt (text)
    id_field: str = "id"
    limit: int | None = None
    judge_prompt: Literal["sq-jax", "paper"] = "sq-jax"  # judge mode: prompts/judge.JUDGE_PROMPTS
    # What an output carries of its input record: the prompt field, or the whole record (under "input").
    carry: Literal["field", "record"] = "field"


@dataclasses.dataclass(frozen=True)
class SamplingSection(SamplingDefaults):
    seed: int = 0
    stop: list[str] = dataclasses.field(default_factory=list)  # extra stop strings cut from the text


@dataclasses.dataclass(frozen=True)
class GenerateConfig:
    model: str
    output_dir: str
    prompts: PromptSection = dataclasses.field(default_factory=PromptSection)
    samples_per_prompt: int = 1
    sampling: SamplingSection = dataclasses.field(default_factory=SamplingSection)
    engine: EngineSettings = dataclasses.field(default_factory=EngineSettings)
    backend: Literal["jetstream", "raw"] = "jetstream"
    shard_size: int = 1000
    window: int | None = None

    def __post_init__(self) -> None:
        if self.samples_per_prompt < 1 or self.shard_size < 1:
            raise ValueError("samples_per_prompt and shard_size must be >= 1")
        if self.prompts.mode == "pre_query" and self.prompts.count < 1:
            raise ValueError("prompts.count must be >= 1 for mode pre_query")
        if self.prompts.mode != "pre_query" and not self.prompts.path:
            raise ValueError(f"prompts.path is required for mode {self.prompts.mode}")


def request_seed(job_seed: int, request_id: str) -> int:
    digest = hashlib.sha256(f"{job_seed}/{request_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


Prompt = tuple[str, str, dict]  # (prompt id, prompt text, fields carried into the output)
ShardItem = tuple[str, int, str, dict]  # (prompt id, sample index, prompt text, carried fields)


def _prompt_records(p: PromptSection):
    return stream_records(p.path, fields=[p.field], limit=p.limit)


def count_prompts(cfg: GenerateConfig) -> int:
    """How many prompts the job has, checked in one streaming pass before any model is loaded: every record has
    the prompt field, and prompt ids are unique (a duplicate would give two outputs one id)."""
    p = cfg.prompts
    if p.mode == "pre_query":
        return p.count
    seen: set[str] = set()
    for r in _prompt_records(p):
        pid = _prompt_id(r, p)
        if pid in seen:
            raise ValueError(f"{r.source}:{r.line}: duplicate prompt id {pid!r} (ids must be unique)")
        seen.add(pid)
    return len(seen)


def _prompt_id(r: Record, p: PromptSection) -> str:
    return str(r.data.get(p.id_field, f"{Path(r.source).name}:{r.line}"))


def iter_prompts(cfg: GenerateConfig, fmt: PromptFormat) -> Iterator[Prompt]:
    """(prompt id, prompt text, fields to carry into the output) in a stable order, streamed."""
    p = cfg.prompts
    if p.mode == "pre_query":
        yield from ((f"q{i:09d}", fmt.pre_query_template, {}) for i in range(p.count))
        return
    render = {"solver": fmt.solver_prompt, "judge": lambda q: fmt.judge_prompt(q, p.judge_prompt),
              "text": lambda text: text}[p.mode]
    for r in _prompt_records(p):
        carry = {"input": r.data} if p.carry == "record" else {p.field: r.data[p.field]}
        yield _prompt_id(r, p), render(str(r.data[p.field])), carry


def build_prompts(cfg: GenerateConfig, fmt: PromptFormat) -> list[Prompt]:
    """Every prompt in a list: for small jobs and tests (the job itself streams them)."""
    count_prompts(cfg)
    return list(iter_prompts(cfg, fmt))


def iter_shards(cfg: GenerateConfig, fmt: PromptFormat, wanted: set[int]) -> Iterator[tuple[int, list[ShardItem]]]:
    """(shard index, its requests) for the shards in `wanted`, in order. The prompts stream past: a process holds
    the shards it has in flight, never the job's prompts."""
    if not wanted:
        return
    last = max(wanted)
    requests = ((pid, j, text, carry) for pid, text, carry in iter_prompts(cfg, fmt)
                for j in range(cfg.samples_per_prompt))
    items: list[ShardItem] = []
    for position, item in enumerate(requests):
        k = position // cfg.shard_size
        if k in wanted:
            items.append(item)
        if position % cfg.shard_size == cfg.shard_size - 1:  # shard k is complete: hand it out at once
            if items:
                yield k, items
                items = []
            if k >= last:
                return  # nothing past the last wanted shard is read
    if items:
        yield k, items  # the last shard, short


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    cut = min((text.find(s) for s in stops if s in text), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def _manifest(out: Path, name: str = MANIFEST) -> dict:
    path = out / name
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_manifest(out: Path, manifest: dict, name: str = MANIFEST) -> None:
    write_json_atomic(out / name, manifest)


def input_fingerprints(cfg: GenerateConfig) -> dict[str, dict]:
    """What the outputs were generated from: the content hash of the prompts file (unless pre-query) and of the
    model folder. A hub id or a non-local source gets None: its name (and revision) is in the config hash."""
    named = {"model": cfg.model}
    if cfg.prompts.mode != "pre_query":
        named = {"prompts": cfg.prompts.path, **named}
    return {role: {"path": value, "sha256": local_content_hash(value)} for role, value in named.items()}


def check_inputs(out: Path, previous: dict[str, dict], inputs: dict[str, dict]) -> None:
    """Refuse to add shards to outputs generated from other prompts or another model (never a mix)."""
    for name, old in previous.items():
        if not old.get("finished_shards"):
            continue  # nothing generated yet: nothing to mix with
        recorded = old.get("inputs")
        if recorded is None:
            raise ValueError(f"{out / name}: its {len(old['finished_shards'])} finished shard(s) were written "
                             "without input fingerprints (an older sq-jax), so a changed prompts file or model "
                             f"cannot be ruled out. {_WHAT_TO_DO}")
        for role, now in inputs.items():
            was = recorded.get(role, {}).get("sha256")
            if was != now["sha256"]:
                raise ValueError(
                    f"{out / name}: the {_LABELS[role]} {now['path']} changed since the "
                    f"{len(old['finished_shards'])} finished shard(s) here were generated from it (content sha256 "
                    f"{was}, now {now['sha256']}); resuming would mix outputs of both. {_WHAT_TO_DO}")


_LABELS = {"prompts": "prompts file", "model": "model"}
_WHAT_TO_DO = ("Use a new output_dir, or rerun with --restart (run_generate(..., restart=True)) to delete these "
               "shards and generate every one again.")


def _clear(out: Path) -> None:
    """Delete a job's shards and manifests (a restart regenerates everything)."""
    for path in [*out.glob("shard-*.jsonl"), out / MANIFEST, *out.glob("_manifest.process*.json")]:
        path.unlink(missing_ok=True)


def _process_manifests(out: Path) -> dict[str, dict]:
    """File name -> manifest of every process that ran a multi-process job here."""
    return {p.name: json.loads(p.read_text()) for p in sorted(out.glob("_manifest.process*.json"))}


def _merge_stats(parts: list[dict]) -> dict:
    """Counters summed over processes; `last_run` summed too, except seconds (the slowest host)."""
    merged: dict = {}
    for stats in parts:
        for key, value in stats.items():
            if key == "last_run":
                run = merged.setdefault("last_run", {"requests": 0, "output_tokens": 0, "seconds": 0.0})
                run["requests"] += value["requests"]
                run["output_tokens"] += value["output_tokens"]
                run["seconds"] = max(run["seconds"], value["seconds"])
            elif isinstance(value, (int, float)):
                merged[key] = merged.get(key, 0) + value
    if "last_run" in merged:
        run = merged["last_run"]
        run["tokens_per_s"] = run["output_tokens"] / max(run["seconds"], 1e-9)
    return merged


ShardSink = Callable[[int, list[dict]], dict]  # (shard index, its outputs in request order) -> what it wrote


def raw_shards(out: Path) -> ShardSink:
    """The standalone job's sink: each shard's outputs as `shard-NNNNN.jsonl`, atomically."""
    return lambda k, rows: {"part": write_part(out / f"shard-{k:05d}.jsonl", rows)}


def _output_row(item: ShardItem, done: Completion, text: str, hit: bool) -> dict:
    pid, j, prompt, carry = item
    return {"id": f"{pid}#{j}", "prompt_id": pid, "sample": j, **carry, "prompt": prompt, "output": text,
            "finish_reason": "stop" if hit else done.finish_reason, "num_tokens": len(done.token_ids),
            "error": done.error}


def _open_job(cfg: GenerateConfig, out: Path, processes: int, index: int, restart: bool) -> tuple[dict, dict]:
    """(what every earlier run recorded, by manifest file; this job's input fingerprints), refusing a job that
    would add shards to outputs of another config, other prompts or another model."""
    out.mkdir(parents=True, exist_ok=True)
    if restart:
        if index == 0:
            _clear(out)
        if processes > 1:
            sync(f"generate-restart:{out}")
    digest = config_hash(to_dict(cfg) | {"output_dir": None, "window": None, "backend": None})
    previous = {MANIFEST: _manifest(out), **_process_manifests(out)}
    for path, old in previous.items():
        if old and old.get("config_hash") != digest:
            raise ValueError(f"{out / path}: written by a different config (hash {old.get('config_hash')}, "
                             f"now {digest}). {_WHAT_TO_DO}")
    inputs = input_fingerprints(cfg)  # before the engine: a refusal costs no model load
    check_inputs(out, previous, inputs)
    return previous, {"config_hash": digest, "inputs": inputs}


def run_generate(cfg: GenerateConfig, *, collective: bool = True, restart: bool = False,
                 sink: ShardSink | None = None) -> dict:
    """Run (or resume) a generation job; returns the manifest (merged over processes).

    `collective`: every process runs this call and takes its share of the shards; False when one process runs it
    alone (the others are busy elsewhere or waiting), which then generates every shard on its own devices.
    `restart`: delete what an earlier run left in output_dir (raw shards, manifests) and generate every shard again.
    `sink`: what becomes of a finished shard (default `raw_shards`); the process that generated it calls it, and
    the manifest keeps what it returns under `shards` (a sink's files are its owner's to clear)."""
    processes, index = (jax.process_count(), jax.process_index()) if collective else (1, 0)
    own = MANIFEST if processes == 1 else f"_manifest.process{index}.json"
    out = Path(cfg.output_dir)
    previous, identity = _open_job(cfg, out, processes, index, restart)
    num_requests = count_prompts(cfg) * cfg.samples_per_prompt
    num_shards = -(-num_requests // cfg.shard_size)
    sink = sink or raw_shards(out)
    s = cfg.sampling
    default = s.params()
    loaded = build_engine(cfg.model, cfg.engine, default, jetstream_api=cfg.backend == "jetstream")
    engine, tokenizer = loaded.engine, loaded.tokenizer
    # Whoever finished a shard before (another process count, an earlier run), it is not generated again.
    known = {k: info for m in previous.values() for k, info in m.get("shards", {}).items()}
    finished = {k for m in previous.values() for k in m.get("finished_shards", [])}
    mine = set(range(index, num_shards, processes))
    manifest = {**identity, "num_requests": num_requests, "num_shards": num_shards,
                "finished_shards": sorted(finished & mine),
                "shards": {str(k): known[str(k)] for k in sorted(finished & mine) if str(k) in known},
                "stats": _manifest(out, own).get("stats", {})}
    _write_manifest(out, manifest, own)
    todo = sorted(mine - finished)
    inflight: dict[int, list[ShardItem]] = {}
    pending: dict[int, dict[str, Completion]] = {}
    size = lambda k: min(cfg.shard_size, num_requests - k * cfg.shard_size)  # noqa: E731

    def requests() -> Iterator[Request]:
        last_text, ids = None, []
        for k, items in iter_shards(cfg, loaded.prompt_format, set(todo)):
            inflight[k], pending[k] = items, {}
            for pid, j, text, _ in items:
                if text != last_text:  # a prompt's samples are consecutive; the pre-query prompt is one text
                    last_text, ids = text, encode_prompt(tokenizer, text)
                rid = f"{pid}#{j}"
                yield Request(ids, dataclasses.replace(default, seed=request_seed(s.seed, rid)), id=(k, rid))

    bar = tqdm(total=sum(size(k) for k in todo), desc="generate", unit="req")
    started, tokens = time.perf_counter(), 0

    def on_complete(done: Completion) -> None:
        nonlocal tokens
        k, rid = done.id
        pending[k][rid] = done
        tokens += len(done.token_ids)
        bar.update(1)
        bar.set_postfix(tok_s=f"{tokens / max(time.perf_counter() - started, 1e-9):,.0f}")
        if len(pending[k]) == len(inflight[k]):
            _finish_shard(k)

    def _finish_shard(k: int) -> None:
        rows, counts = [], {"ok": 0, "error": 0, "stop": 0, "length": 0, "cache": 0, "stop_string": 0}
        for item in inflight.pop(k):
            done = pending[k][f"{item[0]}#{item[1]}"]
            text, hit = cut_at_stop(tokenizer.decode(done.token_ids), list(s.stop))
            counts[done.finish_reason] += 1
            counts["stop_string"] += hit
            counts["ok"] += done.finish_reason != "error"
            rows.append(_output_row(item, done, text, hit))
        del pending[k]
        manifest["shards"][str(k)] = sink(k, rows)
        finished.add(k)
        for key, value in counts.items():
            manifest["stats"][key] = manifest["stats"].get(key, 0) + value
        manifest["finished_shards"] = sorted(finished & mine)
        _write_manifest(out, manifest, own)

    if todo:
        if cfg.backend == "jetstream":
            run_driver(engine, requests(), window=cfg.window, on_complete=on_complete)
        else:
            run_loop(engine, requests(), on_complete=on_complete)
    bar.close()
    elapsed = time.perf_counter() - started
    manifest["stats"]["last_run"] = {"requests": sum(size(k) for k in todo), "output_tokens": tokens,
                                     "seconds": elapsed, "tokens_per_s": tokens / max(elapsed, 1e-9),
                                     "engine": dict(engine.stats)}
    _write_manifest(out, manifest, own)
    return manifest if processes == 1 else _merge_process_manifests(out, manifest, processes, index)


def _merge_process_manifests(out: Path, manifest: dict, processes: int, index: int) -> dict:
    """Process 0 writes `_manifest.json`: every process's finished shards, sink results and summed stats."""
    sync(f"generate-done:{out}")
    if index == 0:
        parts = list(_process_manifests(out).values())
        merged = {**manifest, "finished_shards": sorted({k for m in parts for k in m["finished_shards"]}),
                  "shards": {k: v for m in parts for k, v in m.get("shards", {}).items()},
                  "stats": _merge_stats([m["stats"] for m in parts]), "processes": processes}
        _write_manifest(out, merged)
    sync(f"generate-merged:{out}")
    return _manifest(out)
