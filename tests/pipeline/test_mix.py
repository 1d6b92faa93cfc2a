"""The mix stage: the paper's 400K DeepSeekMath + 600K Qwen2-Math questions as one set, by counts or ratios."""

from __future__ import annotations

import collections
import json
import random
from pathlib import Path

import pytest
import yaml

from sq_jax.configlib import ConfigError
from sq_jax.pipeline.config import load_pipeline
from sq_jax.pipeline.stages import StageContext, StageError
from sq_jax.pipeline.stages.mixing import MixConfig, mix, mix_sizes
from sq_jax.data.dataset import iter_rows


def _inputs(tmp_path: Path, sizes: dict[str, int], shuffle_seed: int | None = None) -> dict[str, Path]:
    dirs = {}
    for role, n in sizes.items():
        rows = [{"id": f"{role}-{i}", "question": f"Question {i} of {role}?"} for i in range(n)]
        if shuffle_seed is not None:
            random.Random(shuffle_seed).shuffle(rows)
        d = tmp_path / f"in-{role}-{shuffle_seed}"
        d.mkdir()
        (d / "records").mkdir()
        (d / "records" / "part-00000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        dirs[role] = d
    return dirs


def _run(tmp_path: Path, cfg: MixConfig, inputs: dict[str, Path], seed: int = 0, name: str = "mix") -> list[dict]:
    out = tmp_path / f"{name}-{seed}"
    out.mkdir()
    mix(StageContext(name=name, dir=out, inputs=inputs, seed=seed, output_dir=tmp_path), cfg)
    return list(iter_rows(out / "records"))


def test_counts_take_each_record_at_most_once_deterministically(tmp_path):
    inputs = _inputs(tmp_path, {"deepseek": 200, "qwen": 300})
    cfg = MixConfig(counts={"deepseek": 40, "qwen": 60})
    rows = _run(tmp_path, cfg, inputs)
    assert collections.Counter(r["source"] for r in rows) == {"deepseek": 40, "qwen": 60}
    assert len({r["id"] for r in rows}) == 100
    assert all(r["id"].startswith(r["source"]) and r["question"].endswith(f"{r['source']}?") for r in rows)
    # The same seed chooses the same records in the same order, whatever order the inputs list them in.
    shuffled = _run(tmp_path, cfg, _inputs(tmp_path, {"deepseek": 200, "qwen": 300}, shuffle_seed=3), name="again")
    assert shuffled == rows
    other = _run(tmp_path, cfg, inputs, seed=1)
    assert {r["id"] for r in other} != {r["id"] for r in rows}
    # Sources interleave (a prefix of the mix is a mix), rather than one input after the other.
    assert {r["source"] for r in rows[:20]} == {"deepseek", "qwen"}


def test_ratios_fill_the_largest_mix_the_inputs_allow(tmp_path):
    assert mix_sizes(MixConfig(ratios={"a": 0.4, "b": 0.6}), {"a": 100, "b": 300}) == {"a": 100, "b": 150}
    assert mix_sizes(MixConfig(ratios={"a": 2, "b": 3}, total=11), {"a": 100, "b": 300}) == {"a": 4, "b": 7}
    rows = _run(tmp_path, MixConfig(ratios={"a": 0.4, "b": 0.6}, total=50), _inputs(tmp_path, {"a": 30, "b": 40}))
    assert collections.Counter(r["source"] for r in rows) == {"a": 20, "b": 30}


def test_an_input_too_small_is_an_error_naming_it_unless_allowed():
    with pytest.raises(ValueError, match=r"'deepseek' has 10 of the 40 asked.*allow_fewer"):
        mix_sizes(MixConfig(counts={"deepseek": 40, "qwen": 60}), {"deepseek": 10, "qwen": 600})
    assert mix_sizes(MixConfig(counts={"deepseek": 40, "qwen": 60}, allow_fewer=True),
                     {"deepseek": 10, "qwen": 600}) == {"deepseek": 10, "qwen": 60}
    with pytest.raises(ValueError, match="'b' has 5 of the 6 asked"):
        mix_sizes(MixConfig(ratios={"a": 1, "b": 1}, total=12), {"a": 100, "b": 5})


def test_an_id_in_two_inputs_is_refused(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "records").mkdir()
        (d / "records" / "part-00000.jsonl").write_text(json.dumps({"id": "same", "question": "Q?"}) + "\n")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(StageError, match="id 'same' is in input 'a' and in 'b'"):
        mix(StageContext(name="mix", dir=out, inputs={"a": a, "b": b}, seed=0, output_dir=tmp_path),
            MixConfig(counts={"a": 1, "b": 1}))


def _pipeline(tmp_path: Path, mix_config: dict, inputs: dict) -> Path:
    stages = {"one": {"kind": "seed", "config": {"sources": [{"path": "procedural:4:1"}], "answer_format": "plain"}},
              "two": {"kind": "seed", "config": {"sources": [{"path": "procedural:4:2"}], "answer_format": "plain"}},
              "mixed": {"kind": "mix", "inputs": inputs, "config": mix_config}}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "run"), "stages": stages}, sort_keys=False))
    return path


def test_the_config_is_checked_when_the_pipeline_loads(tmp_path):
    good = _pipeline(tmp_path, {"counts": {"ds": 2, "qw": 2}}, {"ds": "one", "qw": "two"})
    assert load_pipeline(good).stages["mixed"].inputs == {"ds": "one", "qw": "two"}
    bad_roles = _pipeline(tmp_path, {"counts": {"deepseek": 2, "qw": 2}}, {"ds": "one", "qw": "two"})
    with pytest.raises(ConfigError, match=r"stage 'mixed' \(mix\): mix: counts name \['deepseek', 'qw'\] but the "
                                          r"stage's inputs are \['ds', 'qw'\]"):
        load_pipeline(bad_roles)
    both = _pipeline(tmp_path, {"counts": {"ds": 2}, "ratios": {"ds": 1.0}}, {"ds": "one"})
    with pytest.raises(ConfigError, match="exactly one of counts or ratios"):
        load_pipeline(both)
    none = _pipeline(tmp_path, {"counts": {}}, {})
    with pytest.raises(ConfigError, match="at least one"):
        load_pipeline(none)


def test_the_streamed_mix_equals_the_in_memory_one_and_never_loads_an_input(tmp_path, monkeypatch):
    """The chosen records and their order are the ones ranking every record in memory by its full digest gives
    (the stage before it streamed), and no input is read into a list."""
    import hashlib

    inputs = _inputs(tmp_path, {"a": 700, "b": 500}, shuffle_seed=5)
    monkeypatch.setattr(StageContext, "records", lambda self, role: pytest.fail(f"loaded {role!r} into a list"))
    got = _run(tmp_path, MixConfig(counts={"a": 300, "b": 250}), inputs, seed=7)

    def rank(role: str, rid: str) -> bytes:
        return hashlib.sha256(f"sq-jax/mix/7/{role}/{rid}".encode()).digest()

    chosen = []
    for role, n in (("a", 300), ("b", 250)):
        rows = list(iter_rows(inputs[role] / "records"))
        chosen += [{**r, "source": role} for r in sorted(rows, key=lambda r: rank(role, r["id"]))[:n]]
    assert got == sorted(chosen, key=lambda r: rank("", r["id"]))
    assert not (tmp_path / "mix-7" / "_mix_buckets").exists()
