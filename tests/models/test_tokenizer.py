"""Prompt formats, format detection, stop ids and loading errors of sq_jax.models.tokenizer.

Expected strings are literals copied from SCALEQUEST.md and the families' official chat
templates, never rebuilt from the code under test.
"""

from __future__ import annotations

import re

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from sq_jax.models.tokenizer import (
    detect_prompt_format,
    encode_prompt,
    load_tokenizer,
    stop_token_ids,
)
from sq_jax.prompts.formats import (
    PROMPT_FORMATS,
    PromptFormat,
    get_prompt_format,
)
from sq_jax.prompts.judge import parse_judge_verdict

Q = "If $x + 3 = 7$, what is $\\boxed{x}$? {not a format field}"
SOLVER = "Please reason step by step, and put your final answer within \\boxed{}."
CONVERSATION = [
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "It is 4."},
    {"role": "user", "content": "And 3+3?"},
]


def test_registry_names() -> None:
    assert set(PROMPT_FORMATS) == {"qwen", "qwen2.5", "qwen2.5-math", "deepseek", "llama3", "mistral", "internlm2"}
    for name, fmt in PROMPT_FORMATS.items():
        assert isinstance(fmt, PromptFormat) and fmt.name == name
        assert get_prompt_format(name) is fmt


def test_qwen_strings_match_paper() -> None:
    fmt = PROMPT_FORMATS["qwen"]
    pre = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    assert fmt.pre_query_template == pre
    assert fmt.qft_text("What is 1+1?") == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "What is 1+1?<|im_end|>"
    )
    assert fmt.solver_prompt("What is 1+1?") == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "What is 1+1?\nPlease reason step by step, and put your final answer within \\boxed{}."
        "<|im_end|>\n<|im_start|>assistant\n"
    )
    # The authors' synthesis stops: <|im_start|> too, so a run-on generator never writes a second turn.
    assert fmt.stop_strings == ("<|im_end|>", "<|endoftext|>", "<|im_start|>")


def test_deepseek_strings_match_paper() -> None:
    fmt = PROMPT_FORMATS["deepseek"]
    assert fmt.pre_query_template == "<｜begin▁of▁sentence｜>User: "
    assert fmt.qft_text("What is 1+1?") == (
        "<｜begin▁of▁sentence｜>User: What is 1+1?\n\n<｜end▁of▁sentence｜>"
    )
    assert fmt.solver_prompt("What is 1+1?") == (
        "<｜begin▁of▁sentence｜>User: What is 1+1?\nPlease reason step by step, and put your "
        "final answer within \\boxed{}.\n\nAssistant:"
    )
    assert fmt.stop_strings == ("<｜end▁of▁sentence｜>", "<｜begin▁of▁sentence｜>")  # the authors stop on BOS too


def test_llama3_and_mistral_templates() -> None:
    llama = PROMPT_FORMATS["llama3"]
    assert llama.pre_query_template == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
    )
    assert llama.qft_text("Q?") == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nQ?<|eot_id|>"
    )
    assert set(llama.stop_strings) == {"<|eot_id|>", "<|end_of_text|>"}
    mistral = PROMPT_FORMATS["mistral"]
    assert mistral.pre_query_template == "<s>[INST] "
    assert mistral.qft_text("Q?") == "<s>[INST] Q?</s>"
    assert mistral.solver_prompt("Q?") == f"<s>[INST] Q?\n{SOLVER} [/INST]"
    assert mistral.stop_strings == ("</s>",)


@pytest.mark.parametrize("name", sorted(PROMPT_FORMATS))
def test_qft_and_prompts_are_consistent(name: str) -> None:
    fmt = PROMPT_FORMATS[name]
    text = fmt.qft_text(Q)
    assert text.startswith(fmt.pre_query_template)
    assert Q in text  # braces in math text survive untouched
    # The generator is trained to close the question with a stop string, or it never stops.
    assert any(text.endswith(s) for s in fmt.stop_strings)
    for prompt in (fmt.solver_prompt(Q), fmt.judge_prompt(Q)):
        assert Q in prompt
        assert prompt.endswith(fmt.assistant_start)
    assert SOLVER in fmt.solver_prompt(Q)
    judge = fmt.judge_prompt(Q)
    assert "Final verdict: Yes" in judge and "Final verdict: No" in judge
    assert "step by step" in judge


EXPECTED_CHAT = {
    "qwen": (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\nIt is 4.<|im_end|>\n"
        "<|im_start|>user\nAnd 3+3?<|im_end|>\n"
        "<|im_start|>assistant\n"
    ),
    "deepseek": (
        "<｜begin▁of▁sentence｜>User: What is 2+2?\n\n"
        "Assistant: It is 4.<｜end▁of▁sentence｜>"
        "User: And 3+3?\n\nAssistant:"
    ),
    "llama3": (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nIt is 4.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nAnd 3+3?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
    "mistral": "<s>[INST] What is 2+2? [/INST]It is 4.</s>[INST] And 3+3? [/INST]",
}


@pytest.mark.parametrize("name", sorted(EXPECTED_CHAT))
def test_chat_two_turns(name: str) -> None:
    assert PROMPT_FORMATS[name].chat(CONVERSATION, add_generation_prompt=True) == (
        EXPECTED_CHAT[name]
    )


def test_chat_without_generation_prompt_and_with_system() -> None:
    msgs = [{"role": "system", "content": "Be brief."}, *CONVERSATION[:2]]
    assert PROMPT_FORMATS["qwen"].chat(msgs) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\nIt is 4.<|im_end|>\n"
    )
    assert PROMPT_FORMATS["deepseek"].chat(msgs) == (
        "<｜begin▁of▁sentence｜>Be brief.\n\nUser: What is 2+2?\n\n"
        "Assistant: It is 4.<｜end▁of▁sentence｜>"
    )
    assert PROMPT_FORMATS["mistral"].chat(msgs) == (
        "<s>[INST] Be brief.\n\nWhat is 2+2? [/INST]It is 4.</s>"
    )
    # Llama 3's official template trims every message.
    assert PROMPT_FORMATS["llama3"].chat([{"role": "user", "content": "  hi \n"}]) == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
    )


def test_chat_rejects_bad_messages() -> None:
    with pytest.raises(ValueError, match="role"):
        PROMPT_FORMATS["qwen"].chat([{"role": "tool", "content": "x"}])
    with pytest.raises(ValueError, match="'content'"):
        PROMPT_FORMATS["qwen"].chat([{"role": "user"}])
    with pytest.raises(ValueError, match="first message"):
        PROMPT_FORMATS["mistral"].chat([*CONVERSATION, {"role": "system", "content": "x"}])


def test_unknown_format_name_lists_known() -> None:
    with pytest.raises(ValueError, match="qwen.*deepseek.*llama3.*mistral"):
        get_prompt_format("vicuna")


def test_parse_judge_verdict() -> None:
    assert parse_judge_verdict("It is fine.\nFinal verdict: Yes") is True
    assert parse_judge_verdict("Missing a number.\n**Final verdict: No.**\n") is False
    assert parse_judge_verdict("Final verdict: Yes\nWait.\nFinal verdict: No") is False
    assert parse_judge_verdict("Final verdict: Not sure") is None
    assert parse_judge_verdict("I think yes.") is None


def _wordlevel(tokens: list[str], **special: str) -> PreTrainedTokenizerFast:
    """A tokenizer with exactly these tokens, ids in order, built offline in milliseconds."""
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token=tokens[0]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    specials = [t for t in tokens if t.startswith("<") or t.startswith("[")]
    tok.add_special_tokens(specials)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **special)


@pytest.mark.parametrize(
    ("tokens", "expected"),
    [
        (["<unk>", "<|im_start|>", "<|im_end|>", "hi"], "qwen"),
        (["<unk>", "<|begin_of_text|>", "<|start_header_id|>", "<|eot_id|>"], "llama3"),
        (["<unk>", "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"], "deepseek"),
        (["<unk>", "<s>", "</s>", "▁hi"], "mistral"),
        (["<pad>", "[INST]", "[/INST]", "</s>"], "mistral"),
    ],
)
def test_detect_prompt_format(tokens: list[str], expected: str) -> None:
    assert detect_prompt_format(_wordlevel(tokens)).name == expected


def test_detect_unknown_format_explains_how_to_choose() -> None:
    with pytest.raises(ValueError, match=r"(?s)qwen, deepseek, llama3, mistral.*explicitly"):
        detect_prompt_format(_wordlevel(["<unk>", "hello", "world"]))


def test_stop_token_ids_deepseek_and_missing() -> None:
    tok = _wordlevel(
        ["<unk>", "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "User:"],
        eos_token="<｜end▁of▁sentence｜>",
    )
    assert stop_token_ids(tok, PROMPT_FORMATS["deepseek"]) == [2, 1]  # EOS, then BOS (a new conversation)
    with pytest.raises(ValueError, match=r"<\|im_end\|>"):
        stop_token_ids(tok, PROMPT_FORMATS["qwen"])
    # Non-strict skips the missing strings but still stops at EOS.
    assert stop_token_ids(tok, PROMPT_FORMATS["qwen"], strict=False) == [2]
    no_eos = _wordlevel(["<unk>", "hello"])
    with pytest.raises(ValueError, match="never stop"):
        stop_token_ids(no_eos, PROMPT_FORMATS["qwen"], strict=False)


def test_encode_prompt_adds_no_second_bos() -> None:
    tok = Tokenizer(models.WordLevel({"<unk>": 0, "<s>": 1, "</s>": 2, "hi": 3}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(["<s>", "</s>"])
    # Like Llama/Mistral tokenizers, plain encoding prepends BOS on its own.
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", 1)]
    )
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    assert hf("<s> hi")["input_ids"] == [1, 1, 3]
    assert encode_prompt(hf, "<s> hi") == [1, 3]


def test_load_tokenizer_missing_path(tmp_path) -> None:
    missing = tmp_path / "no_such_tokenizer"
    with pytest.raises(FileNotFoundError, match="no_such_tokenizer"):
        load_tokenizer(str(missing))
    with pytest.raises(FileNotFoundError, match="nested/dir/tok"):
        load_tokenizer("./nested/dir/tok")


def test_load_tokenizer_empty_dir_names_path(tmp_path) -> None:
    with pytest.raises(OSError, match=re.escape(str(tmp_path))):
        load_tokenizer(str(tmp_path))
