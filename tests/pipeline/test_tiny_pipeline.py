"""The README's main job: `sq-jax pipeline run configs/pipeline/tiny.yaml` runs every stage on CPU and leaves
every artifact a user looks at."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from sq_jax.cli import main

CONFIG = Path(__file__).resolve().parents[2] / "configs/pipeline/tiny.yaml"


@pytest.mark.slow
def test_tiny_pipeline_runs_every_stage_and_leaves_its_artifacts(tmp_path, shared_data, capsys):
    out = tmp_path / "run"
    overrides = [f"output_dir={out}", f"stages.decontaminate.config.data_dir={shared_data}",
                 f"stages.eval.config.data_dir={shared_data}"]
    assert main(["pipeline", "run", str(CONFIG), *overrides]) == 0
    report = json.loads((out / "report.json").read_text())
    stages = {s["stage"]: s for s in report["stages"]}
    assert all(s["status"] == "done" for s in stages.values()), [s["stage"] for s in stages.values()]

    for model_stage in ("qft", "qpo", "student"):  # checkpoints: exported HF models and orbax checkpoints
        assert (out / model_stage / "hf" / "config.json").is_file()
        assert any((out / model_stage / "checkpoints").iterdir())
    assert stages["qpo"]["stats"]["eval"]["reward_accuracy"] > 0.5

    # Question sets after each filter shrink monotonically and every drop is counted with its reason.
    chain = ["questions", "language", "solvable", "difficulty", "dedup", "decontaminate"]
    sizes = [stages[s]["counts"]["records"] for s in chain]
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] > 0
    for before, after in zip(chain, chain[1:]):
        assert stages[after]["stats"]["kept"] == stages[after]["counts"]["records"]
        assert stages[after]["stats"]["input"] == stages[before]["counts"]["records"]
    assert stages["questions"]["stats"]["last_run_tokens_per_s"] > 0

    exported = datasets.load_from_disk(str(out / "export" / "dataset"))
    assert len(exported) == stages["rewards"]["counts"]["records"] > 0
    assert {"query", "response", "id", "reward", "majority_share"} <= set(exported.column_names)
    assert (out / "export" / "data" / "train-00000.parquet").is_file()
    assert "## Run report" in (out / "export" / "README.md").read_text()

    eval_report = json.loads((out / "eval" / "report.json").read_text())
    assert eval_report["metrics"]["overall"]["questions"] == 80
    assert "| decontaminate | decontaminate | done |" in (out / "report.md").read_text()

    capsys.readouterr()
    assert main(["pipeline", "status", str(CONFIG), *overrides]) == 0
    states = [line.split()[2] for line in capsys.readouterr().out.strip().splitlines()]
    assert states == ["done"] * len(stages)  # nothing left to do
