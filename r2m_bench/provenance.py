"""Where a result came from: the code's git commit."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git_commit(where: str | Path = ".") -> str:
    """The short commit of the checkout at ``where``, with ``+dirty`` when tracked files differ from it;
    ``unknown`` outside a git checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=where, capture_output=True, text=True)
        if head.returncode:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except OSError:
        return "unknown"
