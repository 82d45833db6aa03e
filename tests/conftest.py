"""Shared fixtures: offline, seeded, tiny settings so the suite runs on 2 CPU cores."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))

# A world and models small enough that SFT + RM + a few RL steps take seconds.
TINY = [
    "world.n_sft=1500", "world.n_pref_train=400", "world.n_pref_eval=100", "world.n_rl_prompts=200",
    "world.n_eval_prompts=16", "world.n_pref_policy=100",
    "policy.arch.hidden_size=32", "policy.arch.num_layers=1", "policy.arch.num_heads=2",
    "policy.arch.intermediate_size=64",
    "reward.arch.hidden_size=24", "reward.arch.num_layers=1", "reward.arch.num_heads=2",
    "reward.arch.intermediate_size=48",
    "sft.batch_size=32", "rm.batch_size=32", "rm.epochs=1",
    "rl.steps=2", "rl.prompts_per_step=4", "rl.k=2", "rl.eval_every=1", "rl.minibatches=2",
    "rl.max_new_tokens=10",  # the world's default, named: a user's policy would get 512 (its models have 64 positions)
    "eval.samples_per_prompt=1", "run.progress=false", "run.log_with=[]",
]


@pytest.fixture(scope="session")
def world_root(tmp_path_factory) -> str:
    """A run.root shared by the whole session, so the tiny world's artifacts are built once."""
    return str(tmp_path_factory.mktemp("r2m_runs"))


@pytest.fixture(scope="session")
def tiny(world_root) -> list[str]:
    return [*TINY, f"run.root={world_root}"]


@pytest.fixture(scope="session")
def tiny_cfg(tiny):
    from r2m.config.parsing import load_config

    return load_config(None, tiny)


@pytest.fixture(scope="session")
def world_data_args(world_artifacts):
    """``data.<field>=<the world's file>`` overrides: a user's model must be given every data path (r2m refuses
    to fall back to the world behind a user's model), so tests that pair one with the world's data name them."""
    files = world_artifacts[2]
    return lambda *fields: [f"data.{f}={getattr(files, f)}" for f in fields]


@pytest.fixture(scope="session")
def world_artifacts(tiny_cfg):
    """(policy_dir, rm_dir, files) of the tiny world, built once per session."""
    from r2m.recipes.pipeline import ensure_world_policy, ensure_world_rm, world_data

    return ensure_world_policy(tiny_cfg), ensure_world_rm(tiny_cfg), world_data(tiny_cfg)
