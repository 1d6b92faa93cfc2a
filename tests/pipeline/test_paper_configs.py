"""The 7B configs make the paper's choices (SCALEQUEST.md, the authors' scripts): checked on the loaded values."""

from __future__ import annotations

from pathlib import Path

import pytest

from sq_jax.pipeline.config import PipelineConfig, load_pipeline, stage_config
from sq_jax.pipeline.stages import KINDS

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "pipeline"
PAPER_RUNS = ["qwen2-math-7b.yaml", "deepseekmath-7b.yaml", "scalequest-paper.yaml"]


def _typed(cfg: PipelineConfig, name: str):
    spec = cfg.stages[name]
    return stage_config(KINDS[spec.kind].config, spec, name, "test")


def _stages(cfg: PipelineConfig, kind: str) -> list[str]:
    return [n for n, s in cfg.stages.items() if s.kind == kind]


def _upstream(cfg: PipelineConfig, name: str) -> set[str]:
    seen, todo = set(), [name]
    while todo:
        for up in cfg.stages[todo.pop()].inputs.values():
            if up not in seen:
                seen.add(up)
                todo.append(up)
    return seen


def _generator_of(cfg: PipelineConfig, name: str) -> str:
    """The model path the questions reaching `name` were synthesised from (through QPO and QFT)."""
    for up in _upstream(cfg, name):
        spec = cfg.stages[up]
        if spec.kind == "train" and spec.config["train"]["task"] == "qft":
            return spec.config["train"]["model"]["path"]
    raise AssertionError(f"no QFT stage upstream of {name}")


@pytest.fixture(scope="module", params=PAPER_RUNS)
def run(request) -> PipelineConfig:
    return load_pipeline(CONFIGS / request.param)


def test_optimiser_is_greedy_with_4096_tokens(run):
    for name in _stages(run, "optimise"):
        cfg = _typed(run, name)
        assert (cfg.temperature, cfg.max_tokens, cfg.backend) == (0.0, 4096, "openai"), name


def test_the_judge_runs_as_the_authors_after_the_cheap_filters(run):
    judges = _stages(run, "judge")
    assert judges
    for name in judges:
        cfg = _typed(run, name)
        assert cfg.model == "Qwen/Qwen2-Math-7B-Instruct" and cfg.prompt == "paper", name
        assert (cfg.sampling.temperature, cfg.sampling.max_tokens) == (0.0, 2048), name
        kinds = {run.stages[u].kind for u in _upstream(run, name)}
        assert {"filter_language", "dedup", "decontaminate"} <= kinds, f"{name} runs before {kinds}"


def test_the_difficulty_filter_is_the_papers_and_only_on_deepseekmath_questions(run):
    for name in _stages(run, "filter_difficulty"):
        assert _generator_of(run, name) == "deepseek-ai/deepseek-math-7b-rl", name
        scorer = run.stages[run.stages[name].inputs["scorer"]]
        assert scorer.config["train"]["model"]["path"] == "deepseek-ai/deepseek-math-7b-base"
        labels = run.stages[scorer.inputs["data"]]
        assert labels.kind == "difficulty_labels" and labels.config["model"] == "deepseek-ai/deepseek-math-7b-rl"
    if run.output_dir.endswith("qwen2-math"):  # the Qwen2-Math-only run has no difficulty filter at all
        assert not _stages(run, "filter_difficulty")


def test_college_math_is_decontaminated_and_evaluated_from_a_local_file(run):
    for name in _stages(run, "decontaminate") + _stages(run, "eval"):
        cfg = _typed(run, name)
        assert "college_math" in cfg.benchmarks and cfg.paths.get("college_math"), name


def test_rewards_come_from_internlm2_7b_reward_with_its_remote_tokenizer(run):
    [name] = _stages(run, "reward")
    cfg = _typed(run, name)
    assert cfg.model == "internlm/internlm2-7b-reward" and cfg.trust_remote_code


def test_the_paper_run_mixes_both_generators_and_trains_the_four_students():
    run = load_pipeline(CONFIGS / "scalequest-paper.yaml")
    [mix] = _stages(run, "mix")
    assert _typed(run, mix).counts == {"deepseek": 400_000, "qwen": 600_000}
    inputs = run.stages[mix].inputs
    assert _generator_of(run, inputs["deepseek"]) == "deepseek-ai/deepseek-math-7b-rl"
    assert _generator_of(run, inputs["qwen"]) == "Qwen/Qwen2-Math-7B-Instruct"
    for name in _stages(run, "synthesize"):
        assert _typed(run, name).count in (10_000, 1_000_000)
    [export] = _stages(run, "export")
    assert mix in _upstream(run, export)
    students = {run.stages[n].config["train"]["model"]["path"]: run.stages[n].config["train"]["optim"]["lr"]
                for n in _stages(run, "train") if run.stages[n].config["train"]["task"] == "sft"}
    assert students == {"Qwen/Qwen2-Math-7B": 1e-5, "deepseek-ai/deepseek-math-7b-base": 5e-5,
                        "mistralai/Mistral-7B-v0.1": 1e-5, "meta-llama/Meta-Llama-3-8B": 5e-5}
    for name in _stages(run, "train"):
        if run.stages[name].config["train"]["task"] == "sft":
            assert run.stages[name].inputs == {"data": export}
    assert len(_stages(run, "eval")) == 4
