"""Sharded training under FSDP2 over gloo (two CPU processes): the gradients' reduce dtype, gradient sync per
micro-batch, and a run stopped after a sharded checkpoint that resumes to the uninterrupted run's metrics."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from r2m.config.enums import ReduceDtype
from r2m.config.parsing import load_config

REPO = Path(__file__).resolve().parents[2]
FSDP_ENV = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args: list[str], extra_env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), **FSDP_ENV, **(extra_env or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("reduce_dtype,expected", [(ReduceDtype.FLOAT32, torch.float32),
                                                    (ReduceDtype.BFLOAT16, torch.bfloat16)])
def test_fsdp_plugin_reduces_in_the_configured_dtype(monkeypatch, reduce_dtype, expected):
    from r2m.runtime.distributed import fsdp_plugin

    assert fsdp_plugin(reduce_dtype, "bf16") is None  # no FSDP launch: no plugin
    for k, v in FSDP_ENV.items():
        monkeypatch.setenv(k, v)
    policy = fsdp_plugin(reduce_dtype, "bf16").mixed_precision_policy
    assert (policy.param_dtype, policy.reduce_dtype) == (torch.bfloat16, expected)
    assert fsdp_plugin(reduce_dtype, "no").mixed_precision_policy is None  # no autocast: everything in float32


@pytest.mark.slow
def test_prepared_fsdp2_model_reduces_gradients_in_float32(tmp_path):
    """The default config under an FSDP2 launch with bf16 autocast: weights gathered in bf16, gradients reduced
    (and kept) in float32, on CPU processes as on GPUs."""
    proc = _torchrun([str(REPO / "tests" / "runtime" / "fsdp_two_process.py"), str(tmp_path), "-",
                      "run.mixed_precision=bf16"])
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = json.loads((tmp_path / "rank0.json").read_text())
    assert got["distributed_type"] == "FSDP" and got["units"] >= 3  # the decoder layers and the root
    assert got["param_dtype"] == ["torch.bfloat16"] and got["reduce_dtype"] == ["torch.float32"]
    assert got["grad_dtype"] == ["torch.float32"]


class _CountingAccelerator:
    """Counts accelerate's ``no_sync`` contexts entered."""

    def __init__(self):
        self.no_sync_entered = 0

    @contextlib.contextmanager
    def no_sync(self, model):
        self.no_sync_entered += 1
        yield


class _TwoRanks:
    enabled, num_processes, rank = True, 2, 0


@pytest.mark.parametrize("sync_every,entered", [(False, 3), (True, 0)])
def test_sync_every_micro_batch_leaves_out_no_sync(sync_every, entered):
    """Four micro-batches: accumulated unreduced, three of them run under no_sync; synced, none does."""
    from r2m.updates.policy import PolicyUpdater

    acc = _CountingAccelerator()
    updater = PolicyUpdater(torch.nn.Linear(2, 2), None, acc, load_config().rl, dist=_TwoRanks(),
                            sync_every_micro_batch=sync_every)
    for i in range(4):
        with updater._no_sync(last=i == 3):
            pass
    assert acc.no_sync_entered == entered


def _rows(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if not k.startswith("time/")}
            for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_fsdp_run_killed_after_a_sharded_checkpoint_resumes_bit_identical(tiny, world_artifacts):
    """torchrun, 2 CPU processes, FSDP2 over gloo, R2M on: a run killed while writing its step-2 checkpoint (after
    the step-1 one) resumes from the sharded step-1 checkpoint (weights, AdamW, R2M, KL, counters, each rank's RNG)
    to the metrics of the uninterrupted run, bit for bit."""
    from r2m.fileio import FAULT_ENV
    from r2m.runtime.checkpoint import list_checkpoints, verify

    root = Path(next(o.split("=", 1)[1] for o in tiny if o.startswith("run.root=")))
    run = ["-m", "r2m", "rl", *tiny, "reward.r2m.enabled=true", "rl.steps=3", "rl.save_every=1", "rl.eval_every=3",
           "run.keep_checkpoints=0"]
    # As configs/accelerate/fsdp.yaml: rank 1 builds the policy on the meta device, rank 0's weights broadcast.
    lean = {"FSDP_CPU_RAM_EFFICIENT_LOADING": "true"}
    whole = _torchrun([*run, "run.name=fsdp-whole"], lean)
    assert whole.returncode == 0, whole.stderr[-4000:]
    cut = _torchrun([*run, "run.name=fsdp-cut"], {**lean, FAULT_ENV: "atomic_dir.before_rename:step-000002"})
    assert cut.returncode != 0
    ckpts = root / "fsdp-cut" / "checkpoints"
    assert [p.name for p in list_checkpoints(ckpts)] == ["step-000001"]
    step1 = ckpts / "step-000001"
    assert verify(step1) is None
    assert (step1 / "sharded" / ".metadata").is_file() and (step1 / "rng" / "rank-00001.pt").is_file()
    assert not (step1 / "policy").exists()  # no rank gathered the full weights for a checkpoint
    resumed = _torchrun([*run, "run.name=fsdp-cut", "run.resume=auto"], lean)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resumed from" in resumed.stderr + resumed.stdout
    a, b = _rows(root / "fsdp-whole" / "metrics.jsonl"), _rows(root / "fsdp-cut" / "metrics.jsonl")
    assert [r["step"] for r in a] == [0, 1, 2, 3]
    assert a == b
    final = json.loads((root / "fsdp-cut" / "checkpoints" / "final" / "config.json").read_text())
    assert final["dtype"] == "float32"


@pytest.mark.slow
def test_ranks_other_than_0_build_the_policy_on_meta_and_get_rank_0s_weights(tmp_path):
    """Under FSDP2 with fsdp_cpu_ram_efficient_loading, rank 1 builds the trained policy on the meta device and
    prepare() broadcasts rank 0's weights: every rank's policy then holds the loaded weights, and the reference
    (read whole on every rank) too."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from r2m.models.loading import save_model

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False))
    save_model(model, None, tmp_path / "policy")
    proc = _torchrun([str(REPO / "tests" / "runtime" / "fsdp_two_process.py"), str(tmp_path), str(tmp_path / "policy")],
                     {"FSDP_CPU_RAM_EFFICIENT_LOADING": "true"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["policy_built_on_meta"] for r in ranks] == [False, True]
    assert all(r["weights_match_reference"] for r in ranks)


# ---------------------------------------------------------------------------------------------
# The backend a checkpoint was written under, and a resume under another refused by name
# ---------------------------------------------------------------------------------------------


class _Typed:
    def __init__(self, kind):
        self.distributed_type = kind


def test_backend_name_of_each_accelerator_kind() -> None:
    from accelerate.utils import DistributedType

    from r2m.runtime.sharded import backend_name

    assert backend_name(_Typed(DistributedType.FSDP)) == "fsdp"
    assert backend_name(_Typed(DistributedType.DEEPSPEED)) == "deepspeed"
    assert backend_name(_Typed(DistributedType.MULTI_GPU)) == "replicated"
    assert backend_name(_Typed(DistributedType.NO)) == backend_name(None) == "replicated"


@pytest.mark.parametrize("written,now", [("fsdp", "replicated"), ("replicated", "fsdp"), ("deepspeed", "fsdp"),
                                         ("fsdp", "deepspeed"), ("replicated", "deepspeed")])
def test_a_checkpoint_resumed_under_another_backend_is_refused_by_name(tmp_path, written, now) -> None:
    from r2m.errors import ConfigError
    from r2m.runtime.sharded import check_resume_backend

    state = {"step": 4, "backend": written, "num_processes": 2}
    with pytest.raises(ConfigError) as err:
        check_resume_backend(tmp_path, state, now, 2)
    assert str(err.value).startswith(f"{tmp_path}: this checkpoint was written under {written} and this run trains "
                                     f"under {now}")


@pytest.mark.parametrize("written,saved,now,processes", [("fsdp", 2, "fsdp", 2), ("fsdp", 2, "fsdp", 1),
                                                          ("fsdp", 2, "fsdp", 4), ("replicated", 1, "replicated", 2),
                                                          ("replicated", 4, "replicated", 1),
                                                          ("deepspeed", 2, "deepspeed", 2)])
def test_a_checkpoint_resumes_under_its_own_backend(tmp_path, written, saved, now, processes) -> None:
    from r2m.runtime.sharded import check_resume_backend

    check_resume_backend(tmp_path, {"backend": written, "num_processes": saved}, now, processes)


def test_a_deepspeed_checkpoint_is_refused_with_another_process_count(tmp_path) -> None:
    from r2m.errors import ConfigError
    from r2m.runtime.sharded import check_resume_backend

    with pytest.raises(ConfigError, match=r"written by 2 processes and this run has 4"):
        check_resume_backend(tmp_path, {"backend": "deepspeed", "num_processes": 2}, "deepspeed", 4)


@pytest.mark.parametrize("layout,expected", [("sharded", "fsdp"), ("deepspeed", "deepspeed"), ("policy", "replicated")])
def test_a_state_that_names_no_backend_is_read_from_its_layout(tmp_path, layout, expected) -> None:
    from r2m.runtime.sharded import checkpoint_backend

    (tmp_path / layout).mkdir()
    assert checkpoint_backend(tmp_path, {"step": 4}) == expected


def test_a_deepspeed_checkpoint_the_engine_cannot_find_is_a_named_error(tmp_path) -> None:
    """DeepSpeed's load_checkpoint logs a missing tag and returns (None, None): that is refused, not taken as loaded."""
    from accelerate.utils import DistributedType

    from r2m.errors import CheckpointError
    from r2m.runtime.sharded import load_sharded

    class Engine:
        def __init__(self, found: bool):
            self.found = found

        def load_checkpoint(self, load_dir, tag, **kwargs):
            return (f"{load_dir}/{tag}", {}) if self.found else (None, None)

    acc = _Typed(DistributedType.DEEPSPEED)
    load_sharded(acc, tmp_path, {"policy": (Engine(True), None)})
    with pytest.raises(CheckpointError, match=rf"{tmp_path / 'deepspeed' / 'critic'}: DeepSpeed found no checkpoint"):
        load_sharded(acc, tmp_path, {"policy": (Engine(True), None), "critic": (Engine(False), None)})
