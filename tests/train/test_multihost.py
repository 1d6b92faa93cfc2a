"""Multi-host execution on one CPU box: two JAX processes (4 fake devices each) joined through a coordinator on
127.0.0.1 with gloo collectives, against one process with all 8 devices."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from sq_jax.configlib import from_dict
from sq_jax.parallel.distributed import DistributedSettings, settings_from_env
from sq_jax.sampling.generate_job import GenerateConfig, run_generate
from sq_jax.train.config import TrainConfig
from sq_jax.train.trainer import Trainer

from conftest import base_config, train_losses

PROCESSES = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(process_id: int, port: int, **extra: str) -> dict[str, str]:
    env = os.environ.copy()
    env.update(XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu", SQ_JAX_DISTRIBUTED="1",
               SQ_JAX_COORDINATOR=f"127.0.0.1:{port}", SQ_JAX_NUM_PROCESSES=str(PROCESSES),
               SQ_JAX_PROCESS_ID=str(process_id), SQ_JAX_INIT_TIMEOUT="60")
    env.update(extra)
    return env


def _start(argv: list[str], port: int, argv_prefix: list[str] | None = None, **extra: str) -> list[subprocess.Popen]:
    command = [sys.executable, *(argv_prefix or ["-m", "sq_jax.cli"]), *argv]
    return [subprocess.Popen(command, env=_env(i, port, **extra),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(PROCESSES)]


def _finish(procs: list[subprocess.Popen], timeout: float = 300) -> None:
    deadline = time.time() + timeout
    for i, proc in enumerate(procs):
        try:
            _, err = proc.communicate(timeout=max(deadline - time.time(), 1))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            pytest.fail(f"process {i} did not finish within {timeout} s")
        assert proc.returncode == 0, f"process {i} exited {proc.returncode}:\n{err[-3000:]}"


def _run(argv: list[str], timeout: float = 300, **extra: str) -> None:
    _finish(_start(argv, _free_port(), **extra), timeout)


def _train_cfg(micro_model: Path, output_dir: Path, **overrides) -> dict:
    cfg = base_config(micro_model, output_dir, **{"data.shares": 2, "data.eval_count": 16, "log_example_ids": True,
                                                 "max_steps": 10, "checkpoint.every_steps": 4,
                                                 "checkpoint.async_save": False, **overrides})
    cfg["mesh"] = {"data": -1, "fsdp": 1, "tensor": 1}
    return cfg


def _record_ids(path: Path) -> list[str]:
    return [i for line in path.read_text().splitlines() for i in json.loads(line)["record_ids"]]


def test_two_processes_train_like_one_on_disjoint_halves_and_resume_from_a_shared_checkpoint(micro_model, tmp_path):
    single = Trainer(from_dict(TrainConfig, _train_cfg(micro_model, tmp_path / "one"))).train()
    expected = train_losses(single.output_dir)

    out = tmp_path / "two"
    config = tmp_path / "two.yaml"
    config.write_text(yaml.safe_dump(_train_cfg(micro_model, out)))
    # Killed after step 6 (each process kills itself), past the step-4 checkpoint both wrote; resumed by both.
    die_at_step = [str(Path(__file__).with_name("die_at_step.py")), "6"]
    procs = _start(["qft", str(config)], _free_port(), argv_prefix=die_at_step)
    for p in procs:
        try:
            _, err = p.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("a process did not reach step 6 within 240 s")
        assert p.returncode == -signal.SIGKILL, f"exited {p.returncode}, not killed at step 6:\n{err[-3000:]}"
    assert (out / "checkpoints" / "4").is_dir() and not (out / "checkpoints" / "8").exists()
    assert max(train_losses(out)) == 6
    _run(["qft", str(config)])

    got = train_losses(out)
    assert sorted(got) == sorted(expected) == list(range(1, 11))
    for step in expected:  # the same global batches, reduced across processes instead of within one
        assert got[step] == pytest.approx(expected[step], abs=2e-5), step
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in evals if r["kind"] == "eval"][-1] == 10  # process 0 alone writes metrics

    # Each process read its own half: disjoint, and together what the single process trained on.
    halves = [_record_ids(out / f"example_ids.process{i}.jsonl") for i in range(PROCESSES)]
    assert halves[0] and halves[1] and not set(halves[0]) & set(halves[1])
    assert sorted(set(halves[0]) | set(halves[1])) == sorted(set(_record_ids(single.output_dir / "example_ids.jsonl")))
    steps = [r["step"] for r in evals if r["kind"] == "train"]
    assert steps.count(1) == 1 and steps.count(5) >= 1  # resumed from a checkpoint, not restarted from step 0


def test_two_process_qpo_precomputes_each_half_of_the_reference_and_trains_like_one(micro_model, tmp_path):
    qpo = {"task": "qpo", "data.sources": [{"path": "procedural-pairs:300:3"}], "data.max_length": 64,
           "data.eval_count": 24, "preference.max_pairs_per_row": 3, "optim.lr": 1e-3, "max_steps": 6,
           "log_example_ids": False}
    single = Trainer(from_dict(TrainConfig, _train_cfg(micro_model, tmp_path / "one", **qpo))).train()
    config = tmp_path / "qpo.yaml"
    config.write_text(yaml.safe_dump(_train_cfg(micro_model, tmp_path / "two", **qpo)))
    _run(["qpo", str(config)])

    expected, got = train_losses(single.output_dir), train_losses(tmp_path / "two")
    assert sorted(got) == sorted(expected) == list(range(1, 7))
    for step in expected:
        assert got[step] == pytest.approx(expected[step], abs=2e-5), step
    # Each process scored only its own pairs with the reference, and kept them in its own cache file.
    caches = sorted(p.name for p in (tmp_path / "two" / "reference_logps").glob("train-*.npz"))
    assert caches == ["train-0.npz", "train-1.npz"]
    last = lambda out: [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()][-1]  # noqa: E731
    assert last(tmp_path / "two")["kind"] == "eval"
    assert last(tmp_path / "two")["reward_accuracy"] == pytest.approx(last(single.output_dir)["reward_accuracy"])


def test_two_processes_generate_exactly_the_single_process_shards(micro_model, tmp_path):
    def job(out: Path) -> dict:
        return {"model": str(micro_model), "output_dir": str(out), "prompts": {"mode": "pre_query", "count": 40},
                "sampling": {"temperature": 1.0, "top_p": 0.95, "max_tokens": 12, "seed": 3}, "shard_size": 6,
                "backend": "raw",
                "engine": {"max_slots": 8, "max_cache_length": 64, "max_prefill_length": 32, "dtype": "float32",
                           "mesh_tensor": 1, "mesh_fsdp": -1}}

    single = run_generate(from_dict(GenerateConfig, job(tmp_path / "one")))
    config = tmp_path / "gen.yaml"
    config.write_text(yaml.safe_dump(job(tmp_path / "two")))
    _run(["generate", str(config)])

    one, two = tmp_path / "one", tmp_path / "two"
    names = sorted(p.name for p in one.glob("shard-*.jsonl"))
    assert names == sorted(p.name for p in two.glob("shard-*.jsonl")) and len(names) == 7
    for name in names:  # each shard written by one process, byte-identical to the single-process run
        assert (two / name).read_bytes() == (one / name).read_bytes(), name
    ids = [json.loads(line)["id"] for name in names for line in (two / name).read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 40
    owners = [json.loads((two / f"_manifest.process{i}.json").read_text())["finished_shards"] for i in range(2)]
    assert owners == [[0, 2, 4, 6], [1, 3, 5]]
    merged = json.loads((two / "_manifest.json").read_text())
    assert merged["finished_shards"] == list(range(7)) and merged["processes"] == 2
    assert merged["stats"]["ok"] == single["stats"]["ok"] == 40


def _scores_apart(parts: dict[str, bytes], field: str) -> dict:
    """Each part's rows with `field` taken out, and all of `field`'s values under `__scores__`."""
    out, scores = {}, []
    for name, data in parts.items():
        rows = [json.loads(line) for line in data.decode().splitlines()]
        scores += [r.pop(field) for r in rows]
        out[name] = rows
    return {**out, "__scores__": np.asarray(scores)}


def test_two_process_pipeline_matches_one_process(micro_model, tmp_path):
    """Synthesis, responses, difficulty and reward scoring run in both processes (each its shards or parts), the
    language filter in process 0 alone; process 0 writes the records, manifests and report."""
    engine = {"max_slots": 8, "max_cache_length": 64, "max_prefill_length": 32, "dtype": "float32",
              "mesh_tensor": 1, "mesh_fsdp": -1}
    scorer = {"head": "score", "dtype": "float32", "batch_size": 2, "max_length": 64}

    def pipeline(out: Path) -> Path:
        cfg = {"output_dir": str(out), "seed": 1, "stages": {
            "questions": {"kind": "synthesize", "config": {
                "model": str(micro_model), "count": 30, "shard_size": 4, "backend": "raw", "engine": engine,
                "sampling": {"temperature": 1.0, "top_p": 0.95, "max_tokens": 12},
                "keep_truncated": True}},  # a random micro model rarely ends a question in 12 tokens
            "language": {"kind": "filter_language", "inputs": {"questions": "questions"},
                         "config": {"min_words": 1}},
            "difficulty": {"kind": "filter_difficulty", "inputs": {"questions": "questions"},
                           "config": {"model": str(micro_model), **scorer}},
            "responses": {"kind": "respond", "inputs": {"questions": "difficulty"}, "config": {
                "model": str(micro_model), "samples_per_prompt": 2, "require_answer": False, "shard_size": 6,
                "backend": "raw", "engine": {**engine, "max_cache_length": 128, "max_prefill_length": 112},
                "sampling": {"temperature": 1.0, "max_tokens": 8}}},
            "rewards": {"kind": "reward", "inputs": {"responses": "responses"},
                        "config": {"model": str(micro_model), **scorer}}}}
        path = tmp_path / f"{out.name}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path

    from sq_jax.cli import main

    assert main(["pipeline", "run", str(pipeline(tmp_path / "one"))]) == 0
    # Each process scores on its own 4 chips where the single process used 8: a scorer sharded otherwise adds in
    # another order, so scores agree to float32 rounding (~5e-8 here), not bit for bit; everything else is equal.
    _run(["pipeline", "run", str(pipeline(tmp_path / "two"))], JAX_DEFAULT_MATMUL_PRECISION="highest")
    for stage in ("questions", "language", "difficulty", "responses", "rewards"):
        one, two = ({p.name: p.read_bytes() for p in sorted((tmp_path / d / stage).glob("*/part-*.jsonl"))}
                    for d in ("one", "two"))  # records/ and dropped/ parts
        if stage in ("difficulty", "rewards"):  # the same rows and ranking; scores equal up to float32 rounding
            one, two = (_scores_apart(parts, "difficulty" if stage == "difficulty" else "reward") for parts in (one, two))
            np.testing.assert_allclose(two.pop("__scores__"), one.pop("__scores__"), rtol=0, atol=1e-6)
        assert two == one and one, stage
        manifest = json.loads((tmp_path / "two" / stage / "_stage.json").read_text())
        assert manifest["status"] == "done" and manifest["counts"]["records"] > 0
    for stage, upstream in (("difficulty", "questions"), ("rewards", "responses")):  # a score part per input part
        parts = len(list((tmp_path / "two" / upstream / "records").glob("part-*.jsonl")))
        assert parts > 2 and len(list((tmp_path / "two" / stage / "scores").glob("part-*.npz"))) == parts
        scored = [json.loads((tmp_path / "two" / stage / "scores" / f"_process{i}.json").read_text())["scored"]
                  for i in range(2)]
        assert scored == [list(range(0, parts, 2)), list(range(1, parts, 2))], stage  # each process its share
    shards = sorted((tmp_path / "two" / "questions" / "generate").glob("_manifest.process*.json"))
    assert [json.loads(p.read_text())["finished_shards"] for p in shards] == [[0, 2, 4, 6], [1, 3, 5, 7]]
    assert json.loads((tmp_path / "two" / "report.json").read_text())["stages"][1]["status"] == "done"


def test_unreachable_coordinator_fails_fast_with_a_message(micro_model, tmp_path):
    config = tmp_path / "qft.yaml"
    config.write_text(yaml.safe_dump(_train_cfg(micro_model, tmp_path / "out")))
    env = _env(1, _free_port(), SQ_JAX_INIT_TIMEOUT="3")  # nothing listens there: process 0 never started
    started = time.time()
    proc = subprocess.run([sys.executable, "-m", "sq_jax.cli", "qft", str(config)], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "coordinator 127.0.0.1:" in proc.stderr and "did not answer within 3 s" in proc.stderr
    assert time.time() - started < 30


@pytest.mark.parametrize("env, message", [
    ({"SQ_JAX_DISTRIBUTED": "maybe"}, "SQ_JAX_DISTRIBUTED='maybe'"),
    ({"SQ_JAX_DISTRIBUTED": "1", "SQ_JAX_NUM_PROCESSES": "two"}, "SQ_JAX_NUM_PROCESSES='two' is not an integer"),
    ({"SQ_JAX_DISTRIBUTED": "1", "SQ_JAX_COORDINATOR": "10.0.0.1:1234"}, "go together"),
    ({"SQ_JAX_DISTRIBUTED": "1", "SQ_JAX_COORDINATOR": "10.0.0.1:1234", "SQ_JAX_NUM_PROCESSES": "2",
      "SQ_JAX_PROCESS_ID": "2"}, "process id 2 is outside 0..1"),
    ({"SQ_JAX_DISTRIBUTED": "1", "SQ_JAX_COORDINATOR": "10.0.0.1", "SQ_JAX_NUM_PROCESSES": "2",
      "SQ_JAX_PROCESS_ID": "0"}, "is not host:port"),
])
def test_bad_distributed_environment_is_named(env, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        settings_from_env(env)


def test_distributed_environment_settings():
    assert settings_from_env({}) is None and settings_from_env({"SQ_JAX_DISTRIBUTED": "0"}) is None
    assert settings_from_env({"SQ_JAX_DISTRIBUTED": "1"}) == DistributedSettings()  # TPU VMs: JAX detects the rest
    got = settings_from_env({"SQ_JAX_DISTRIBUTED": "true", "SQ_JAX_COORDINATOR": "[::1]:9999",
                             "SQ_JAX_NUM_PROCESSES": "4", "SQ_JAX_PROCESS_ID": "3", "SQ_JAX_INIT_TIMEOUT": "20"})
    assert got == DistributedSettings("[::1]:9999", 4, 3, 20)


def test_checkpoints_may_live_in_a_bucket_but_the_run_folder_may_not(micro_model, tmp_path, monkeypatch):
    from sq_jax.train.checkpointing import checkpoint_path

    assert str(checkpoint_path("gs://bucket/run/checkpoints")) == "gs://bucket/run/checkpoints"
    monkeypatch.chdir(tmp_path)
    assert str(checkpoint_path("runs/x")) == str(tmp_path / "runs" / "x")
    with pytest.raises(ValueError, match="output_dir='gs://bucket/run': metrics and the HF export need a local"):
        from_dict(TrainConfig, base_config(micro_model, "gs://bucket/run"))
    with pytest.raises(ValueError, match="global_batch_size=8 does not split over data.shares=3"):
        from_dict(TrainConfig, base_config(micro_model, tmp_path, **{"data.shares": 3}))
