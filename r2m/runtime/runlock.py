"""One process per run directory: an exclusive lock held for the run's life.

The lock is a file ``<root>/.<name>.lock`` beside the run directory (not inside it, so that a run refused
for bad input still leaves no run directory), locked with ``flock``. The kernel drops an ``flock`` when its
process exits in any way (SIGKILL included), so a lock left by a dead process is never in force: the next
run takes it over and logs that it did. The file holds the holder's PID, host and start time, which is
what a refused second run prints. On a file system without ``flock`` the file itself is the lock
(created exclusively), and a holder on this host whose PID no longer runs is detected as stale.

Within one process the lock is re-entrant (the CLI, a trainer and its run directory may all ask for it);
it is released when the last holder lets go, or when the process ends.
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
from typing import Iterator, NamedTuple, Optional

from r2m.errors import R2MError

log = logging.getLogger("r2m")


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
    run_dir = Path(run_dir)
    return run_dir.parent / f".{run_dir.name}.lock"


def _read_holder(path: Path) -> Optional[Holder]:
    try:
        d = json.loads(path.read_bytes().decode("utf-8"))
        return Holder(int(d["pid"]), str(d["host"]), float(d["since"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # empty (being written) or not ours


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
    fd: int
    """The open lock file (closing it drops an flock)."""
    path: Path
    """The lock file."""
    flock: bool
    """Locked by flock (else the file's exclusive creation is the lock)."""


# path -> (held lock, how many holders in this process)
_HELD: dict[Path, list] = {}


def _write_me(fd: int) -> None:
    me = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, me, 0)


def _take_flock(run_dir: Path, path: Path) -> Optional[_Held]:
    """The lock by ``flock``; None where the file system (or the OS) has no ``flock``."""
    try:
        import fcntl
    except ImportError:
        return None

    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _refuse(run_dir, _read_holder(path)) from None
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                return None
            raise
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:  # else the holder released (unlinked) the file between our open and flock: try again
            break
        os.close(fd)
    old = _read_holder(path)
    if old is not None:
        log.warning("run directory %s: took over the stale lock of PID %d on host %s (that process has ended)",
                    run_dir, old.pid, old.host)
    _write_me(fd)
    return _Held(fd, path, True)


def _take_exclusive(run_dir: Path, path: Path) -> _Held:
    """The lock as an exclusively created file, for file systems without ``flock``."""
    for _ in range(3):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = _read_holder(path)
            if holder is None or holder.host != socket.gethostname() or _pid_alive(holder.pid):
                raise _refuse(run_dir, holder) from None
            log.warning("run directory %s: removed the stale lock of PID %d on host %s (no such process)",
                        run_dir, holder.pid, holder.host)
            path.unlink(missing_ok=True)
            continue
        _write_me(fd)
        return _Held(fd, path, False)
    raise _refuse(run_dir, _read_holder(path))


def acquire(run_dir: str | Path) -> bool:
    """Hold ``run_dir`` for this process; refused at once, naming the holder, when another process holds it.
    True when this call took the lock (False: this process held it already)."""
    run_dir = Path(run_dir).absolute()
    entry = _HELD.get(run_dir)
    if entry is not None:
        entry[1] += 1
        return False
    path = lock_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    held = _take_flock(run_dir, path) or _take_exclusive(run_dir, path)
    _HELD[run_dir] = [held, 1]
    return True


def release(run_dir: str | Path, everyone: bool = False) -> None:
    """Let go of one hold (``everyone``: of all of this process's holds); the last one removes the lock file
    and unlocks."""
    run_dir = Path(run_dir).absolute()
    entry = _HELD.get(run_dir)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] > 0 and not everyone:
        return
    held = _HELD.pop(run_dir)[0]
    # Unlink while still locked: a process waiting on the old file sees it vanish and retries.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(held.path)
    os.close(held.fd)


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
