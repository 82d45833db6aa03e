"""fp32 master weights for the models that train.

AdamW on bfloat16 weights rounds every update smaller than half a bf16 ulp away: at lr 1e-6 almost no weight
and no norm weight (|w| ≈ 1, ulp 2^-7) moves. So whatever ``policy.dtype`` / ``reward.dtype`` say, the weights an
optimiser updates are kept in float32 (verl's actor, accelerate's FSDP, DeepSpeed's bf16 optimiser all do the
same), while the forward and backward run in the run's autocast (``run.mixed_precision``); frozen models (the
reference, the reward model's backbone) stay in their 16-bit dtype.

Under DeepSpeed nothing is done here: its bf16/fp16 optimiser keeps the fp32 master copy itself and casts
the module to 16 bits.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger("r2m")

LOW_PRECISION = (torch.bfloat16, torch.float16)


def keeps_own_masters(accelerator) -> bool:
    """True under DeepSpeed, whose 16-bit optimiser holds fp32 master weights of its own."""
    from accelerate.utils import DistributedType

    return accelerator is not None and accelerator.distributed_type == DistributedType.DEEPSPEED


def master_dtype(dtype: str, accelerator) -> str:
    """The dtype a model loaded in ``dtype`` is trained in: float32 (fp32 master weights), or ``dtype`` itself
    under DeepSpeed (see the module docstring)."""
    return dtype if keeps_own_masters(accelerator) else "float32"


def fp32_master_weights(model: nn.Module, name: str, accelerator=None) -> int:
    """Upcast, in place, every trainable bfloat16/float16 parameter of ``model`` to float32; frozen ones keep
    their dtype (LoRA: the base stays 16-bit, the adapters are float32 already). Call before building the
    optimiser. Returns how many parameter tensors were upcast, and says so in the log.

    Without autocast (``run.mixed_precision=no``) the upcast model also computes in float32: logged as a
    warning, with the setting that restores 16-bit compute.
    """
    if keeps_own_masters(accelerator):
        return 0
    low = [(n, p) for n, p in model.named_parameters() if p.requires_grad and p.dtype in LOW_PRECISION]
    if not low:
        return 0
    was = sorted({str(p.dtype).removeprefix("torch.") for _, p in low})
    for _, p in low:
        p.data = p.data.float()
    elements = sum(p.numel() for _, p in low)
    mp = getattr(accelerator, "mixed_precision", "no")
    log.info("%s: %d trainable %s tensors (%.3g M weights) are kept as float32 master weights, so that small "
             "optimiser updates are not rounded away; compute runs under %s autocast; frozen weights keep "
             "their dtype", name, len(low), "/".join(was), elements / 1e6, mp)
    if mp == "no":
        log.warning("%s: loaded in %s without autocast (run.mixed_precision=no), so it now computes in float32; "
                    "set run.mixed_precision=bf16 (or auto) for 16-bit compute over the float32 master weights",
                    name, "/".join(was))
    return len(low)
