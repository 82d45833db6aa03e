"""Run by tests/runtime/test_sharded.py under ``torchrun --nproc_per_node 2`` (CPU, gloo) with
``ACCELERATE_USE_FSDP=true FSDP_VERSION=2``:

    fsdp_two_process.py OUT_DIR MODEL_DIR|- [config overrides ...]

Builds the accelerator as ``r2m rl`` does (:func:`r2m.updates.supervised.make_accelerator`) and the policy with its
reference as ``r2m rl`` does from MODEL_DIR (``-``: a tiny random Llama, no reference), prepares the policy with
AdamW, checks that every rank's prepared policy holds the loaded weights, takes one step, and writes
OUT_DIR/rank<r>.json: the backend, each FSDP unit's mixed-precision policy, the gradients' dtype and this
process's host peak.
"""

import json
import sys
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from r2m.config.parsing import load_config
from r2m.runtime.host import host_peak_bytes
from r2m.updates.supervised import make_accelerator


def _policy(cfg, acc, model_dir: str):
    """(policy, reference or None) as r2m rl builds them."""
    from r2m.models.loading import build_policy_and_reference
    from r2m.runtime.distributed import policy_on_meta
    from r2m.runtime.precision import fp32_master_weights

    if model_dir == "-":
        torch.manual_seed(0)
        return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                            num_attention_heads=2, num_key_value_heads=2)), None
    policy, ref = build_policy_and_reference(cfg.policy, model_dir, empty_policy=policy_on_meta(acc))
    fp32_master_weights(policy, "policy", acc)
    return policy, ref


def main(out: str, model_dir: str, overrides: list[str]) -> None:
    from torch.distributed.fsdp import FSDPModule

    cfg = load_config(None, ["run.log_with=[]", *overrides])
    acc = make_accelerator(cfg)
    policy, ref = _policy(cfg, acc, model_dir)
    on_meta = any(p.is_meta for p in policy.parameters())
    model, opt = acc.prepare(policy, torch.optim.AdamW(policy.parameters(), lr=1e-3))
    full = acc.get_state_dict(model)  # a collective: every rank's shards, gathered
    same = None if ref is None else all(torch.equal(full[k].float(), v.float()) for k, v in ref.state_dict().items()
                                        if k in full)
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (2, 8))
    acc.backward(model(input_ids=ids, labels=ids).loss)
    grad_dtypes = sorted({str(p.grad.dtype) for p in model.parameters() if p.grad is not None})
    opt.step()
    policies = [m._get_fsdp_state()._mp_policy for m in model.modules() if isinstance(m, FSDPModule)]
    Path(out, f"rank{acc.process_index}.json").write_text(json.dumps({
        "distributed_type": str(acc.distributed_type.value), "mixed_precision": acc.mixed_precision,
        "units": len(policies), "param_dtype": sorted({str(p.param_dtype) for p in policies}),
        "reduce_dtype": sorted({str(p.reduce_dtype) for p in policies}), "grad_dtype": grad_dtypes,
        "policy_built_on_meta": on_meta, "weights_match_reference": same, "host_peak_bytes": host_peak_bytes()}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
