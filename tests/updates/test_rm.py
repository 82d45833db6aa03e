"""r2m.updates.rm: pair batches (chosen then rejected, all-pad columns dropped) and a BT fit that learns."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from r2m.config.models import ArchConfig
from r2m.config.training import RMConfig
from r2m.models.loading import build_world_lm, load_reward_model, load_tokenizer, save_model
from r2m.updates.rm import fit_pairs, make_trainable_rm, merged_rm_model, pair_batch
from r2m.world.tokenizer import build_tokenizer


def test_pair_batch_by_hand() -> None:
    chosen = {"input_ids": torch.tensor([[5, 6, 0, 0], [7, 0, 0, 0]]),
              "attention_mask": torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]])}
    rejected = {"input_ids": torch.tensor([[8, 0], [9, 9]]), "attention_mask": torch.tensor([[1, 0], [1, 1]])}
    out = pair_batch(chosen, rejected, torch.tensor([1, 0]), pad_id=0)
    assert out["input_ids"].tolist() == [[7, 0], [5, 6], [9, 9], [8, 0]]
    assert out["attention_mask"].tolist() == [[1, 0], [1, 1], [1, 1], [1, 0]]


def test_fit_pairs_learns_the_preference(tmp_path) -> None:
    tok = build_tokenizer("rm")
    lm = build_world_lm(ArchConfig(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32), tok, seed=1)
    save_model(lm, tok, tmp_path / "lm")
    torch.manual_seed(7)  # the fresh score head
    model = load_reward_model(str(tmp_path / "lm"), pad_token_id=tok.pad_token_id)
    trainable = make_trainable_rm(model, load_tokenizer(str(tmp_path / "lm")))
    assert trainable.peft is None and merged_rm_model(trainable) is model
    rm = trainable.rm
    prompts, chosen, rejected = ["3 1 2 ->"] * 8, [" 1 2 3 <eos>"] * 8, [" 3 2 1 <eos>"] * 8
    head = rm.head.weight.detach().clone()
    fit_pairs(rm, prompts, chosen, rejected, RMConfig(epochs=20, batch_size=4, lr=5e-3), Accelerator(cpu=True), None,
              seed=0, show_progress=False)
    assert not torch.equal(head, rm.head.weight)
    with torch.no_grad():
        assert (rm.score_texts(prompts[:1], chosen[:1]) > rm.score_texts(prompts[:1], rejected[:1])).all()


@pytest.mark.slow
def test_fit_pairs_under_fsdp2_trains_and_scores(tmp_path) -> None:
    """torchrun, 2 CPU processes, FSDP2 over gloo: BT training of a tiny RM (each decoder layer its own unit), then
    the held-out pairs scored by the sharded model; finite loss and every weight moved (all of them train)."""
    import json
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": str(repo) + os.pathsep + os.environ.get("PYTHONPATH", ""), "ACCELERATE_USE_FSDP": "true",
           "FSDP_VERSION": "2", "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP"}
    script = str(Path(__file__).parent / "fsdp_rm_two_process.py")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                           "127.0.0.1", "--master_port", str(port), script, str(tmp_path)],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = json.loads((tmp_path / "rank0.json").read_text())
    assert got["distributed_type"] == "FSDP" and got["units"] == 3  # the two decoder layers and the root
    assert got["steps"] == 4 and math.isfinite(got["final_loss"]) and 0.0 <= got["eval_acc"] <= 1.0
    # embeddings, 2 x 9 layer weights, norm and head: all of them trained
    assert got["n_weights"] == 21 and len(got["moved"]) == got["n_weights"]
