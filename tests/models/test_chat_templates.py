"""Every prompt sq-jax renders by hand equals the real models' chat templates, byte for byte.

The fixtures (fixtures/chat_templates/*.json) hold each model's published `chat_template` string with its BOS/EOS
and whether its tokenizer adds BOS itself, and say where each string was read. Each test builds an offline tokenizer
with those special tokens and that template (byte-level BPE without merges: any text encodes, in milliseconds) and
compares what `transformers`' `apply_chat_template` renders with what `sq_jax.models.tokenizer` renders, for every
prompt kind the pipeline uses: the pre-query template (question synthesis), QFT text, solver, judge and difficulty
prompts, optimiser requests (local backend), SFT examples; and token ids, so a BOS is counted once.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from tokenizers.pre_tokenizers import ByteLevel
from transformers import PreTrainedTokenizerFast

from sq_jax.models.tokenizer import detect_prompt_format, encode_prompt
from sq_jax.prompts.formats import (
    PROMPT_FORMATS,
    PromptFormat,
    get_prompt_format,
)
from sq_jax.pipeline.stages.scored import reward_inputs
from sq_jax.prompts.judge import JUDGE_PROMPTS
from sq_jax.prompts.optimiser import DIRECTIONS, optimiser_messages
from sq_jax.prompts.solver import SOLVER_INSTRUCTION
from sq_jax.train.tasks.lm import SFTTask
from sq_jax.train.tasks.scorer import score_text

FIXTURES = Path(__file__).parent / "fixtures" / "chat_templates"
FIELDS = ("model_ids", "prompt_format", "chat_template", "bos_token", "eos_token", "add_bos_token", "sources", "notes")
NAMES = sorted(p.stem for p in FIXTURES.glob("*.json"))
# Fixtures of templates sq-jax renders (prompt_format set); the others document a model it does not render.
RENDERED = [n for n in NAMES if json.loads((FIXTURES / f"{n}.json").read_text(encoding="utf-8"))["prompt_format"]]

# Math text full of braces and backslashes, a leading/trailing space (Llama 3's template trims) and a newline.
QUESTION = " If $f(x) = \\frac{x}{2}$ and {a, b} = {1, 2}, what is $\\boxed{f(4)}$?\nExplain. "
RESPONSE = "We have $f(4) = \\frac{4}{2} = 2$.\nThe answer is $\\boxed{2}$."
SENTINEL = "\x00SENTINEL\x00"

# How a QFT example ends after the question. ScaleQuest trains the generator to close the question the way the
# chat template closes a user turn (Qwen, Llama 3, InternLM2: the end-of-turn token), or, for templates whose user
# turn has no end-of-turn token, with EOS: DeepSeek "User: {q}\n\n<eos>" (the authors' qft_train/train.py),
# Mistral "[INST] {q}</s>".
QFT_END = {"qwen": "turn", "qwen2.5": "turn", "qwen2.5-math": "turn", "llama3": "turn", "internlm2": "turn",
           "deepseek": "turn+eos", "mistral": "eos"}


def load_fixture(name: str) -> dict[str, Any]:
    path = FIXTURES / f"{name}.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    missing = [f for f in FIELDS if f not in data]
    if missing:
        raise ValueError(f"{path}: missing fields {missing}; a chat-template fixture needs {list(FIELDS)}")
    return data


@lru_cache(maxsize=None)
def fixture_tokenizer(name: str) -> PreTrainedTokenizerFast:
    """A byte-level tokenizer with the fixture's special tokens and template; it prepends BOS on plain encoding
    exactly when the real one does (`add_bos_token`, or Llama 3's post-processor)."""
    fx = load_fixture(name)
    alphabet = sorted(ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    template = fx["chat_template"]
    specials = [t for t in (fx["bos_token"], fx["eos_token"]) if t]
    specials += [t for t in ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|start_header_id|>",
                             "<|end_header_id|>", "<|eot_id|>") if t in template and t not in specials]
    tok.add_special_tokens(specials)
    if fx["add_bos_token"]:
        bos = fx["bos_token"]
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, tok.token_to_id(bos))])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=fx["bos_token"], eos_token=fx["eos_token"])
    hf.chat_template = template
    return hf


def render(name: str, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
    return fixture_tokenizer(name).apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def template_ids(name: str, messages: list[dict[str, str]]) -> list[int]:
    out = fixture_tokenizer(name).apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def fmt_of(name: str) -> PromptFormat:
    return get_prompt_format(load_fixture(name)["prompt_format"])


def user(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


def test_fixtures_are_complete_and_cover_every_format() -> None:
    for name in NAMES:
        fx = load_fixture(name)
        assert fx["model_ids"] and fx["chat_template"], name
        assert fx["sources"] and all(s.get("repo") and s.get("path") and s.get("where") for s in fx["sources"]), name
    covered = {load_fixture(n)["prompt_format"] for n in RENDERED}
    assert covered == set(PROMPT_FORMATS), f"formats without a real-template fixture: {set(PROMPT_FORMATS) - covered}"


@pytest.mark.parametrize("name", RENDERED)
def test_pre_query_template_is_the_template_up_to_the_question(name: str) -> None:
    rendered = render(name, user(SENTINEL), add_generation_prompt=False)
    assert fmt_of(name).pre_query_template == rendered.split(SENTINEL)[0]


@pytest.mark.parametrize("name", RENDERED)
def test_qft_text_closes_the_question_as_the_template_closes_a_user_turn(name: str) -> None:
    fmt, fx = fmt_of(name), load_fixture(name)
    question = QUESTION.strip()
    before, after = render(name, user(question), add_generation_prompt=False).split(question)
    end = {"turn": after.rstrip("\n"), "turn+eos": after + fx["eos_token"], "eos": fx["eos_token"]}[QFT_END[fmt.name]]
    assert fmt.qft_text(question) == before + question + end
    assert fmt.query_end in fmt.stop_strings or any(fmt.query_end.endswith(s) for s in fmt.stop_strings)


@pytest.mark.parametrize("name", RENDERED)
def test_solver_judge_and_scorer_prompts_equal_the_template(name: str) -> None:
    fmt = fmt_of(name)
    solver = render(name, user(f"{QUESTION}\n{SOLVER_INSTRUCTION}"))
    assert fmt.solver_prompt(QUESTION) == solver
    assert score_text(fmt, QUESTION) == render(name, user(f"{QUESTION.strip()}\n{SOLVER_INSTRUCTION}"))
    # The judge's instructions (each style's) are fixed text; what must match is the chat wrapping around them.
    before, after = render(name, user(SENTINEL)).split(SENTINEL)
    for style in JUDGE_PROMPTS:
        judge = fmt.judge_prompt(QUESTION, style)
        assert judge.startswith(before) and judge.endswith(after)
        content = judge[len(before):-len(after)]
        assert QUESTION.strip() in content and judge == render(name, user(content))


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("name", RENDERED)
def test_optimiser_requests_equal_the_template(name: str, direction: str) -> None:
    """The local optimiser backend renders system + user messages with `fmt.chat`."""
    fmt, messages = fmt_of(name), optimiser_messages(QUESTION, direction)
    if fmt.system_into_first_user:
        # Mistral's original template has no system role (it raises); its later revisions prefix the system text
        # to the first user turn with a blank line, which is the rule sq-jax follows.
        with pytest.raises(Exception, match="roles"):
            render(name, messages)
        messages = user(f"{messages[0]['content']}\n\n{messages[1]['content']}")
    assert fmt.chat(optimiser_messages(QUESTION, direction), add_generation_prompt=True) == render(name, messages)


@pytest.mark.parametrize("name", RENDERED)
def test_multi_turn_chat_equals_the_template(name: str) -> None:
    fmt = fmt_of(name)
    turns = [*user("What is 2+2?"), {"role": "assistant", "content": "It is 4."}, *user(QUESTION)]
    if name == "mistral-7b-instruct-v0.1":
        # v0.1 writes EOS + " " after an assistant turn; sq-jax renders v0.2 (same single-turn prompts).
        assert fmt.chat(turns, add_generation_prompt=True) != render(name, turns)
        assert render(name, turns) == fmt.chat(turns, add_generation_prompt=True).replace("</s>", "</s> ")
        return
    assert fmt.chat(turns, add_generation_prompt=True) == render(name, turns)


@pytest.mark.parametrize("name", RENDERED)
def test_sft_example_equals_the_template_with_the_reply(name: str) -> None:
    """SFT text = solver prompt + response + end of turn: the template's rendering of the (user, assistant) pair,
    without the whitespace some templates write after the end-of-turn token (Qwen's newline, Mistral v0.1's space:
    it belongs to the next turn)."""
    fmt, tok = fmt_of(name), fixture_tokenizer(name)
    pair = [*user(f"{QUESTION.strip()}\n{SOLVER_INSTRUCTION}"), {"role": "assistant", "content": RESPONSE}]
    full = render(name, pair, add_generation_prompt=False).rstrip()
    assert full.endswith(fmt.turn_end)
    ids, loss_mask = SFTTask(tok, fmt, cfg=None).encode({"query": QUESTION, "response": f"\n{RESPONSE} "})
    assert tok.decode(ids) == full
    prompt = encode_prompt(tok, fmt.solver_prompt(QUESTION.strip()))
    assert ids == encode_prompt(tok, full) and loss_mask == [0] * len(prompt) + [1] * (len(ids) - len(prompt))


@pytest.mark.parametrize("name", RENDERED)
def test_token_ids_count_bos_once(name: str) -> None:
    """The template writes BOS and the tokenizer would add one too: encode_prompt must equal apply_chat_template's
    ids, with exactly one BOS (none for Qwen, which has no BOS)."""
    fx, fmt, tok = load_fixture(name), fmt_of(name), fixture_tokenizer(name)
    messages = user(f"{QUESTION}\n{SOLVER_INSTRUCTION}")
    ids = encode_prompt(tok, fmt.solver_prompt(QUESTION))
    assert ids == template_ids(name, messages)
    bos_id = tok.convert_tokens_to_ids(fx["bos_token"]) if fx["bos_token"] else None
    assert ids.count(bos_id) == (1 if fx["bos_token"] else 0)
    assert encode_prompt(tok, fmt.pre_query_template) == ids[: len(encode_prompt(tok, fmt.pre_query_template))]


@pytest.mark.parametrize("name", RENDERED)
def test_detect_prompt_format_picks_the_template(name: str) -> None:
    assert detect_prompt_format(fixture_tokenizer(name)).name == load_fixture(name)["prompt_format"]


def test_llama31_is_not_rendered_by_the_llama3_format() -> None:
    """Llama 3.1's template always writes a dated system header, which the 3.0 format does not."""
    rendered = render("llama-3.1-8b-instruct", user(QUESTION))
    assert "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n" in rendered
    assert get_prompt_format("llama3").solver_prompt(QUESTION) != render("llama-3.1-8b-instruct",
                                                                         user(f"{QUESTION}\n{SOLVER_INSTRUCTION}"))


def test_reward_inputs_carry_one_bos() -> None:
    """The reward stage encodes (question, response) as internlm2-7b-reward's `get_score` does: the tokenizer's own
    template as text, encoded without special tokens. The template writes BOS and InternLM2's tokenizer adds one on
    plain encoding: the ids hold it once, and read back as the internlm2 format's rendering of the pair. (The
    fixture is internlm2-chat's template; the reward model's own tokenizer_config.json was not found quoted.)"""
    tok, pair = fixture_tokenizer("internlm2-chat-7b"), [*user(QUESTION), {"role": "assistant", "content": RESPONSE}]
    ids = reward_inputs(tok, QUESTION, RESPONSE)
    assert ids.count(tok.convert_tokens_to_ids("<s>")) == 1 and ids[0] == tok.convert_tokens_to_ids("<s>")
    assert tok.decode(ids) == get_prompt_format("internlm2").chat(pair)
    assert tok(tok.decode(ids))["input_ids"][:2] == [ids[0], ids[0]]  # what plain encoding would have done
