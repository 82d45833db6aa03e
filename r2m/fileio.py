"""File helpers without torch (so that ``r2m.config`` and ``r2m.world`` stay light): atomic writes, fault
points for the reliability tests, UTF-8 line decoding with errors naming the file, line and column."""

from __future__ import annotations

import codecs
import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterator, NamedTuple, Optional

from r2m.errors import DataError, FormatVersionError


def _fsync_tree(path: Path) -> None:
    for p in sorted(path.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success fsync it and rename it to ``final``.

    A crash leaves only a ``.tmp-*`` directory behind, never a half-written ``final``: readers
    treat the existence of ``final`` as the mark of a complete write.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
        fault_point(f"atomic_dir.before_rename:{final.name}")
        if final.exists():
            old = final.parent / f".old-{final.name}-{os.getpid()}"
            os.replace(final, old)
            fault_point(f"atomic_dir.between_renames:{final.name}")
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


FAULT_ENV = "R2M_FAULT"
_fault_hits: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Fault injection for the crash tests: with ``R2M_FAULT=name@N`` the process SIGKILLs itself the N-th
    time it reaches the point ``name`` (N defaults to 1). Unset, this is one dictionary look-up."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    target, _, nth = spec.partition("@")
    if target != name:
        return
    _fault_hits[name] = _fault_hits.get(name, 0) + 1
    if _fault_hits[name] == int(nth or 1):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a file through a temporary name and ``os.replace`` so readers never see half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_savefig(fig, path: str | Path, **kwargs) -> Path:
    """``fig.savefig`` through a temporary name: a reader (or a second writer) never sees half an image."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", **kwargs)
    os.replace(tmp, path)
    return path


def read_json_or_none(path: str | Path):
    """A JSON file's value; None when it does not exist, or (logged, naming it) when it is damaged: a result
    left half-written by a crash is then computed again instead of stopping a resume."""
    import json
    import logging

    path = Path(path)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_bytes().decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError) as e:
        logging.getLogger("r2m").warning("%s is damaged (%s: %s); computing it again", path, type(e).__name__, e)
        return None


def decode_lines(path: Path, raw: bytes) -> list[str]:
    """The lines of a UTF-8 text file's bytes. A UTF-8 BOM and CRLF line ends (as Windows editors write
    them) are accepted, as ``datasets`` and pandas accept them; an undecodable byte is an error naming
    the file, the line and the column."""
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8):]
    lines = []
    # Line ends as Python's universal newlines count them (\n, \r\n, \r): line numbers stay what they were.
    for lineno, line in enumerate(raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n"), start=1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            col = len(line[:e.start].decode("utf-8")) + 1  # in characters, as an editor counts
            raise DataError(f"{path}:{lineno}: not valid UTF-8 (byte 0x{line[e.start]:02x} at column {col})") from None
        lines.append(text)
    if lines and lines[-1] == "":
        lines.pop()  # the final newline ends the last line; it does not start another
    return lines


FORMAT_KEY = "format_version"
"""The JSON field that holds an artefact's format version."""


class ArtifactFormat(NamedTuple):
    """A kind of artefact r2m writes to disk and reads back, at one format version. A file of another version (or of
    none) is refused by :meth:`check`, naming it: there is no compatibility path for older layouts."""

    what: str
    """What the artefact is, as the error names it ("training checkpoint")."""
    version: int
    """The version this r2m writes and reads."""
    remedy: str
    """What to do with an artefact of another version."""

    def stamp(self) -> dict:
        """``{"format_version": version}``, for the artefact's JSON file."""
        return {FORMAT_KEY: self.version}

    def check(self, found: Optional[object], where: str | Path) -> None:
        """Refuse ``found`` (the file's ``format_version``, None when it has none) unless it is :attr:`version`."""
        if type(found) is int and found == self.version:
            return
        has = "no format version (written before r2m versioned it)" if found is None else f"format version {found!r}"
        raise FormatVersionError(f"{where}: this {self.what} has {has}; this r2m reads version {self.version}: "
                                 f"{self.remedy}")

    def check_file(self, path: str | Path) -> None:
        """:meth:`check` on the ``format_version`` of the JSON object in ``path`` (a file that is not one has none)."""
        try:
            value = json.loads(Path(path).read_bytes().decode("utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            value = None
        self.check(value.get(FORMAT_KEY) if isinstance(value, dict) else None, path)

    def write(self, path: str | Path, **fields) -> None:
        """A small JSON file holding the version (and ``fields``), written atomically."""
        atomic_write_text(path, json.dumps({**fields, **self.stamp()}, indent=1) + "\n")
