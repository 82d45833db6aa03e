"""Phase timers synchronise the CUDA device at every boundary (CUDA kernels run asynchronously: without it, GPU
time lands in whichever phase next waits for the device); on the CPU they never touch CUDA."""

from __future__ import annotations

import pytest
import torch

from r2m.utils import PhaseTimer, device_clock


@pytest.fixture()
def fake_cuda(monkeypatch) -> list[str]:
    """torch.cuda as on a GPU machine whose device is in use; ``synchronize`` records its calls."""
    events: list[str] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: events.append("synchronize"))
    return events


def test_phase_timer_synchronises_at_both_boundaries(fake_cuda) -> None:
    timer = PhaseTimer()
    with timer("generate"):
        fake_cuda.append("work")
    with timer("reward"):
        fake_cuda.append("work")
    assert fake_cuda == ["synchronize", "work", "synchronize"] * 2
    assert set(timer.pop()) == {"generate", "reward"}


def test_device_clock_synchronises(fake_cuda) -> None:
    t0 = device_clock()
    assert fake_cuda == ["synchronize"] and device_clock() >= t0


def test_no_synchronize_without_cuda(monkeypatch) -> None:
    def refuse(device=None):
        raise AssertionError("synchronize called on a machine without CUDA")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "synchronize", refuse)
    timer = PhaseTimer()
    with timer("update"):
        pass
    assert device_clock() > 0 and timer.pop()["update"] >= 0
