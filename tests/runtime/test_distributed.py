"""Data-parallel RL: sharding rules, and a real 2-process CPU (gloo) launch against one process."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from r2m.config.parsing import load_config
from r2m.runtime.distributed import Dist
from r2m.errors import ConfigError
from r2m.recipes.rl.setup import check_data_parallel

REPO = Path(__file__).resolve().parents[2]


class FakeAccelerator:
    """Rank r of N without a process group: enough for the pure sharding helpers."""

    def __init__(self, rank: int, world: int):
        self.process_index, self.num_processes = rank, world


def test_single_process_is_the_identity():
    d = Dist()
    x = torch.arange(6.0).view(3, 2)
    assert not d.enabled and d.num_processes == 1
    assert d.shard([1, 2, 3]) == [1, 2, 3]
    assert d.gather_rows(x) is x and d.local_rows(x, 3, 1) is x
    assert d.sum(5) == 5 and d.share(6) == 6 and d.all(True) and not d.all(False)
    assert d.mean_stats({"a": 1.0}) == {"a": 1.0}


def test_shard_keeps_contiguous_prompt_blocks():
    prompts = list(range(8))
    shards = [Dist(FakeAccelerator(r, 4)).shard(prompts) for r in range(4)]
    assert shards == [[0, 1], [2, 3], [4, 5], [6, 7]]
    with pytest.raises(ValueError, match="cannot be split evenly over 3"):
        Dist(FakeAccelerator(0, 3)).shard(prompts)


def test_local_rows_cut_back_rank_rows_and_width():
    gathered = torch.arange(24.0).view(4, 6)  # 2 ranks x 2 rows, widths padded to 6
    assert torch.equal(Dist(FakeAccelerator(1, 2)).local_rows(gathered, 2, 4), gathered[2:4, :4])


@pytest.mark.parametrize("overrides,field", [
    (["rl.prompts_per_step=6"], "rl.prompts_per_step"),
    (["rl.prompts_per_step=4", "rl.k=2", "rl.minibatches=8"], "rl.minibatches"),
    (["rl.prompts_per_step=8", "rl.k=2", "rl.minibatches=2", "rl.micro_batch_size=8"], "rl.micro_batch_size"),
    (["rl.prompts_per_step=8", "rl.rollout_chunks=1"], "rl.rollout_chunks"),
])
def test_batch_must_split_over_processes(overrides, field):
    cfg = load_config(None, overrides)
    check_data_parallel(cfg.rl, 1)  # one process: anything the config accepts
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        check_data_parallel(cfg.rl, 2 if field != "rl.prompts_per_step" else 4)


def test_several_processes_refuse_to_build_the_world(tiny, tmp_path, monkeypatch):
    from r2m.recipes.pipeline import resolve_inputs

    cfg = load_config(None, [*tiny, f"run.root={tmp_path}"])
    monkeypatch.setenv("WORLD_SIZE", "2")  # what torchrun / accelerate launch set
    with pytest.raises(ConfigError, match="r2m world --models"):
        resolve_inputs(cfg)
    assert not (tmp_path / "world").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _metrics(root: str, name: str) -> list[dict]:
    return [json.loads(line) for line in (Path(root) / name / "metrics.jsonl").read_text().splitlines()]


# Compared between the runs: rollout, loss, gradient, R2M and evaluation statistics.
KEYS = ["reward/proxy", "reward/gold", "kl", "response/length", "adv/std", "loss/policy", "policy/entropy",
        "policy/clip_frac", "policy/grad_norm", "r2m/grebt", "r2m/grad_norm", "eval/gold", "eval/proxy", "eval/kl"]


@pytest.mark.parametrize("variant", [
    ["rl.algorithm=rloo", "reward.r2m.enabled=true"],
    # global statistics: reward normalisation and batch-whitened advantages
    ["rl.algorithm=reinforce_pp", "rl.k=1", "reward.normalize=true"],
])
def test_two_process_launch_matches_one_process(tiny, world_artifacts, variant):
    """torchrun, 2 CPU processes (gloo), against one process with the same global batch.

    rl.rollout_chunks=2 makes sampling independent of the process count; one minibatch per epoch
    makes the optimiser steps the same, so the runs must agree up to float reduction order.
    """
    from r2m.cli import main

    common = [*tiny, *variant, "rl.steps=3", "rl.eval_every=3", "rl.prompts_per_step=4", "rl.minibatches=1",
              "rl.epochs=2", "rl.rollout_chunks=2"]
    tag = variant[0].split("=")[1]
    assert main(["rl", *common, f"run.name=dp1-{tag}"]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "r2m", "rl", *common, f"run.name=dp2-{tag}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    root = next(o.split("=", 1)[1] for o in tiny if o.startswith("run.root="))
    one, two = _metrics(root, f"dp1-{tag}"), _metrics(root, f"dp2-{tag}")
    assert [r["step"] for r in one] == [r["step"] for r in two] == [0, 1, 2, 3]  # rank 0 alone writes
    compared = 0
    for a, b in zip(one, two):
        for key in KEYS:
            if key in a:
                assert key in b, (a["step"], key)
                assert math.isclose(a[key], b[key], rel_tol=1e-2, abs_tol=2e-3), (a["step"], key, a[key], b[key])
                compared += 1
    assert compared >= 25


class FakeDeepSpeed:
    """An accelerator under DeepSpeed: distributed_type, num_processes and the plugin's config."""

    def __init__(self, stage: int, world: int = 2):
        from types import SimpleNamespace

        from accelerate.utils import DistributedType

        self.distributed_type, self.num_processes, self.mixed_precision = DistributedType.DEEPSPEED, world, "bf16"
        self.state = SimpleNamespace(deepspeed_plugin=SimpleNamespace(
            zero_stage=stage, deepspeed_config={"train_micro_batch_size_per_gpu": "auto"}))


def test_deepspeed_gets_micro_batch_and_clipping_from_the_rl_config():
    from r2m.recipes.rl.setup import configure_backend

    cfg = load_config(None, ["rl.prompts_per_step=8", "rl.k=4", "rl.minibatches=2", "rl.max_grad_norm=0.5"])
    acc = FakeDeepSpeed(stage=2)
    configure_backend(acc, cfg)
    ds = acc.state.deepspeed_plugin.deepspeed_config
    # 8 prompts x 4 samples over 2 processes = 16 rows each, 2 minibatches of 8
    assert ds["train_micro_batch_size_per_gpu"] == 8 and ds["gradient_accumulation_steps"] == 1
    assert ds["train_batch_size"] == 16 and ds["gradient_clipping"] == 0.5


@pytest.mark.parametrize("stage,overrides,field", [
    (3, [], "ZeRO-3"),
    (2, ["rl.algorithm=ppo"], "rl.algorithm=ppo"),
    (2, ["rl.prompts_per_step=8", "rl.k=4", "rl.minibatches=2", "rl.micro_batch_size=4"], "rl.micro_batch_size"),
    (2, ["run.resume=auto"], "run.resume=auto"),
    (2, ["policy.lora.enabled=true"], "policy.lora.enabled"),
])
def test_deepspeed_setups_the_loop_cannot_run_are_refused(stage, overrides, field):
    from r2m.recipes.rl.setup import configure_backend

    with pytest.raises(ConfigError, match=field):
        configure_backend(FakeDeepSpeed(stage), load_config(None, overrides))


def test_two_process_reward_model_training_matches_one_process(tiny, world_artifacts):
    """`r2m rm` (the supervised loop shared with SFT): each process takes half of every batch; BT is a
    mean over pairs, so the averaged gradient and the logged loss equal one process's."""
    from r2m.cli import main

    common = [*tiny, "rm.log_every=2", "rm.max_steps=6"]
    assert main(["rm", *common, "run.name=rm1"]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "r2m", "rm", *common, "run.name=rm2"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    root = next(o.split("=", 1)[1] for o in tiny if o.startswith("run.root="))
    one, two = _metrics(root, "rm1"), _metrics(root, "rm2")
    losses = [(a["rm/loss"], b["rm/loss"]) for a, b in zip(one, two) if "rm/loss" in a]
    assert len(losses) == 3 and len(one) == len(two)
    assert losses[0][0] == pytest.approx(losses[0][1], abs=1e-6)  # steps 1-2: the same update
    for a, b in losses:
        # Adam turns float-order noise in near-zero gradients into lr-sized steps: close, not equal.
        assert math.isclose(a, b, rel_tol=5e-3), losses
    assert {r["rm/rows_per_process"] for r in one if "rm/loss" in r} == {32}
    assert {r["rm/rows_per_process"] for r in two if "rm/loss" in r} == {16}  # each took half of every batch
    assert (Path(root) / "rm2" / "checkpoints" / "final" / "config.json").exists()
