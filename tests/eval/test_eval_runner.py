"""`sq-jax eval` end to end on the tiny model (JetStream driver, real benchmark slices), the metric
aggregation (accuracy, pass@k, maj@k) on hand-made outputs, and its files: generation shards read strictly, every
output written atomically (a kill mid-write leaves the previous report whole)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

import pytest

from sq_jax.cli import main
from sq_jax.eval import runner
from sq_jax.eval.benchmarks import BenchmarkItem, load_benchmark
from sq_jax.eval.runner import EvalConfig, markdown_report, read_outputs, score
from sq_jax.toy.tiny import build_tiny


@pytest.mark.slow
def test_eval_runs_end_to_end_on_the_tiny_model_and_resumes(tmp_path, shared_data, capsys):
    tiny = build_tiny(tmp_path / "tiny")
    out = tmp_path / "eval"
    argv = ["eval", "--model", str(tiny), "--data-dir", str(shared_data), "--limit", "20", "--output-dir", str(out),
            "--max-tokens", "48", "--max-cache-length", "1024", "--max-prefill-length", "960", "--max-slots", "16",
            "--dtype", "float32", "--truncate-prompts", "--grade-workers", "2", "--mesh-tensor", "1", "--mesh-fsdp", "-1"]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    metrics = report["metrics"]
    assert set(metrics) == {"gsm8k", "math500", "college_math", "olympiadbench", "overall"}
    assert all(metrics[b]["questions"] == 20 for b in ("gsm8k", "math500", "college_math", "olympiadbench"))
    assert metrics["overall"]["questions"] == 80
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 80
    first = samples[0]
    assert {"prompt", "output", "extracted", "gold", "correct", "timed_out"} <= set(first)
    assert "Please reason step by step, and put your final answer within \\boxed{}." in first["prompt"]
    assert first["prompt"].endswith("<|im_start|>assistant\n")
    gsm = [s for s in samples if s["benchmark"] == "gsm8k"]
    assert gsm[0]["gold"] == "18"  # the first GSM8K test item (Janet's ducks): the number after ####
    accuracy = 100.0 * sum(s["correct"] for s in gsm) / 20
    assert metrics["gsm8k"]["accuracy"] == pytest.approx(accuracy)
    table = (out / "report.md").read_text()
    assert "| gsm8k | 20 |" in table and "average over benchmarks" in table
    assert "| gsm8k | 20 |" in capsys.readouterr().out

    # A rerun finds every generation shard finished: same samples, no new generation.
    manifests = sorted(out.glob("generations/*/_manifest.json"))
    assert len(manifests) == 1
    before = manifests[0].read_text()
    assert main(argv) == 0
    assert json.loads(manifests[0].read_text())["finished_shards"] == json.loads(before)["finished_shards"]
    assert json.loads(manifests[0].read_text())["stats"]["last_run"]["requests"] == 0
    assert [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()] == samples


def item(i: int, gold: str) -> BenchmarkItem:
    return BenchmarkItem(id=f"t{i}", question=f"q{i}", gold=gold, benchmark="toy")


def outputs_of(texts: list[str]) -> list[dict]:
    return [{"sample": j, "output": t, "prompt": "p", "finish_reason": "stop"} for j, t in enumerate(texts)]


def test_accuracy_pass_at_k_and_majority_vote():
    items = {"toy": [item(0, "\\frac{1}{2}"), item(1, "12"), item(2, "7")]}
    outputs = {
        "toy/t0": outputs_of(["so \\boxed{0.5}", "\\boxed{3}", "The answer is $\\dfrac12$."]),  # 2 right, maj right
        "toy/t1": outputs_of(["\\boxed{13}", "\\boxed{13.0}", "\\boxed{12}"]),  # 1 right, maj (13) wrong
        "toy/t2": outputs_of(["no idea", "\\boxed{8}", "\\boxed{9}"]),  # none right
    }
    cfg = EvalConfig(model="m", output_dir="o", benchmarks=["toy"], samples=3, temperature=0.7, grade_workers=1)
    metrics, stream = score(items, outputs, cfg)
    records = list(stream)
    toy = metrics["toy"]
    assert toy["accuracy"] == pytest.approx(100 * 3 / 9)
    assert toy["pass@3"] == pytest.approx(100 * 2 / 3)
    assert toy["maj@3"] == pytest.approx(100 * 1 / 3)
    assert [r["correct"] for r in records] == [True, False, True, False, False, True, False, False, False]
    assert records[0]["extracted"] == "0.5" and records[6]["extracted"] in (None, "")
    assert records[0]["multiple"] is False and records[0]["unit"] is None  # what a regrade needs
    table = markdown_report(cfg, metrics)
    assert "| toy | 3 | 33.3 | 66.7 | 33.3 | 0 |" in table


def test_bad_eval_settings_are_clear(tmp_path, shared_data):
    with pytest.raises(ValueError, match="samples > 1 with temperature 0"):
        EvalConfig(model="m", output_dir="o", samples=4)
    assert main(["eval", "--model", "m", "--benchmarks", "gsm9k", "--data-dir", str(shared_data),
                 "--output-dir", str(tmp_path)]) == 2


def test_regrade_writes_the_changed_verdicts_to_a_diff_file(tmp_path, capsys):
    # samples.jsonl as an older grader wrote it: the first two verdicts are what that grader got wrong.
    old = [
        {"benchmark": "olympiadbench", "id": "a", "sample": 0, "gold": "(2, 2), (6, 2)", "extracted": "(6, 2)",
         "correct": False, "output": "$$\\boxed{(2, 2)} \\quad \\text{and} \\quad \\boxed{(6, 2)}$$"},
        {"benchmark": "gsm8k", "id": "b", "sample": 0, "gold": "3", "extracted": "3", "correct": True,
         "output": "So x = 2/3."},
        {"benchmark": "gsm8k", "id": "c", "sample": 0, "gold": "18", "extracted": "18", "correct": True,
         "output": "The answer is 18."},
        {"benchmark": "olympiadbench", "id": "d", "sample": 0, "gold": ["1", "2"], "multiple": True, "unit": None,
         "extracted": "3", "correct": False, "output": "\\boxed{3}"},
    ]
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in old))
    diff = tmp_path / "diff.jsonl"
    assert main(["eval", "--regrade", str(samples), "--diff", str(diff), "--grade-workers", "1"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["overall"] == {"samples": 4, "old_correct": 2, "new_correct": 2, "now_correct": 1, "now_wrong": 1}
    assert summary["gsm8k"]["now_wrong"] == 1 and summary["olympiadbench"]["now_correct"] == 1
    changed = [json.loads(line) for line in diff.read_text().splitlines()]
    assert [(c["id"], c["old_correct"], c["new_correct"]) for c in changed] == [("a", False, True), ("b", True, False)]
    assert changed[0]["old_extracted"] == "(6, 2)" and changed[0]["new_extracted"] == "(2, 2), (6, 2)"
    assert changed[1]["gold"] == "3" and changed[1]["new_extracted"] == "2/3" and changed[1]["line"] == 2

    # A list gold without its `multiple` flag cannot be regraded without guessing: the error names the line.
    del old[3]["multiple"]
    samples.write_text("".join(json.dumps(r) + "\n" for r in old))
    assert main(["eval", "--regrade", str(samples)]) == 2
    assert f"{samples}:4: gold is a list but the record has no 'multiple' field" in capsys.readouterr().err


def test_regrade_takes_multiple_and_unit_of_old_records_from_the_benchmark(tmp_path, shared_data, capsys):
    item = load_benchmark("olympiadbench", path=str(shared_data / "olympiadbench/test.jsonl"))[0]
    answer = ", ".join(item.gold) if isinstance(item.gold, list) else item.gold
    old = {"benchmark": "olympiadbench", "id": item.id, "sample": 0, "gold": item.gold, "extracted": None,
           "correct": False, "output": f"The final answer is $\\boxed{{{answer}}}$."}
    samples = tmp_path / "samples.jsonl"
    samples.write_text(json.dumps(old) + "\n")
    assert main(["eval", "--regrade", str(samples), "--data-dir", str(shared_data), "--grade-workers", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["overall"]["now_correct"] == 1


def test_generation_shards_are_read_in_sample_order_and_a_repeat_or_a_gap_is_refused(tmp_path):
    def shard(name: str, rows: list[dict]) -> object:
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        return tmp_path / name

    row = {"prompt_id": "b/1", "sample": 1, "output": "x", "prompt": "p", "finish_reason": "stop", "question": "q"}
    first = shard("shard-00000.jsonl", [row, {**row, "sample": 0, "output": "y"}])
    assert read_outputs([first]) == {"b/1": [{"sample": 0, "output": "y", "prompt": "p", "finish_reason": "stop"},
                                             {"sample": 1, "output": "x", "prompt": "p", "finish_reason": "stop"}]}
    again = shard("shard-00001.jsonl", [{**row, "prompt_id": "b/2"}, row])
    with pytest.raises(ValueError, match=r"shard-00001.jsonl: row 2 repeats sample 1 of prompt 'b/1'"):
        read_outputs([first, again])
    gap = shard("shard-00002.jsonl", [{**row, "output": None}])
    with pytest.raises(ValueError, match=r"shard-00002.jsonl: row 1 has no output"):
        read_outputs([gap])


_EVAL_WITH_FIXED_ANSWERS = textwrap.dedent("""
    import json, resource, signal, sys
    from sq_jax.eval import runner
    cfg_json, answer, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
    runner._generate = lambda cfg, rows, collective: {
        r["id"]: [{"sample": 0, "output": answer, "prompt": "p", "finish_reason": "stop"}] for r in rows}
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores it; the default ends the process at once
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # so a write past `limit` bytes kills us
    runner.run_eval(runner.EvalConfig(**json.loads(cfg_json)), collective=False)
""")


def test_a_kill_while_the_report_is_written_leaves_the_previous_report_whole(tmp_path, monkeypatch):
    bench = tmp_path / "bench.jsonl"
    bench.write_text("".join(json.dumps({"question": f"What is {a} plus 2?", "answer": str(a + 2)}) + "\n"
                             for a in (3, 4)))
    settings = {"model": "m", "output_dir": str(tmp_path / "eval"), "benchmarks": [f"jsonl:{bench}"],
                "grade_workers": 1}
    monkeypatch.setattr(runner, "_generate", lambda cfg, rows, collective: {
        r["id"]: [{"sample": 0, "output": "\\boxed{5}", "prompt": "p", "finish_reason": "stop"}] for r in rows})
    runner.run_eval(EvalConfig(**settings), collective=False)
    out = tmp_path / "eval"
    before = {name: (out / name).read_bytes() for name in ("report.json", "report.md", "samples.jsonl")}
    assert json.loads(before["report.json"])["metrics"]["overall"]["accuracy"] == 50.0

    # Rerun answering 6 (the other question right) in a process whose files may not outgrow the samples and the
    # table: it is killed (SIGXFSZ) in the middle of writing report.json.
    limit = max(len(before["samples.jsonl"]), len(before["report.md"])) + 64
    assert len(before["report.json"]) > limit + 64
    done = subprocess.run([sys.executable, "-c", _EVAL_WITH_FIXED_ANSWERS, json.dumps(settings), "\\boxed{6}",
                           str(limit)], capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGXFSZ, done.stderr[-2000:]
    assert (out / "report.json").read_bytes() == before["report.json"]  # whole, and the previous run's
    assert b"boxed{6}" in (out / "samples.jsonl").read_bytes()  # written (whole) before the kill
