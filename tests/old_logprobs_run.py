"""A short RLOO run on a tiny world LM (2 steps, AdamW), its metrics as exact hex floats.

Used by tests/test_old_logprobs.py: ``python tests/old_logprobs_run.py OUT.json`` with the code before
issue 18 wrote tests/fixtures/old_logprobs_recompute.json; the test reruns it with rl.old_logprobs=recompute
and compares bit for bit (same thread count: the suite runs with OMP_NUM_THREADS=1).
"""

from __future__ import annotations

import copy
import json
import sys

import torch
from accelerate import Accelerator

from r2m.config.models import ArchConfig
from r2m.config.training import RLConfig
from r2m.config.run import WorldConfig
from r2m.models.loading import build_world_lm
from r2m.experience.rewards import GoldReward
from r2m.experience.rollout import ExperienceMaker, experience_metrics
from r2m.experience.sampling import tokenize_prompts
from r2m.updates.policy import PolicyUpdater
from r2m.world.tokenizer import build_tokenizer
from r2m.world.task import format_prompt

PROMPTS = [format_prompt(d) for d in ([3, 1, 2], [9, 0, 4, 4], [5, 5, 1], [7, 2, 8, 1, 0])]


def short_run(**rl) -> list[dict[str, str]]:
    """Two RL steps; each step's rollout and update metrics, floats as ``float.hex``."""
    cfg = RLConfig(prompts_per_step=4, k=2, minibatches=2, epochs=2, max_new_tokens=8, temperature=0.7, lr=1e-3, **rl)
    tok = build_tokenizer("policy")
    policy = build_world_lm(ArchConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64), tok, 0)
    ref = copy.deepcopy(policy).eval().requires_grad_(False)
    maker = ExperienceMaker(policy, ref, tok, GoldReward(WorldConfig()), cfg, torch.device("cpu"))
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.0)
    updater = PolicyUpdater(policy, opt, Accelerator(cpu=True), cfg)
    prompts = tokenize_prompts(tok, PROMPTS, 64, "truncate")
    torch.manual_seed(7)
    rows = []
    for step in range(2):
        exp = maker.make(prompts.texts, prompts.ids, step=step)
        metrics = {**experience_metrics(exp), **updater.update(exp).stats}
        rows.append({k: float(v).hex() for k, v in sorted(metrics.items())})
    return rows


if __name__ == "__main__":
    with open(sys.argv[1], "w") as f:
        json.dump(short_run(), f, indent=1)
