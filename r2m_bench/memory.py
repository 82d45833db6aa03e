"""``r2m bench memory``: peak memory per rank and per phase of each paper config at its real shapes.

What is counted: the bytes of live tensors, op by op (:class:`r2m_bench.live_bytes.LiveBytes`), while the
library's own code runs each phase (:mod:`r2m_bench.memory_phases`) on the config's real rows per rank,
real prompt and response lengths, real vocabulary and real model width, in the config's dtypes, with fake
tensors (shapes without data), on the CPU. Depth is the one thing not run at full size.

Depth: every quantity is measured at three depths (policy layers, RM layers) = (2, 2), (3, 2), (2, 3), fitted as
``a + b_p L_p + b_m L_m`` (decoder layers are identical, so each segment of a phase holds a fixed amount per layer
of the model it runs), and evaluated at the real depths. A phase's peak is the largest of its segments' (one
segment per model that runs in it, :meth:`LiveBytes.tag`), each fitted on its own, so a peak that moves from one
model's pass to another's as depth grows is followed. The fit is checked against a fourth depth, measured
(``check_depth``); the errors are in the output. The sampling loop is run for a few tokens at two lengths and
fitted the same way in (depth, tokens): its KV cache grows by a fixed amount per layer and per token.

Per rank: with one GPU, every model, optimiser state and gradient is whole, as measured (the policy in fp32 master
weights under bf16 autocast, the reference and the RM in their configured dtype, as ``build_run`` loads them). With
``gpus`` > 1 the paper configs run FSDP2 (configs/accelerate/fsdp.yaml): the reference, the RM and R2M's fusion are
whole on every rank (as measured); the policy is sharded, which is computed, not measured: fp32 master weights and
AdamW state (12 bytes per parameter) / gpus, plus, while the policy runs, its gathered bf16 root (embeddings, head)
and two decoder layers (the one running and the one prefetched); in the update also the sharded fp32 gradients and
the unsharded bf16 gradients: all of them, accumulated across micro-batches while gradient sync is off (FSDP2
``set_requires_gradient_sync(False)``), or, with ``dist.sync_every_micro_batch``, only those not yet reduce-scattered
(the root's, reduced when the backward ends, one layer's being computed and the previous layer's reduce-scatter
input in ``dist.reduce_dtype``). Not counted anywhere (GPU effects a CPU count cannot see): the CUDA context,
cuBLAS/NCCL workspaces and buffers, flash-attention workspaces, the caching allocator's fragmentation, and vLLM's KV
cache (rl.generator=vllm); :data:`MARGIN` is added for them, separately, where a target is judged.

Host memory: each config's ``host`` entry is the host peak per rank while the run loads
(:mod:`r2m_bench.memory_host`: a formula per loading stage, checked on CPU by loading models with the library's own
calls in fresh processes; ``host_check`` holds that check).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from r2m.config.parsing import load_config
from r2m.config.root import Config
from r2m.config.run import DistConfig
from r2m.errors import ConfigError
from r2m.fileio import atomic_write_text
from r2m.utils import quiet_transformers, torch_dtype
from r2m_bench import memory_host as host
from r2m_bench import memory_phases as ph
from r2m_bench.live_bytes import LiveBytes, clear_memo, fake_mode
from r2m_bench.memory_report import format_memory, write_readme_section

GB, GIB = 1e9, 2.0**30
PHASES = ("generation", "rollout_logprobs", "reference", "rm_scoring", "r2m_annotation", "policy_micro_step",
          "r2m_update", "table3", "evaluation", "monitor")
"""Phases in step order (``evaluation`` includes its sampling loop, measured as ``generation``; ``monitor`` is the
over-optimisation monitor's passes at each evaluation)."""
POLICY_PHASES = {"generation", "rollout_logprobs", "policy_micro_step", "table3", "evaluation", "monitor"}
"""Phases in which the policy runs (under FSDP2 its gathered layers are held)."""
MARGIN = {"fixed_gb": 3.0, "fraction": 0.10}
"""Added to a measured peak before it is compared with a GPU's memory: the CUDA context and cuBLAS workspace
(~1 GB), NCCL buffers on 8 ranks (~1-2 GB), and the caching allocator's fragmentation (~10%)."""
TARGETS = {"per_rank_8gpu_gb": 64.0, "single_gpu_gb": 80.0, "logprob_chunk_gib": 3.0}
PAPER_CONFIGS = ("r2m_llama3-8b_ultrafeedback_rloo", "r2m_pythia2.8b_tldr", "r2m_qwen2.5-3b_ultrafeedback_grpo",
                 "r2m_qwen2.5-3b_ultrafeedback_rloo")
NOT_MEASURED = {
    "ser_hh_rlhf": "the SER pipeline (LoRA RM loops, then PPO with a critic) has no adapter here yet",
    "ser_ultrafeedback": "the SER pipeline (LoRA RM loops) has no adapter here yet",
}
SINGLE_GPU = ("r2m_qwen2.5-3b_ultrafeedback_rloo", ("policy.path=Qwen/Qwen2.5-0.5B-Instruct",))
"""The single-GPU case: a 0.5B Qwen2.5 policy, the 8B Llama-3.1 RM, R2M, the Qwen config's settings."""
HOST_CHECK_MODELS = ("Qwen/Qwen2.5-0.5B-Instruct", "Skywork/Skywork-Reward-V2-Llama-3.1-8B")
"""The families (and vocabularies) of the host check's policy (tied embeddings) and RM (untied)."""

PAPER_DIR = Path(__file__).resolve().parents[1] / "configs" / "paper"
"""The paper configs whose shapes are measured."""


@dataclass(frozen=True)
class MemorySpec:
    """What one ``r2m bench memory`` measures."""

    configs: tuple[str, ...] = PAPER_CONFIGS
    """configs/paper/<name>.yaml to measure, each on its GPUs and on one GPU."""
    fit_depths: tuple[tuple[int, int], ...] = ((2, 2), (3, 2), (2, 3))
    """(policy layers, RM layers) of the three measurements the depth fit solves: the first two differ in the policy
    only (the sampling loop is fitted on them). Two layers at least: with one, the first layer's input (the
    embeddings, which the model keeps) is the last layer's, so one (rows, S, D) tensor fewer is held."""
    check_depth: tuple[int, int] = (4, 4)
    """The depths of the measurement the fit is checked on."""
    gen_tokens: tuple[int, int, int] = (4, 8, 12)
    """Tokens of the sampling-loop measurements: two fitted, the third checked (>= 2: a decoding step at least)."""
    table3_rows: Optional[int] = None
    """Preference pairs Table 3 scores (None: reward.batch_size, one of its row chunks; the chunks run one after
    another, so one holds its peak)."""
    chunk: tuple[int, int, int] = (16, 1023, 512)
    """logprob_chunk_gib: rows, prompt tokens and response tokens of the log-prob chunk (Qwen2.5-3B, V = 151,936)."""
    chunk_layers: Optional[int] = None
    """Policy layers of the log-prob chunk measurements (None: the real depth, measured directly)."""
    overrides: tuple[str, ...] = ()
    """Config overrides for every config (the smoke preset's small shapes)."""
    one_gpu: bool = True
    """Also measure each config on one GPU."""
    trl: bool = True
    """Measure TRL's log-prob pass beside r2m's."""
    host_widths: tuple[int, ...] = host.CHECK_WIDTHS
    """Hidden sizes of the host-memory check's models (:func:`r2m_bench.memory_host.check`); () skips it."""


SMOKE_SHAPES = ("rl.prompts_per_step=8", "rl.k=2", "rl.max_new_tokens=4", "data.max_prompt_tokens=6",
                "rl.rollout_batch_size=0", "rl.micro_batch_size=1", "rl.minibatches=1", "eval.batch_size=2")
PRESETS = {
    "paper": MemorySpec(),
    # Seconds: one config at tiny lengths (its numbers mean nothing); every key is written.
    "smoke": MemorySpec(configs=("r2m_qwen2.5-3b_ultrafeedback_rloo",), check_depth=(3, 3), gen_tokens=(2, 3, 4),
                        table3_rows=2, chunk=(2, 5, 3), chunk_layers=1, overrides=SMOKE_SHAPES, one_gpu=False,
                        host_widths=(32,)),
}


# ---------------------------------------------------------------------------------------------
# Setups and one measurement
# ---------------------------------------------------------------------------------------------


def gpus_of(path: Path) -> int:
    """The GPU count a paper config's header names (``# GPUs: 8x80GB``)."""
    m = re.search(r"^# GPUs: (\d+)x", path.read_text(), re.MULTILINE)
    if m is None:
        raise ConfigError(f"{path}: no '# GPUs: Nx...' line in its header; bench memory reads the GPU count there")
    return int(m.group(1))


def setup_config(name: str, overrides: tuple[str, ...], spec: MemorySpec) -> Config:
    return load_config(str(PAPER_DIR / f"{name}.yaml"), [*spec.overrides, *overrides, "run.log_with=[]",
                                                          "run.device=cpu"])


def shapes_of(cfg: Config, gpus: int, spec: MemorySpec, depth: tuple[int, int]) -> ph.Shapes:
    rows = cfg.rl.prompts_per_step * cfg.rl.k
    if rows % gpus:
        raise ConfigError(f"rl.prompts_per_step x rl.k = {rows} does not split over {gpus} GPUs")
    return ph.Shapes(depth[0], depth[1], rows // gpus, cfg.data.max_prompt_tokens, cfg.rl.max_new_tokens,
                     cfg.eval.batch_size, spec.table3_rows or cfg.reward.batch_size, fsdp=gpus > 1)


@dataclass
class Session:
    """A run and its instrument, at one depth."""

    run: object
    inst: LiveBytes
    persistent: dict[str, int]
    policy_params: int
    mode: object


def session(cfg: Config, shapes: ph.Shapes, warm: bool = True) -> Session:
    """The run at ``shapes`` (fake models), its optimisers warmed, and an instrument tagging its models."""
    mode = fake_mode()
    run = ph.build_run(cfg, shapes, mode)
    if warm:
        ph.warm_optimizers(run)
    clear_memo(mode)
    inst = LiveBytes(ph.param_shapes(run), token_id=run.generator.token_id, fake=mode)
    ph.tag_models(run, inst)
    policy = run.models.unwrapped_policy()
    n = sum({p.untyped_storage()._cdata: p.numel() for p in policy.parameters()}.values())
    return Session(run, inst, ph.persistent_bytes(run), n, mode)


def step_point(cfg: Config, shapes: ph.Shapes, loops: tuple[tuple[int, int], ...] = ()) -> dict[tuple, float]:
    """At ``shapes``: the sampling loop for each (rows, tokens) of ``loops`` (phase ``generation/<rows>/<tokens>``),
    then every phase of a step, Table 3 and an evaluation batch. Key -> bytes."""
    s = session(cfg, shapes)
    run, inst = s.run, s.inst
    with inst:
        for rows, tokens in loops:
            ph.generation(run, inst, rows, shapes.prompt_tokens, tokens, f"generation/{rows}/{tokens}")
        exp = ph.make_experience(run, inst, shapes)
        update = ph.policy_update(run, inst, exp)
        ph.r2m_update(run, inst, exp, update.states)
        del exp, update  # the step is over: Table 3 and evaluation run without it
        ph.table3(run, inst, shapes)
        ph.evaluation(run, inst, shapes)
    out: dict[tuple, float] = {("persistent", k): v for k, v in s.persistent.items()}
    out[("count", "policy_params")] = s.policy_params
    for (phase, seg), p in inst.peaks.items():
        out[("total", phase, seg)], out[("act", phase, seg)] = p.total, p.act
    return out


# ---------------------------------------------------------------------------------------------
# The fit
# ---------------------------------------------------------------------------------------------


def fit(points: dict[tuple, dict], terms: Callable[[tuple], list[float]]) -> dict:
    """Per key, the coefficients of ``value = sum_i c_i * terms(x)_i`` through ``points`` (x -> {key: value}),
    solved exactly (as many points as terms). A key missing at a point counts 0 there."""
    xs = list(points)
    basis = torch.tensor([terms(x) for x in xs], dtype=torch.float64)  # (points, terms)
    if basis.shape[0] != basis.shape[1]:
        raise ValueError(f"fit: {basis.shape[0]} points for {basis.shape[1]} terms")
    keys = sorted({k for p in points.values() for k in p}, key=str)
    values = torch.tensor([[points[x].get(k, 0.0) for k in keys] for x in xs], dtype=torch.float64)
    coef = torch.linalg.solve(basis, values)  # (terms, keys)
    return {k: coef[:, i].tolist() for i, k in enumerate(keys)}


def predict(coefs: dict, x: tuple, terms: Callable[[tuple], list[float]]) -> dict:
    t = terms(x)
    return {k: sum(c * v for c, v in zip(cs, t)) for k, cs in coefs.items()}


def depth_terms(x: tuple) -> list[float]:
    lp, lm = x
    return [1.0, float(lp), float(lm)]


def gen_terms(x: tuple) -> list[float]:
    layers, tokens = x
    return [1.0, float(layers), float(tokens), float(layers * tokens)]


def phase_peaks(values: dict, kind: str) -> dict[str, float]:
    """phase -> the largest of its segments' ``kind`` ("total" or "act") values."""
    out: dict[str, float] = {}
    for key, v in values.items():
        if key[0] == kind:
            out[key[1]] = max(out.get(key[1], 0.0), v)
    return out


def check_errors(pred: dict, measured: dict) -> dict[str, float]:
    """Relative error of each phase's predicted peak (total) against the measured one."""
    p, m = phase_peaks(pred, "total"), phase_peaks(measured, "total")
    return {k: abs(p.get(k, 0.0) - v) / v for k, v in m.items() if v > 0}


# ---------------------------------------------------------------------------------------------
# Per setup: the fit, per rank
# ---------------------------------------------------------------------------------------------


def real_depths(cfg: Config) -> tuple[int, int]:
    return ph.arch_of(cfg.policy.path, "policy.path").layers, ph.arch_of(cfg.reward.path, "reward.path").layers


def _drop_loops(values: dict) -> dict:
    return {k: v for k, v in values.items() if not (len(k) == 3 and k[1].startswith("generation/"))}


def loop_values(point: dict, rows: int, tokens: int) -> dict[tuple, float]:
    """The sampling loop's segments in a step point, keyed as one phase ``generation``."""
    name = f"generation/{rows}/{tokens}"
    return {(k[0], "generation", k[2]): v for k, v in point.items() if len(k) == 3 and k[1] == name}


def loop_fit(cfg: Config, points: dict, check: dict, rows: int, spec: MemorySpec) -> dict:
    """The sampling loop's peak (total, act) at the real depth and length, fitted in (layers, tokens) on the loops
    run at the first two fit depths (``points`` keyed by depth) and checked on the check depth's."""
    t1, t2, t3 = spec.gen_tokens
    depths = spec.fit_depths[:2]  # two policy depths, one RM depth
    pts = {(x[0], t): loop_values(points[x], rows, t) for x in depths for t in (t1, t2)}
    coefs = fit(pts, gen_terms)
    real = predict(coefs, (real_depths(cfg)[0], cfg.rl.max_new_tokens), gen_terms)
    err = check_errors(predict(coefs, (spec.check_depth[0], t3), gen_terms), loop_values(check, rows, t3))
    return {"total": phase_peaks(real, "total")["generation"], "act": phase_peaks(real, "act")["generation"],
            "check_rel_error": max(err.values(), default=0.0), "rows": rows}


def per_rank(pred: dict, coefs: dict, gpus: int,
             dist: DistConfig = DistConfig()) -> tuple[dict[str, float], dict[str, float]]:
    """Bytes per rank at each phase's peak, and the persistent bytes per rank (see the module docstring); ``dist``
    is the config's (its gradient sync sets what FSDP2's update holds)."""
    persistent = {k[1]: v for k, v in pred.items() if k[0] == "persistent"}
    total, act = phase_peaks(pred, "total"), phase_peaks(pred, "act")
    if gpus == 1:
        base = sum(persistent.values())
        return {k: base + v for k, v in total.items()}, persistent
    n = pred[("count", "policy_params")]
    root, layer = coefs[("count", "policy_params")][:2]  # params = root + layer * L_p
    persistent.update(policy=12.0 * n / gpus, policy_optimizer=0.0)  # fp32 master + AdamW m, v, sharded
    base, gathered = sum(persistent.values()), 2.0 * (root + 2 * layer)  # bf16 root + 2 layers gathered
    update = sum(fsdp_update_terms(n, root, layer, gpus, dist).values())
    out = {}
    for k in total:
        v = act[k] + update if k == "policy_micro_step" else total[k]
        out[k] = base + v + (gathered if k in POLICY_PHASES else 0.0)
    return out, persistent


def fsdp_update_terms(n: float, root: float, layer: float, gpus: int,
                      dist: DistConfig = DistConfig()) -> dict[str, float]:
    """Bytes per rank FSDP2's policy update holds besides the activations, for ``n`` policy parameters of which
    ``root`` are the root module's (embeddings, head) and ``layer`` each decoder layer's."""
    sharded, temporary = {"sharded_fp32_grads": 4.0 * n / gpus}, {"adamw_foreach_temporary": 4.0 * n / gpus}
    if not dist.sync_every_micro_batch:
        return {"unsharded_bf16_grads_no_sync": 2.0 * n,  # accumulated across micro-batches while sync is off
                **sharded, "incoming_root_grad": 2.0 * root, **temporary}
    # Each layer's gradient is reduce-scattered as the backward leaves it; the root's when the backward ends.
    return {"unsharded_bf16_grads_in_flight": 2.0 * (root + layer), **sharded,
            "reduce_scatter_input": dist.reduce_dtype.torch.itemsize * layer, **temporary}


def loops_at(depth: tuple[int, int], rows: tuple[int, ...], spec: MemorySpec) -> tuple[tuple[int, int], ...]:
    """The sampling loops a step point at ``depth`` runs: two lengths at the first two fit depths, the third at the
    check depth."""
    t1, t2, t3 = spec.gen_tokens
    if depth == spec.check_depth:
        return tuple((r, t3) for r in rows)
    if depth in spec.fit_depths[:2]:
        return tuple((r, t) for r in rows for t in (t1, t2))
    return ()


def measure_setup(cfg: Config, gpus: int, spec: MemorySpec, log) -> dict:
    """One config on ``gpus`` GPUs: the step, Table 3 and evaluation at the fit depths and the check depth."""
    shapes = {x: shapes_of(cfg, gpus, spec, x) for x in (*spec.fit_depths, spec.check_depth)}
    base = shapes[spec.fit_depths[0]]
    loop_rows = {"generation": cfg.rl.rollout_batch_size or base.rows, "evaluation": base.eval_rows}
    points = {}
    for x in (*spec.fit_depths, spec.check_depth):
        log(f"  step at depths {x}: {shapes[x].rows} rows per rank")
        points[x] = step_point(cfg, shapes[x], loops_at(x, tuple(sorted(set(loop_rows.values()))), spec))
    check = points.pop(spec.check_depth)
    coefs = fit(points, depth_terms)
    pred = _drop_loops(predict(coefs, real_depths(cfg), depth_terms))
    loops = {phase: loop_fit(cfg, points, check, rows, spec) for phase, rows in loop_rows.items()}
    for phase, loop in loops.items():
        for kind in ("total", "act"):
            pred[(kind, phase, "sampling loop")] = loop[kind]
    phases, persistent = per_rank(pred, coefs, gpus, cfg.dist)
    errors = check_errors(_drop_loops(predict(coefs, spec.check_depth, depth_terms)), _drop_loops(check))
    peak_phase = max(phases, key=phases.get)
    root, layer = coefs[("count", "policy_params")][:2]
    n = pred[("count", "policy_params")]
    terms = fsdp_update_terms(n, root, layer, gpus, cfg.dist) if gpus > 1 else {}
    return {"per_rank_peak_gb": phases[peak_phase] / GB, "peak_phase": peak_phase,
            "phases": {k: phases[k] / GB for k in PHASES if k in phases},
            "persistent_gb": {k: v / GB for k, v in persistent.items()},
            "fsdp_update_terms_gb": {k: v / GB for k, v in terms.items()},
            "backend": "fsdp2" if gpus > 1 else "one_gpu",
            "shapes": {"rows_per_rank": base.rows, "prompt_tokens": base.prompt_tokens,
                       "response_tokens": base.response_tokens, "policy_layers": real_depths(cfg)[0],
                       "rm_layers": real_depths(cfg)[1], "policy_dtype": cfg.policy.dtype},
            "check": {"depths": list(spec.check_depth), "max_rel_error": max(errors.values(), default=0.0),
                      "rel_error": errors,
                      "generation_rel_error": max(g["check_rel_error"] for g in loops.values())}}


def chunk_peaks(cfg: Config, gpus: int, rows: int, prompt: int, response: int, spec: MemorySpec) -> dict[str, float]:
    """The log-prob pass on one chunk at the real depth (no fit): r2m's and TRL's, in bytes beyond the weights."""
    layers = spec.chunk_layers or real_depths(cfg)[0]
    s = session(cfg, ph.Shapes(layers, 1, rows, prompt, response, 1, 1, fsdp=gpus > 1), warm=False)
    gen = ph.filler_generation(s.run, rows, prompt)
    with s.inst:
        ph.r2m_logprobs(s.run, s.inst, gen, "r2m")
    out = {"r2m": float(s.inst.phase_peak("r2m").total)}
    if spec.trl:
        arch = ph.arch_of(cfg.policy.path, "policy.path")
        # TRL trains the model in the dtype it loads it in (policy.dtype: no fp32 master weights)
        model = ph.fake_model(arch, layers, s.run.tok, torch_dtype(cfg.policy.dtype), False, s.mode)
        clear_memo(s.mode)
        with s.inst:
            ph.trl_logprobs(model, s.run.acc, s.inst, gen, cfg.rl.temperature, "trl")
        out["trl"] = float(s.inst.phase_peak("trl").total)
    return out


# ---------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------


def with_margin(gb: float) -> float:
    return gb * (1 + MARGIN["fraction"]) + MARGIN["fixed_gb"]


def config_result(name: str, spec: MemorySpec, log, process_bytes: float = 0.0) -> dict:
    """One paper config: on its GPUs (per rank), on one GPU, its log-prob chunk beside TRL's, and the host peak per
    rank while it loads (``process_bytes``: the process's own, added to every rank)."""
    gpus = gpus_of(PAPER_DIR / f"{name}.yaml")
    cfg = setup_config(name, (), spec)
    log(f"{name}: {gpus} GPUs")
    out = {"gpus": gpus, **measure_setup(cfg, gpus, spec, log), "host": host.host_result(cfg, gpus, process_bytes)}
    if spec.one_gpu and gpus > 1:
        log(f"{name}: one GPU")
        one = measure_setup(cfg, 1, spec, log)
        out["one_gpu"] = {k: one[k] for k in ("per_rank_peak_gb", "peak_phase", "phases", "persistent_gb", "check")}
    rows = cfg.rl.rollout_batch_size or out["shapes"]["rows_per_rank"]
    chunk = chunk_peaks(cfg, gpus, rows, cfg.data.max_prompt_tokens, cfg.rl.max_new_tokens, spec)
    out["logprob_chunk"] = {"rows": rows, "r2m_gib": chunk["r2m"] / GIB, "trl_gib": chunk.get("trl", 0.0) / GIB}
    return out


def single_gpu_result(spec: MemorySpec, log, process_bytes: float = 0.0) -> dict:
    name, overrides = SINGLE_GPU
    log(f"single GPU: {name} with {' '.join(overrides)}")
    cfg = setup_config(name, overrides, spec)
    res = measure_setup(cfg, 1, spec, log)
    return {"config": name, "overrides": list(overrides), "policy": cfg.policy.path, "reward_model": cfg.reward.path,
            "peak_gb": res["per_rank_peak_gb"], "peak_with_margin_gb": with_margin(res["per_rank_peak_gb"]),
            "host": host.host_result(cfg, 1, process_bytes),
            **{k: res[k] for k in ("peak_phase", "phases", "persistent_gb", "shapes", "check")}}


def logprob_chunk_result(spec: MemorySpec, log) -> dict:
    """The headline chunk: Qwen2.5-3B as its config loads it (bf16), ``spec.chunk`` rows x tokens at V = 151,936,
    under FSDP2 (bf16 outputs) and on one GPU or DDP (accelerate's autocast and fp32 outputs); the headline is the
    larger. On one GPU also r2m's pass with autocast's weight-cast cache off for the whole forward
    (``autocast_cache_off_gib``): the no-grad pass turns it off inside the model for its decoder and head
    (``r2m.models.forward.last_states``), so the two agree unless a cached bf16 copy of an fp32 master weight is
    held."""
    rows, prompt, response = spec.chunk
    name = "r2m_qwen2.5-3b_ultrafeedback_rloo"
    lengths = (f"data.max_prompt_tokens={prompt}", f"rl.max_new_tokens={response}")
    out = {"config": name, "rows": rows, "tokens": prompt + response, "vocab": 151936}
    for label, gpus in (("fsdp2", 8), ("one_gpu_or_ddp", 1)):
        log(f"log-prob chunk: {label}")
        peaks = chunk_peaks(setup_config(name, lengths, spec), gpus, rows, prompt, response, spec)
        out[label] = {"r2m_gib": peaks["r2m"] / GIB, "trl_gib": peaks.get("trl", 0.0) / GIB}
    log("log-prob chunk: one_gpu_or_ddp, autocast cache off")
    cached = torch.is_autocast_cache_enabled()
    torch.set_autocast_cache_enabled(False)  # read when accelerate makes its autocast context (in prepare)
    try:
        peaks = chunk_peaks(setup_config(name, lengths, spec), 1, rows, prompt, response,
                            dataclasses.replace(spec, trl=False))
    finally:
        torch.set_autocast_cache_enabled(cached)
    out["one_gpu_or_ddp"]["autocast_cache_off_gib"] = peaks["r2m"] / GIB
    return out


def targets(result: dict) -> dict:
    per_rank = {k: v["per_rank_peak_gb"] <= TARGETS["per_rank_8gpu_gb"] for k, v in result["configs"].items()
                if v["gpus"] == 8}
    single = result["single_gpu"]["peak_with_margin_gb"] <= TARGETS["single_gpu_gb"]
    chunk = result["logprob_chunk_gib"] <= TARGETS["logprob_chunk_gib"]
    return {"per_rank_8gpu_le_64gb": per_rank, "single_gpu_fits_80gb_with_margin": single,
            "logprob_chunk_le_3gib": chunk, "all_met": all(per_rank.values()) and single and chunk}


def _update_note(setup: dict) -> str:
    terms = setup.get("fsdp_update_terms_gb")
    if not terms or setup["peak_phase"] != "policy_micro_step":
        return ""
    return "; of the phase, FSDP2's update holds " + ", ".join(f"{k} {v:.1f}" for k, v in terms.items())


def _over(what: str, gb: float, limit: float, setup: dict) -> dict:
    """Why ``setup`` (a config's or the single-GPU result) is over ``limit``: its peak phase, what the rank holds
    for the whole run then (persistent) and what the phase itself adds."""
    phase, persistent = setup["peak_phase"], setup["persistent_gb"]
    held = sum(persistent.values())
    top = sorted(persistent.items(), key=lambda kv: -kv[1])
    return {"target": what, "gb": gb, "limit_gb": limit, "peak_phase": phase, "persistent_gb": held,
            "phase_gb": setup["phases"][phase] - held,
            "why": f"{phase} peaks at {setup['phases'][phase]:.1f} GB: {held:.1f} GB held for the whole run ("
                   + ", ".join(f"{k} {v:.1f}" for k, v in top if v >= 0.05) + f") + {setup['phases'][phase] - held:.1f}"
                   f" GB the phase allocates; the next phases: " + ", ".join(
                       f"{k} {v:.1f}" for k, v in sorted(setup["phases"].items(), key=lambda kv: -kv[1])[1:4])
                   + _update_note(setup)}


def _cache_note(chunk: dict) -> str:
    off = chunk.get("autocast_cache_off_gib")
    if off is None:
        return ""
    return (f"; with autocast's weight-cast cache off it holds {off:.2f} GiB: the other "
            f"{chunk['r2m_gib'] - off:.2f} GiB are the bf16 casts of the fp32 master weights, which autocast keeps "
            "until the forward ends (accelerate's AutocastKwargs(cache_enabled=False) would free each after use)")


def misses(result: dict) -> list[dict]:
    """Each missed target with the measurement that shows why (empty when all are met)."""
    t, out = result["targets"], []
    for name, ok in t["per_rank_8gpu_le_64gb"].items():
        if not ok:
            c = result["configs"][name]
            out.append({"config": name, **_over("per_rank_8gpu_le_64gb", c["per_rank_peak_gb"],
                                                 TARGETS["per_rank_8gpu_gb"], c)})
    if not t["single_gpu_fits_80gb_with_margin"]:
        s = result["single_gpu"]
        out.append({"config": "single_gpu", **_over("single_gpu_fits_80gb_with_margin", s["peak_with_margin_gb"],
                                                     TARGETS["single_gpu_gb"], s),
                    "margin": f"peak {s['peak_gb']:.1f} GB x {1 + MARGIN['fraction']} + {MARGIN['fixed_gb']} GB"})
    if not t["logprob_chunk_le_3gib"]:
        c = result["logprob_chunk"]
        worst = max(("fsdp2", "one_gpu_or_ddp"), key=lambda k: c[k]["r2m_gib"])
        out.append({"config": "logprob_chunk", "target": "logprob_chunk_le_3gib",
                    "gib": result["logprob_chunk_gib"], "limit_gib": TARGETS["logprob_chunk_gib"],
                    "why": f"the {worst} pass holds {c[worst]['r2m_gib']:.2f} GiB (TRL {c[worst]['trl_gib']:.2f})"
                           + _cache_note(c[worst])})
    return out


def bench_memory(preset: str, out: str, log=print) -> dict:
    """The whole benchmark; writes ``out`` (JSON) and its section of ``README.md`` beside it."""
    if preset not in PRESETS:
        raise ConfigError(f"bench memory --preset: expected one of {sorted(PRESETS)}, got {preset!r}")
    spec = PRESETS[preset]
    quiet_transformers()
    checked = None
    if spec.host_widths:
        log("host memory check: loading with the library's calls in fresh processes")
        checked = host.check(*HOST_CHECK_MODELS, widths=spec.host_widths, log=log)
    process = host.process_bytes_of(checked)
    result = {"preset": preset, "host_check": checked,
              "configs": {name: config_result(name, spec, log, process) for name in spec.configs},
              "single_gpu": single_gpu_result(spec, log, process)}
    chunk = logprob_chunk_result(spec, log)
    result["logprob_chunk_gib"] = max(chunk["fsdp2"]["r2m_gib"], chunk["one_gpu_or_ddp"]["r2m_gib"])
    result["logprob_chunk"] = chunk
    result["targets"] = targets(result)
    result["missed"] = misses(result)
    result.update(not_measured=NOT_MEASURED, margin=MARGIN, target_values=TARGETS, units={"gb": GB, "gib": GIB},
                  archs={k: {**dataclasses.asdict(a), "family": a.family.value} for k, a in ph.ARCHS.items()},
                  spec=dataclasses.asdict(spec), torch=torch.__version__)
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    write_readme_section(Path(out).parent / "README.md", result, out)
    return result


def run_bench_memory(preset: str, out: Optional[str], root: str) -> int:
    """``r2m bench memory``: the paper preset writes benchmarks/memory.json; smoke goes under ``root``."""
    path = out or ("benchmarks/memory.json" if preset == "paper" else str(Path(root) / "bench-smoke" / "memory.json"))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    result = bench_memory(preset, path, log=lambda m: print(m, flush=True))
    print(format_memory(result))
    print(f"written: {path} and its section of {Path(path).parent / 'README.md'}")
    return 0
