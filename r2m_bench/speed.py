"""``r2m bench speed``: r2m's RL step against TRL's ``RLOOTrainer`` on identical work.

Two sizes: **A**, the world's own models (the config's SFT policy and proxy RM), and **B**, a random Llama
policy and RM of width ``b_hidden`` x ``b_layers`` whose every answer runs the full ``b_tokens`` (its
lm_head cannot pick eos, see :func:`no_eos_lm`). Work per step, the same in both frameworks: ``prompts`` x
``k`` samples, ``epochs`` x ``minibatches`` optimiser steps, KL coefficient ``beta``, one thread count.

Each arm (a framework at a size) runs in its own spawned process (its peak RSS is its own) for one
warm-up step and ``steps`` timed steps; arms alternate in ``rounds`` (the order flips every round), so
drift in the machine's load falls on both. Reported per arm: median/min/max seconds per step, peak RSS,
r2m's per-phase split; per size: the FLOP floor (the step's GEMM FLOPs at a measured fp32 GEMM rate).
P4: r2m's step time at size B as prompts x K doubles and as the response length doubles (linear: 2.0), with
the control of glibc's default allocator (``run.malloc=system``), under which it was not linear.
R2M's overhead: RLOO+R2M over RLOO, step time and peak RSS, at A and B.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from r2m.config.enums import Malloc, OldLogprobs
from r2m.config.models import ArchConfig
from r2m.config.parsing import replace_path
from r2m.config.root import Config
from r2m.errors import ConfigError
from r2m.fileio import atomic_write_text
from r2m.models.loading import build_world_lm, save_model
from r2m.recipes.pipeline import resolve_inputs
from r2m.recipes.rl.build import build_run
from r2m.recipes.rl.step import train_step
from r2m.runtime.host import configure_host
from r2m.world.tokenizer import build_tokenizer
from r2m_bench.child import in_child
from r2m_bench.old_logprobs import agreement
from r2m_bench.profiling import lifetime_peak_rss_mb
from r2m_bench.speed_report import format_speed, write_readme_section
from r2m_bench.speed_trl import trl_arm, trl_available, trl_version


@dataclass(frozen=True)
class SpeedSpec:
    """What one ``r2m bench speed`` measures."""

    prompts: int = 64
    """Prompts per step."""
    k: int = 4
    """Samples per prompt."""
    epochs: int = 2
    """Optimisation epochs over each rollout batch."""
    minibatches: int = 2
    """Optimiser steps per epoch."""
    beta: float = 0.02
    """KL coefficient."""
    steps: int = 4
    """Timed steps per arm and round (after one warm-up step)."""
    rounds: int = 2
    """Rounds of all arms, the order flipped every round."""
    b_hidden: int = 512
    """Size B: width of the random Llama policy and RM."""
    b_layers: int = 4
    """Size B: their layers."""
    b_heads: int = 8
    """Size B: their attention heads."""
    b_intermediate: int = 1376
    """Size B: their MLP width."""
    b_tokens: int = 64
    """Size B: tokens per answer (every answer runs to it)."""
    p4_steps: int = 2
    """P4: timed steps per doubled configuration (one round, r2m only)."""
    gemm_n: int = 2048
    """Side of the square fp32 matrices of the GEMM-rate measurement."""
    trl: bool = True
    """Run TRL's RLOOTrainer arms (needs ``pip install trl``)."""
    spawn: bool = True
    """Each arm in its own spawned process (its own peak RSS); False: all in this process (smoke only)."""


PRESETS = {
    "paper": SpeedSpec(),
    # Seconds on the tiny world: what tests and CI run (its numbers mean nothing).
    "smoke": SpeedSpec(prompts=4, k=2, steps=1, rounds=1, b_hidden=32, b_layers=1, b_heads=2, b_intermediate=64,
                       b_tokens=6, p4_steps=1, gemm_n=128, spawn=False),
}
# The arms of each size: r2m as configured (old log-probs recomputed), r2m with π_old's log-probs from the
# generation pass, r2m with R2M on (RLOO+R2M), and TRL.
R2M_ARMS = {"r2m": {}, "r2m_generation": {"rl__old_logprobs": OldLogprobs.GENERATION},
            "r2m_r2m": {"reward__r2m__enabled": True}}


# ---------------------------------------------------------------------------------------------
# The two sizes
# ---------------------------------------------------------------------------------------------


def work_cfg(cfg: Config, spec: SpeedSpec, name: str) -> Config:
    """``cfg`` doing the benchmark's work per step (RLOO, the spec's batch, epochs, minibatches, beta)."""
    return replace_path(cfg, rl__algorithm="rloo", rl__prompts_per_step=spec.prompts, rl__k=spec.k,
                        rl__epochs=spec.epochs, rl__minibatches=spec.minibatches, rl__beta=spec.beta,
                        rl__micro_batch_size=0, rl__rollout_batch_size=0, rl__kl_adaptive=False,
                        run__log_with=[], run__progress=False, run__name=name)


def no_eos_lm(arch: ArchConfig, variant: str, seed: int) -> nn.Module:
    """A random Llama whose answers never stop early (size B's policy: every answer runs the full length).

    lm_head's eos row is zero and the other rows come in pairs (w, -w) scaled to logits of std ~100, so
    some token's logit is >= 0 and, but for a ~1e-11 chance, tens of nats above eos. The FLOPs are those
    of any model of this size.
    """
    tok = build_tokenizer(variant)
    model = build_world_lm(arch, tok, seed)
    w = model.lm_head.weight  # (V, D)
    rows = [i for i in range(w.shape[0]) if i != tok.eos_token_id]
    with torch.no_grad():
        w.mul_(100.0 / (w.std() * arch.hidden_size**0.5))  # |h| ~ sqrt(D) after the final RMSNorm
        for a, b in zip(rows[0::2], rows[1::2]):
            w[b] = -w[a]
        w[tok.eos_token_id] = 0.0
    return model


def size_b_cfg(cfg: Config, spec: SpeedSpec, root: Path, tokens: Optional[int] = None) -> Config:
    """Size B: random policy and RM written under ``root`` (once), the world's prompts, ``tokens`` per answer."""
    tokens = tokens or spec.b_tokens
    arch = ArchConfig(hidden_size=spec.b_hidden, num_layers=spec.b_layers, num_heads=spec.b_heads,
                      intermediate_size=spec.b_intermediate, max_positions=max(256, 4 * spec.b_tokens))
    dirs = {}
    for variant, seed in (("policy", 0), ("rm", 1)):
        d = root / f"size-b-{variant}-{spec.b_hidden}x{spec.b_layers}"
        if not (d / "config.json").exists():
            save_model(no_eos_lm(arch, variant, seed) if variant == "policy" else
                       build_world_lm(arch, build_tokenizer(variant), seed), build_tokenizer(variant), d)
        dirs[variant] = str(d)
    inputs = resolve_inputs(cfg)  # the world's data files (built once)
    data = {f"data__{f}": getattr(inputs, f) for f in ("prompts", "eval_prompts", "sft", "pref_train", "pref_eval",
                                                         "pref_policy")}
    return replace_path(cfg, policy__path=dirs["policy"], reward__path=dirs["rm"], reward__source="model",
                        rl__max_new_tokens=tokens, data__max_prompt_tokens=64, reward__max_length=256, **data)


# ---------------------------------------------------------------------------------------------
# Arms (each in a child process)
# ---------------------------------------------------------------------------------------------


def linear_params(model: nn.Module) -> int:
    """Weights of the model's Linear layers: what its GEMMs multiply by (embedding lookups are no GEMM)."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))


def r2m_arm(cfg: Config, steps: int) -> dict:
    """Child: one warm-up and ``steps`` timed r2m RL steps; seconds per step and per phase, peak RSS."""
    run = build_run(replace_path(cfg, rl__steps=steps + 1))
    tokens: list[int] = []
    rollout = run.maker.rollout

    def counting_rollout(*args, **kwargs):
        out = rollout(*args, **kwargs)
        tokens.append(int(out.gen.attention_mask.sum()))  # prompt + response tokens of the step
        return out

    run.maker.rollout = counting_rollout
    rows = [train_step(run, s) for s in range(1, steps + 2)][1:]
    phases = {k[len("time/"):]: statistics.median(r[k] for r in rows) for k in rows[0] if k.startswith("time/")}
    rm = run.reward_fn.reward_model
    return {"step_s": [r["time/step"] for r in rows], "phases": phases, "peak_rss_mb": lifetime_peak_rss_mb(),
            "response_length": statistics.mean(r["response/length"] for r in rows),
            "tokens_per_step": statistics.mean(tokens[1:]), "threads": torch.get_num_threads(),
            "policy_linear_params": linear_params(run.models.unwrapped_policy()),
            "rm_linear_params": linear_params(rm.model) if rm is not None else 0}


# ---------------------------------------------------------------------------------------------
# The FLOP floor
# ---------------------------------------------------------------------------------------------


def gemm_rate_gflops(n: int, reps: int = 10) -> float:
    """The best fp32 GEMM rate (n x n @ n x n, 2n³ FLOPs) of ``reps`` at this process's thread count, in GFLOP/s.

    The best, not the median: a floor is what the machine can do, and a transient slowdown (another tenant,
    a frequency dip) only lowers a rate. A median of 5 once read 124 GFLOP/s against 180 the run before,
    which put both frameworks below their "floor" (0.86x)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):  # warm-up
        a @ b
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / min(times) / 1e9


def step_flops(policy_params: int, rm_params: int, tokens: float, epochs: int) -> dict[str, float]:
    """GEMM FLOPs of one step by phase: 2·N per token a forward pass, 6·N per token forward + backward.

    Generation (KV cache) passes each token once; π_old and the reference are two forward passes; the
    reward one RM pass (counted over the policy's tokens); the update ``epochs`` forward+backward passes.
    Attention's own FLOPs (4·L·S²·D per sequence) are left out: under 3% at these lengths.
    """
    fwd = 2.0 * policy_params * tokens
    return {"generate": fwd, "logprobs": 2 * fwd, "reward": 2.0 * rm_params * tokens,
            "update": 3 * fwd * epochs}


def floor(arm: dict, epochs: int, gflops: float) -> dict:
    """The FLOP floor of an r2m arm's step: seconds per phase and in all at ``gflops``."""
    flops = step_flops(arm["policy_linear_params"], arm["rm_linear_params"], arm["tokens_per_step"], epochs)
    phases = {p: f / (gflops * 1e9) for p, f in flops.items()}
    return {"tflop_per_step": sum(flops.values()) / 1e12, "phases_s": phases, "step_s": sum(phases.values())}


# ---------------------------------------------------------------------------------------------
# Alternating arms, and the report
# ---------------------------------------------------------------------------------------------


def summarize(parts: list[dict]) -> dict:
    """One arm over its rounds: pooled step times (median/min/max), the max peak RSS, median phases."""
    steps = [s for p in parts for s in p["step_s"]]
    out = {**parts[-1], "step_s": steps, "median_s": statistics.median(steps), "min_s": min(steps),
           "max_s": max(steps), "peak_rss_mb": max(p["peak_rss_mb"] for p in parts)}
    if "phases" in parts[0]:
        out["phases"] = {k: statistics.median(p["phases"][k] for p in parts) for k in parts[0]["phases"]}
    return out


def arms_of(cfg: Config, spec: SpeedSpec, size: str) -> dict[str, tuple[Callable, tuple]]:
    """name -> (child function, its arguments) for one size."""
    arms = {name: (r2m_arm, (replace_path(cfg, **extra, run__name=f"{cfg.run.name}-{size}-{name}"), spec.steps))
            for name, extra in R2M_ARMS.items()}
    if spec.trl and trl_available():
        arms["trl"] = (trl_arm, (cfg, spec, spec.steps))
    return arms


def run_size(cfg: Config, spec: SpeedSpec, size: str) -> dict:
    """Every arm of one size, alternating over ``spec.rounds`` rounds."""
    arms = arms_of(cfg, spec, size)
    parts: dict[str, list[dict]] = {name: [] for name in arms}
    for r in range(spec.rounds):
        for name in (list(arms) if r % 2 == 0 else list(arms)[::-1]):
            fn, args = arms[name]
            parts[name].append(in_child(spec.spawn, fn, *args))
    return {name: summarize(p) for name, p in parts.items()}


def _ratio(a: Optional[dict], b: Optional[dict], key: str = "median_s") -> Optional[float]:
    return a[key] / b[key] if a is not None and b is not None and b[key] else None


def floor_multiple(arm: Optional[dict], fl: dict) -> Optional[float]:
    return arm["median_s"] / fl["step_s"] if arm is not None else None


def p4_cases(cfg: Config, spec: SpeedSpec, root: Path) -> dict[str, Config]:
    """P4's configurations at size B: the base, prompts x K doubled, the response length doubled."""
    base = size_b_cfg(cfg, spec, root)
    return {"base": base, "prompts_x2": replace_path(base, rl__prompts_per_step=2 * spec.prompts),
            "tokens_x2": size_b_cfg(cfg, spec, root, tokens=2 * spec.b_tokens)}


def p4(cfg: Config, spec: SpeedSpec, root: Path) -> dict:
    """P4 at size B (r2m only): step time as prompts x K doubles and as the response length doubles.

    The control ``system_malloc``: base and prompts x K doubled under ``run.malloc=system`` (glibc's
    defaults), which read 2.9x; the instrument must see that non-linearity."""
    cases = p4_cases(cfg, spec, root)
    control = {f"{name}_system_malloc": replace_path(cases[name], run__malloc=Malloc.SYSTEM)
               for name in ("base", "prompts_x2")}
    out = {name: summarize([in_child(spec.spawn, r2m_arm, replace_path(c, run__name=f"{cfg.run.name}-p4-{name}"),
                                     spec.p4_steps)]) for name, c in {**cases, **control}.items()}
    return {"step_s": {n: o["median_s"] for n, o in out.items()},
            "ratio_prompts_x2": _ratio(out["prompts_x2"], out["base"]),
            "ratio_tokens_x2": _ratio(out["tokens_x2"], out["base"]),
            "ratio_prompts_x2_system_malloc": _ratio(out["prompts_x2_system_malloc"], out["base_system_malloc"]),
            "response_length": {n: o["response_length"] for n, o in out.items()},
            "phases": {n: o.get("phases") for n, o in out.items()},
            "peak_rss_mb": {n: o["peak_rss_mb"] for n, o in out.items()}}


def _load() -> Optional[float]:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _environment(gemm: dict[str, float], spec: SpeedSpec, cfg: Config) -> dict:
    """``gemm``: the GEMM rates measured (GFLOP/s, by when); the floor used their best."""
    return {"gemm_gflops": max(gemm.values()), "gemm_gflops_at": gemm, "gemm_n": spec.gemm_n,
            "threads": torch.get_num_threads(),
            "malloc": cfg.run.malloc.value,
            "torch": torch.__version__, "trl": trl_version(), "cpu_count": os.cpu_count(),
            "machine": platform.platform(), "python": platform.python_version()}


def bench_speed(cfg: Config, preset: str, out: str) -> dict:
    """The whole benchmark; writes ``out`` (JSON) and its section of ``README.md`` beside it."""
    if preset not in PRESETS:
        raise ConfigError(f"bench speed --preset: expected one of {sorted(PRESETS)}, got {preset!r}")
    spec = PRESETS[preset]
    configure_host(cfg.run)  # the GEMM rate at the arms' host settings (each arm applies them itself)
    load_start = _load()
    root = Path(cfg.run.root) / "bench-speed"
    a_cfg = work_cfg(cfg, spec, "speed")
    resolve_inputs(a_cfg)  # the world's artifacts, built once outside the timed arms
    b_cfg = size_b_cfg(a_cfg, spec, root)
    gemm = {"start": gemm_rate_gflops(spec.gemm_n)}
    sizes = {"A": run_size(a_cfg, spec, "A"), "B": run_size(b_cfg, spec, "B")}
    gemm["after_arms"] = gemm_rate_gflops(spec.gemm_n)
    gflops = max(gemm.values())  # the floor: the best rate the machine showed, before or after the arms
    floors = {s: floor(arms["r2m"], spec.epochs, gflops) for s, arms in sizes.items()}
    result = {
        "ratio_vs_trl": {s: _ratio(arms["r2m"], arms.get("trl")) for s, arms in sizes.items()},
        "ratio_vs_trl_generation": {s: _ratio(arms["r2m_generation"], arms.get("trl")) for s, arms in sizes.items()},
        "floor_multiple_B": floor_multiple(sizes["B"].get("r2m"), floors["B"]),
        "floor_multiple_B_generation": floor_multiple(sizes["B"].get("r2m_generation"), floors["B"]),
        "floor_multiple_B_trl": floor_multiple(sizes["B"].get("trl"), floors["B"]),
        "r2m_overhead_B": _ratio(sizes["B"]["r2m_r2m"], sizes["B"]["r2m"]),
        "r2m_overhead_A": _ratio(sizes["A"]["r2m_r2m"], sizes["A"]["r2m"]),
        "r2m_memory_ratio": {s: _ratio(arms["r2m_r2m"], arms["r2m"], "peak_rss_mb") for s, arms in sizes.items()},
        "p4": p4(a_cfg, spec, root),
        # Generation-time against recomputed π_old (no timing: exact on any machine), with R2M's h.
        "old_logprobs_agreement": {"A": agreement(replace_path(a_cfg, reward__r2m__enabled=True)),
                                   "B": agreement(replace_path(b_cfg, reward__r2m__enabled=True))},
        "sizes": sizes, "floor": floors, "preset": preset, "spec": dataclasses.asdict(spec),
        "environment": _environment(gemm, spec, cfg), "load_avg": {"start": load_start, "end": _load()},
    }
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    write_readme_section(Path(out).parent / "README.md", result, out)
    return result


def run_bench_speed(cfg: Config, preset: str, out: Optional[str]) -> int:
    """``r2m bench speed``: the paper preset writes benchmarks/speed.json; smoke goes under run.root."""
    default = "benchmarks/speed.json" if preset == "paper" else str(Path(cfg.run.root) / "bench-smoke" / "speed.json")
    path = out or default
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    print(format_speed(bench_speed(cfg, preset, path)))
    print(f"written: {path} and its section of {Path(path).parent / 'README.md'}")
    return 0
