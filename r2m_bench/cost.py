"""``r2m bench cost``: what R2M costs (R2M paper Figure 7); ``r2m bench run`` is r2m_bench/report.py.

``r2m bench cost``:

(a) RLOO against RLOO+R2M on the same run: wall time and peak memory per phase (generation,
    log-probs, reward annotation, policy update, RM update) and per step.
(b) R2M's lightweight RM update (fusion + head on cached reward-token embeddings) against a full
    RM update (backbone unfrozen, embeddings recomputed with gradients), on the same batches.

Each arm runs in its own spawned process, so its memory belongs to that arm alone. Phases are
measured by :class:`r2m_bench.profiling.PhaseProfiler`: wall time (CUDA synchronised at phase boundaries),
peak CPU RSS sampled every 5 ms, and CUDA max-allocated (reset at each phase start) where CUDA is in
use. Times are medians over steps after a warm-up step; memory is the maximum over all steps.
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

from r2m.config.enums import Malloc
from r2m.config.parsing import replace_path
from r2m.config.root import Config
from r2m.core.losses import grebt_terms
from r2m.fileio import atomic_write_text
from r2m.recipes.pipeline import resolve_inputs
from r2m.recipes.rl.build import build_run
from r2m.recipes.rl.step import train_step
from r2m.reports.tables import format_table
from r2m_bench.child import in_child
from r2m_bench.profiling import PhaseProfiler, lifetime_peak_rss_mb, merge_peaks, rss_reader

# The phases of one RL step, in order, with their names in the report. ``greedy_baseline`` (ReMax)
# and ``values`` (PPO's critic) only occur with those algorithms.
PHASES: dict[str, str] = {
    "generate": "generation",
    "logprobs": "log-probs (policy, ref)",
    "reward": "reward annotation",
    "greedy_baseline": "greedy baseline (ReMax)",
    "values": "values (critic)",
    "update": "policy update",
    "rm_update": "RM update",
    "step": "whole step",
}
RSS_INTERVAL_S = 0.005


def _arm_env(device) -> dict:
    import torch

    return {"threads": torch.get_num_threads(), "device": str(device), "rss_method": rss_reader()[1],
            "rss_interval_ms": RSS_INTERVAL_S * 1000}


def _process_peaks(phases: dict[str, dict]) -> dict[str, float]:
    """Process-level peaks of an arm: lifetime max RSS, and the maxima over its measured phases."""
    import math

    out = {"peak_rss_mb": lifetime_peak_rss_mb(),
           "peak_rss_steps_mb": max((p.get("peak_rss_mb", math.nan) for p in phases.values()), default=math.nan)}
    cuda = [p["cuda_peak_mb"] for p in phases.values() if "cuda_peak_mb" in p]
    if cuda:
        out["cuda_max_allocated_mb"] = max(cuda)
    return out


def _phase_summary(laps: list[dict[str, float]], peaks: dict[str, dict[str, float]]) -> dict[str, dict]:
    """phase -> {"time_s": median over the laps (first one dropped), memory peaks (max over all)}."""
    timed = laps[1:] or laps
    out = {}
    for phase in [p for p in PHASES if p in peaks] + sorted(set(peaks) - set(PHASES)):
        times = [lap[phase] for lap in timed if phase in lap]
        out[phase] = {"time_s": statistics.median(times) if times else float("nan"), **peaks[phase]}
    return out


def _rl_arm(cfg: Config, steps: int) -> dict:
    """Child process: ``steps`` RL steps, each phase profiled (time, peak RSS, CUDA max-allocated).

    The profiler is the run's phase timer: the step times its phases (generate, logprobs, reward, ..., update,
    rm_update) through it.
    """
    prof = PhaseProfiler(RSS_INTERVAL_S)
    run = build_run(replace_path(cfg, rl__steps=steps, run__log_with=[], run__progress=False), timer=prof)
    rows, laps, peaks = [], [], []
    try:
        for s in range(1, steps + 1):
            with prof("step"):
                rows.append(train_step(run, s))  # the step pops the timer's totals itself
            laps.append(prof.pop_laps())
            peaks.append(prof.pop_memory())
    finally:
        prof.close()
    phases = _phase_summary(laps, merge_peaks(peaks))
    out = {**{f"time/{p}": v["time_s"] for p, v in phases.items()}, "phases": phases, **_process_peaks(phases),
           **_arm_env(run.models.device)}
    if any("r2m/hidden_mb" in r for r in rows):
        out["r2m/hidden_mb"] = rows[-1]["r2m/hidden_mb"]
    return out


def _rm_update_arm(cfg: Config, steps: int, full: bool) -> dict:
    """Child process: R2M's RM update alone, lightweight or full, on fresh rollouts (policy not trained)."""
    import torch

    run = build_run(replace_path(cfg, rl__steps=steps, run__log_with=[], run__progress=False))
    updater = run.grebt
    model = updater.model
    if full:
        model.rm.model.requires_grad_(True)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.reward.r2m.lr)
    prof = PhaseProfiler(RSS_INTERVAL_S)
    laps, peaks = [], []
    try:
        for step in range(1, steps + 1):
            idx = run.sampler.next(cfg.rl.prompts_per_step)
            train, maker = run.train_prompts, run.maker
            rollout = maker.rollout([train.texts[i] for i in idx], [train.ids[i] for i in idx], step - 1)
            if run.r2m.calibrates(rollout.query):  # init=matched, as the step does it
                rollout = rollout._replace(query=run.r2m.calibrate(rollout.query))
            exp = maker.estimate(rollout, maker.score(rollout))
            with prof("rm_update"):
                if full:
                    # Recompute H_last through the unfrozen backbone so its gradient flows too.
                    enc = model.rm.tokenize(exp.prompts, exp.responses)
                    device = run.models.device
                    rte = model.rm.embed(enc["input_ids"].to(device), enc["attention_mask"].to(device)).float()
                    r = model.score_embeddings(rte, exp.policy_hidden, exp.policy_mask,
                                               updater.schedule.omega(exp.step)).view(exp.n, exp.k)
                    loss = grebt_terms(r, cfg.reward.r2m.effective_alpha).loss
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                else:
                    updater.update(exp, exp.policy_hidden)
            laps.append(prof.pop_laps())
            peaks.append(prof.pop_memory())
    finally:
        prof.close()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad) if full else \
        sum(p.numel() for p in model.trainable_parameters())
    phases = _phase_summary(laps, merge_peaks(peaks))
    return {"time/rm_update": phases["rm_update"]["time_s"], "trainable_params": trainable, "phases": phases,
            **_process_peaks(phases), **_arm_env(run.models.device)}


def _ratio(num: dict, den: dict, key: str) -> float:
    a, b = num.get(key), den.get(key)
    return a / b if a is not None and b else float("nan")


def _load_avg() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def bench_cost(cfg: Config, steps: int = 12) -> dict:
    """Figure 7 (a) and (b) on ``cfg`` (the world by default)."""
    resolve_inputs(cfg)  # build the world's artifacts once, outside the timed arms
    # glibc's default allocator returns large freed blocks, so each phase's RSS peak is its own; under
    # run.malloc=heap a phase's peak would include heap memory earlier phases freed (and kept)
    cfg = replace_path(cfg, run__malloc=Malloc.SYSTEM)
    load_start = _load_avg()
    vanilla_cfg = replace_path(cfg, reward__r2m__enabled=False, run__name=f"{cfg.run.name}-vanilla")
    r2m_cfg = replace_path(cfg, reward__r2m__enabled=True, run__name=f"{cfg.run.name}-r2m")
    rl = {"rloo": in_child(True, _rl_arm, vanilla_cfg, steps), "rloo_r2m": in_child(True, _rl_arm, r2m_cfg, steps)}
    rm = {"lightweight": in_child(True, _rm_update_arm, r2m_cfg, steps, False),
          "full": in_child(True, _rm_update_arm, r2m_cfg, steps, True)}
    v, r = rl["rloo"], rl["rloo_r2m"]
    lw, full = rm["lightweight"], rm["full"]
    ratios = {
        "step_time_r2m_over_rloo": _ratio(r, v, "time/step"),
        "peak_rss_r2m_over_rloo": _ratio(r, v, "peak_rss_mb"),
        "peak_rss_steps_r2m_over_rloo": _ratio(r, v, "peak_rss_steps_mb"),
        "rm_update_time_full_over_lightweight": _ratio(full, lw, "time/rm_update"),
        "peak_rss_full_over_lightweight": _ratio(full, lw, "peak_rss_mb"),
        "rm_update_peak_rss_full_over_lightweight": _ratio(full["phases"]["rm_update"], lw["phases"]["rm_update"],
                                                           "peak_rss_mb"),
    }
    if "cuda_max_allocated_mb" in v and "cuda_max_allocated_mb" in r:
        ratios["cuda_max_allocated_r2m_over_rloo"] = _ratio(r, v, "cuda_max_allocated_mb")
        ratios["cuda_max_allocated_full_over_lightweight"] = _ratio(full, lw, "cuda_max_allocated_mb")
    return {"steps": steps, "measured_steps": max(steps - 1, 1), "threads": v["threads"], "device": v["device"],
            # Other processes on the machine slow the arms unevenly: the ratios mean little under load.
            "cpu_count": os.cpu_count(), "load_avg_1min": {"start": load_start, "end": _load_avg()},
            "dtype": {"policy": cfg.policy.dtype, "reward": cfg.reward.dtype},
            "memory_method": {"rss": f"{v['rss_method']}, sampled every {v['rss_interval_ms']:g} ms and at phase "
                                     f"boundaries; peak_rss_mb is the arm process's lifetime peak (VmHWM)",
                              "cuda": "torch.cuda.max_memory_allocated(), reset at each phase start"},
            "rl": rl, "rm_update": rm, "ratios": ratios}


def _mb(x) -> float:
    return float("nan") if x is None else float(x)


def format_cost(result: dict, markdown: bool = False) -> str:
    """The cost report: per-phase time and peak memory for both arms, (b), and the ratios."""
    nan = float("nan")
    v, r = result["rl"]["rloo"], result["rl"]["rloo_r2m"]
    pv, pr = v.get("phases", {}), r.get("phases", {})
    rows = []
    for key, label in PHASES.items():
        if key not in pv and key not in pr and f"time/{key}" not in v and f"time/{key}" not in r:
            continue
        a, b = pv.get(key, {}), pr.get(key, {})
        rows.append([label, a.get("time_s", v.get(f"time/{key}", nan)), b.get("time_s", r.get(f"time/{key}", nan)),
                     _mb(a.get("peak_rss_mb")), _mb(b.get("peak_rss_mb")),
                     _mb(a.get("cuda_peak_mb")), _mb(b.get("cuda_peak_mb"))])
    rows.append(["process lifetime (VmHWM)", nan, nan, v["peak_rss_mb"], r["peak_rss_mb"],
                 _mb(v.get("cuda_max_allocated_mb")), _mb(r.get("cuda_max_allocated_mb"))])
    headers = ["phase", "RLOO s", "RLOO+R2M s", "RLOO RSS MiB", "R2M RSS MiB", "RLOO CUDA MiB", "R2M CUDA MiB"]
    lw, full = result["rm_update"]["lightweight"], result["rm_update"]["full"]
    lwp, fp = lw.get("phases", {}).get("rm_update", {}), full.get("phases", {}).get("rm_update", {})
    rows_b = [["RM update time (s)", lw["time/rm_update"], full["time/rm_update"]],
              ["trainable params", lw["trainable_params"], full["trainable_params"]],
              ["RM update peak RSS (MiB)", _mb(lwp.get("peak_rss_mb")), _mb(fp.get("peak_rss_mb"))],
              ["RM update RSS growth (MiB)", _mb(lwp.get("rss_growth_mb")), _mb(fp.get("rss_growth_mb"))],
              ["RM update CUDA peak (MiB)", _mb(lwp.get("cuda_peak_mb")), _mb(fp.get("cuda_peak_mb"))],
              ["process peak RSS (MiB)", lw["peak_rss_mb"], full["peak_rss_mb"]]]
    ratios = result["ratios"]
    fig7 = [["step time", ratios.get("step_time_r2m_over_rloo", nan)],
            ["peak RSS, steps (sampled)", ratios.get("peak_rss_steps_r2m_over_rloo", nan)],
            ["peak RSS, process lifetime (VmHWM)", ratios.get("peak_rss_r2m_over_rloo", nan)],
            ["CUDA max allocated", ratios.get("cuda_max_allocated_r2m_over_rloo", nan)]]
    fig7b = [["RM update time", ratios.get("rm_update_time_full_over_lightweight", nan)],
             ["RM update peak RSS", ratios.get("rm_update_peak_rss_full_over_lightweight", nan)],
             ["CUDA max allocated", ratios.get("cuda_max_allocated_full_over_lightweight", nan)]]
    load = result.get("load_avg_1min")
    where = (f"{result.get('device', '?')}, {result.get('threads', '?')} torch thread(s), "
             f"{result.get('measured_steps', result['steps'])} measured steps after a warm-up"
             + (f"; load average {load['start']:.1f} -> {load['end']:.1f} on {result.get('cpu_count')} CPUs"
                if load else ""))
    return (f"(a) RLOO vs RLOO+R2M: median wall time per step and peak memory per phase ({where}; "
            f"\"-\": not run or no CUDA)\n\n" + format_table(headers, rows, markdown) +
            "\n\n(b) RM update: lightweight (R2M) vs full\n\n" +
            format_table(["", "lightweight", "full"], rows_b, markdown) +
            "\n\nR2M / vanilla RLOO (Figure 7a)\n\n" + format_table(["", "ratio"], fig7, markdown) +
            "\n\nfull / lightweight RM update (Figure 7b)\n\n" + format_table(["", "ratio"], fig7b, markdown))


def run_bench(cfg: Config, what: str, steps: int, out: str) -> int:
    if what != "cost":
        raise ValueError(f"bench: unknown benchmark {what!r}")
    result = bench_cost(cfg, steps)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(result, indent=2))
    print(format_cost(result))
    print(f"\nwritten to {path}")
    return 0
