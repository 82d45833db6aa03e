"""Policy evaluation on a fixed prompt set: gold, proxy, KL, length, exact match, win rate vs SFT.

Sampling uses its own seeds inside ``torch.random.fork_rng`` so that evaluating never moves the
training RNG (a run with more evaluations gives the same training trajectory), and so that the
SFT policy and a trained policy are compared on the same random stream. Each batch of ``eval.batch_size``
samples has its own seed (:func:`batch_seed`), so the batches can be shared out over the ranks
(:func:`rank_batches`) and gathered back into the one-process result.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import NamedTuple, Optional, Sequence

import torch
from torch import nn

from r2m.config.jobs import EvalConfig
from r2m.eval.rm_accuracy import pairwise_wins
from r2m.eval.winrate import length_controlled_win_rate
from r2m.experience.rewards import RewardFunction, RewardQuery
from r2m.experience.sampling import PromptSet, generate
from r2m.models.feedback import Feedback, feedback_mask
from r2m.models.forward import eval_mode, left_pad
from r2m.models.logprobs import chunked_response_forward
from r2m.runtime.distributed import Dist

log = logging.getLogger("r2m")


@dataclass(frozen=True)
class PolicySamples:
    """Responses to the fixed evaluation prompts (each prompt ``samples_per_prompt`` times)."""

    prompts: list[str]
    """(M,) prompt per sample."""
    responses: list[str]
    """(M,) decoded responses."""
    gold: Optional[torch.Tensor]
    """(M,) gold reward, when defined."""
    proxy: Optional[torch.Tensor]
    """(M,) the run's reward (R2M's with feedback, when R2M is on), when a reward function is given."""
    vanilla: Optional[torch.Tensor]
    """(M,) the unmodified RM's reward, when the run's reward function modifies an RM."""
    lengths: torch.Tensor
    """(M,) response tokens (including eos)."""
    kl: float
    """Mean per-token log pi - log pi_ref on these samples (NaN without a reference)."""
    prompt_ids: Optional[list[list[int]]] = None
    """(M,) prompt token ids per sample (the over-optimisation monitor re-reads the samples' hidden states)."""
    response_ids: Optional[list[list[int]]] = None
    """(M,) response token ids per sample (including eos), as ``lengths`` counts them."""


def _cat(parts: list) -> Optional[torch.Tensor]:
    return torch.cat(parts) if parts and parts[0] is not None else None


def cap_prompts(prompts: PromptSet, max_prompts: int, what: str = "evaluation prompts") -> tuple[PromptSet, int]:
    """The first ``max_prompts`` of ``prompts`` (``eval.max_prompts``; 0: all) and how many were left out, logged."""
    dropped = max(0, len(prompts.texts) - max_prompts) if max_prompts else 0
    if not dropped:
        return prompts, 0
    log.warning("eval.max_prompts=%d: evaluating the first %d of %d %s (%d left out)", max_prompts, max_prompts,
                len(prompts.texts), what, dropped)
    return prompts._replace(texts=prompts.texts[:max_prompts], ids=prompts.ids[:max_prompts]), dropped


def batch_seed(seed: int, batch: int) -> int:
    """The sampling seed of evaluation batch ``batch``: batch 0 samples from ``eval.seed`` itself."""
    return (seed + 1_000_003 * batch) % (2**63 - 1)


def rank_batches(n_batches: int, dist: Dist) -> list[int]:
    """This rank's evaluation batches: b = rank, rank + N, ... Every rank runs the same number of batches (FSDP
    gathers parameters in every forward, so all ranks must run each one): a short rank repeats a batch of its
    own (or batch 0), marked -1 - b and thrown away."""
    mine = list(range(dist.rank, n_batches, dist.num_processes))
    per_rank = -(-n_batches // dist.num_processes)
    return mine + [-1 - (mine[-1] if mine else 0)] * (per_rank - len(mine))


class _Batch(NamedTuple):
    """One evaluation batch's results, on the CPU (gathered across ranks)."""

    index: int
    responses: list[str]
    response_ids: list[list[int]]
    lengths: torch.Tensor
    gold: Optional[torch.Tensor]
    proxy: Optional[torch.Tensor]
    vanilla: Optional[torch.Tensor]
    kl_num: float
    kl_den: float


@dataclass(frozen=True)
class _Job:
    """What every evaluation batch reads."""

    policy: nn.Module
    tokenizer: object
    cfg: EvalConfig
    max_new_tokens: int
    device: torch.device
    ref: Optional[nn.Module]
    reward_fn: Optional[RewardFunction]
    gold_fn: Optional[RewardFunction]
    kl_temperature: float
    step: int
    pass_rows: int


def batch_rows(b: int, size: int, total: int) -> tuple[list[int], int]:
    """Sample indices of evaluation batch ``b`` (``size`` of them: a short last batch repeats its own samples, so
    every batch runs the same passes) and how many are its own (the rest are thrown away)."""
    own = list(range(b * size, min((b + 1) * size, total)))
    return [own[j % len(own)] for j in range(size)], len(own)


def _passes(job: _Job, gen, real: int) -> tuple[float, float, Optional[Feedback]]:
    """KL to the reference over the first ``real`` rows (sum, tokens) and R2M's h of one batch, in chunks of
    ``pass_rows`` rows."""
    needs_hidden = job.reward_fn is not None and job.reward_fn.needs_policy_hidden
    args = (gen.sequences, gen.attention_mask, gen.prompt_len, job.kl_temperature, job.pass_rows)
    if job.ref is None and not needs_hidden:
        return 0.0, 0.0, None
    fwd = chunked_response_forward(job.policy, *args, with_hidden=needs_hidden, keep_hidden=lambda h: h[:, :-1])
    h = Feedback(fwd.hidden, feedback_mask(gen.attention_mask)) if needs_hidden else None
    if job.ref is None:
        return 0.0, 0.0, h
    m = gen.action_mask[:real].float()  # (real, R)
    lr = chunked_response_forward(job.ref, *args).logprobs
    return ((fwd.logprobs[:real] - lr[:real]) * m).sum().item(), m.sum().item(), h


def _sample_batch(job: _Job, b: int, texts: Sequence[str], ids: Sequence[Sequence[int]], real: int) -> _Batch:
    """Sample, measure and score evaluation batch ``b`` from its own seed; the results of its first ``real`` rows."""
    tok, device = job.tokenizer, job.device
    torch.manual_seed(batch_seed(job.cfg.seed, b))
    pids, pmask = left_pad(ids, tok.pad_token_id)
    gen = generate(job.policy, pids.to(device), pmask.to(device), temperature=job.cfg.temperature,
                   max_new_tokens=job.max_new_tokens, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    resp, am = gen.sequences[:, gen.prompt_len:].cpu(), gen.action_mask.cpu()
    responses = [tok.decode(r[m.bool()].tolist(), skip_special_tokens=False) for r, m in zip(resp, am)]
    kl_num, kl_den, h = _passes(job, gen, real)
    hidden, mask = (h.hidden, h.mask) if h is not None else (None, None)
    response_ids = [r[m.bool()].tolist() for r, m in zip(resp, am)]
    query = RewardQuery(list(texts), responses, policy_hidden=hidden, policy_mask=mask, step=job.step,
                        response_ids=response_ids)
    gold = proxy = vanilla = None
    # Scoring may draw random numbers (R2M's w/ Noise ablation): in a fork of its own, so that the next batch's
    # samples, and so every method's evaluation set, depend on the policy alone.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        if job.gold_fn is not None:
            gold = job.gold_fn(query).scores.cpu()
        if job.reward_fn is not None:
            out = job.reward_fn(query)
            proxy, vanilla = out.scores.cpu(), out.vanilla.cpu() if out.vanilla is not None else None
    own = (lambda x: None if x is None else x[:real])
    return _Batch(b, responses[:real], response_ids[:real],
                  am[:real].sum(-1).float(), own(gold), own(proxy), own(vanilla), kl_num, kl_den)


@torch.no_grad()
def sample_policy(policy: nn.Module, tokenizer, prompt_texts: Sequence[str], prompt_ids: Sequence[Sequence[int]],
                  cfg: EvalConfig, max_new_tokens: int, device: torch.device, ref: Optional[nn.Module] = None,
                  reward_fn: Optional[RewardFunction] = None, gold_fn: Optional[RewardFunction] = None,
                  kl_temperature: float = 1.0, step: int = 0, dist: Dist = Dist(), pass_rows: int = 0) -> PolicySamples:
    """Responses to the evaluation prompts (each ``eval.samples_per_prompt`` times), in batches of ``eval.batch_size``
    samples, each from its own seed and shared out over the ``dist`` ranks; every rank returns all of them, in
    order, so the result does not depend on the number of processes. Every rank runs the same passes (FSDP needs
    every rank in every forward): the batches all have the first one's size (:func:`batch_rows`) and every rank
    as many of them (:func:`rank_batches`). ``pass_rows``: rows per log-prob pass."""
    reps = cfg.samples_per_prompt
    texts = [t for t in prompt_texts for _ in range(reps)]
    ids_list = [p for p in prompt_ids for _ in range(reps)]
    job = _Job(policy, tokenizer, cfg, max_new_tokens, device, ref, reward_fn, gold_fn, kl_temperature, step, pass_rows)
    size = min(cfg.batch_size, len(texts)) or 1
    done = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), eval_mode(policy):
        for b in rank_batches(-(-len(texts) // size), dist):
            i = b if b >= 0 else -1 - b
            rows, real = batch_rows(i, size, len(texts))
            part = _sample_batch(job, i, [texts[j] for j in rows], [ids_list[j] for j in rows], real)
            if b >= 0:
                done.append(part)
    parts = sorted(dist.gather_objects(done), key=lambda p: p.index)
    kl_den = sum(p.kl_den for p in parts)
    return PolicySamples(prompts=texts, responses=[r for p in parts for r in p.responses],
                         gold=_cat([p.gold for p in parts]), proxy=_cat([p.proxy for p in parts]),
                         vanilla=_cat([p.vanilla for p in parts]), lengths=torch.cat([p.lengths for p in parts]),
                         kl=sum(p.kl_num for p in parts) / kl_den if kl_den else float("nan"),
                         prompt_ids=[list(p) for p in ids_list], response_ids=[r for p in parts for r in p.response_ids])


def summarize(samples: PolicySamples, baseline: Optional[PolicySamples] = None) -> dict[str, float]:
    """Scalar metrics of a sample set; win rate against ``baseline`` (same prompts, gold judge)."""
    out = {"eval/length": samples.lengths.mean().item(), "eval/kl": samples.kl}
    if samples.proxy is not None:
        out["eval/proxy"] = samples.proxy.mean().item()
    if samples.vanilla is not None:
        out["eval/rm_vanilla"] = samples.vanilla.mean().item()
    if samples.gold is not None:
        out["eval/gold"] = samples.gold.mean().item()
        out["eval/exact_match"] = (samples.gold >= 1.0 - 1e-6).float().mean().item()
        if samples.proxy is not None:
            out["eval/proxy_gold_gap"] = out["eval/proxy"] - out["eval/gold"]
        if baseline is not None and baseline.gold is not None:
            if baseline.prompts != samples.prompts:
                raise ValueError("win rate needs both sample sets on the same prompts")

            outcomes = pairwise_wins(samples.gold, baseline.gold)  # (M,) 1 win, 0.5 tie, 0 loss
            out["eval/win_rate_vs_sft"] = outcomes.mean().item()
            out["eval/lc_win_rate_vs_sft"] = length_controlled_win_rate(
                outcomes.tolist(), samples.lengths.tolist(), baseline.lengths.tolist())
    return out
