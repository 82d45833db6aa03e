"""The RewardModel wrapper scores exactly as the Hugging Face model does, on its own tokenizer."""

from __future__ import annotations

import torch

from r2m.config.models import ArchConfig
from r2m.models.loading import build_world_lm, load_reward_model, load_tokenizer, save_model
from r2m.models.reward import RewardModel, last_token_index
from r2m.world.tokenizer import build_tokenizer


def _tiny_rm(tmp_path):
    tok = build_tokenizer("rm")
    lm = build_world_lm(ArchConfig(hidden_size=24, num_layers=1, num_heads=2, intermediate_size=48), tok, seed=0)
    save_model(lm, tok, tmp_path / "lm")
    tok = load_tokenizer(str(tmp_path / "lm"))
    return RewardModel(load_reward_model(str(tmp_path / "lm"), pad_token_id=tok.pad_token_id), tok)


def test_last_token_index_left_and_right_padding() -> None:
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1], [1, 1, 1, 1]])
    assert last_token_index(mask).tolist() == [1, 3, 3]


def test_wrapper_matches_hf_sequence_classification(tmp_path) -> None:
    rm = _tiny_rm(tmp_path)
    enc = rm.tokenize(["<bos> 3 1 2 =>", "<bos> 9 8 7 6 5 =>"], ["1 2 3 <eos>", "5 6 <eos>"])
    ours = rm(enc["input_ids"], enc["attention_mask"])
    theirs = rm.model(**enc).logits.squeeze(-1)
    torch.testing.assert_close(ours, theirs)
    # Right padding: the shorter sequence's score does not depend on the padding width.
    alone = rm.score_texts(["<bos> 3 1 2 =>"], ["1 2 3 <eos>"])
    torch.testing.assert_close(alone, ours[:1])


def test_rm_tokenizes_with_its_own_ids(tmp_path) -> None:
    rm = _tiny_rm(tmp_path)
    policy_tok = build_tokenizer("policy")
    enc = rm.tokenize(["<bos> 1 =>"], ["1 <eos>"])
    assert enc["input_ids"][0].tolist() == rm.tokenizer.convert_tokens_to_ids(["<bos>", "1", "=>", "1", "<eos>"])
    assert enc["input_ids"][0].tolist() != policy_tok.convert_tokens_to_ids(["<bos>", "1", "=>", "1", "<eos>"])


def test_scoring_builds_no_kv_cache_and_runs_batch_size_rows_per_forward(tmp_path) -> None:
    """reward.batch_size rows per backbone forward, rows of similar length together (each forward as wide as its own
    longest row), and use_cache=False: no KV cache is built for a single forward."""
    rm = _tiny_rm(tmp_path)
    prompts = ["<bos> 3 1 2 =>", "<bos> 9 8 7 6 5 =>", "<bos> 1 =>", "<bos> 4 4 =>", "<bos> 7 1 6 2 =>"] * 2
    responses = ["1 2 3 <eos>", "5 6 7 8 9 <eos>", "1 <eos>", "4 4 <eos>", "1 2 <eos>"] * 2
    calls = []

    def record(module, args, kwargs, output):
        mask = kwargs["attention_mask"]
        calls.append((mask.shape[0], mask.shape[1] == mask.sum(-1).max().item(), output.cache))

    handle = rm.backbone.register_forward_hook(record, with_kwargs=True)
    try:
        scores = rm.score_texts(prompts, responses, batch_size=4)
    finally:
        handle.remove()
    assert [c[0] for c in calls] == [4, 4, 2] and all(c[1] for c in calls)
    assert all(c[2] is None for c in calls)  # no KV cache
    one_by_one = torch.cat([rm.score_texts([p], [r]) for p, r in zip(prompts, responses)])
    torch.testing.assert_close(scores, one_by_one, atol=1e-5, rtol=1e-5)  # in the rows' own order
