"""``r2m_bench.child``: a function run in a spawned process."""

from __future__ import annotations

import pytest

from r2m_bench.child import in_child
from r2m_bench.speed import step_flops


@pytest.mark.slow
def test_in_child_returns_the_result_and_reports_a_dead_child() -> None:
    import os

    assert in_child(True, step_flops, 3, 5, 7.0, 2)["update"] == 252.0  # spawned, as the paper preset runs
    with pytest.raises(RuntimeError, match="died \\(exit code 3\\)"):
        in_child(True, os._exit, 3)  # dies before reporting: an error, not a hang


def test_in_child_reports_a_failure_by_name() -> None:
    """Without spawning, the call is made here; a spawned call that raises comes back as a RuntimeError naming it."""
    assert in_child(False, step_flops, 3, 5, 7.0, 2)["update"] == 252.0
    with pytest.raises(RuntimeError, match="int failed in its child process: ValueError"):
        in_child(True, int, "not a number")
