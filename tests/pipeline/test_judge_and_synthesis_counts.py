"""What the solvability judge and question synthesis keep, drop and count (the stage report's numbers)."""

from sq_jax.pipeline.stages.generation import finished_questions, tally_verdicts


def _out(text: str, finish: str = "stop") -> dict:
    return {"output": text, "finish_reason": finish}


def test_judge_counts_verdicts_no_verdicts_and_truncated_replies():
    rows = [{"id": k, "question": f"{k}?"} for k in ("md", "boxed", "no", "none", "cut", "cut_explicit")]
    outputs = {
        "md": _out("Reasoning.\n**Final verdict:** Yes"),
        "boxed": _out("Reasoning.\n$\\boxed{\\text{Yes}}$"),
        "no": _out("A number is missing.\nFinal verdict: No"),
        "none": _out("I am not sure what to say here"),
        "cut": _out("Point 1 holds. Point 2: Yes", "length"),  # mid-reasoning: its last word is no verdict
        "cut_explicit": _out("Final verdict: Yes\nLet me also check", "length"),
    }
    kept, dropped, counts = tally_verdicts(rows, outputs)
    assert [r["id"] for r in kept] == ["md", "boxed", "cut_explicit"]
    assert counts == {"input": 6, "kept": 3, "verdict_yes": 3, "verdict_no": 1, "no_verdict": 2, "truncated": 2,
                      "dropped_unsolvable": 1, "dropped_no_verdict": 2}
    assert {d["id"]: d["reason"] for d in dropped} == {"no": "unsolvable", "none": "no_verdict", "cut": "no_verdict"}
    assert dropped[-1]["judge_finish"] == "length" and dropped[-1]["judge_reply_end"].endswith("Yes")
    kept, _, counts = tally_verdicts(rows, outputs, on_no_verdict="keep")
    assert len(kept) == 5 and counts["no_verdict"] == 2 and counts["dropped_no_verdict"] == 0


def test_synthesis_sets_apart_questions_cut_at_max_tokens():
    outputs = [{"prompt_id": "q0", "output": " What is 2 + 2? ", "finish_reason": "stop"},
               {"prompt_id": "q1", "output": "If a train leaves at", "finish_reason": "length"},
               {"prompt_id": "q2", "output": "", "finish_reason": "error"}]
    rows, truncated, errors = finished_questions(outputs, "questions")
    assert rows == [{"id": "questions-q0", "question": "What is 2 + 2?", "finish": "stop"}]
    assert [r["id"] for r in truncated] == ["questions-q1"] and errors == 1
