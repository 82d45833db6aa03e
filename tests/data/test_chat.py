"""Each model reads its own input: the policy its template's prompt, the RM the conversation in *its* template.

Two tokenizers whose templates differ (Qwen2.5's ChatML and Llama 3.1's headers, as in the Qwen paper configs
with the Skywork RM), trained here; what each model receives is decoded and compared with what its own
template gives."""

from __future__ import annotations

import logging
import pickle

import pytest

from r2m.data.chat import ChatPrompt, prompt_messages
from r2m.data.datasets import load_preferences, load_prompts
from r2m.data.adapters import render_messages
from r2m.models.families import Family, save_family_model

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
REPLY = "Paris is the capital."


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(policy tokenizer, RM) of the Qwen2.5 / Skywork (Llama 3.1) pairing."""
    from r2m.models.loading import load_reward_model, load_tokenizer
    from r2m.models.reward import RewardModel

    d = tmp_path_factory.mktemp("chat")
    policy_dir = save_family_model(Family.QWEN2_5, d / "policy")
    rm_dir = save_family_model(Family.LLAMA3_1, d / "rm", rm=True)
    rm_tok = load_tokenizer(str(rm_dir))
    rm = RewardModel(load_reward_model(str(rm_dir), pad_token_id=rm_tok.pad_token_id), rm_tok)
    return load_tokenizer(str(policy_dir)), rm


def _decoded(rm, prompts, responses) -> list[str]:
    enc = rm.tokenize(prompts, responses)
    return [rm.tokenizer.decode(ids[mask.bool()].tolist(), skip_special_tokens=False)
            for ids, mask in zip(enc["input_ids"], enc["attention_mask"])]


def test_policy_reads_its_template_and_rm_reads_its_own(pair) -> None:
    from r2m.experience.sampling import tokenize_prompts

    policy_tok, rm = pair
    prompt = render_messages(MESSAGES, policy_tok)
    assert isinstance(prompt, ChatPrompt) and prompt_messages(prompt) == MESSAGES
    # The policy: Qwen's ChatML, ending where the reply starts; its tokens are the prompt set's.
    assert prompt == policy_tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert prompt.endswith("<|im_start|>assistant\n")
    ids = tokenize_prompts(policy_tok, [prompt], 1024, "skip").ids[0]
    assert policy_tok.decode(ids, skip_special_tokens=False) == prompt
    # The RM: the same conversation with the reply, in Llama 3.1's template; the policy's end-of-turn text goes.
    rm.read_policy(policy_tok)
    (seen,) = _decoded(rm, [prompt], [REPLY + policy_tok.eos_token])
    expected = rm.tokenizer.apply_chat_template([*MESSAGES, {"role": "assistant", "content": REPLY}], tokenize=False)
    assert seen == expected
    assert seen.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>")
    assert seen.endswith(f"<|start_header_id|>assistant<|end_header_id|>\n\n{REPLY}<|eot_id|>")
    assert "<|im_start|>" not in seen and "<|im_end|>" not in seen
    assert seen.count("<|begin_of_text|>") == 1  # the template's BOS text and the tokenizer's BOS are one token


def test_plain_prompts_are_read_alike_by_every_model(pair) -> None:
    """TRL's standard format (and the gold-reward world): prompt text then response, tokenised apart."""
    _, rm = pair
    prompt = "SUBREDDIT: r/relationships\nTITLE: my friend\nPOST: I am not sure.\nTL;DR:"
    (seen,) = _decoded(rm, [prompt], [" friend is upset"])
    assert seen == "<|begin_of_text|>" + prompt + " friend is upset"


def test_rm_without_template_concatenates_and_says_so_once(tmp_path, caplog) -> None:
    from r2m.models.loading import load_reward_model, load_tokenizer
    from r2m.models.reward import RewardModel

    policy_tok = load_tokenizer(str(save_family_model(Family.QWEN2_5, tmp_path / "p")))
    rm_dir = save_family_model(Family.PYTHIA, tmp_path / "rm", rm=True)
    tok = load_tokenizer(str(rm_dir))
    rm = RewardModel(load_reward_model(str(rm_dir), pad_token_id=tok.pad_token_id), tok, name="reward model X")
    prompt = render_messages(MESSAGES, policy_tok)
    with caplog.at_level(logging.INFO, logger="r2m"):
        seen = _decoded(rm, [prompt, prompt], [REPLY, REPLY])
    assert seen == [prompt + REPLY] * 2
    notes = [r for r in caplog.records if "has no chat template" in r.getMessage()]
    assert len(notes) == 1 and "reward model X" in notes[0].getMessage()


def test_chat_prompt_survives_pickling_and_rows(tmp_path, pair) -> None:
    """The messages travel with the text: through processes (pickle) and the adapters' rows."""
    import json

    policy_tok, _ = pair
    prompt = render_messages(MESSAGES, policy_tok)
    back = pickle.loads(pickle.dumps(prompt))
    assert back == prompt and prompt_messages(back) == MESSAGES
    row = {"prompt": "What is the capital of France?", "prompt_id": "0",
           "chosen": [*MESSAGES, {"role": "assistant", "content": REPLY}],
           "rejected": [*MESSAGES, {"role": "assistant", "content": "London."}]}
    path = tmp_path / "uf.jsonl"
    path.write_text(json.dumps(row) + "\n")
    (p,) = load_prompts(path, "ultrafeedback", tokenizer=policy_tok)
    assert prompt_messages(p["prompt"]) == MESSAGES
    (pref,) = load_preferences(path, "ultrafeedback", tokenizer=policy_tok)
    assert prompt_messages(pref["prompt"]) == MESSAGES
    # Without a tokenizer (SER's model-agnostic splits) the prompt stays plain text, read alike by every model.
    (plain,) = load_preferences(path, "ultrafeedback")
    assert prompt_messages(plain["prompt"]) is None


def test_rm_inputs_over_max_length_are_cut_and_counted(pair) -> None:
    policy_tok, rm = pair
    prompt = render_messages(MESSAGES, policy_tok)
    full = len(rm.renderer.encode([prompt], [REPLY])[0])
    old = rm.max_length
    try:
        rm.set_max_length(full - 3)
        enc = rm.tokenize([prompt, "short"], [REPLY, "x"])
        assert enc["attention_mask"].sum(1).tolist()[0] == full - 3
        assert rm.pop_truncated() == 1 and rm.pop_truncated() == 0
        rm.set_max_length(10 ** 9)  # never over the model's positions
        assert rm.max_length == 131072
    finally:
        rm.set_max_length(old)


def test_policy_without_template_renders_plain_text_and_says_so_once(tmp_path, caplog) -> None:
    from r2m.models.loading import load_tokenizer

    tok = load_tokenizer(str(save_family_model(Family.PYTHIA, tmp_path / "pythia")))
    with caplog.at_level(logging.INFO, logger="r2m"):
        prompts = [render_messages(MESSAGES, tok) for _ in range(3)]
    assert prompts == ["User: What is the capital of France?\n\nAssistant:"] * 3
    assert prompt_messages(prompts[0]) == MESSAGES  # an RM with a template still renders its own
    assert len([r for r in caplog.records if "has no chat template" in r.getMessage()]) == 1
