"""`sq-jax generate`: sharded outputs, stable ids and seeds, resume without loss or duplication."""

from __future__ import annotations

import json

import pytest

from sq_jax.configlib import from_dict
from sq_jax.sampling.generate_job import GenerateConfig, cut_at_stop, run_generate
from sq_jax.toy.tiny import build_tiny


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp("tiny") / "model")


def config(tiny, out, **overrides) -> GenerateConfig:
    data = {
        "model": str(tiny), "output_dir": str(out),
        "prompts": {"mode": "pre_query", "count": 10},
        "sampling": {"temperature": 1.0, "top_p": 0.99, "max_tokens": 12, "seed": 3},
        "engine": {"max_slots": 4, "max_cache_length": 64, "max_prefill_length": 32, "decode_steps": 4,
                   "dtype": "float32", "mesh_tensor": 1, "mesh_fsdp": -1},
        "shard_size": 4, "backend": "raw",
    }
    data.update(overrides)
    return from_dict(GenerateConfig, data)


def rows(out):
    return [json.loads(line) for p in sorted(out.glob("shard-*.jsonl")) for line in p.read_text().splitlines()]


def test_generation_is_sharded_resumable_and_backend_independent(tiny, tmp_path):
    out = tmp_path / "gen"
    manifest = run_generate(config(tiny, out))
    assert manifest["finished_shards"] == [0, 1, 2] and manifest["num_requests"] == 10
    first = rows(out)
    assert [r["id"] for r in first] == [f"q{i:09d}#0" for i in range(10)]
    assert len({r["output"] for r in first}) > 5  # per-request seeds
    assert manifest["stats"]["last_run"]["engine"]["prefills"] == 1  # one shared template prefill

    # Lose a shard as a kill would: the rerun regenerates exactly it, identically, with the JetStream backend.
    (out / "shard-00001.jsonl").unlink()
    m = json.loads((out / "_manifest.json").read_text())
    m["finished_shards"] = [0, 2]
    (out / "_manifest.json").write_text(json.dumps(m))
    resumed = run_generate(config(tiny, out, backend="jetstream"))
    assert resumed["stats"]["last_run"]["requests"] == 4
    assert rows(out) == first

    with pytest.raises(ValueError, match="written by a different config"):
        run_generate(config(tiny, out, sampling={"temperature": 0.5, "max_tokens": 12}))


def test_solver_prompts_from_records_with_n_samples(tiny, tmp_path):
    questions = tmp_path / "q.jsonl"
    questions.write_text("\n".join(json.dumps({"id": f"x{i}", "question": f"What is {i} plus {i}?"})
                                   for i in range(3)) + "\n")
    out = tmp_path / "sol"
    run_generate(config(tiny, out, prompts={"mode": "solver", "path": str(questions)}, samples_per_prompt=2,
                        sampling={"temperature": 0.0, "max_tokens": 6}))
    got = rows(out)
    assert [r["id"] for r in got] == ["x0#0", "x0#1", "x1#0", "x1#1", "x2#0", "x2#1"]
    assert got[0]["question"] == "What is 0 plus 0?" and got[0]["prompt"].endswith("<|im_start|>assistant\n")
    assert got[0]["output"] == got[1]["output"]  # greedy: samples agree

    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"id": "a", "question": "q"}\n{"id": "a", "question": "r"}\n')
    with pytest.raises(ValueError, match=r"dup.jsonl:2: duplicate prompt id 'a'"):
        run_generate(config(tiny, tmp_path / "d", prompts={"mode": "solver", "path": str(dup)}))


def test_stop_strings_cut_text():
    assert cut_at_stop("Q: what? A: 4", ["A:", "Z"]) == ("Q: what? ", True)
    assert cut_at_stop("plain", ["A:"]) == ("plain", False)


def test_a_process_renders_only_its_shards_streaming_the_prompts(tiny, tmp_path):
    """Shard k holds requests [4k, 4k + 4) of prompt x sample order; the prompts stream past (a bad line after
    the wanted shards is never read), so a host holds its in-flight shards, never the job's prompts."""
    from sq_jax.prompts.formats import get_prompt_format
    from sq_jax.sampling.generate_job import build_prompts, count_prompts, iter_shards

    questions = tmp_path / "q.jsonl"
    lines = [json.dumps({"id": f"x{i}", "question": f"What is {i} plus {i}?"}) for i in range(11)]
    questions.write_text("\n".join(lines) + "\n")
    cfg = config(tiny, tmp_path / "o", prompts={"mode": "solver", "path": str(questions)}, samples_per_prompt=2)
    fmt = get_prompt_format("qwen")
    flat = [(pid, j, text, carry) for pid, text, carry in build_prompts(cfg, fmt) for j in range(2)]
    assert count_prompts(cfg) == 11 and len(flat) == 22
    got = dict(iter_shards(cfg, fmt, {1, 3, 5}))
    assert got == {1: flat[4:8], 3: flat[12:16], 5: flat[20:22]}
    questions.write_text("\n".join(lines[:4] + ["{not json"] + lines[5:]) + "\n")
    assert dict(iter_shards(cfg, fmt, {0, 1})) == {0: flat[0:4], 1: flat[4:8]}  # line 5 is never parsed
    with pytest.raises(ValueError, match="q.jsonl:5"):
        count_prompts(cfg)  # the whole input is checked before any model load


def test_a_sink_takes_each_finished_shard_instead_of_a_raw_file(tiny, tmp_path):
    questions = tmp_path / "q.jsonl"
    questions.write_text("\n".join(json.dumps({"id": f"x{i}", "question": f"Add {i} and 2.", "level": i})
                                   for i in range(5)) + "\n")
    taken: list[int] = []

    def sink(k: int, outputs: list[dict]) -> dict:
        taken.append(k)
        return {"ids": [o["id"] for o in outputs], "levels": [o["input"]["level"] for o in outputs]}

    out = tmp_path / "gen"
    job = config(tiny, out, prompts={"mode": "solver", "path": str(questions), "carry": "record"},
                 samples_per_prompt=2)
    manifest = run_generate(job, sink=sink)
    assert taken == [0, 1, 2] and not list(out.glob("shard-*.jsonl"))
    assert manifest["shards"]["1"] == {"ids": ["x2#0", "x2#1", "x3#0", "x3#1"], "levels": [2, 2, 3, 3]}
    # A shard the manifest does not list as finished (killed before its commit) goes to the sink again, alone.
    m = json.loads((out / "_manifest.json").read_text())
    m["finished_shards"], m["shards"] = [0, 2], {k: v for k, v in m["shards"].items() if k != "1"}
    (out / "_manifest.json").write_text(json.dumps(m))
    assert run_generate(job, sink=sink)["shards"] == manifest["shards"] and taken == [0, 1, 2, 1]
