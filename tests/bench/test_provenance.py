"""git_commit: the checkout's short commit, +dirty when tracked files changed, unknown outside git."""

from __future__ import annotations

import subprocess

from r2m_bench.provenance import git_commit


def _git(repo, *args) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def test_git_commit_names_head_and_dirt(tmp_path) -> None:
    assert git_commit(tmp_path) == "unknown"
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.txt").write_text("1\n")
    _git(tmp_path, "add", "a.txt")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    head = _git(tmp_path, "rev-parse", "--short", "HEAD")
    assert git_commit(tmp_path) == head
    (tmp_path / "new.txt").write_text("untracked files do not count\n")
    assert git_commit(tmp_path) == head
    (tmp_path / "a.txt").write_text("2\n")
    assert git_commit(tmp_path) == head + "+dirty"
