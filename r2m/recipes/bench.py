"""``r2m bench``: what R2M costs (R2M paper Figure 7), and the methods-by-seeds matrix.

``r2m bench cost``:

(a) RLOO against RLOO+R2M on the same run: wall time and peak memory per phase (generation,
    log-probs, reward annotation, policy update, RM update) and per step.
(b) R2M's lightweight RM update (fusion + head on cached reward-token embeddings) against a full
    RM update (backbone unfrozen, embeddings recomputed with gradients), on the same batches.

Each arm runs in its own spawned process, so its memory belongs to that arm alone. Phases are
measured by :class:`r2m.runtime.profiling.PhaseProfiler`: wall time (CUDA synchronised at phase boundaries),
peak CPU RSS sampled every 5 ms, and CUDA max-allocated (reset at each phase start) where CUDA is in
use. Times are medians over steps after a warm-up step; memory is the maximum over all steps.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import statistics
import time
from pathlib import Path
from typing import Callable

from r2m.config import Config, replace_path
from r2m.fileio import atomic_savefig, atomic_write_text, read_json_or_none
from r2m.config import load_config
from r2m.core.losses import grebt_terms
from r2m.recipes.pipeline import ensure_world_policy, resolve_inputs
from r2m.recipes.rl.run import RLRun, run_rl
from r2m.recipes.ser import run_ser
from r2m.reports.tables import format_table
from r2m.runtime.profiling import PhaseProfiler, lifetime_peak_rss_mb, merge_peaks, profile_method, rss_reader
from r2m.runtime.runlog import peak, read_metrics
from r2m.utils import quiet_transformers

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

    The maker's phases (generate, logprobs, reward, ...) go through ``run.maker.timer``, which is
    replaced by a profiler; the policy and RM updates are profiled by wrapping the updaters' ``update``
    methods, so the training loop itself is unchanged.
    """
    run = RLRun(replace_path(cfg, rl__steps=steps, run__log_with=[], run__progress=False))
    prof = PhaseProfiler(RSS_INTERVAL_S)
    run.maker.timer = prof
    profile_method(run.updater, "update", prof, "update")
    profile_method(getattr(run, "rm_updater", None), "update", prof, "rm_update")
    rows, laps, peaks = [], [], []
    try:
        for s in range(1, steps + 1):
            with prof("step"):
                rows.append(run.step(s))  # run.step pops the timer's totals itself
            laps.append(prof.pop_laps())
            peaks.append(prof.pop_memory())
    finally:
        prof.close()
    phases = _phase_summary(laps, merge_peaks(peaks))
    out = {**{f"time/{p}": v["time_s"] for p, v in phases.items()}, "phases": phases, **_process_peaks(phases),
           **_arm_env(run.device)}
    if any("r2m/hidden_mb" in r for r in rows):
        out["r2m/hidden_mb"] = rows[-1]["r2m/hidden_mb"]
    return out


def _rm_update_arm(cfg: Config, steps: int, full: bool) -> dict:
    """Child process: R2M's RM update alone, lightweight or full, on fresh rollouts (policy not trained)."""
    import torch

    run = RLRun(replace_path(cfg, rl__steps=steps, run__log_with=[], run__progress=False))
    updater = run.rm_updater
    model = updater.model
    if full:
        model.rm.model.requires_grad_(True)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.reward.r2m.lr)
    prof = PhaseProfiler(RSS_INTERVAL_S)
    laps, peaks = [], []
    try:
        for step in range(1, steps + 1):
            idx = run.sampler.next(cfg.rl.prompts_per_step)
            exp = run.maker.make([run.train.texts[i] for i in idx], [run.train.ids[i] for i in idx], step=step - 1)
            with prof("rm_update"):
                if full:
                    # Recompute H_last through the unfrozen backbone so its gradient flows too.
                    enc = model.rm.tokenize(exp.prompts, exp.responses)
                    rte = model.rm.embed(enc["input_ids"].to(run.device), enc["attention_mask"].to(run.device)).float()
                    r = model.score_embeddings(rte, exp.policy_hidden, exp.policy_mask,
                                               run.reward_fn.omega(exp.step)).view(exp.n, exp.k)
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
            **_process_peaks(phases), **_arm_env(run.device)}


def _child(fn: Callable, args: tuple, queue) -> None:
    quiet_transformers()
    try:
        queue.put(("ok", fn(*args)))
    except BaseException as e:  # report, do not hang the parent
        queue.put(("error", repr(e)))


def _in_process(fn: Callable, *args) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(fn, args, queue))
    proc.start()
    status, value = queue.get()
    proc.join()
    if status != "ok":
        raise RuntimeError(f"benchmark arm {fn.__name__} failed: {value}")
    return value


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
    load_start = _load_avg()
    vanilla_cfg = replace_path(cfg, reward__r2m__enabled=False, run__name=f"{cfg.run.name}-vanilla")
    r2m_cfg = replace_path(cfg, reward__r2m__enabled=True, run__name=f"{cfg.run.name}-r2m")
    rl = {"rloo": _in_process(_rl_arm, vanilla_cfg, steps), "rloo_r2m": _in_process(_rl_arm, r2m_cfg, steps)}
    rm = {"lightweight": _in_process(_rm_update_arm, r2m_cfg, steps, False),
          "full": _in_process(_rm_update_arm, r2m_cfg, steps, True)}
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


# ---------------------------------------------------------------------------------------------
# ``r2m bench run``: the methods-by-seeds matrix in the world (R2M Tables 1, 2, 4; Figure 7)
# ---------------------------------------------------------------------------------------------

# Each method is a set of overrides on the world config.
VARIANTS: dict[str, list[str]] = {
    "": [],
    "+R2M w/o Train": ["reward.r2m.enabled=true", "reward.r2m.ablation=frozen"],
    "+Pretrained RM": ["reward.baseline=pretrained_rm"],
    "+Iterative RM-head": ["reward.baseline=iterative_head"],
    "+R2M": ["reward.r2m.enabled=true"],
}
ABLATIONS: dict[str, list[str]] = {
    "RLOO+R2M w/ Noise": ["rl.algorithm=rloo", "reward.r2m.enabled=true", "reward.r2m.ablation=noise"],
    "RLOO+R2M w/o BT": ["rl.algorithm=rloo", "reward.r2m.enabled=true", "reward.r2m.ablation=no_bt"],
    "RLOO+R2M w/o GRE": ["rl.algorithm=rloo", "reward.r2m.enabled=true", "reward.r2m.ablation=no_gre"],
    "RLOO+R2M (zero init)": ["rl.algorithm=rloo", "reward.r2m.enabled=true", "reward.r2m.init=zero"],
}
ALGORITHMS = {"RLOO": "rloo", "GRPO": "grpo", "ReMax": "remax", "REINFORCE++": "reinforce_pp"}

PRESETS: dict[str, dict] = {
    # Minutes, for CI: the tiny world, every kind of row, two seeds.
    "smoke": {"seeds": 2, "algorithms": ["RLOO", "GRPO"], "variants": ["", "+R2M", "+Iterative RM-head",
                                                                        "+Pretrained RM"],
              "ablations": ["RLOO+R2M w/ Noise"],
              "overrides": ["rl.steps=3", "rl.eval_every=3", "rl.prompts_per_step=4", "rl.k=2",
                            "world.n_sft=1500", "world.n_pref_train=400", "world.n_pref_eval=100",
                            "world.n_rl_prompts=200", "world.n_eval_prompts=16", "world.n_pref_policy=100",
                            "policy.arch.hidden_size=32", "policy.arch.num_layers=1", "policy.arch.num_heads=2",
                            "policy.arch.intermediate_size=64", "reward.arch.hidden_size=24",
                            "reward.arch.num_layers=1", "reward.arch.num_heads=2", "reward.arch.intermediate_size=48",
                            "sft.batch_size=32", "rm.batch_size=32", "rm.epochs=1", "eval.samples_per_prompt=1"],
              # SER's RM loop on the same tiny world (one loop), and the cost arms for 3 steps (1 warm-up).
              # tau_delta is lowered so that the weak seed RM reaches Status 2 and one loop really runs.
              "ser": {"seeds": 1, "overrides": ["ser.max_loops=1", "ser.tau_delta=0.001"]},
              "cost_steps": 3},
    # The full matrix on 2 CPU cores in about 2 hours.
    "paper": {"seeds": 3, "algorithms": list(ALGORITHMS), "variants": list(VARIANTS), "ablations": list(ABLATIONS),
              "overrides": ["rl.steps=150", "rl.eval_every=25"],
              # SER with every default (the world's 5000 pairs, 3 loops), RM part only; cost as benchmarks/cost.json.
              "ser": {"seeds": 3, "overrides": []},
              "cost_steps": 12},
}

COLUMNS = [("gold", "eval/gold"), ("win vs SFT", "eval/win_rate_vs_sft"), ("LC win", "eval/lc_win_rate_vs_sft"),
           ("length", "eval/length"), ("KL", "eval/kl"), ("proxy (RM)", "rm"), ("proxy-gold", "gap"),
           ("peak gold", "peak_gold"), ("peak step", "peak_step")]


def matrix(preset: dict) -> dict[str, list[str]]:
    """Method name -> overrides, in table order."""
    rows = {f"{a}{v}" if v else a: [f"rl.algorithm={ALGORITHMS[a]}", *VARIANTS[v]]
            for a in preset["algorithms"] for v in preset["variants"]}
    rows.update({name: ABLATIONS[name] for name in preset["ablations"]})
    return rows


def _run_summary(res) -> dict[str, float]:
    f = res.final_eval
    evals = [r for r in res.history if "eval/gold" in r]
    p = peak(evals, "eval/gold")
    rm = f.get("eval/rm_vanilla", f.get("eval/proxy", float("nan")))
    out = {k: f[k] for _, k in COLUMNS if k in f}
    out.update({"rm": rm, "gap": rm - f["eval/gold"], "peak_gold": p.value, "peak_step": float(p.step),
                "time_per_step": statistics.median(r["time/step"] for r in res.history if "time/step" in r)})
    out.update({k: v for k, v in res.rm_accuracy.items()})
    return out


def _mean_std(values: list[float]) -> str:
    import math

    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return "-"
    mean = sum(vals) / len(vals)
    std = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{mean:.3f} ± {std:.3f}"


def run_matrix(cfg: Config, preset_name: str, out_dir: Path) -> dict:
    """Every (method, seed) run, each skipped when its result.json exists (the matrix resumes)."""
    preset = PRESETS[preset_name]
    results: dict[str, list[dict]] = {}
    base = [*preset["overrides"], f"run.root={cfg.run.root}", "run.log_with=[]", "run.progress=false"]
    for method, overrides in matrix(preset).items():
        for seed in range(preset["seeds"]):
            name = _run_name(preset_name, method, seed)
            done = Path(cfg.run.root) / name / "result.json"
            if read_json_or_none(done) is None:
                run_cfg = load_config(None, [*base, *overrides, f"run.seed={seed}", f"run.name={name}"])
                summary = _run_summary(run_rl(run_cfg))
                atomic_write_text(done, json.dumps(summary))
                print(f"[bench] {method} seed {seed}: gold {summary['eval/gold']:.3f}", flush=True)
            results.setdefault(method, []).append(read_json_or_none(done))
    return results


def _run_name(preset: str, method: str, seed: int) -> str:
    return f"bench-{preset}-{_slug(method)}-s{seed}"


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").lower()


def matrix_tables(results: dict[str, list[dict]], sft_gold: float) -> str:
    headers = ["method", *[c for c, _ in COLUMNS], "s/step"]
    rows = [["SFT", f"{sft_gold:.3f}", "0.500", "0.500", "-", "0.000", "-", "-", "-", "-", "-"]]
    for method, runs in results.items():
        rows.append([method, *[_mean_std([r.get(k, float("nan")) for r in runs]) for _, k in COLUMNS],
                     _mean_std([r["time_per_step"] for r in runs])])
    main = format_table(headers, rows, markdown=True)
    acc_rows = [[m, *[_mean_std([r.get(k, float("nan")) for r in runs]) for k in
                      ("rm_acc/vanilla", "rm_acc/r2m_before", "rm_acc/r2m_after", "rm_acc/r2m_after_gold")]]
                for m, runs in results.items() if any("rm_acc/r2m_after" in r for r in runs)]
    acc = format_table(["method", "vanilla RM", "R2M before", "R2M after", "R2M after (vs gold)"], acc_rows,
                       markdown=True) if acc_rows else "(no R2M run)"
    return main + "\n\n### RM accuracy with and without policy feedback (R2M Table 3)\n\n" + acc


def _preset_base(cfg: Config, preset_name: str) -> list[str]:
    return [*PRESETS[preset_name]["overrides"], f"run.root={cfg.run.root}", "run.log_with=[]", "run.progress=false"]


def _ser_summary(res) -> dict:
    """What the report needs from one :class:`r2m.recipes.ser.SERResult`: Table 1's rows and the loops."""
    headers, rows = res.table
    return {"table": {"headers": list(headers), "rows": [list(r) for r in rows]},
            "loops": [{"loop": h["loop"], "status": h["status"], "pairs": int(h["ser/selected"]),
                       "frac": h["ser/selected_frac"], "pseudo_acc": h.get("ser/pseudo_acc", float("nan")),
                       "val_acc": h["ser/val_acc"], "test_acc": h["ser/test_acc"]} for h in res.history],
            "stop": res.stop}


def run_ser_bench(cfg: Config, preset_name: str) -> list[dict]:
    """SER Table 1 per seed (the RM loop only, ``ser.ppo=false``), each skipped when its result.json exists."""
    ser = PRESETS[preset_name]["ser"]
    results = []
    for seed in range(ser["seeds"]):
        name = f"bench-{preset_name}-ser-s{seed}"
        done = Path(cfg.run.root) / name / "result.json"
        if read_json_or_none(done) is None:
            t0 = time.perf_counter()
            run_cfg = load_config(None, [*_preset_base(cfg, preset_name), *ser["overrides"], "ser.ppo=false",
                                         f"run.seed={seed}", f"run.name={name}"])
            summary = {**_ser_summary(run_ser(run_cfg)), "wall_s": time.perf_counter() - t0}
            atomic_write_text(done, json.dumps(summary))
            print(f"[bench] SER seed {seed}: test acc {summary['table']['rows'][1][3]:.3f}", flush=True)
        results.append(read_json_or_none(done))
    return results


def ser_tables(results: list[dict]) -> str:
    """SER Table 1 (mean ± std over seeds) and the pairs each loop selected, per seed (Markdown)."""
    headers = results[0]["table"]["headers"]
    rows = []
    for i, first in enumerate(results[0]["table"]["rows"]):
        name = "SER (last loop)" if i == 1 else first[0]
        cells = [r["table"]["rows"][i] for r in results]
        counts = sorted({str(c[1]) for c in cells}), sorted({str(c[2]) for c in cells})
        rows.append([name, "/".join(counts[0]), "/".join(counts[1]),
                     *[_mean_std([c[j] for c in cells]) for j in range(3, len(headers))]])
    main = format_table(headers, rows, markdown=True)
    n_loops = max(len(r["loops"]) for r in results)
    loop_rows = []
    for seed, r in enumerate(results):
        cells = [f"{lp['pairs']} ({100 * lp['frac']:.0f}%, {lp['status']})" for lp in r["loops"]]
        stop = r.get("stop") or {}
        loop_rows.append([seed, *cells, *["-"] * (n_loops - len(cells)),
                          f"{stop.get('reason', '?')} at loop {stop.get('loop', '?')}"])
    loops = format_table(["seed", *[f"loop {k}" for k in range(n_loops)], "ended"], loop_rows, markdown=True)
    return main + "\n\nPairs trained per loop (share of the RM data, learning status):\n\n" + loops


def run_cost_bench(cfg: Config, preset_name: str) -> dict:
    """``bench_cost`` on the preset's world, skipped when ``bench-<preset>-cost/result.json`` exists."""
    name = f"bench-{preset_name}-cost"
    done = Path(cfg.run.root) / name / "result.json"
    if read_json_or_none(done) is None:
        run_cfg = load_config(None, [*_preset_base(cfg, preset_name), f"run.name={name}"])
        result = bench_cost(run_cfg, PRESETS[preset_name]["cost_steps"])
        atomic_write_text(done, json.dumps(result, indent=1))
        print(f"[bench] cost: R2M/RLOO step time {result['ratios']['step_time_r2m_over_rloo']:.3f}", flush=True)
    return read_json_or_none(done)


def _plot_groups(methods: list[str]) -> list[tuple[str, list[str]]]:
    """One panel row per algorithm (its variants), and one for the ablations next to RLOO and RLOO+R2M."""
    groups = []
    for algo in ALGORITHMS:
        row = [m for m in methods if m == algo or (m.startswith(algo + "+") and m not in ABLATIONS)]
        if row:
            groups.append((algo, row))
    ablations = [m for m in methods if m in ABLATIONS]
    if ablations:
        groups.append(("RLOO+R2M ablations", [m for m in ("RLOO", "RLOO+R2M") if m in methods] + ablations))
    return groups


def _mean_eval_curves(cfg: Config, preset_name: str, method: str, seeds: int) -> dict[str, list[float]]:
    """A method's evaluation curves (step, gold, KL, vanilla proxy), each the mean over its seeds' runs."""
    runs = []
    for seed in range(seeds):
        path = Path(cfg.run.root) / _run_name(preset_name, method, seed) / "metrics.jsonl"
        if path.exists():
            runs.append([r for r in read_metrics(path) if "eval/gold" in r])
    n = min(len(rows) for rows in runs)
    keys = {"step": lambda r: r["step"], "gold": lambda r: r["eval/gold"], "kl": lambda r: r["eval/kl"],
            "proxy": lambda r: r.get("eval/rm_vanilla", r.get("eval/proxy", float("nan")))}
    return {name: [sum(get(rows[i]) for rows in runs) / len(runs) for i in range(n)] for name, get in keys.items()}


def bench_plots(cfg: Config, preset_name: str, results: dict, out_dir: Path) -> list[Path]:
    """Per algorithm: gold and vanilla-proxy curves of each method, and gold against KL (Gao et al.'s
    over-optimisation curve); every curve is the mean over seeds."""
    import matplotlib  # heavy: lazy

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # heavy: lazy

    seeds = PRESETS[preset_name]["seeds"]
    groups = _plot_groups(list(results))
    fig, axes = plt.subplots(len(groups), 3, figsize=(17, 3.6 * len(groups)), dpi=90, squeeze=False)
    curves = {m: _mean_eval_curves(cfg, preset_name, m, seeds) for _, methods in groups for m in methods}
    for row, (title, methods) in zip(axes, groups):
        for method in methods:
            c = curves[method]
            line, = row[0].plot(c["step"], c["gold"], marker=".", label=method)
            row[1].plot(c["step"], c["proxy"], marker=".", color=line.get_color())
            row[2].plot(c["kl"], c["gold"], marker=".", color=line.get_color())
        for ax, what, xl in zip(row, ["gold reward", "vanilla proxy RM score", "gold reward vs KL"],
                                ["policy step", "policy step", "KL to the SFT policy"]):
            ax.set_title(f"{title}: {what} (mean of {seeds} seeds)", fontsize=10)
            ax.set_xlabel(xl)
            ax.set_ylabel("reward")
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=8)
    fig.tight_layout()
    path = out_dir / f"bench_{preset_name}_curves.png"
    atomic_savefig(fig, path)
    plt.close(fig)
    return [path]


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 600 else f"{seconds / 60:.0f} min"


def run_bench_matrix(cfg: Config, preset_name: str, out: str) -> int:
    """The matrix, SER Table 1 and the cost arms of ``preset_name`` (each part resumes from its
    result.json files), then the report ``out`` (Markdown), its plots and JSON next to it."""
    import subprocess

    if preset_name not in PRESETS:
        raise ValueError(f"bench preset: expected one of {sorted(PRESETS)}, got {preset_name!r}")

    world_cfg = load_config(None, [*PRESETS[preset_name]["overrides"], f"run.root={cfg.run.root}"])
    ensure_world_policy(world_cfg)
    t0 = time.perf_counter()
    results = run_matrix(cfg, preset_name, Path(out).parent)
    t1 = time.perf_counter()
    ser = run_ser_bench(cfg, preset_name)
    t2 = time.perf_counter()
    cost = run_cost_bench(cfg, preset_name)
    t3 = time.perf_counter()
    first = next(iter(results))

    sft = read_metrics(Path(cfg.run.root) / _run_name(preset_name, first, 0) / "metrics.jsonl")[0]
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    plots = bench_plots(cfg, preset_name, results, out_path.parent)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = "unknown"
    preset = PRESETS[preset_name]
    ser_extra = "".join(f" {o}" for o in preset["ser"]["overrides"])
    text = (f"# Benchmarks: the gold-reward world\n\n"
            f"Made by `r2m bench run --preset {preset_name}` at commit `{commit}`, "
            f"{preset['seeds']} seeds, mean ± std. This invocation took {_duration(t3 - t0)} on this machine "
            f"(matrix {_duration(t1 - t0)}, SER {_duration(t2 - t1)}, cost {_duration(t3 - t2)}; parts already "
            f"done in an earlier invocation are read from their result.json).\n\n"
            f"Columns are measured on the fixed evaluation prompts after the last step; \"proxy (RM)\" is the "
            f"frozen vanilla RM's score on the same samples (comparable across methods), \"peak step\" the "
            f"evaluation step of the highest gold reward (over-optimisation onset).\n\n"
            + matrix_tables(results, sft["eval/gold"]) +
            "\n\n" + "\n".join(f"![{p.stem}]({p.name})" for p in plots) + "\n"
            f"\n## SER Table 1: reward-model accuracy on held-out pairs\n\n"
            f"`r2m ser ser.ppo=false{ser_extra}` ({len(ser)} seed(s)): "
            f"the seed RM (Loop 0), the last self-labelling loop (SER) and BT on every labelled pair of the RM "
            f"part (Full); test = data.pref_eval, \"gold\" orders each pair by the gold reward (docs/SER.md).\n\n"
            + ser_tables(ser) +
            f"\n\n## Cost: R2M vs vanilla RLOO (R2M Figure 7)\n\n`r2m bench cost --steps {preset['cost_steps']}` "
            f"on this preset's world; methods in benchmarks/README.md.\n\n" + format_cost(cost, markdown=True) + "\n")
    atomic_write_text(out_path, text)
    for suffix, obj in (("", results), ("_ser", ser), ("_cost", cost)):
        atomic_write_text(out_path.parent / f"bench_{preset_name}{suffix}.json", json.dumps(obj, indent=1))
    print(text)
    return 0
