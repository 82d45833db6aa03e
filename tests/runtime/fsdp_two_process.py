"""Run by tests/runtime/test_sharded.py under ``torchrun --nproc_per_node 2`` (CPU, gloo) with
``ACCELERATE_USE_FSDP=true FSDP_VERSION=2``:

    fsdp_two_process.py OUT [config overrides ...]

Builds the accelerator as ``r2m rl`` does (:func:`r2m.updates.supervised.make_accelerator`), prepares a tiny Llama
with AdamW, takes one step, and writes (rank 0) OUT: the backend, each FSDP unit's mixed-precision policy, the
gradients' dtype and this process's host peak.
"""

import json
import sys
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from r2m.config.parsing import load_config
from r2m.runtime.host import host_peak_bytes
from r2m.updates.supervised import make_accelerator


def main(out: str, overrides: list[str]) -> None:
    from torch.distributed.fsdp import FSDPModule

    acc = make_accelerator(load_config(None, ["run.log_with=[]", *overrides]))
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2))
    model, opt = acc.prepare(model, torch.optim.AdamW(model.parameters(), lr=1e-3))
    ids = torch.randint(0, 64, (2, 8))
    acc.backward(model(input_ids=ids, labels=ids).loss)
    grad_dtypes = sorted({str(p.grad.dtype) for p in model.parameters() if p.grad is not None})
    opt.step()
    policies = [m._get_fsdp_state()._mp_policy for m in model.modules() if isinstance(m, FSDPModule)]
    if acc.is_main_process:
        Path(out).write_text(json.dumps({
            "distributed_type": str(acc.distributed_type.value), "mixed_precision": acc.mixed_precision,
            "units": len(policies), "param_dtype": sorted({str(p.param_dtype) for p in policies}),
            "reduce_dtype": sorted({str(p.reduce_dtype) for p in policies}), "grad_dtype": grad_dtypes,
            "host_peak_bytes": host_peak_bytes()}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
