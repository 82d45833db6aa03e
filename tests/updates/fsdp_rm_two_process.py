"""Run by tests/updates/test_rm.py under ``torchrun --nproc_per_node 2`` (CPU, gloo) with
``ACCELERATE_USE_FSDP=true FSDP_VERSION=2 FSDP_AUTO_WRAP_POLICY=TRANSFORMER_BASED_WRAP``:

    fsdp_rm_two_process.py OUT_DIR

Trains a tiny world RM with BT for a few steps as ``r2m rm`` does (:func:`r2m.updates.rm.train_reward_model`, with
held-out pairs, so the sharded model also scores them), gathers its weights (a collective) and writes
OUT_DIR/rank0.json: the backend, the FSDP units, the final loss, the held-out accuracy and which weights moved.
"""

import json
import sys
from pathlib import Path

import torch

from r2m.config.models import ArchConfig
from r2m.config.parsing import load_config
from r2m.models.loading import build_world_lm, load_reward_model, load_tokenizer, save_model
from r2m.runtime.distributed import sharded_state_dict
from r2m.updates.rm import make_trainable_rm, train_reward_model
from r2m.updates.supervised import make_accelerator
from r2m.world.tokenizer import build_tokenizer

ROWS = [{"prompt": "3 1 2 ->", "chosen": " 1 2 3 <eos>", "rejected": " 3 2 1 <eos>"},
        {"prompt": "9 0 4 ->", "chosen": " 0 4 9 <eos>", "rejected": " 9 4 <eos>"}] * 4


def main(out: str) -> None:
    from torch.distributed.fsdp import FSDPModule

    cfg = load_config(None, ["run.log_with=[]", "run.device=cpu", "run.progress=false", "rm.batch_size=4",
                             "rm.epochs=2", "rm.lr=5e-3", "rm.warmup_ratio=0"])
    acc = make_accelerator(cfg)
    tok = build_tokenizer("rm")
    lm_dir = Path(out, "lm")
    if acc.is_main_process:  # (save_model writes on the main process only)
        lm = build_world_lm(ArchConfig(hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32), tok, 1)
        save_model(lm, tok, lm_dir)
    acc.wait_for_everyone()
    torch.manual_seed(7)  # the fresh score head, the same on every rank
    rm = make_trainable_rm(load_reward_model(str(lm_dir), pad_token_id=tok.pad_token_id),
                           load_tokenizer(str(lm_dir))).rm
    before = {k: v.detach().clone() for k, v in rm.model.state_dict().items()}
    result = train_reward_model(rm, ROWS, ROWS[:2], cfg, acc, None, seed=0)
    after = sharded_state_dict(acc, rm.model)  # every rank's shards, gathered on rank 0
    if not acc.is_main_process:
        return
    moved = sorted(k for k, v in before.items() if not torch.equal(v, after[k].to(v.dtype)))
    Path(out, f"rank{acc.process_index}.json").write_text(json.dumps({
        "distributed_type": str(acc.distributed_type.value), "steps": result.steps, "final_loss": result.final_loss,
        "units": sum(isinstance(m, FSDPModule) for m in rm.modules()), "eval_acc": result.eval.accuracy,
        "moved": moved, "n_weights": len(before)}))


if __name__ == "__main__":
    main(sys.argv[1])
