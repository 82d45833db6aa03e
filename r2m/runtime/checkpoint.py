"""Atomic training checkpoints and resume.

A checkpoint is a directory ``checkpoints/step-NNNNNN/`` written to a temporary sibling, fsynced and
renamed (:func:`r2m.fileio.atomic_dir`): a directory with that name is complete by construction, and
a crash mid-write leaves only a ``.tmp-*`` directory that is never loaded.

    step-000120/
      policy/            save_pretrained (safetensors) + tokenizer; LoRA adapters save themselves here
      r2m/               R2M's fusion module and head (safetensors), when R2M or a baseline trains
      critic/            PPO's critic, when present
      state.pt           optimisers, schedulers, KL controller, reward moments, RNG states, data position,
                         step -- tensors and plain containers only, loaded with ``weights_only=True``
      meta.json          format version (:data:`CHECKPOINT_FORMAT`), step, config fingerprint, the resume-free
                         fields' values
      manifest.json      every other file's size and SHA-256, written last

The manifest is what makes a checkpoint trustworthy after the fact: a file truncated or damaged later (a
full disk, a bad copy) no longer matches it, and resume falls back to the newest checkpoint that verifies,
naming the damaged one (:func:`latest_checkpoint`).

Under FSDP or DeepSpeed the weights and optimiser state are saved sharded, every rank writing its own part
(:mod:`r2m.runtime.sharded`: ``sharded/``, no ``policy/``), and with several processes each rank's RNG states go
to ``rng/rank-NNNNN.pt``: every rank writes into one temporary directory, which rank 0 renames once every rank has
written (:func:`shared_atomic_dir`). A write that fails (no space left, an I/O error) ends the run with a
:class:`r2m.errors.CheckpointWriteError` naming the path, the bytes needed and free (:func:`guard_write`); the
partial write is removed and the previous checkpoint stays the resume point.

The format version and the config fingerprint guard resume: a checkpoint of another format version is refused
by name (:class:`r2m.errors.FormatVersionError`), one of another config with a message naming the fields that
differ. Fields that do not change what was computed so far (:data:`RESUME_FREE`:
the number of steps, how often to evaluate, save or log, the trackers, the run's place) may change; each
change is logged.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import random
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, NamedTuple, Optional, Sequence

import numpy as np
import torch

from r2m.config.parsing import to_dict
from r2m.errors import CheckpointError, CheckpointWriteError, ConfigError
from r2m.fileio import FORMAT_KEY, ArtifactFormat, atomic_dir, atomic_write_text, fault_point

if TYPE_CHECKING:
    from r2m.runtime.distributed import Dist

log = logging.getLogger("r2m")

STATE = "state.pt"
META = "meta.json"
MANIFEST = "manifest.json"
RNG_DIR = "rng"
_STEP_DIR = re.compile(r"^step-(\d{6,})$")
CHECKPOINT_FORMAT = ArtifactFormat("training checkpoint", 1, "resume it with the r2m release that wrote it, or start "
                                   "a new run (another run.name, or run.resume=never)")
"""meta.json's ``format_version``: what state.pt holds and how meta.json names the config."""

# Fields that may change between a run and its resumption without changing what it computed so far.
RESUME_FREE = {"run.resume", "run.progress", "run.log_with", "run.keep_checkpoints", "run.threads",
               # What happens to the result at the end: never how it is computed.
               "run.push_to_hub", "run.hub_model_id", "run.hub_private_repo",
               # Train longer (or shorter): the steps already taken stay as they were.
               "rl.steps",
               # Where the run lives: a moved or renamed run directory resumes (the run it holds decides).
               "run.name", "run.root",
               # Recomputing activations gives the same gradients: turn it on to resume on a smaller GPU.
               "policy.gradient_checkpointing", "reward.gradient_checkpointing",
               # Stopping on the over-optimisation alarm, or at an evaluation KL, changes no step taken so far.
               "rl.stop_on_alarm", "rl.stop_at_kl",
               # How long a rank waits in a collective; when gradients are reduced (the same sums, in another order).
               "dist.timeout_minutes", "dist.sync_every_micro_batch"}
# How often to evaluate, save or log (rl.*, sft.*, rm.*, ser.*): never what a step computes.
RESUME_FREE_SUFFIXES = (".save_every", ".eval_every", ".log_every")
# The API judge only reads finished samples: its endpoint, model and cache never change a trajectory.
# The over-optimisation monitor only reads evaluations (rl.stop_on_alarm: above).
RESUME_FREE_PREFIXES = ("eval.judge.", "rl.monitor.")


def _is_free(key: str) -> bool:
    return key in RESUME_FREE or key.endswith(RESUME_FREE_SUFFIXES) or key.startswith(RESUME_FREE_PREFIXES)


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def fingerprint(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """The config fields that determine a training's trajectory (a whole Config, or a part of it)."""
    return {k: v for k, v in _flat(to_dict(cfg), prefix).items() if not _is_free(k)}


def free_fields(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """The config fields that may change on resume (stored in the checkpoint so that a change is logged)."""
    return {k: v for k, v in _flat(to_dict(cfg), prefix).items() if _is_free(k) and k != "run.resume"}


def log_free_changes(saved: dict[str, Any], now: dict[str, Any], where: Path) -> list[str]:
    """Log each resume-free field whose value differs from the checkpoint's; returns their names."""
    now = json.loads(json.dumps(now, default=str))
    changed = sorted(k for k in set(saved) & set(now) if saved[k] != now[k])
    for k in changed:
        log.warning("resume from %s: %s changed from %r to %r (allowed: it does not change the steps already "
                    "taken)", where, k, saved[k], now[k])
    return changed


def check_same_config(saved: dict[str, Any], now: dict[str, Any], where: Path) -> None:
    diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if diff:
        shown = ", ".join(f"{k} (checkpoint {saved.get(k)!r}, now {now.get(k)!r})" for k in diff[:6])
        more = f" and {len(diff) - 6} more" if len(diff) > 6 else ""
        raise ConfigError(f"resume from {where}: the checkpoint was written by another config: {shown}{more}; "
                          "start a new run.name, or resume with the original config")


# ---------------------------------------------------------------------------------------------
# RNG
# ---------------------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) RNG states, as tensors and plain containers."""
    np_state = np.random.get_state()
    state = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------
# Directories
# ---------------------------------------------------------------------------------------------


def step_dir(checkpoints: Path, step: int) -> Path:
    return checkpoints / f"step-{step:06d}"


def list_checkpoints(checkpoints: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary directories are never listed)."""
    if not checkpoints.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in checkpoints.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found) if (p / META).exists() and (p / STATE).exists()]


def latest_checkpoint(checkpoints: Path) -> Optional[Path]:
    """The newest checkpoint that verifies against its manifest; each damaged newer one is named in the log."""
    for p in reversed(list_checkpoints(checkpoints)):
        problem = verify(p)
        if problem is None:
            return p
        log.warning("checkpoint %s is damaged (%s); skipping it for an older one", p, problem)
    return None


# ---------------------------------------------------------------------------------------------
# Manifest: sizes and checksums, written last
# ---------------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(directory: Path, names: Optional[Sequence[str]] = None) -> None:
    """Record every file's size and SHA-256 (or only those ``names``, in a directory shared with other files); the
    last file a checkpoint gets."""
    paths = _files(directory) if names is None else [directory / n for n in names]
    files = {p.relative_to(directory).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)} for p in paths}
    atomic_write_text(directory / MANIFEST, json.dumps({"files": files}, indent=1))


class _Verified(NamedTuple):
    size_mtime: tuple
    problem: Optional[str]


_VERIFIED: dict[Path, _Verified] = {}  # a checkpoint is hashed once per process, unless its files change


def _size_mtime(directory: Path) -> tuple:
    return tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in _files(directory))


def _check_manifest(directory: Path) -> Optional[str]:
    if not (directory / MANIFEST).exists():
        # No manifest: complete by its atomic rename, but its bytes cannot be checked.
        log.warning("checkpoint %s has no %s (written by an older r2m): not verified", directory, MANIFEST)
        return None
    try:
        files = json.loads((directory / MANIFEST).read_bytes().decode("utf-8"))["files"]
    except (ValueError, KeyError, TypeError) as e:
        return f"unreadable {MANIFEST} ({type(e).__name__})"
    for name, want in sorted(files.items()):
        p = directory / name
        if not p.is_file():
            return f"{name} is missing"
        if p.stat().st_size != want["size"]:
            return f"{name} has {p.stat().st_size} bytes, the manifest says {want['size']}"
        if _sha256(p) != want["sha256"]:
            return f"{name} does not match its checksum"
    # Files added later (a run's final/r2m or final/adapter, each with its own manifest) are not checked here.
    return None


def verify(directory: Path) -> Optional[str]:
    """None when every file of the checkpoint matches its manifest, else what is wrong."""
    directory = Path(directory).absolute()
    key = _size_mtime(directory)
    hit = _VERIFIED.get(directory)
    if hit is None or hit.size_mtime != key:
        hit = _VERIFIED[directory] = _Verified(key, _check_manifest(directory))
    return hit.problem


def prune(checkpoints: Path, keep: int) -> None:
    """Keep the newest ``keep`` checkpoints (0 keeps all); remove the debris of interrupted saves (the run
    directory's lock makes this process its only writer)."""
    for p in [*checkpoints.glob(".tmp-step-*"), *checkpoints.glob(".old-step-*")]:
        shutil.rmtree(p, ignore_errors=True)
    if keep > 0:
        for p in list_checkpoints(checkpoints)[:-keep]:
            shutil.rmtree(p, ignore_errors=True)


def write_state(directory: Path, state: dict[str, Any], step: int, fingerprint: dict[str, Any],
                free: Optional[dict[str, Any]] = None) -> None:
    """state.pt and meta.json, then the manifest of the whole checkpoint: call it after every other file."""
    fault_point("checkpoint.before_state")  # the weights are written, the state not yet
    torch.save(state, directory / STATE)
    fault_point("checkpoint.before_meta")
    meta = {**CHECKPOINT_FORMAT.stamp(), "step": step, "config": fingerprint, "free": free or {}}
    (directory / META).write_text(json.dumps(meta, indent=1, default=str))
    fault_point("checkpoint.before_manifest")
    write_manifest(directory)


def read_state(directory: Path, fingerprint: dict[str, Any], free: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The training state of a checkpoint, refused when it has another format version (:data:`CHECKPOINT_FORMAT`) or
    was written under another ``fingerprint``.

    ``free`` (the resume-free fields now): each one that changed since the checkpoint is logged."""
    meta = json.loads((directory / META).read_bytes().decode("utf-8"))
    CHECKPOINT_FORMAT.check(meta.get(FORMAT_KEY), directory / META)
    # JSON turns tuples into lists: compare through the same round trip.
    check_same_config(meta["config"], json.loads(json.dumps(fingerprint, default=str)), directory)
    if free is not None:
        if "rl.steps" in free and int(meta["step"]) > int(free["rl.steps"]):
            raise ConfigError(f"rl.steps: expected at least the checkpoint's step {meta['step']} to resume from "
                              f"{directory}, got {free['rl.steps']}")
        log_free_changes(meta.get("free", {}), free, directory)
    return load_state_file(directory / STATE)


def load_state_file(path: Path) -> dict[str, Any]:
    """A state.pt (weights_only: tensors and plain containers, never arbitrary pickled objects)."""
    import pickle

    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except (RuntimeError, EOFError, pickle.UnpicklingError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: cannot be read ({type(e).__name__}: {str(e).splitlines()[0]}); the "
                              "checkpoint is damaged") from None


def rank_rng_file(directory: Path, rank: int) -> Path:
    """Where rank ``rank``'s RNG states are in a checkpoint written by several processes."""
    return directory / RNG_DIR / f"rank-{rank:05d}.pt"


# ---------------------------------------------------------------------------------------------
# Writing: one directory for every rank's part, and failed writes named
# ---------------------------------------------------------------------------------------------


def tensor_bytes(obj: Any) -> int:
    """The bytes of the tensors in nested dicts, lists and tuples (a sharded tensor's local shard only)."""
    if isinstance(obj, torch.Tensor):
        local = obj.to_local() if hasattr(obj, "to_local") else obj
        return local.numel() * local.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def _write_failure(e: BaseException) -> Optional[str]:
    """What failed when ``e`` is a failed write (no space left, an I/O error), else None. torch's writer raises a
    ``RuntimeError`` ("file write failed"), safetensors a ``SafetensorError`` (an ``IoError``), torch's distributed
    checkpoint a ``CheckpointException`` holding each rank's error."""
    if isinstance(e, OSError):
        code = errno.errorcode.get(e.errno or 0)
        return f"{code}: {e.strerror}" if code and e.strerror else f"{type(e).__name__}: {e}"
    first = (str(e).splitlines() or [""])[0]
    name = type(e).__name__
    if isinstance(e, RuntimeError) and "write" in str(e).lower():
        return f"{name}: {first}"
    if name == "SafetensorError" and "io" in str(e).lower():
        return f"{name}: {first}"
    if name == "CheckpointException":
        for exc, _ in getattr(e, "failures", {}).values():
            inner = _write_failure(exc)
            if inner is not None:
                return inner
        return f"{name}: {first}"
    cause = e.__cause__ or e.__context__
    return _write_failure(cause) if cause is not None and cause is not e else None


def _free_bytes(path: Path) -> int:
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


@contextlib.contextmanager
def guard_write(final: Path, needed: int) -> Iterator[None]:
    """Around a checkpoint's write (outside its :func:`r2m.fileio.atomic_dir`, which removes the partial write):
    a write that fails becomes a :class:`CheckpointWriteError` naming ``final``, the bytes ``needed`` (an estimate:
    the tensors to write) and those free, and the checkpoint that stays the resume point."""
    try:
        yield
    except BaseException as e:
        reason = _write_failure(e)
        if reason is None:
            raise
        final = Path(final)
        previous = [p for p in list_checkpoints(final.parent) if p != final] or [final] * final.exists()
        stays = (f"the newest complete checkpoint, {previous[-1]}, stays the resume point" if previous
                 else "no earlier checkpoint exists, so a resume starts the run over")
        raise CheckpointWriteError(
            f"{final}: the checkpoint could not be written ({reason}); it needs about {needed / 2**20:.1f} MiB "
            f"({needed} bytes) and {_free_bytes(final.parent)} bytes are free there; the partial write was removed "
            f"and {stays}; free space (or lower run.keep_checkpoints) and continue with run.resume=auto") from None


def _other_rank_failed(final: Path) -> CheckpointWriteError:
    return CheckpointWriteError(f"{final}: another process could not write its part of the checkpoint (its error says "
                                "why); the partial write was removed and the previous checkpoint stays the resume "
                                "point")


def _caught(e: BaseException) -> bool:
    """An error of a rank's write that the ranks agree on (torch's CheckpointException is a BaseException)."""
    return not isinstance(e, (KeyboardInterrupt, SystemExit, GeneratorExit))


def each_rank(dist: "Dist", final: Path, write: Callable[[], None]) -> None:
    """``write`` (this rank's part of the checkpoint ``final``, which may be nothing) on every rank, then an
    agreement: when any rank's write failed, every rank raises (the others a :class:`CheckpointWriteError` that says
    so). With one process it is ``write()``."""
    error: Optional[BaseException] = None
    try:
        write()
    except BaseException as e:
        if not _caught(e):
            raise
        error = e
    if not dist.all(error is None):
        raise error if error is not None else _other_rank_failed(final)


@contextlib.contextmanager
def shared_atomic_dir(final: Path, dist: "Dist") -> Iterator[Path]:
    """:func:`r2m.fileio.atomic_dir` for a checkpoint that every rank writes a part of: rank 0 makes the temporary
    directory and renames it once every rank's block has ended without an error. A rank whose block fails
    fails every rank (the others with a :class:`CheckpointWriteError` that says so), and the partial write is
    removed. Every rank must enter it; with one process it is ``atomic_dir``."""
    if not dist.enabled:
        with atomic_dir(final) as tmp:
            yield tmp
        return
    with contextlib.ExitStack() as rank0:
        tmp = rank0.enter_context(atomic_dir(final)) if dist.rank == 0 else None
        tmp = Path(dist.broadcast_object(None if tmp is None else str(tmp)))
        error: Optional[BaseException] = None
        try:
            yield tmp
        except BaseException as e:
            if not _caught(e):
                raise
            error = e
        if not dist.all(error is None):  # rank 0 leaves atomic_dir with an error: the partial write is removed
            raise error if error is not None else _other_rank_failed(final)
    dist.barrier()  # rank 0 has renamed it: every rank sees the checkpoint
