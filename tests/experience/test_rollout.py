"""Generation masks, log-probs under left padding, prompt handling, and the Experience layout."""

from __future__ import annotations

import torch

from r2m.config.models import ArchConfig
from r2m.models.loading import build_world_lm
from r2m.experience.rollout import Experience
from r2m.models.feedback import feedback_states, text_feedback
from r2m.models.logprobs import response_forward
from r2m.experience.sampling import generate, tokenize_prompts
from r2m.models.forward import left_pad, position_ids
from r2m.world.tokenizer import build_tokenizer


def _policy():
    tok = build_tokenizer("policy")
    return build_world_lm(ArchConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64), tok, 0), tok


def test_left_pad_and_positions() -> None:
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert position_ids(mask).tolist() == [[0, 1, 2], [0, 0, 0]]


def test_logprobs_do_not_depend_on_left_padding() -> None:
    model, tok = _policy()
    model.eval()
    seq = torch.tensor([tok.convert_tokens_to_ids("<bos> 3 1 2 => 1 2".split())])
    lp = response_forward(model, seq, torch.ones_like(seq), prompt_len=5, temperature=1.0).logprobs
    pad = torch.full((1, 3), tok.pad_token_id)
    padded = torch.cat([pad, seq], 1)
    mask = torch.cat([torch.zeros_like(pad), torch.ones_like(seq)], 1)
    lp_pad = response_forward(model, padded, mask, prompt_len=8, temperature=1.0).logprobs
    torch.testing.assert_close(lp, lp_pad, atol=1e-5, rtol=1e-5)


def test_generate_masks_after_first_eos() -> None:
    model, tok = _policy()
    torch.manual_seed(0)
    ids, mask = left_pad([tok("<bos> 3 1 2 =>")["input_ids"]] * 8, tok.pad_token_id)
    gen = generate(model, ids, mask, temperature=1.0, max_new_tokens=6, eos_token_id=tok.eos_token_id,
                   pad_token_id=tok.pad_token_id)
    resp = gen.sequences[:, gen.prompt_len:]
    for row, m in zip(resp, gen.action_mask):
        n = int(m.sum())
        assert m[:n].all() and not m[n:].any()  # a prefix
        eos = (row[:n] == tok.eos_token_id).nonzero()
        assert len(eos) <= 1 and (len(eos) == 0 or eos[0].item() == n - 1)  # eos only as the last kept token
        assert (row[n:] == tok.pad_token_id).all()
    assert gen.attention_mask.shape == gen.sequences.shape


def test_tokenize_prompts_truncates_or_skips() -> None:
    tok = build_tokenizer("policy")
    prompts = ["<bos> 1 2 =>", "<bos> 1 2 3 4 5 6 =>"]
    t = tokenize_prompts(tok, prompts, max_tokens=5, overlong="truncate")
    assert t.truncated == 1 and t.skipped == 0 and len(t.ids[1]) == 5 and t.ids[1][-1] == tok.convert_tokens_to_ids("=>")
    s = tokenize_prompts(tok, prompts, max_tokens=5, overlong="skip")
    assert s.skipped == 1 and s.texts == prompts[:1]


def test_experience_select_keeps_rows_aligned() -> None:
    B, R = 4, 3
    exp = Experience(
        prompts=list("abcd"), responses=list("wxyz"), sequences=torch.arange(B * 5).view(B, 5),
        attention_mask=torch.ones(B, 5), action_mask=torch.ones(B, R), prompt_len=2,
        old_logprobs=torch.arange(B * R).view(B, R).float(), ref_logprobs=torch.zeros(B, R),
        scores=torch.arange(B).float(), advantages=torch.zeros(B, R), returns=torch.zeros(B, R), n=2, k=2,
    )
    sub = exp.select(torch.tensor([2, 0]))
    assert sub.prompts == ["c", "a"] and sub.responses == ["y", "w"]
    assert sub.scores.tolist() == [2.0, 0.0] and sub.old_logprobs[0].tolist() == [6.0, 7.0, 8.0]


PROMPTS = ["<bos> 3 1 2 =>", "<bos> 1 =>", "<bos> 4 4 2 1 =>", "<bos> 2 3 =>"]


def _maker(**rl):
    import copy

    from r2m.config.training import RLConfig
    from r2m.config.run import WorldConfig
    from r2m.experience.rewards import GoldReward
    from r2m.experience.rollout import ExperienceMaker

    policy, tok = _policy()
    ref = copy.deepcopy(policy).eval().requires_grad_(False)
    cfg = RLConfig(prompts_per_step=4, k=2, max_new_tokens=6, **rl)
    return ExperienceMaker(policy, ref, tok, GoldReward(WorldConfig()), cfg, torch.device("cpu")), tok


def test_rollout_passes_in_row_chunks_equal_one_pass() -> None:
    """rl.rollout_batch_size bounds memory without changing pi_old's or the reference's log-probs."""
    whole, tok = _maker()
    chunked, _ = _maker(rollout_batch_size=3)  # not a divisor of B = 8: a short last chunk
    prompts = tokenize_prompts(tok, PROMPTS, 64, "truncate")
    torch.manual_seed(0)
    gen = whole._sample([ids for ids in prompts.ids for _ in range(2)], 1.0)
    for model in (whole.policy, whole.ref):
        a, b = whole._forward(model, gen, True), chunked._forward(model, gen, True)
        torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a.hidden, b.hidden, atol=1e-5, rtol=1e-5)
    torch.manual_seed(0)
    exp = chunked.make(prompts.texts, prompts.ids)
    assert exp.batch_size == 8 and exp.sequences.shape[1] == exp.prompt_len + exp.action_mask.shape[1]
    assert torch.isfinite(exp.advantages).all()


def test_seeded_chunks_do_not_depend_on_how_prompts_are_split() -> None:
    """rl.rollout_chunks: chunk c sampled alone (another process) equals chunk c of the whole batch."""
    from r2m.experience.sampling import chunk_seed

    maker, tok = _maker()
    ids = [p for p in tokenize_prompts(tok, PROMPTS, 64, "truncate").ids for _ in range(2)]
    seeds = [chunk_seed(0, 1, c) for c in range(2)]
    rng = torch.get_rng_state()
    both = maker._sample(ids, 1.0, seeds)
    assert torch.equal(torch.get_rng_state(), rng)  # the global stream is untouched
    second = maker._sample(ids[4:], 1.0, seeds[1:])
    resp = both.sequences[4:, both.prompt_len:]
    alone = second.sequences[:, second.prompt_len:]
    n = alone.shape[1]
    assert torch.equal(resp[:, :n], alone) and not both.action_mask[4:, n:].any()


# ------------------------------------------------------------------ R2M's h per row


def test_feedback_states_drop_each_rows_own_last_token() -> None:
    # rollout layout: left-padded prompt | right-padded response, rows of different lengths
    mask = torch.tensor([[0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 0]])
    h = torch.randn(3, 6, 4)
    fb = feedback_states(h, mask)
    assert fb.hidden.shape == (3, 5, 4)
    # each row keeps its own valid positions except its last (the old rule dropped the batch's last
    # column only, so rows 1 and 2 kept their eos state)
    assert fb.mask.tolist() == [[0, 1, 1, 1, 1], [1, 1, 1, 0, 0], [0, 0, 1, 1, 0]]
    assert torch.equal(fb.mask.sum(-1), mask.sum(-1) - 1)
    # an empty row stays empty
    assert feedback_states(h[:1], torch.zeros(1, 6, dtype=torch.long)).mask.sum() == 0


def _kept(fb, row: int) -> torch.Tensor:
    return fb.hidden[row][fb.mask[row].bool()]  # (S_row - 1, D)


def test_same_pair_same_h_whatever_padding_and_batch() -> None:
    model, tok = _policy()
    model.eval()
    ids = lambda s: tok.convert_tokens_to_ids(s.split())  # noqa: E731
    prompt, response = ids("<bos> 3 1 2 =>"), ids("1 2 3 <eos>")
    other_p, other_r = ids("<bos> 9 0 4 4 7 =>"), ids("0 4 4 7 9 9 9 <eos>")  # longer on both sides
    # rollout layout, alone and beside a longer row
    alone = torch.tensor([prompt + response])
    fb_alone = feedback_states(response_forward(model, alone, torch.ones_like(alone), 5, 1.0, with_hidden=True).hidden,
                               torch.ones_like(alone))
    P, R = len(other_p), len(other_r)
    seqs = torch.full((2, P + R), tok.pad_token_id)
    mask = torch.zeros(2, P + R, dtype=torch.long)
    seqs[0, P - len(prompt):P], seqs[0, P:P + len(response)] = torch.tensor(prompt), torch.tensor(response)
    mask[0, P - len(prompt):P + len(response)] = 1
    seqs[1], mask[1] = torch.tensor(other_p + other_r), 1
    fb_batch = feedback_states(response_forward(model, seqs, mask, P, 1.0, with_hidden=True).hidden, mask)
    # the Table 3 path: left-padded texts through the policy's tokenizer
    fb_text = text_feedback(model, tok, ["<bos> 3 1 2 =>", "<bos> 9 0 4 4 7 =>"],
                            [" 1 2 3 <eos>", " 0 4 4 7 9 9 9 <eos>"], torch.device("cpu"))
    ref = _kept(fb_alone, 0)
    assert ref.shape[0] == len(prompt) + len(response) - 1
    torch.testing.assert_close(_kept(fb_batch, 0), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(_kept(fb_text, 0), ref, atol=1e-5, rtol=1e-5)


def test_h_goes_to_the_hidden_store_a_chunk_at_a_time() -> None:
    """reward.r2m.hidden_device=cpu lowers the peak: each log-prob chunk's h moves to the store (its device and
    dtype) as it is made, so the step's whole h never exists where the policy runs."""
    import copy

    from r2m.config.training import RLConfig
    from r2m.experience.rewards import RewardOutput
    from r2m.experience.rollout import ExperienceMaker, HiddenStore

    seen = []

    class Store(HiddenStore):
        def states(self, hidden):
            seen.append(hidden.shape[0])
            return super().states(hidden)

    class Reward:  # reads h, as R2M's does
        needs_policy_hidden, reward_model = True, None

        def __call__(self, query):
            assert query.policy_hidden.dtype == torch.bfloat16
            return RewardOutput(query.policy_hidden.float().mean((1, 2)))

    policy, tok = _policy()
    maker = ExperienceMaker(policy, copy.deepcopy(policy), tok, Reward(),
                            RLConfig(prompts_per_step=4, k=2, max_new_tokens=6, rollout_batch_size=3),
                            torch.device("cpu"), hidden_store=Store(torch.device("cpu"), torch.bfloat16))
    prompts = tokenize_prompts(tok, PROMPTS, 64, "truncate")
    torch.manual_seed(0)
    exp = maker.make(prompts.texts, prompts.ids)
    assert seen == [3, 3, 2] and exp.policy_hidden.dtype == torch.bfloat16
    assert exp.policy_hidden.shape == (8, exp.sequences.shape[1] - 1, 32)
