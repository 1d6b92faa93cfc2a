"""Packed scoring and the resumable score job: several sequences a row give each one the score it gets alone in a
row; a scored part is never scored again; the reward stage ranks a question's consecutive responses and refuses
responses that are not grouped by question; memory per part is bounded (tokenised in small batches, freed heap
handed back after each part)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from sq_jax.data.dataset import PartWriter
from sq_jax.models.checkpoint import load_model
from sq_jax.models.tokenizer import load_tokenizer
from sq_jax.pipeline import score_job
from sq_jax.pipeline.memory import release_free_heap
from sq_jax.pipeline.scoring import PackedScorer, pack_plan
from sq_jax.pipeline.stages import StageContext
from sq_jax.pipeline.stages.scored import TOKENIZE_BATCH, RewardConfig, encode_texts, reward
from sq_jax.toy.tiny import build_tiny

MICRO = dict(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16)


@pytest.fixture(scope="module")
def micro_scorer(tmp_path_factory) -> tuple[Path, object]:
    path = build_tiny(tmp_path_factory.mktemp("scorer") / "model", num_texts=300, vocab_size=512, **MICRO)
    return path, load_model(str(path), dtype="float32", param_dtype="float32", head="score")


def test_packed_rows_score_each_sequence_as_it_scores_alone(micro_scorer):
    _, model = micro_scorer
    rng = np.random.default_rng(0)
    seqs = [rng.integers(3, 500, size=int(n)).tolist() for n in rng.integers(4, 40, size=23)]
    packed = PackedScorer(model, rows=8, width=64)
    plan = pack_plan([len(s) for s in seqs], 64)
    assert max(len(row) for row in plan) >= 3  # rows really hold several sequences
    one_a_row = PackedScorer(model, rows=8, width=64)
    alone = np.concatenate([one_a_row([s]) for s in seqs])
    np.testing.assert_allclose(packed(seqs), alone, rtol=0, atol=2e-6)
    assert np.std(alone) > 1e-3  # distinct scores, so a mix-up of sequences would show


def test_pack_plan_is_deterministic_and_uses_every_sequence_once():
    lengths = [5, 60, 33, 31, 2, 64, 17, 17]
    plan = pack_plan(lengths, 64)
    assert plan == pack_plan(lengths, 64)
    assert sorted(i for row in plan for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 64 for row in plan)


def _responses(folder: Path, groups: list[tuple[str, int]], part_rows: int) -> None:
    with PartWriter(folder / "records", part_rows) as writer:
        for qid, n in groups:
            for j in range(n):
                writer.write({"id": f"{qid}#{j}", "question_id": qid, "query": f"What is {len(qid)} plus {j}?",
                              "response": f"It is {len(qid) + j * 7}. The answer is {len(qid) + j}.", "answer": None})
    (folder / "_stage.json").write_text(json.dumps({"status": "done", "parts": writer.parts}))


def _reward(tmp_path: Path, model_path: Path, name: str) -> tuple[list[dict], dict]:
    ctx = StageContext(name="rewards", dir=tmp_path / name, inputs={"responses": tmp_path / "responses"}, seed=0,
                       output_dir=tmp_path)
    stats = reward(ctx, RewardConfig(model=str(model_path), head="score", dtype="float32", batch_size=4,
                                     max_length=64))
    rows = [json.loads(line) for p in sorted((tmp_path / name / "records").glob("part-*.jsonl"))
            for line in p.read_text().splitlines()]
    return rows, stats


def test_reward_resumes_at_part_granularity_and_ranks_groups_across_parts(micro_scorer, tmp_path, monkeypatch):
    path, _ = micro_scorer
    _responses(tmp_path / "responses", [("qa", 3), ("qb", 4), ("qc", 1), ("qd", 2)], part_rows=3)  # groups straddle
    straight, stats = _reward(tmp_path, path, "straight")
    assert stats["parts"] == 4 and stats["parts_scored_here"] == 4
    assert [(r["id"], r["num_responses"]) for r in straight] == [("qa", 3), ("qb", 4), ("qc", 1), ("qd", 2)]

    # A run that scored parts 0 and 2 before it was killed: only 1 and 3 are scored now, with the same result.
    resumed = tmp_path / "resumed" / "scores"
    resumed.mkdir(parents=True)
    for k in (0, 2):
        (resumed / f"part-{k:05d}.npz").write_bytes((tmp_path / "straight" / "scores" / f"part-{k:05d}.npz").read_bytes())
    scored = []
    real = score_job.score_part
    monkeypatch.setattr(score_job, "score_part", lambda part, *a, **k: scored.append(part.name) or real(part, *a, **k))
    rows, stats = _reward(tmp_path, path, "resumed")
    assert scored == ["part-00001.jsonl", "part-00003.jsonl"] and stats["parts_resumed"] == 2
    assert rows == straight


def test_responses_not_grouped_by_question_are_refused(micro_scorer, tmp_path):
    path, _ = micro_scorer
    _responses(tmp_path / "responses", [("qa", 2), ("qb", 1), ("qa", 1)], part_rows=10)
    with pytest.raises(ValueError, match="'qa': its responses are not consecutive"):
        _reward(tmp_path, path, "rewards")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_release_free_heap_gives_freed_blocks_back_to_the_os():
    blocks = [b"x" * (4096 + i % 8) for i in range(50_000)]  # ~200 MiB of malloc'd, touched blocks (not pymalloc)
    pin = b"y" * (4096 + len(blocks) % 8)  # above them: glibc's own trim (top of the heap only) cannot free them
    before = _rss_bytes()
    del blocks
    freed = _rss_bytes()
    assert release_free_heap()  # Linux CI: glibc
    after = _rss_bytes()
    assert freed - after > 100 * 2**20, (before, freed, after)  # glibc kept them; the trim returned them
    assert pin


def test_score_parts_hand_the_heap_back_after_every_part(tmp_path, monkeypatch):
    _responses(tmp_path / "responses", [("qa", 3), ("qb", 4), ("qc", 1)], part_rows=3)
    releases = []
    monkeypatch.setattr(score_job, "release_free_heap", lambda: releases.append(len(scored)))
    scored: list[int] = []

    def score(ids):
        scored.append(len(ids))
        return np.zeros(len(ids), np.float32)

    parts = sorted((tmp_path / "responses" / "records").glob("part-*.jsonl"))
    score_job.score_parts(parts, tmp_path / "scores", lambda rows: [np.ones(2, np.int32) for _ in rows], score,
                          collective=False)
    assert releases == [0, 1, 2, 3]  # before the first part (what loading the model left) and after each part


def test_reward_text_is_tokenised_in_small_batches_with_the_ids_of_one_call(micro_scorer):
    path, _ = micro_scorer
    tokenizer = load_tokenizer(path)
    texts = [f"What is {i} plus {i * 7}? It is {i * 8}." * (1 + i % 3) for i in range(2 * TOKENIZE_BATCH + 17)]
    calls = []

    def counting(batch, **kwargs):
        calls.append(len(batch))
        return tokenizer(batch, **kwargs)

    ids = encode_texts(counting, texts)
    assert calls == [TOKENIZE_BATCH, TOKENIZE_BATCH, 17]
    one_call = tokenizer(texts, add_special_tokens=False)["input_ids"]
    assert [t.tolist() for t in ids] == one_call and all(t.dtype == np.int32 for t in ids)
