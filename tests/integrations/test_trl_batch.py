"""r2m.integrations.trl_batch: a TRL reward call as each model reads it (the RM through its own chat template, h on
the policy's own tokens: its chat template with the generation prompt, then the sampled ids), and the merge of a
step's generation batches."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("trl", reason="TRL is not installed (pip install 'r2m[trl]'): the TRL integration tests skip")

from r2m.config.models import R2MConfig  # noqa: E402
from r2m.data.adapters import render_messages  # noqa: E402
from r2m.errors import DataError, ModelError  # noqa: E402
from r2m.integrations.trl import R2MReward  # noqa: E402
from r2m.integrations.trl_batch import R2MBatch, merge, read_rows  # noqa: E402
from r2m.models.fusion import omega  # noqa: E402

QUESTION = [{"role": "user", "content": "why is the sky blue?"}]
SYSTEM = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "capital of France?"}]
QWEN_PROMPT = ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
               "<|im_start|>user\nwhy is the sky blue?<|im_end|>\n<|im_start|>assistant\n")
"""QUESTION as the Qwen2.5 policy reads it (its template adds the default system turn and the generation prompt)."""
LLAMA_CHAT = ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nwhy is the sky blue?<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\nRayleigh scattering.<|eot_id|>")
"""QUESTION and the reply as the Llama 3 RM reads them: its own template, which closes the turn itself."""


@pytest.fixture(scope="module")
def models(family_models):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    policy = AutoModelForCausalLM.from_pretrained(str(family_models.policy)).eval()
    tok = AutoTokenizer.from_pretrained(str(family_models.policy))
    reward = R2MReward.from_base(str(family_models.rm), policy, tok, R2MConfig(enabled=True))
    reward.bind(policy, 2)
    return policy, tok, reward


def _sampled(tok, replies: list[str]) -> list[list[int]]:
    """Completion ids as TRL passes them: the reply's tokens, then the policy's end of turn."""
    return [tok(r, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for r in replies]


def test_chat_rows_are_read_by_each_model_with_its_own_template(models) -> None:
    policy, tok, reward = models
    prompts, replies = [QUESTION, QUESTION, SYSTEM, SYSTEM], ["Rayleigh scattering.", "Dust.", "Paris.", "Lyon."]
    completions = [[{"role": "assistant", "content": r}] for r in replies]
    ids = _sampled(tok, replies)
    rows = read_rows(tok, prompts, completions, ids, {})
    # the policy: what it read (its template, add_generation_prompt) and then what it wrote
    assert tok.decode(rows.sequences[0][: -len(ids[0])]) == QWEN_PROMPT
    for i, p in enumerate(prompts):
        want = tok.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        assert rows.sequences[i] == list(want) + ids[i]
    assert rows.responses[0] == "Rayleigh scattering.<|im_end|>"  # decoded with its special tokens
    # the RM: the conversation through its own template, the policy's <|im_end|> gone
    enc = reward.model.rm.tokenize(rows.prompts, rows.responses)
    rm_tok = reward.model.rm.tokenizer
    first = enc["input_ids"][0][enc["attention_mask"][0].bool()]
    assert rm_tok.decode(first) == LLAMA_CHAT
    # ... exactly what `r2m rl` gives the RM for the same chat prompt (r2m.data's ChatPrompt)
    rl = reward.model.rm.tokenize([render_messages(p, tok) for p in prompts], rows.responses)
    assert torch.equal(rl["input_ids"], enc["input_ids"])


def test_h_is_taken_on_the_policy_tokens_and_scores_follow_eq4(models) -> None:
    policy, tok, reward = models
    prompts, replies = [QUESTION, QUESTION, SYSTEM, SYSTEM], ["Rayleigh scattering.", "Dust.", "Paris.", "Lyon."]
    ids = _sampled(tok, replies)
    rows = read_rows(tok, prompts, [[{"role": "assistant", "content": r}] for r in replies], ids, {})
    fb = reward.feedback(rows.sequences)
    for i, seq in enumerate(rows.sequences):  # each row alone, unpadded: its states except at its last token
        with torch.no_grad():
            alone = policy(input_ids=torch.tensor([seq]), output_hidden_states=True).hidden_states[-1][0, :-1]
        torch.testing.assert_close(fb.hidden[i][fb.mask[i].bool()], alone, rtol=1e-4, atol=1e-5)
    reward.reward.total_steps = 10
    scores = reward(prompts, [[{"role": "assistant", "content": r}] for r in replies], completion_ids=ids,
                    trainer_state=None)
    model = reward.model
    want = model.score_embeddings(model.embed_texts(rows.prompts, rows.responses), fb.hidden, fb.mask,
                                  omega(0, 10, 0.6))
    torch.testing.assert_close(torch.tensor(scores), want)


def test_text_rows_take_the_prompt_tokens_as_trl_does(models) -> None:
    _, tok, _ = models
    ids = _sampled(tok, ["blue", "red"])
    rows = read_rows(tok, ["the sky is", "the sky is"], ["blue", "red"], ids, {})
    assert rows.sequences == [tok(text="the sky is")["input_ids"] + x for x in ids]  # processing_class(text=...)
    assert rows.prompts == ["the sky is"] * 2 and rows.responses == ["blue<|im_end|>", "red<|im_end|>"]
    direct = read_rows(tok, ["the sky is"], ["blue"], None, {})  # called without completion_ids: the text itself
    assert direct.responses == ["blue"] and direct.sequences[0][-len(tok("blue")["input_ids"]):] == tok("blue")[
        "input_ids"]


def test_what_r2m_cannot_read_is_refused_by_name(models) -> None:
    _, tok, _ = models
    with pytest.raises(DataError, match="mixes text prompts and chat-message prompts"):
        read_rows(tok, ["a", "a", QUESTION, QUESTION], ["x"] * 4, None, {})
    image = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is this?"}]}]
    with pytest.raises(DataError, match=r"prompt 0, message 0: expected \{'role': ..., 'content': <text>\}"):
        read_rows(tok, [image, image], ["x", "y"], None, {})
    tool = [{"role": "assistant", "content": ""}, {"role": "tool", "content": "42"}]
    with pytest.raises(DataError, match=r"completion 0 has 2 messages \(\['assistant', 'tool'\]\)"):
        read_rows(tok, [QUESTION], [tool], None, {})
    with pytest.raises(DataError, match="1 prompts, 2 completions"):
        read_rows(tok, [QUESTION], ["x", "y"], None, {})
    plain = type(tok).from_pretrained(tok.name_or_path)
    plain.chat_template = None
    with pytest.raises(ModelError, match="the policy tokenizer's chat template cannot render the prompts"):
        read_rows(plain, [QUESTION], ["x"], None, {})


def test_merge_keeps_every_row_and_pads_h_on_the_left() -> None:
    torch.manual_seed(0)
    a = R2MBatch(torch.randn(4, 3), torch.randn(4, 5, 2), torch.tensor([[0, 1, 1, 1, 1]] * 4), 3, 2, 2, ["p", "q"])
    b = R2MBatch(torch.randn(2, 3), torch.randn(2, 7, 2), torch.tensor([[1] * 7, [0, 0, 1, 1, 1, 1, 1]]), 3, 1, 2,
                 ["r"])
    m = merge([a, b])
    assert (m.n, m.k, m.step, m.prompts) == (3, 2, 3, ["p", "q", "r"])
    assert m.policy_hidden.shape == (6, 7, 2) and m.policy_mask.shape == (6, 7)
    assert torch.equal(m.rm_embeddings, torch.cat([a.rm_embeddings, b.rm_embeddings]))
    for i, (batch, row) in enumerate([(a, r) for r in range(4)] + [(b, r) for r in range(2)]):
        keep = batch.policy_mask[row].bool()
        assert torch.equal(m.policy_hidden[i][m.policy_mask[i].bool()], batch.policy_hidden[row][keep])
    assert merge([a]) is a
    with pytest.raises(ValueError, match="scored batches at steps \\[3, 4\\]"):
        merge([a, R2MBatch(b.rm_embeddings, b.policy_hidden, b.policy_mask, 4, 1, 2, ["r"])])
