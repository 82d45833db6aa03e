"""Sharded checkpoints of the trained models: each rank writes and reads only its own shard.

Under FSDP the models' and optimisers' states are saved in torch's distributed checkpoint format
(``torch.distributed.checkpoint``: one ``__<rank>_0.distcp`` file per rank and a ``.metadata`` file), taken with
``get_state_dict`` (sharded, as each rank holds it) and put back with ``set_state_dict``. Under DeepSpeed each
engine writes its own ZeRO checkpoint (``save_checkpoint``: the replicated weights once, each rank's optimiser
partition). No rank gathers the full weights; the run's final models are gathered once, at its end.

    sharded/            FSDP: torch.distributed.checkpoint of {"policy": ..., "policy_optimizer": ...,
                        "critic": ..., "critic_optimizer": ...} (fp32 master weights, AdamW's moments)
    deepspeed/<name>/   DeepSpeed: each engine's ZeRO checkpoint (untested here: deepspeed is not installed)

A sharded checkpoint resumes with any number of processes under FSDP (torch reshards on load); a DeepSpeed one with
the same number of processes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

SHARDED_DIR = "sharded"
DEEPSPEED_DIR = "deepspeed"


def is_sharded(accelerator) -> bool:
    """True under FSDP and DeepSpeed, whose ranks each hold a part of the trained state."""
    from accelerate.utils import DistributedType

    return accelerator is not None and accelerator.distributed_type in (DistributedType.FSDP,
                                                                         DistributedType.DEEPSPEED)


def _torch_optimizer(optimizer):
    """The torch optimiser inside accelerate's ``AcceleratedOptimizer``."""
    return getattr(optimizer, "optimizer", optimizer)


def _is_deepspeed(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.DEEPSPEED


def _fsdp_state(pairs: dict[str, tuple[nn.Module, Any]]) -> dict[str, Any]:
    """Each model's and optimiser's sharded state dicts (DTensors: this rank's shard), keyed ``name`` and
    ``name_optimizer``."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    out: dict[str, Any] = {}
    for name, (model, optimizer) in pairs.items():
        msd, osd = get_state_dict(model, _torch_optimizer(optimizer), options=StateDictOptions(full_state_dict=False))
        out[name], out[f"{name}_optimizer"] = msd, osd
    return out


def save_sharded(accelerator, directory: Path, pairs: dict[str, tuple[nn.Module, Any]]) -> None:
    """Every (model, optimiser) of ``pairs`` into ``directory``; a collective: every rank calls it."""
    if _is_deepspeed(accelerator):
        for name, (engine, _) in pairs.items():
            engine.save_checkpoint(str(directory / DEEPSPEED_DIR), tag=name)
        return
    import torch.distributed.checkpoint as dcp

    dcp.save(_fsdp_state(pairs), checkpoint_id=str(directory / SHARDED_DIR))


def load_sharded(accelerator, directory: Path, pairs: dict[str, tuple[nn.Module, Any]]) -> None:
    """Put back what :func:`save_sharded` wrote into the prepared models and optimisers; every rank calls it."""
    if _is_deepspeed(accelerator):
        for name, (engine, _) in pairs.items():
            engine.load_checkpoint(str(directory / DEEPSPEED_DIR), tag=name, load_optimizer_states=True,
                                   load_lr_scheduler_states=False)
        return
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    state = _fsdp_state(pairs)  # the shapes and shards to read into
    dcp.load(state, checkpoint_id=str(directory / SHARDED_DIR))
    for name, (model, optimizer) in pairs.items():
        set_state_dict(model, _torch_optimizer(optimizer), model_state_dict=state[name],
                       optim_state_dict=state[f"{name}_optimizer"], options=StateDictOptions(full_state_dict=False))
