"""`sq-jax generate` fingerprints what it generates from: the prompts file's content and the model's weights, not
their paths. A rerun after either changed is refused (or, with --restart, regenerates every shard): never a mix."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from safetensors.numpy import load_file, save_file

from sq_jax.cli import main
from sq_jax.configlib import from_dict
from sq_jax.data import fingerprint
from sq_jax.sampling.generate_job import MANIFEST, GenerateConfig, run_generate
from sq_jax.toy.tiny import build_tiny


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp("tiny") / "model", num_texts=300, vocab_size=512, hidden_size=64,
                      intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16)


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(fingerprint.CACHE_ENV, str(tmp_path / "cache"))


def job_config(model, out, prompts) -> dict:
    return {"model": str(model), "output_dir": str(out), "shard_size": 4, "backend": "raw",
            "prompts": {"mode": "solver", "path": str(prompts)}, "sampling": {"max_tokens": 4, "seed": 5},
            "engine": {"max_slots": 4, "max_cache_length": 64, "max_prefill_length": 32, "decode_steps": 4,
                       "dtype": "float32", "mesh_tensor": 1, "mesh_fsdp": -1}}


def outputs(out) -> list[dict]:
    return [json.loads(line) for p in sorted(out.glob("shard-*.jsonl")) for line in p.read_text().splitlines()]


def questions(version: str, n: int = 12) -> str:
    return "".join(json.dumps({"id": f"x{i}", "question": f"What is {i} plus {i}? ({version})"}) + "\n"
                   for i in range(n))


def kill_after_two_shards(out) -> None:
    """What a kill leaves: shards 0 and 1 finished and listed, shard 2 never written."""
    (out / "shard-00002.jsonl").unlink()
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["finished_shards"] = [0, 1]
    (out / MANIFEST).write_text(json.dumps(manifest))


def test_changed_prompts_or_weights_are_refused_and_restart_regenerates_all(tiny, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny, model)
    prompts = tmp_path / "questions.jsonl"
    prompts.write_text(questions("old"))
    out = tmp_path / "gen"
    job = from_dict(GenerateConfig, job_config(model, out, prompts))
    manifest = run_generate(job)
    assert manifest["finished_shards"] == [0, 1, 2]
    assert manifest["inputs"]["prompts"] == {"path": str(prompts), "sha256": fingerprint.sha256_file(prompts)}
    assert manifest["inputs"]["model"]["sha256"] == fingerprint.content_hash(model)
    kill_after_two_shards(out)
    left = {p.name: p.read_bytes() for p in out.iterdir()}

    # The prompts file is edited between the kill and the rerun: same path, same config, other content.
    prompts.write_text(questions("new"))
    with pytest.raises(ValueError, match=rf"{MANIFEST}: the prompts file {prompts} changed since the 2 finished "
                                         r"shard\(s\) here were generated from it \(content sha256 [0-9a-f]{64}, "
                                         r"now [0-9a-f]{64}\); resuming would mix .* new output_dir, or rerun with "
                                         r"--restart"):
        run_generate(job)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == left  # refused before writing anything

    # The prompts are back, but the model folder got other weights under the same path.
    prompts.write_text(questions("old"))
    weights = load_file(model / "model.safetensors")
    name = sorted(weights)[0]
    save_file({**weights, name: weights[name] + 1e-3}, model / "model.safetensors")
    with pytest.raises(ValueError, match=rf"the model {model} changed since the 2 finished shard"):
        run_generate(job)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == left

    # --restart: every shard regenerated from the new prompts and weights, none kept from before.
    prompts.write_text(questions("new"))
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job_config(model, out, prompts)))
    assert main(["generate", str(path), "--restart"]) in (0, None)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["finished_shards"] == 3
    got = outputs(out)
    assert [r["id"] for r in got] == [f"x{i}#0" for i in range(12)]
    assert all(r["question"].endswith("(new)") for r in got)
    assert json.loads((out / MANIFEST).read_text())["stats"]["last_run"]["requests"] == 12
