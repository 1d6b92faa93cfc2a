"""College Math has no hub copy: decontamination and evaluation read it from a local file, named by a config key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sq_jax.eval.benchmarks import benchmark_path
from sq_jax.pipeline.stages import StageContext
from sq_jax.pipeline.stages.filtering import DecontaminationConfig, contamination
from sq_jax.pipeline.stages.evaluation import EvalStageConfig, evaluate


def _context(tmp_path: Path, name: str, questions: list[str]) -> StageContext:
    upstream = tmp_path / "questions"
    upstream.mkdir()
    (upstream / "records").mkdir()
    (upstream / "records" / "part-00000.jsonl").write_text(
        "".join(json.dumps({"id": f"q{i}", "question": q}) + "\n" for i, q in enumerate(questions)))
    (tmp_path / name).mkdir()
    return StageContext(name=name, dir=tmp_path / name, inputs={"questions": upstream, "model": upstream}, seed=0,
                        output_dir=tmp_path)


def test_decontamination_reads_college_math_from_its_path(tmp_path, shared_data):
    college = shared_data / "college_math" / "test.jsonl"
    copied = json.loads(college.read_text().splitlines()[5])["question"]
    ctx = _context(tmp_path, "decontaminate", [copied, "A fresh question about seven apples and two pears?"])
    stats = contamination(ctx, DecontaminationConfig(benchmarks=["college_math"], paths={"college_math": str(college)}))
    assert stats["dropped_college_math"] == 1 and stats["kept"] == 1


@pytest.mark.parametrize("paths", [{}, {"college_math": "no/such/college_math.jsonl"}])
def test_a_missing_college_math_file_names_the_key(tmp_path, paths):
    ctx = _context(tmp_path, "decontaminate", ["What is 2 + 2?"])
    key = r"stages\.decontaminate\.config\.paths\.college_math"
    with pytest.raises(FileNotFoundError, match=key):
        contamination(ctx, DecontaminationConfig(benchmarks=["college_math"], paths=paths))


def test_eval_stage_checks_its_files_before_loading_a_model(tmp_path):
    ctx = _context(tmp_path, "eval", ["What is 2 + 2?"])
    with pytest.raises(FileNotFoundError, match=r"stages\.eval\.config\.paths\.college_math"):
        evaluate(ctx, EvalStageConfig(benchmarks=["college_math"], model=str(tmp_path / "no-model")))
    with pytest.raises(FileNotFoundError, match=r"stages\.eval\.config\.data_dir: the test file of gsm8k"):
        evaluate(ctx, EvalStageConfig(benchmarks=["gsm8k"], data_dir=str(tmp_path), model=str(tmp_path)))


def test_benchmark_path_prefers_the_named_file(shared_data):
    college = str(shared_data / "college_math" / "test.jsonl")
    assert benchmark_path("college_math", data_dir="/nowhere", paths={"college_math": college}) == college
    assert benchmark_path("gsm8k", data_dir=str(shared_data)) == str(shared_data / "gsm8k" / "test.jsonl")
    assert benchmark_path("gsm8k") is None  # the hub copy
