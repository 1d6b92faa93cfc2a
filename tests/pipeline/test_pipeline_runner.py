"""The stage runner: skip what is done, rerun exactly what a change touches, stop clearly on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from sq_jax.cli import main
from sq_jax.configlib import ConfigError
from sq_jax.pipeline.config import load_pipeline
from sq_jax.pipeline.runner import read_manifest, run_pipeline, stage_status
from sq_jax.pipeline.stages import StageContext, StageError
from sq_jax.pipeline.stages.scored import RewardConfig, reward
from sq_jax.data.dataset import iter_rows, list_parts


def write_pipeline(tmp_path: Path, seeds: str, shared_data: Path, dedup: dict | None = None) -> Path:
    cfg = {"output_dir": str(tmp_path / "run"), "seed": 3, "stages": {
        "seeds": {"kind": "seed", "config": {"sources": [{"path": seeds}], "answer_field": None}},
        "language": {"kind": "filter_language", "inputs": {"questions": "seeds"}},
        "dedup": {"kind": "dedup", "inputs": {"questions": "language"}, "config": dedup or {}},
        "clean": {"kind": "decontaminate", "inputs": {"questions": "dedup"},
                  "config": {"data_dir": str(shared_data), "benchmarks": ["gsm8k", "math500"]}},
    }}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def seed_file(tmp_path: Path, shared_data: Path) -> str:
    test_q = next(q for q in (json.loads(line)["question"] for line in (shared_data / "gsm8k/test.jsonl").open())
                  if q.isascii())
    base = "A baker sells {} loaves of bread every morning and {} cakes every afternoon at the market. How many " \
           "items does the baker sell in one week if the market is open every day and nothing is left over?"
    rows = [{"id": f"s{i}", "question": base.format(i + 2, i + 7)} for i in range(30)]
    rows += [{"id": "dup", "question": base.format(2, 7).upper()},  # a near-duplicate of s0
             {"id": "leak", "question": test_q.replace(".", " .")},  # a near-verbatim GSM8K test question
             {"id": "accent", "question": "Combien de pommes a Zoé ?"}, {"id": "short", "question": "Why?"}]
    path = tmp_path / "seeds.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def ids(stage_dir: Path) -> list[str]:
    return [row["id"] for row in iter_rows(stage_dir / "records")]


def test_stages_run_once_and_a_changed_setting_reruns_only_downstream(tmp_path, shared_data):
    config = write_pipeline(tmp_path, seed_file(tmp_path, shared_data), shared_data)
    report = run_pipeline(load_pipeline(config))
    run = tmp_path / "run"
    stats = {s["stage"]: s["stats"] for s in report["stages"]}
    assert stats["language"]["dropped_non_ascii"] == 1 and stats["language"]["dropped_too_short"] == 1
    assert stats["dedup"]["dropped_near_duplicate"] == 1 and stats["clean"]["dropped_gsm8k"] == 1
    assert ids(run / "clean") == [f"s{i}" for i in range(30)]
    assert next(iter_rows(run / "dedup/dropped"))["duplicate_of"] == "s0"
    assert "| dedup | dedup | done | 31 |" in (run / "report.md").read_text()
    stamps = {name: (run / name / "_stage.json").stat().st_mtime_ns for name in ("seeds", "language", "dedup", "clean")}

    run_pipeline(load_pipeline(config))  # nothing changed: nothing reruns
    assert {n: (run / n / "_stage.json").stat().st_mtime_ns for n in stamps} == stamps

    changed = write_pipeline(tmp_path, seed_file(tmp_path, shared_data), shared_data, dedup={"threshold": 0.99})
    assert [r["state"] for r in stage_status(load_pipeline(changed))] == ["done", "done", "stale", "stale"]
    run_pipeline(load_pipeline(changed))
    after = {n: (run / n / "_stage.json").stat().st_mtime_ns for n in stamps}
    assert after["seeds"] == stamps["seeds"] and after["language"] == stamps["language"]
    assert after["dedup"] != stamps["dedup"] and after["clean"] != stamps["clean"]
    assert read_manifest(run / "dedup")["stats"]["dropped_near_duplicate"] == 1  # a case-only copy is identical

    # Editing an input file upstream invalidates everything that reads it.
    seeds = Path(load_pipeline(changed).stages["seeds"].config["sources"][0]["path"])
    seeds.write_text(seeds.read_text() + json.dumps({"id": "new", "question": "What is seven times eight today?"})
                     + "\n")
    assert {r["state"] for r in stage_status(load_pipeline(changed))} == {"stale"}


def test_empty_stage_output_and_bad_configs_stop_with_the_stage_name(tmp_path, shared_data):
    only_bad = tmp_path / "bad.jsonl"
    only_bad.write_text(json.dumps({"question": "Quel âge a Zoé ?"}) + "\n")
    config = write_pipeline(tmp_path, str(only_bad), shared_data)
    with pytest.raises(StageError, match=r"stage 'language': produced no records .*dropped_non_ascii"):
        run_pipeline(load_pipeline(config))
    assert main(["pipeline", "run", str(config)]) == 2  # the CLI reports it and exits non-zero

    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question": "How many?"}\n{"question": oops\n')
    with pytest.raises(StageError, match=r"stage 'seeds': .*broken.jsonl:2: malformed JSON"):
        run_pipeline(load_pipeline(write_pipeline(tmp_path, str(broken), shared_data)))

    data = yaml.safe_load(config.read_text())
    data["stages"]["dedup"]["config"] = {"treshold": 0.9}
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(ConfigError, match=r"stage 'dedup' \(dedup\).*treshold"):
        load_pipeline(tmp_path / "typo.yaml")
    data["stages"]["dedup"] = {"kind": "dedupe", "inputs": {"questions": "language"}}
    (tmp_path / "kind.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(ConfigError, match=r"stage 'dedup' has unknown kind 'dedupe'"):
        load_pipeline(tmp_path / "kind.yaml")
    data["stages"]["dedup"] = {"kind": "dedup", "inputs": {"questions": "clean"}}
    (tmp_path / "order.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(ConfigError, match=r"stage 'dedup' input 'questions' is 'clean', which is not an earlier"):
        load_pipeline(tmp_path / "order.yaml")


def test_only_needs_its_inputs_done(tmp_path, shared_data):
    config = write_pipeline(tmp_path, seed_file(tmp_path, shared_data), shared_data)
    with pytest.raises(StageError, match=r"stage 'dedup': input 'questions' comes from stage 'language', which is "
                                         "not done"):
        run_pipeline(load_pipeline(config), only="dedup")
    run_pipeline(load_pipeline(config), until="language")
    assert [r["state"] for r in stage_status(load_pipeline(config))] == ["done", "done", "pending", "pending"]


def test_overrides_may_follow_the_flags(tmp_path, shared_data, capsys):
    from sq_jax.cli import main

    config = write_pipeline(tmp_path, seed_file(tmp_path, shared_data), shared_data)
    out = tmp_path / "elsewhere"
    assert main(["pipeline", "run", str(config), "--until", "language", f"output_dir={out}", "seed=5"]) == 0
    assert list_parts(out / "language" / "records") and not (out / "dedup").exists()
    assert json.loads((out / "report.json").read_text())["seed"] == 5
    with pytest.raises(SystemExit):
        main(["pipeline", "run", str(config), "--until", "language", "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_reward_model_without_chat_template_is_a_clear_error(tmp_path):
    from sq_jax.toy.tiny import build_tiny

    model = build_tiny(tmp_path / "rm")
    config = json.loads((model / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    for extra in model.glob("chat_template.*"):
        extra.unlink()
    ctx = StageContext(name="rewards", dir=tmp_path / "stage", inputs={}, seed=0, output_dir=tmp_path)
    with pytest.raises(StageError, match=r"stage 'rewards': the tokenizer of reward model .* has no chat template"):
        reward(ctx, RewardConfig(model=str(model), head="score", dtype="float32"))



def test_missing_api_key_stops_the_optimise_stage_by_name(tmp_path, shared_data, monkeypatch):
    monkeypatch.delenv("SQ_JAX_TEST_KEY", raising=False)
    config = write_pipeline(tmp_path, seed_file(tmp_path, shared_data), shared_data)
    data = yaml.safe_load(config.read_text())
    data["stages"]["rewrite"] = {"kind": "optimise", "inputs": {"questions": "clean"},
                                 "config": {"backend": "openai", "openai": {"api_key_env": "SQ_JAX_TEST_KEY"}}}
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(StageError, match=r"stage 'rewrite': optimise: .*SQ_JAX_TEST_KEY"):
        run_pipeline(load_pipeline(config))
