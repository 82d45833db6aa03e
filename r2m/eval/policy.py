"""Policy evaluation on a fixed prompt set: gold, proxy, KL, length, exact match, win rate vs SFT.

Sampling uses its own seed inside ``torch.random.fork_rng`` so that evaluating never moves the
training RNG (a run with more evaluations gives the same training trajectory), and so that the
SFT policy and a trained policy are compared on the same random stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import nn

from r2m.config import EvalConfig
from r2m.eval.rm_accuracy import pairwise_wins
from r2m.experience.rewards import RewardFunction, RewardQuery
from r2m.experience.sampling import eval_mode, generate, left_pad
from r2m.experience.rollout import feedback_states, response_forward
from r2m.eval.winrate import length_controlled_win_rate


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


@torch.no_grad()
def sample_policy(policy: nn.Module, tokenizer, prompt_texts: Sequence[str], prompt_ids: Sequence[Sequence[int]],
                  cfg: EvalConfig, max_new_tokens: int, device: torch.device, ref: Optional[nn.Module] = None,
                  reward_fn: Optional[RewardFunction] = None, gold_fn: Optional[RewardFunction] = None,
                  kl_temperature: float = 1.0, step: int = 0) -> PolicySamples:
    reps = cfg.samples_per_prompt
    texts = [t for t in prompt_texts for _ in range(reps)]
    ids_list = [p for p in prompt_ids for _ in range(reps)]
    needs_hidden = reward_fn is not None and reward_fn.needs_policy_hidden
    responses: list[str] = []
    response_ids: list[list[int]] = []
    lengths, gold, proxy, vanilla = [], [], [], []
    kl_num, kl_den = 0.0, 0.0
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), eval_mode(policy):
        torch.manual_seed(cfg.seed)
        for start in range(0, len(texts), cfg.batch_size):
            batch_texts = texts[start: start + cfg.batch_size]
            ids, mask = left_pad(ids_list[start: start + cfg.batch_size], tokenizer.pad_token_id)
            gen = generate(policy, ids.to(device), mask.to(device), temperature=cfg.temperature,
                           max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                           pad_token_id=tokenizer.pad_token_id)
            resp, am = gen.sequences[:, gen.prompt_len:].cpu(), gen.action_mask.cpu()
            batch_resp = [tokenizer.decode(r[m.bool()].tolist(), skip_special_tokens=False) for r, m in zip(resp, am)]
            batch_ids = [r[m.bool()].tolist() for r, m in zip(resp, am)]
            responses += batch_resp
            response_ids += batch_ids
            lengths.append(am.sum(-1).float())
            fwd = None
            if ref is not None or needs_hidden:
                fwd = response_forward(policy, gen.sequences, gen.attention_mask, gen.prompt_len, kl_temperature,
                                       with_hidden=needs_hidden)
            if ref is not None:
                lr = response_forward(ref, gen.sequences, gen.attention_mask, gen.prompt_len, kl_temperature).logprobs
                m = gen.action_mask.float()
                kl_num += ((fwd.logprobs - lr) * m).sum().item()
                kl_den += m.sum().item()
            h = feedback_states(fwd.hidden, gen.attention_mask) if needs_hidden else (None, None)
            query = RewardQuery(batch_texts, batch_resp, policy_hidden=h[0], policy_mask=h[1], step=step,
                                response_ids=batch_ids)
            # Scoring may draw random numbers (R2M's w/ Noise ablation): in a fork of its own, so that the
            # next batch's samples, and so every method's evaluation set, depend on the policy alone.
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                if gold_fn is not None:
                    gold.append(gold_fn(query).scores.cpu())
                if reward_fn is not None:
                    out = reward_fn(query)
                    proxy.append(out.scores.cpu())
                    vanilla.append(out.vanilla.cpu() if out.vanilla is not None else None)
    return PolicySamples(prompts=texts, responses=responses, gold=_cat(gold), proxy=_cat(proxy),
                         vanilla=_cat(vanilla), lengths=torch.cat(lengths),
                         kl=kl_num / kl_den if kl_den else float("nan"),
                         prompt_ids=[list(p) for p in ids_list], response_ids=response_ids)


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
