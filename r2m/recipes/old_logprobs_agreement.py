"""How close ``rl.old_logprobs=generation`` is to ``recompute`` on a run's own models (issue 18, docs/GENERATION.md).

One rollout batch is made twice from the same RNG state, once per mode (the samples are the same: asking
``generate`` for its logits and states draws nothing from the RNG). Reported: the largest and mean
|Δ log π_old| over response tokens, the largest |Δ h| over R2M's kept positions (when R2M is on), and
the first minibatch's clip fraction and approx KL of the ratio π_θ/π_old under each mode (π_θ = the
policy in training mode before any update, as the first minibatch of an update sees it).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from r2m.config.root import Config
from r2m.config.enums import OldLogprobs
from r2m.config.parsing import replace_path
from r2m.core.losses import POLICY_LOSSES
from r2m.experience.rollout import Experience
from r2m.models.logprobs import response_forward
from r2m.recipes.rl.build import build_run
from r2m.recipes.rl.state import RLComponents


def _batch(run: RLComponents, mode: OldLogprobs, idx: list[int]) -> Experience:
    maker, device, train = run.maker, run.models.device, run.train_prompts
    maker.cfg = dataclasses.replace(maker.cfg, old_logprobs=mode)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(run.cfg.run.seed)
        return maker.make([train.texts[i] for i in idx], [train.ids[i] for i in idx])


@torch.no_grad()
def first_ratio(run: RLComponents, exps: dict[OldLogprobs, Experience]) -> dict[str, dict[str, float]]:
    """Clip fraction and approx KL at the first minibatch (its first rows) for each mode's π_old."""
    rl = run.cfg.rl
    rows = torch.arange(exps[OldLogprobs.RECOMPUTE].batch_size // rl.minibatches)
    policy = run.models.unwrapped_policy()
    policy.train()
    mb = {mode: exp.select(rows) for mode, exp in exps.items()}
    ref = mb[OldLogprobs.RECOMPUTE]
    new = response_forward(policy, ref.sequences, ref.attention_mask, ref.prompt_len, rl.temperature).logprobs
    mask = ref.action_mask.float()  # (b, R)
    norms = dict(num_tokens=mask.sum().item(), num_seqs=ref.batch_size, horizon=rl.max_new_tokens)
    out = {}
    for mode, m in mb.items():
        pg = POLICY_LOSSES[rl.ratio_level](new, m.old_logprobs, m.advantages, mask, rl.clip_eps, rl.aggregation,
                                           **norms, clip_eps_high=rl.clip_eps_high, clip_ratio_c=rl.clip_ratio_c)
        out[mode.value] = {"clip_frac": pg.clip_fraction.item(), "approx_kl": pg.approx_kl.item()}
    return out


def _h_diff(rec: Experience, gen: Experience) -> Optional[float]:
    if rec.policy_hidden is None:
        return None
    keep = rec.policy_mask.bool()
    return (rec.policy_hidden[keep] - gen.policy_hidden[keep]).abs().max().item()


def agreement(cfg: Config) -> dict:
    """Generation-time against recomputed π_old on ``cfg``'s models, one rollout batch of ``rl.prompts_per_step``."""
    run = build_run(replace_path(cfg, rl__steps=1, rl__old_logprobs=OldLogprobs.RECOMPUTE))
    idx = run.sampler.next(cfg.rl.prompts_per_step)
    exps = {mode: _batch(run, mode, idx) for mode in (OldLogprobs.RECOMPUTE, OldLogprobs.GENERATION)}
    rec, gen = exps[OldLogprobs.RECOMPUTE], exps[OldLogprobs.GENERATION]
    if not torch.equal(rec.sequences, gen.sequences):
        raise RuntimeError("old-logprobs agreement: the two modes sampled different sequences")
    m = rec.action_mask.bool()
    d = (rec.old_logprobs - gen.old_logprobs)[m].abs()
    return {"tokens": int(m.sum()), "max_abs_dlogp": d.max().item(), "mean_abs_dlogp": d.mean().item(),
            "max_abs_dh": _h_diff(rec, gen), "first_minibatch": first_ratio(run, exps),
            "threads": torch.get_num_threads()}
