"""SER's PPO stage (SER App. C.3): the RL config built from the run's config and the kept RM, and the run itself.

The policy trains once, after the loop (docs/SER.md), with ``rl.algorithm=ppo``, the ``ser.rl`` block onto ``rl``
by name, the evolved RM as ``reward.path`` and sigmoid-centred rewards.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from r2m.config.root import Config
from r2m.config.enums import PPOPrompts
from r2m.config.parsing import replace_path, to_dict
from r2m.recipes.pipeline import user_models, world_data
from r2m.recipes.rl.run import run_rl
from r2m.recipes.ser_resume import PPOSummary

FINAL_KEYS = ("eval/gold", "eval/win_rate_vs_sft", "eval/lc_win_rate_vs_sft", "eval/proxy", "eval/kl", "eval/length",
              "eval/exact_match")
"""The final evaluation's metrics kept in the PPO summary (those the run reported)."""


def run_ppo_stage(cfg: Config, run_dir: Path, rm_dir: str, callbacks: Sequence = ()) -> PPOSummary:
    """PPO against ``run_dir / rm_dir`` on the PPO split's prompts (or data.prompts); its own run directory.
    ``callbacks`` go to the RL loop (``run_rl``: its steps, evaluations and checkpoints)."""
    res = run_rl(ppo_config(cfg, run_dir / rm_dir, run_dir / "splits" / "ppo_prompts.jsonl"), callbacks=callbacks)
    nan = float("nan")
    sft = next((r for r in res.history if r["step"] == 0 and "eval/length" in r), {})  # the SFT policy
    final = {k: res.final_eval[k] for k in FINAL_KEYS if k in res.final_eval}
    return PPOSummary(str(res.run_dir), rm_dir, cfg.ser.rl.steps, sft.get("eval/gold", nan), final,
                      sft.get("eval/length", nan), res.wall_s)


def ppo_config(cfg: Config, rm_dir: Path, split_prompts: Path) -> Config:
    """The RL config of SER's PPO stage: the evolved RM, sigmoid-centred rewards, SER's KL settings."""
    ser = cfg.ser
    split = ser.ppo_prompts == PPOPrompts.SPLIT
    prompts = str(split_prompts) if split else cfg.data.prompts
    # The split's prompt file is r2m's plain JSONL, whatever data.format the source pairs had.
    fmt = "plain" if split else cfg.data.formats.prompts
    eval_prompts = cfg.data.eval_prompts
    if not user_models(cfg):
        # A SER run in the gold-reward world: the evolved RM is a path now, so name the world's files (r2m refuses
        # to fill a data path behind a model path by itself).
        files = world_data(cfg)
        eval_prompts = eval_prompts or str(files.eval_prompts)
        prompts = prompts or str(files.prompts)
    rl = {f"rl__{name}": value for name, value in to_dict(ser.rl).items()}  # ser.rl.x is rl.x of the stage
    return replace_path(cfg, run__name=f"{cfg.run.name}-ppo", rl__algorithm="ppo", **rl,
                        reward__source="model", reward__path=str(rm_dir), reward__scaling="sigmoid_centered",
                        data__prompts=prompts, data__formats__prompts=fmt, data__eval_prompts=eval_prompts)
