"""One process per run directory: an exclusive lock held for the run's life, on ``filelock``.

The lock lives inside the run directory: ``<run>/.r2m.lock`` is ``filelock``'s lock file (an ``flock``), and
``<run>/.r2m.lock.json`` names the holder (PID, host, start time) for the error a refused second run prints.
Nothing is written beside the run directory. A run refused before its first byte (bad input) leaves no run
directory: a directory the lock itself created, and that holds nothing else at release, is removed again.

The kernel drops an ``flock`` when its process exits in any way (SIGKILL included), so a lock left by a dead
process is never in force: the next run takes it over and logs whose it was (the holder file it finds). On a
file system without ``flock``, ``filelock.SoftFileLock`` (the file's exclusive creation) is the lock, and a
holder on this host whose PID no longer runs is detected as stale and replaced.

Within one process the lock is re-entrant (the CLI, a trainer and its run directory may all ask for it), and a
directory inside one this process holds (SER's per-loop RM runs, a cache kept in the run directory) is covered
by that hold: it takes no lock file of its own. The lock is released when the last holder lets go, or when the
process ends.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Optional

from r2m.errors import R2MError
from r2m.fileio import atomic_write_text

log = logging.getLogger("r2m")

LOCK_NAME = ".r2m.lock"
"""filelock's lock file, inside the run directory."""
HOLDER_NAME = ".r2m.lock.json"
"""The holder's PID, host and start time, inside the run directory while it is held."""
_NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class RunLockedError(R2MError):
    """Another live process holds the run directory."""


class Holder(NamedTuple):
    pid: int
    """The holding process's id."""
    host: str
    """The host it runs on."""
    since: float
    """When it took the lock (Unix time)."""


def lock_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / LOCK_NAME


def holder_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / HOLDER_NAME


def _read_holder(run_dir: Path) -> Optional[Holder]:
    try:
        d = json.loads(holder_path(run_dir).read_bytes().decode("utf-8"))
        return Holder(int(d["pid"]), str(d["host"]), float(d["since"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # not written yet, or not ours


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


def _refuse(run_dir: Path, holder: Optional[Holder]) -> RunLockedError:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.since)) if holder else ""
    who = f"PID {holder.pid} on host {holder.host} (since {since})" if holder else "another process"
    return RunLockedError(f"run directory {run_dir} is in use by {who}; wait for it to finish, or use another "
                          f"run.name (lock file {lock_path(run_dir)})")


class _Held(NamedTuple):
    lock: Any
    """The acquired ``filelock`` lock (None: covered by an enclosing directory's hold)."""
    created: Optional[Path]
    """The outermost directory the lock created (removed again at release when nothing else is in it)."""


# run directory -> [held lock, how many holders in this process]
_HELD: dict[Path, list] = {}


def _soft_lock(run_dir: Path):
    """The lock as an exclusively created file (``filelock.SoftFileLock``), for file systems without ``flock``;
    a holder on this host whose PID no longer runs is stale and replaced."""
    from filelock import SoftFileLock, Timeout

    for _ in range(3):
        lock = SoftFileLock(str(lock_path(run_dir)))
        try:
            lock.acquire(timeout=0)
            return lock
        except Timeout:
            holder = _read_holder(run_dir)
            if holder is None or holder.host != socket.gethostname() or _pid_alive(holder.pid):
                raise _refuse(run_dir, holder) from None
            log.warning("run directory %s: removed the stale lock of PID %d on host %s (no such process)",
                        run_dir, holder.pid, holder.host)
            holder_path(run_dir).unlink(missing_ok=True)
            lock_path(run_dir).unlink(missing_ok=True)
    raise _refuse(run_dir, _read_holder(run_dir))


def _take(run_dir: Path):
    """The acquired lock: ``filelock.FileLock`` (flock), else the soft lock where the file system has no flock."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(lock_path(run_dir)))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise _refuse(run_dir, _read_holder(run_dir)) from None
    except NotImplementedError:  # filelock's word for a file system without flock
        return _soft_lock(run_dir)
    except OSError as e:
        if e.errno not in _NO_FLOCK:
            raise
        return _soft_lock(run_dir)
    old = _read_holder(run_dir)
    if old is not None and old.pid != os.getpid():
        log.warning("run directory %s: took over the stale lock of PID %d on host %s (that process has ended)",
                    run_dir, old.pid, old.host)
    return lock


def _covering(run_dir: Path) -> Optional[Path]:
    """A directory this process holds that contains ``run_dir``."""
    return next((p for p in run_dir.parents if p in _HELD and _HELD[p][0].lock is not None), None)


def _missing_top(run_dir: Path) -> Optional[Path]:
    """The outermost of ``run_dir`` and its parents that does not exist yet (None: it exists)."""
    top = None
    for p in [run_dir, *run_dir.parents]:
        if p.exists():
            return top
        top = p
    return top


def acquire(run_dir: str | Path) -> bool:
    """Hold ``run_dir`` for this process; refused at once, naming the holder, when another process holds it.
    True when this call took the lock (False: this process held it, or a directory containing it, already)."""
    run_dir = Path(run_dir).absolute()
    entry = _HELD.get(run_dir)
    if entry is not None:
        entry[1] += 1
        return False
    if _covering(run_dir) is not None:
        _HELD[run_dir] = [_Held(None, None), 1]
        return False
    created = _missing_top(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        lock = _take(run_dir)
    except BaseException:
        _remove_if_empty(run_dir, created)
        raise
    atomic_write_text(holder_path(run_dir), json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                        "since": time.time()}))
    _HELD[run_dir] = [_Held(lock, created), 1]
    return True


def _remove_if_empty(run_dir: Path, created: Optional[Path]) -> None:
    """Remove the directories the lock created, when the lock's files are all they hold."""
    if created is None:
        return
    with contextlib.suppress(OSError):
        if {p.name for p in run_dir.iterdir()} <= {LOCK_NAME, HOLDER_NAME}:
            lock_path(run_dir).unlink(missing_ok=True)
            for d in [run_dir, *run_dir.parents]:
                d.rmdir()  # OSError once a directory holds anything else
                if d == created:
                    break


def release(run_dir: str | Path, everyone: bool = False) -> None:
    """Let go of one hold (``everyone``: of all of this process's holds); the last one removes the holder file
    and unlocks. ``filelock`` keeps its lock file in place (waiters share its inode)."""
    run_dir = Path(run_dir).absolute()
    entry = _HELD.get(run_dir)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] > 0 and not everyone:
        return
    held = _HELD.pop(run_dir)[0]
    if held.lock is None:
        return
    for inner in [d for d in _HELD if run_dir in d.parents and _HELD[d][0].lock is None]:
        del _HELD[inner]  # covered holds end with the hold that covers them
    holder_path(run_dir).unlink(missing_ok=True)
    held.lock.release(force=True)
    _remove_if_empty(run_dir, held.created)


def is_rank_zero() -> bool:
    """Under a multi-process launch only rank 0 writes (and locks) the run directory."""
    return int(os.environ.get("RANK", "0") or 0) == 0


def is_held(run_dir: str | Path) -> bool:
    return Path(run_dir).absolute() in _HELD


def wait_until_free(run_dir: str | Path, poll_s: float = 1.0) -> None:
    """Return once no other process holds ``run_dir`` (a cache another process is building: wait for it)."""
    said = False
    while True:
        try:
            acquire(run_dir)
        except RunLockedError as e:
            if not said:
                log.info("%s; waiting", e)
                said = True
            time.sleep(poll_s)
            continue
        release(run_dir)
        return


@contextlib.contextmanager
def holding(run_dir: str | Path) -> Iterator[None]:
    """Hold ``run_dir`` for the block, released however the block ends (the outermost block also lets go of
    holds taken within it and never released, as by a run that raised before closing its directory)."""
    outermost = acquire(run_dir)
    try:
        yield
    finally:
        release(run_dir, everyone=outermost)
