"""Chat-style SFT records and the tiny optimiser they train: from procedural rewrites to parsed QPO pairs."""

from __future__ import annotations

import json

import pytest

from sq_jax.data.sources import DataError, Record, read_records
from sq_jax.models.tokenizer import detect_prompt_format, encode_prompt, load_tokenizer
from sq_jax.prompts.optimiser import DIRECTIONS, optimiser_messages, parse_final_question
from sq_jax.toy.problems import make_problem as _make
from sq_jax.toy.rewrites import KEEP_ANALYSIS, iter_rewrite_examples
from sq_jax.toy.tiny import build_tiny
from sq_jax.train.tasks import make_task
from sq_jax.train.trainer import Trainer

from conftest import make_config

@pytest.fixture()
def sft_task(micro_model, tmp_path):
    # Long enough for the optimiser's whole chat prompt in the micro model's 512-token vocabulary.
    cfg = make_config(micro_model, tmp_path / "out", task="sft", **{"data.max_length": 4096})
    tokenizer = load_tokenizer(str(micro_model))
    return make_task(cfg, tokenizer, detect_prompt_format(tokenizer))


def test_messages_record_renders_the_chat_prompt_and_masks_it(sft_task):
    messages = optimiser_messages("Tom has some apples. He eats 2. How many are left?", "solvability")
    reply = "### Analysis\nInformation is missing.\n\n### Final Question\nTom has 5 apples. He eats 2. How many?"
    examples = sft_task.build_examples([Record({"id": "a", "messages": messages, "response": reply}, "mem", 1)])
    tokens, mask = examples.tokens[0].tolist(), examples.loss_masks[0].tolist()
    fmt, tok = sft_task.fmt, sft_task.tokenizer
    prompt_text = fmt.chat(messages, add_generation_prompt=True)  # how LocalBackend renders a request
    prompt, response = encode_prompt(tok, prompt_text), encode_prompt(tok, reply + fmt.turn_end)
    assert tokens == prompt + response
    assert mask == [0] * len(prompt) + [1] * len(response)
    assert tok.decode(tokens[: len(prompt)]) == prompt_text  # byte for byte
    assert tok.decode(tokens[len(prompt):]).endswith(fmt.turn_end)

    # The query form is unchanged: the solver prompt, loss on the response only.
    (q_tokens,), = [sft_task.build_examples([Record({"query": "What is 2 + 3?", "response": "5"}, "mem", 1)]).tokens]
    assert tok.decode(q_tokens.tolist()).startswith(fmt.solver_prompt("What is 2 + 3?"))


@pytest.mark.parametrize("data, match", [
    ({"response": "r"}, r"src\.jsonl:7: required field 'query' is missing.*'messages'"),
    ({"query": "q", "messages": [{"role": "user", "content": "q"}], "response": "r"}, r"src\.jsonl:7: both"),
    ({"messages": "hello", "response": "r"}, r"src\.jsonl:7: 'messages' must be a non-empty list"),
    ({"messages": [], "response": "r"}, r"src\.jsonl:7: 'messages' must be a non-empty list"),
    ({"messages": [{"role": "user"}], "response": "r"}, r"src\.jsonl:7: bad 'messages': message 0 .*'content'"),
    ({"messages": [{"role": "bot", "content": "x"}], "response": "r"}, r"src\.jsonl:7: .*unsupported role 'bot'"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "response": "r"},
     r"src\.jsonl:7: 'messages' ends with an assistant turn"),
])
def test_bad_sft_records_name_source_and_line(sft_task, data, match):
    good = Record({"query": "q", "response": "r"}, "src.jsonl", 6)
    with pytest.raises(DataError, match=match):
        sft_task.build_examples([good, Record(data, "src.jsonl", 7)])


def test_sft_reads_messages_records_from_jsonl(micro_model, tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"Say {i}."}], "response": f"{i}"} for i in range(16)]
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    trainer = Trainer(make_config(micro_model, tmp_path / "o", task="sft", max_steps=2,
                                  **{"data.sources": [{"path": str(path)}]}))
    assert trainer.data_stats["examples"] == 16
    assert trainer.train().final_loss is not None


def test_procedural_rewrites_are_deterministic_and_parse_to_the_solvable_question():
    spec = "procedural-rewrites:60:3"
    first, again = read_records(spec, fields=["response"]), read_records(spec, fields=["response"])
    assert [r.data for r in first] == [r.data for r in again]
    assert [r.data for r in read_records("procedural-rewrites:20:3")] == [r.data for r in first[:20]]
    assert first[0].where == f"{spec}:1" and len({r.data["id"] for r in first}) == 60
    kept = 0
    for i, rec in enumerate(first):
        assert set(rec.data) == {"id", "messages", "response"}
        good, bad = _make(3, i, 1, 4, 0.0), _make(3, i, 1, 4, 1.0)
        assert parse_final_question(rec.data["response"]) == good.question
        asked = rec.data["messages"]
        if KEEP_ANALYSIS in rec.data["response"]:
            kept += 1
            assert asked == optimiser_messages(good.question, "solvability")
        else:
            assert asked == optimiser_messages(bad.question, "solvability")
            assert rec.data["response"].startswith("### Analysis\nInformation is missing: the question does not say ")
    assert 10 <= kept <= 30  # about a third keep an already solvable question
    assert next(iter_rewrite_examples(3)) == first[0].data
    with pytest.raises(DataError, match="procedural-rewrites:COUNT"):
        read_records("procedural-rewrites:x")


def test_tiny_tokenizer_knows_the_optimiser_prompt(tmp_path):
    """The tiny tokenizer is trained on the optimiser's requests too, so the tiny optimiser's rows stay short
    (configs/pipeline/tiny.yaml trains it at max_length 448 and serves it with a 384-token prefill)."""
    tiny = build_tiny(tmp_path / "tiny")
    tokenizer, fmt = load_tokenizer(str(tiny)), detect_prompt_format(load_tokenizer(str(tiny)))
    for i in range(20):
        for direction in DIRECTIONS:
            prompt = fmt.chat(optimiser_messages(_make(77, i, 1, 4, 1.0).question, direction),
                              add_generation_prompt=True)
            assert len(encode_prompt(tokenizer, prompt)) <= 360, (direction, i)
    for record in read_records("procedural-rewrites:50:5", fields=["response"]):
        prompt = fmt.chat(record.data["messages"], add_generation_prompt=True)
        assert len(encode_prompt(tokenizer, prompt + record.data["response"])) < 448
