"""Sharded checkpoints of the trained models: each rank writes and reads only its own shard.

Under FSDP the models' and optimisers' states are saved in torch's distributed checkpoint format
(``torch.distributed.checkpoint``: one ``__<rank>_0.distcp`` file per rank and a ``.metadata`` file), taken with
``get_state_dict`` (sharded, as each rank holds it) and put back with ``set_state_dict``. Under DeepSpeed each
engine writes its own ZeRO checkpoint (``save_checkpoint``: the replicated weights once, each rank's optimiser
partition). No rank gathers the full weights; the run's final models are gathered once, at its end.

    sharded/            FSDP: torch.distributed.checkpoint of {"policy": ..., "policy_optimizer": ...,
                        "critic": ..., "critic_optimizer": ...} (fp32 master weights, AdamW's moments)
    deepspeed/<name>/   DeepSpeed: each engine's ZeRO checkpoint (untested here: deepspeed is not installed)

A checkpoint's ``state.pt`` names the backend it was written under (:func:`backend_name`): an FSDP one resumes under
FSDP with any number of processes (torch reshards on load), a DeepSpeed one under DeepSpeed with the same number of
processes, a replicated one (one process, DDP) replicated; any other resume is refused (:func:`check_resume_backend`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from r2m.errors import CheckpointError, ConfigError

SHARDED_DIR = "sharded"
DEEPSPEED_DIR = "deepspeed"
FSDP, DEEPSPEED, REPLICATED = "fsdp", "deepspeed", "replicated"
"""The backends a checkpoint is written under (``state.pt``'s ``backend``)."""


def backend_name(accelerator) -> str:
    """The backend ``accelerator`` trains under: :data:`FSDP` or :data:`DEEPSPEED`, whose ranks each hold a part of
    the trained state, or :data:`REPLICATED` (one process, DDP: every rank holds the whole state)."""
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type if accelerator is not None else None
    return {DistributedType.FSDP: FSDP, DistributedType.DEEPSPEED: DEEPSPEED}.get(kind, REPLICATED)


def checkpoint_backend(directory: Path, state: dict) -> str:
    """The backend the checkpoint in ``directory`` (whose ``state.pt`` is ``state``) was written under; a state
    that does not name it is read from the layout (a sharded/ or deepspeed/ directory)."""
    if "backend" in state:
        return state["backend"]
    if (directory / SHARDED_DIR).is_dir():
        return FSDP
    return DEEPSPEED if (directory / DEEPSPEED_DIR).is_dir() else REPLICATED


def check_resume_backend(directory: Path, state: dict, backend: str, num_processes: int) -> None:
    """Refuse to resume the checkpoint in ``directory`` under ``backend`` with ``num_processes`` processes unless
    its state can be put back: the same backend (FSDP at any process count, DeepSpeed at the one it was written
    with). A sharded checkpoint holds no full weights for a replicated run, nor a replicated one shards."""
    written = checkpoint_backend(directory, state)
    if written != backend:
        raise ConfigError(f"{directory}: this checkpoint was written under {written} and this run trains under "
                          f"{backend}; resume it under {written} (launch it as it was launched), or start a new run "
                          "(another run.name, or run.resume=never)")
    saved = state.get("num_processes")
    if backend == DEEPSPEED and saved is not None and saved != num_processes:
        raise ConfigError(f"{directory}: this DeepSpeed checkpoint was written by {saved} processes and this run has "
                          f"{num_processes}; ZeRO's optimiser partitions resume only with {saved}")


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
            loaded = engine.load_checkpoint(str(directory / DEEPSPEED_DIR), tag=name, load_optimizer_states=True,
                                            load_lr_scheduler_states=False)
            if loaded is None or loaded[0] is None:  # DeepSpeed logs a missing checkpoint and returns (None, None)
                raise CheckpointError(f"{directory / DEEPSPEED_DIR / name}: DeepSpeed found no checkpoint of the "
                                      f"{name} to load (missing or damaged); the run cannot resume from {directory}")
        return
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    state = _fsdp_state(pairs)  # the shapes and shards to read into
    dcp.load(state, checkpoint_id=str(directory / SHARDED_DIR))
    for name, (model, optimizer) in pairs.items():
        set_state_dict(model, _torch_optimizer(optimizer), model_state_dict=state[name],
                       optim_state_dict=state[f"{name}_optimizer"], options=StateDictOptions(full_state_dict=False))
