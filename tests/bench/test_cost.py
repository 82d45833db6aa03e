"""``r2m bench``: the phase profiler, the cost report, and the smoke matrix end to end (no timing is asserted)."""

from __future__ import annotations

import json
import math
import mmap
import time

import pytest
import torch

from r2m.cli import main
from r2m.utils import PhaseTimer
from r2m_bench.cost import format_cost
from r2m_bench.profiling import PhaseProfiler, lifetime_peak_rss_mb, merge_peaks, profile_method, rss_reader

MiB = 2**20


def _fresh(mb: int) -> mmap.mmap:
    """``mb`` MiB of fresh pages, touched: new RSS whatever the allocator keeps (run.malloc=heap reuses freed
    heap memory, so a tensor's pages may already be resident)."""
    buf = mmap.mmap(-1, mb * MiB)
    buf.write(b"\x07" * (mb * MiB))
    return buf


def _hold(mb: int, seconds: float) -> None:
    """Touch ``mb`` MiB of fresh pages for ``seconds``, then free them."""
    buf = _fresh(mb)
    time.sleep(seconds)
    buf.close()


# ---------------------------------------------------------------------------------------------
# PhaseProfiler
# ---------------------------------------------------------------------------------------------


def test_profiler_is_a_phase_timer_with_per_phase_peak_rss() -> None:
    with PhaseProfiler(interval_s=0.002) as prof:
        assert isinstance(prof, PhaseTimer)
        with prof("idle"):
            time.sleep(0.02)
        with prof("alloc"):
            _hold(96, 0.15)  # freed before the phase ends: only the sampler can see it
        times, laps, mem = prof.pop(), prof.pop_laps(), prof.pop_memory()
    assert set(times) == set(laps) == set(mem) == {"idle", "alloc"}
    assert times["idle"] >= 0.02 and laps["alloc"] >= 0.15
    assert mem["alloc"]["rss_growth_mb"] > 64, mem
    assert mem["idle"]["rss_growth_mb"] < 32, mem
    assert mem["alloc"]["peak_rss_mb"] >= mem["alloc"]["rss_growth_mb"]
    assert "cuda_peak_mb" not in mem["alloc"]  # no CUDA in use
    assert prof.pop_memory() == {} and prof.pop() == {}
    assert prof.sampler._thread is None  # closed


def test_nested_phases_and_max_over_repeats() -> None:
    with PhaseProfiler(interval_s=0.002) as prof:
        with prof("outer"):
            with prof("inner"):
                _hold(64, 0.15)
        with prof("inner"):  # a second, smaller run of the same phase: the maximum is kept
            time.sleep(0.01)
        mem = prof.pop_memory()
    assert mem["outer"]["peak_rss_mb"] >= mem["inner"]["peak_rss_mb"] - 1  # the outer phase saw the inner peak
    assert mem["inner"]["rss_growth_mb"] > 48


def test_boundary_only_sampling_and_rss_readers() -> None:
    read, method = rss_reader()
    assert method in ("/proc/self/statm", "psutil", "ru_maxrss") and read() > 0
    assert lifetime_peak_rss_mb() >= read() / MiB - 1
    with PhaseProfiler(interval_s=0) as prof:  # no thread: start and end of each phase only
        with prof("kept"):
            buf = _fresh(48)  # still alive at the phase end
        mem = prof.pop_memory()
        buf.close()
    assert prof.sampler._thread is None and mem["kept"]["rss_growth_mb"] > 32


class FakeCuda:
    """The torch.cuda counters the profiler reads, driven by hand."""

    def __init__(self) -> None:
        self.allocated = 100 * MiB
        self.peak = self.allocated

    def alloc(self, n: int) -> None:
        self.allocated += n
        self.peak = max(self.peak, self.allocated)

    def install(self, monkeypatch) -> None:
        monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
        monkeypatch.setattr(torch.cuda, "memory_allocated", lambda *a, **k: self.allocated)
        monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a, **k: self.peak)
        monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats",
                            lambda *a, **k: setattr(self, "peak", self.allocated))


def test_cuda_peaks_per_phase_and_nesting(monkeypatch) -> None:
    cuda = FakeCuda()
    cuda.install(monkeypatch)
    with PhaseProfiler(interval_s=0, cuda=True) as prof:
        with prof("outer"):
            cuda.alloc(50 * MiB)   # outer's own peak: 150
            cuda.alloc(-50 * MiB)
            with prof("inner"):    # inner resets the counter: 100 -> 130
                cuda.alloc(30 * MiB)
                cuda.alloc(-30 * MiB)
        with prof("small"):
            cuda.alloc(10 * MiB)
        mem = prof.pop_memory()
    assert mem["outer"]["cuda_peak_mb"] == 150 and mem["outer"]["cuda_growth_mb"] == 50
    assert mem["inner"]["cuda_peak_mb"] == 130 and mem["inner"]["cuda_growth_mb"] == 30
    assert mem["small"]["cuda_peak_mb"] == 110 and mem["small"]["cuda_growth_mb"] == 10


def test_profile_method_and_merge_peaks() -> None:
    class Updater:
        def update(self, x, beta=None):
            return {"x": x, "beta": beta}

    prof = PhaseProfiler(interval_s=0)
    u = Updater()
    assert profile_method(u, "update", prof, "update")
    assert u.update(1, beta=2) == {"x": 1, "beta": 2}
    assert "update" in prof.pop_laps() and "update" in prof.pop()
    assert not profile_method(None, "update", prof, "rm_update") and not profile_method(u, "missing", prof, "x")
    merged = merge_peaks([{"a": {"peak_rss_mb": 1.0}}, {"a": {"peak_rss_mb": 3.0}, "b": {"peak_rss_mb": 2.0}}])
    assert merged == {"a": {"peak_rss_mb": 3.0}, "b": {"peak_rss_mb": 2.0}}
    prof.close()


# ---------------------------------------------------------------------------------------------
# The cost report
# ---------------------------------------------------------------------------------------------


def _arm(step: float, cuda: bool, rm_update: bool) -> dict:
    phases = {p: {"time_s": step / 10, "peak_rss_mb": 500.0, "rss_growth_mb": 1.0,
                  **({"cuda_peak_mb": 800.0, "cuda_growth_mb": 20.0} if cuda else {})}
              for p in ("generate", "logprobs", "reward", "update", *(["rm_update"] if rm_update else []), "step")}
    phases["step"]["time_s"] = step
    return {**{f"time/{p}": v["time_s"] for p, v in phases.items()}, "phases": phases, "peak_rss_mb": 520.0,
            "peak_rss_steps_mb": 500.0, **({"cuda_max_allocated_mb": 800.0} if cuda else {})}


@pytest.mark.parametrize("cuda", [False, True])
def test_format_cost_per_phase_rows(cuda: bool) -> None:
    rm = {"time/rm_update": 0.01, "trainable_params": 10, "phases": {"rm_update": {"time_s": 0.01, "peak_rss_mb": 1.0}},
          "peak_rss_mb": 1.0}
    result = {"steps": 3, "measured_steps": 2, "threads": 1, "device": "cpu",
              "rl": {"rloo": _arm(1.0, cuda, False), "rloo_r2m": _arm(1.1, cuda, True)},
              "rm_update": {"lightweight": rm, "full": {**rm, "trainable_params": 20}},
              "ratios": {"step_time_r2m_over_rloo": 1.1, "peak_rss_r2m_over_rloo": 1.0}}
    text = format_cost(result)
    for label in ("generation", "reward annotation", "policy update", "RM update", "whole step"):
        assert label in text
    rm_row = next(line for line in text.splitlines() if line.startswith("RM update  "))
    assert rm_row.split()[2] == "-"  # vanilla RLOO has no RM update
    gen_row = next(line for line in text.splitlines() if line.startswith("generation"))
    assert ("800.000" in gen_row) == cuda and (gen_row.rstrip().endswith("-")) == (not cuda)
    assert "| generation" in format_cost(result, markdown=True)


@pytest.mark.slow
def test_bench_cost_smoke(tiny, world_artifacts, tmp_path, capsys) -> None:
    out = tmp_path / "cost.json"
    assert main(["bench", "cost", *tiny, "--steps", "2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["threads"] >= 1 and result["device"] == "cpu" and "statm" in result["memory_method"]["rss"]
    for arm in ("rloo", "rloo_r2m"):
        res = result["rl"][arm]
        assert res["time/step"] > 0 and res["peak_rss_mb"] > 0
        for phase in ("generate", "logprobs", "reward", "update", "step"):
            stats = res["phases"][phase]
            assert stats["time_s"] > 0 and stats["peak_rss_mb"] > 0 and stats["rss_growth_mb"] >= 0, (arm, phase)
            assert stats["peak_rss_mb"] <= res["phases"]["step"]["peak_rss_mb"] + 1
        assert "cuda_peak_mb" not in res["phases"]["step"]
    assert "rm_update" not in result["rl"]["rloo"]["phases"]
    r2m = result["rl"]["rloo_r2m"]
    assert r2m["phases"]["rm_update"]["time_s"] > 0 and r2m["r2m/hidden_mb"] > 0
    lw, full = result["rm_update"]["lightweight"], result["rm_update"]["full"]
    assert full["trainable_params"] > lw["trainable_params"] > 0
    assert lw["phases"]["rm_update"]["peak_rss_mb"] > 0
    assert all(math.isfinite(v) and v > 0 for v in result["ratios"].values())
    text = capsys.readouterr().out
    assert "(a) RLOO vs RLOO+R2M" in text and "reward annotation" in text and "R2M / vanilla RLOO" in text
