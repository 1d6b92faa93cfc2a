"""The reward stage scores like internlm2-7b-reward's own `get_score`, on a tiny model in the real checkpoint's format.

The fixture is laid out as `internlm/internlm2-7b-reward` ships: `InternLM2ForRewardModel` with packed `wqkv` and
`v_head`, `reward_token_id` in config.json, `rope_scaling: {type: dynamic}`, and a tokenizer that is remote code
(tokenizer_config.json `auto_map`, a Python file in the folder) with InternLM2's chat template. The reference is
written here from the public modeling file's `get_score`: render the template as text, encode it without special
tokens, append `config.reward_token_id`, run the model, read `v_head` at the appended token.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import hf_tiny
from sq_jax.models.config import ConfigError
from sq_jax.models.hf_io import load_pretrained, save_pretrained
from sq_jax.models.tokenizer import RemoteCodeError, load_tokenizer
from sq_jax.pipeline.scoring import pooled_sequence, score_sequences
from sq_jax.pipeline.stages import StageContext
from sq_jax.pipeline.stages.scored import RewardConfig, reward, reward_inputs
from sq_jax.data.dataset import iter_rows

# internlm2-chat-7b's / internlm2-7b-reward's chat template (tokenizer_config.json), as published.
INTERNLM2_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
REMOTE_TOKENIZER = '''from transformers import PreTrainedTokenizerFast


class InternLM2TokenizerFast(PreTrainedTokenizerFast):
    """Stands where the real repository's tokenization_internlm2_fast.py stands: code loaded from the folder."""
'''
CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,?!:;\n+-=*/()$\\{}'"
SPECIALS = ["<|im_start|>", "<|im_end|>", "[UNUSED_TOKEN_130]"]  # the last is internlm2's reward token (92527)

CONVERSATIONS = [
    ("What is 2 + 3?", "2 + 3 = 5. The answer is \\boxed{5}."),
    ("What is 2 + 3?", "It is 6, so \\boxed{6}."),
    ("Solve x + 1 = 4.", "Subtract 1: x = 3. Final answer: \\boxed{3}"),
    ("Solve x + 1 = 4.", "x = 3"),
    ("Solve x + 1 = 4.", "Adding gives x = 5, \\boxed{5}"),
]


def _write_tokenizer(path: Path) -> int:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for ch in CHARS:
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(["<unk>", "<s>", "</s>", *SPECIALS])
    assert tok.get_vocab_size() <= hf_tiny.VOCAB
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenization_internlm2_fast.py").write_text(REMOTE_TOKENIZER)
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "InternLM2Tokenizer",
        "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer",
                                       "tokenization_internlm2_fast.InternLM2TokenizerFast"]},
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "</s>",
        "chat_template": INTERNLM2_TEMPLATE,
    }))
    return tok.token_to_id("[UNUSED_TOKEN_130]")


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory):
    """(model dir, torch Llama with the same weights, v_head) of a tiny internlm2 reward model."""
    path = tmp_path_factory.mktemp("reward-fixture") / "internlm2-7b-reward"
    torch_model = hf_tiny.make_model("llama_gqa", seed=3)
    tensors, config = hf_tiny.llama_to_internlm2(torch_model, {
        "architectures": ["InternLM2ForRewardModel"],
        "auto_map": {"AutoConfig": "configuration_internlm2.InternLM2Config",
                     "AutoModel": "modeling_internlm2.InternLM2ForRewardModel"},
        "rope_scaling": {"type": "dynamic", "factor": 2.0},
        "attn_implementation": "eager", "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32",
    })
    tensors.pop("output.weight")
    v_head = np.random.default_rng(7).normal(size=(1, 32)).astype(np.float32)
    tensors["v_head.weight"] = v_head
    hf_tiny.write_checkpoint(path, tensors, config)
    reward_token = _write_tokenizer(path)
    config["reward_token_id"] = reward_token
    (path / "config.json").write_text(json.dumps(config))
    return path, torch_model, v_head, reward_token


def get_score_reference(torch_model, v_head, tokenizer, conversation, reward_token: int | None) -> float:
    """`InternLM2ForRewardModel.get_score`, re-implemented on the torch Llama holding the same weights
    (`reward_token=None`: read at the last template token instead, for contrast)."""
    text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=False)
    ids = tokenizer.encode(text, return_tensors="pt", add_special_tokens=False)
    if reward_token is not None:
        ids = torch.cat([ids, torch.tensor([[reward_token]], dtype=torch.long)], dim=1)
    mask = torch.ones_like(ids, dtype=torch.bool)
    with torch.no_grad():
        hidden = torch_model.model(ids, attention_mask=mask).last_hidden_state
    scores = hidden @ torch.tensor(v_head).T  # [1, t, 1]
    ends = mask.cumsum(dim=1).argmax(dim=1)  # the modeling file's "end reward token" index
    return float(scores[0, ends[0], 0])


def _conversation(query: str, response: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": query}, {"role": "assistant", "content": response}]


def test_scores_equal_get_score_of_the_modeling_file(reward_model):
    path, torch_model, v_head, reward_token = reward_model
    tokenizer = load_tokenizer(str(path), trust_remote_code=True)
    model = load_pretrained(path)
    assert model.config.reward_token_id == reward_token
    expected = [get_score_reference(torch_model, v_head, tokenizer, _conversation(q, r), reward_token)
                for q, r in CONVERSATIONS]
    got = score_sequences(model, [reward_inputs(tokenizer, q, r) for q, r in CONVERSATIONS], batch_size=8)
    np.testing.assert_allclose(got, expected, atol=2e-5)
    # Read at the last template token instead (what the stage did before), the scores are other numbers.
    at_template_end = [get_score_reference(torch_model, v_head, tokenizer, _conversation(q, r), reward_token=None)
                       for q, r in CONVERSATIONS]
    assert np.min(np.abs(np.subtract(at_template_end, expected))) > 1e-3


def test_pooling_token_is_appended_once_after_left_truncation():
    assert pooled_sequence([5, 6, 7, 8], 99, max_length=3) == [7, 8, 99]
    assert pooled_sequence([5, 6, 7, 8], None, max_length=3) == [6, 7, 8]
    assert pooled_sequence([5, 6], 99, max_length=None) == [5, 6, 99]
    with pytest.raises(ValueError, match="no room"):
        pooled_sequence([5], 99, max_length=1)


def _context(tmp_path: Path, rows: list[dict]) -> StageContext:
    upstream = tmp_path / "responses"
    upstream.mkdir()
    (upstream / "records").mkdir()
    (upstream / "records" / "part-00000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    stage = tmp_path / "rewards"
    stage.mkdir()
    return StageContext(name="rewards", dir=stage, inputs={"responses": upstream}, seed=0, output_dir=tmp_path)


def test_reward_stage_keeps_the_best_of_n_by_get_score(reward_model, tmp_path):
    path, torch_model, v_head, reward_token = reward_model
    rows = [{"id": f"r{i}", "question_id": f"q{q}", "query": query, "response": response, "answer": None}
            for i, (q, (query, response)) in enumerate(zip([0, 0, 1, 1, 1], CONVERSATIONS))]
    tokenizer = load_tokenizer(str(path), trust_remote_code=True)
    reference = [get_score_reference(torch_model, v_head, tokenizer, _conversation(r["query"], r["response"]),
                                     reward_token) for r in rows]
    stats = reward(_context(tmp_path, rows), RewardConfig(model=str(path), dtype="float32", max_length=128,
                                                          trust_remote_code=True))
    assert stats["pooling_token"] == reward_token and stats["truncated"] == 0
    best = list(iter_rows(tmp_path / "rewards" / "records"))
    for record, members in zip(best, ([0, 1], [2, 3, 4])):
        top = max(members, key=lambda i: reference[i])
        assert record["response_id"] == rows[top]["id"]
        assert record["reward"] == pytest.approx(reference[top], abs=2e-5)


def test_remote_code_tokenizer_needs_the_config_key(reward_model, tmp_path):
    path = reward_model[0]
    with pytest.raises(RemoteCodeError, match="trust_remote_code: true"):
        load_tokenizer(str(path))
    rows = [{"id": "r0", "question_id": "q0", "query": "What is 1 + 1?", "response": "2", "answer": "2"}]
    with pytest.raises(RemoteCodeError, match=r"stages\.rewards\.config\.trust_remote_code: true"):
        reward(_context(tmp_path, rows), RewardConfig(model=str(path), dtype="float32", max_length=64))


def test_dynamic_rope_loads_as_default_rope_within_max_positions(reward_model, tmp_path):
    path, torch_model, _, reward_token = reward_model
    model = load_pretrained(path)
    assert model.config.rope_scaling.rope_type == "dynamic"
    ids, mask = hf_tiny.batch(seed=4)
    hidden = model(np.asarray(ids), None, np.asarray(mask)).logits  # score head: [b, t, 1]
    with torch.no_grad():  # the torch twin runs default RoPE
        expected = torch_model.model(torch.tensor(ids, dtype=torch.long),
                                     attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    v_head = reward_model[2]
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(hidden)[real], (expected @ v_head.T)[real], atol=2e-5)
    with pytest.raises(ConfigError, match=r"stages\.rewards\.config\.max_length=4096 exceeds "
                                          r"max_position_embeddings=128"):
        model.config.check_length(4096, "stages.rewards.config.max_length")
    save_pretrained(model, tmp_path / "export", dtype="float32")
    exported = json.loads((tmp_path / "export" / "config.json").read_text())
    assert exported["reward_token_id"] == reward_token and exported["rope_scaling"]["type"] == "dynamic"


def test_reward_stage_refuses_a_length_past_dynamic_rope(reward_model, tmp_path):
    rows = [{"id": "r0", "question_id": "q0", "query": "What is 1 + 1?", "response": "2", "answer": "2"}]
    with pytest.raises(ConfigError, match=r"stages\.rewards\.config\.max_length"):
        reward(_context(tmp_path, rows), RewardConfig(model=str(reward_model[0]), dtype="float32",
                                                      max_length=4096, trust_remote_code=True))
