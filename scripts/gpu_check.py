"""The GPU check: does r2m's real path work on one GPU, and what does it cost? About 7-8 minutes on one H100.

    python3 scripts/gpu_check.py --out gpu_check.json [--wheels .whl]      # on the GPU machine
    python3 scripts/gpu_check.py --device cpu --tiny --out FILE             # the script's own check (CI)

Seven time-boxed parts, each under its own budget (a part that overruns is recorded as timed out and the next one
runs); the JSON is rewritten atomically after every part, so a run cut short keeps what it measured:

    P0  versions (r2m's pins against what is installed), the GPU, its free memory, whether vLLM imports
    P1  real-vocabulary memory: a Qwen2.5-0.5B-shaped policy (V = 151,936), one log-prob chunk of 16 x 1536 and one
        training micro-step, at two depths, extrapolated to 24 layers; checked against benchmarks/memory.json
    P2  RM scoring: a Llama-3.1-8B-shaped backbone through RewardModel at 64 and 256 rows x 1400, at two depths,
        extrapolated to 32 layers
    P3  the R2M (GREBT) update at paper scale: synthetic h of 512 x 1535 x {896, 2048}, H_last of 4096, d = 2048
    P4  generation tokens/s: HF generate through r2m's generator, one call of 128 rows against 8 calls of 16;
        the same through r2m's vLLM generator with weight sync and sleep/wake at levels 1 and 2 (skipped without vLLM)
    P5  a short end-to-end R2M run (`r2m rl` on the tiny world), saved and resumed; the policy's weights moved; the
        first minibatch's ratio is 1
    P6  the same under accelerate's FSDP2 on one process, with a checkpoint and a resume

Each part's key ("P0" ... "P6") holds its status (ok, failed, skipped, timed_out; "running" while it runs and
"not_run" before), its seconds, its measurements, and the error when it failed. Nothing is downloaded; the only
install is `pip install --no-index --find-links WHEELS datasets`, when datasets is missing and --wheels is given.
The exit status is 0 when no part failed or timed out.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata as metadata
import importlib.util
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable, NamedTuple, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import gpu_check_probes as probes  # noqa: E402  (P1-P4, beside this file)

PARTS = ("P0", "P1", "P2", "P3", "P4", "P5", "P6")
BUDGET_S = {"P0": 45, "P1": 50, "P2": 70, "P3": 40, "P4": 90, "P5": 90, "P6": 95}
"""Each part's wall-clock budget (seconds): 480 in all, inside one 10-minute call of the device tool."""
PACKAGES = ("torch", "transformers", "accelerate", "peft", "datasets", "safetensors", "tokenizers", "pyyaml", "numpy",
            "matplotlib", "tensorboard", "tqdm", "filelock", "huggingface_hub", "pyarrow", "dill", "multiprocess",
            "fsspec", "trl", "vllm", "deepspeed")
WORLD = ["world.n_sft=400", "world.n_pref_train=200", "world.n_pref_eval=50", "world.n_rl_prompts=100",
         "world.n_eval_prompts=8", "world.n_pref_policy=50",
         "policy.arch.hidden_size=32", "policy.arch.num_layers=1", "policy.arch.num_heads=2",
         "policy.arch.intermediate_size=64", "reward.arch.hidden_size=24", "reward.arch.num_layers=1",
         "reward.arch.num_heads=2", "reward.arch.intermediate_size=48", "reward.r2m.inner_dim=16",
         "sft.batch_size=32", "rm.batch_size=32", "rm.epochs=1",
         "rl.prompts_per_step=4", "rl.k=2", "rl.minibatches=1", "rl.max_new_tokens=10", "rl.eval_every=100",
         "rl.monitor.enabled=false", "eval.samples_per_prompt=1", "run.progress=false", "run.log_with=[]"]
"""The tiny gold-reward world of P5 and P6 (tests/conftest.py's sizes). rl.minibatches=1 with one epoch: each step
is one minibatch, taken before any optimiser step, so every step's policy/approx_kl is its first minibatch's."""
RATIO_TOL = {"float32": 1e-3, "bfloat16": 5e-2}
"""The largest RMS |log ratio| of the first minibatch (sqrt(2 * policy/approx_kl)) that counts as a ratio of 1."""


class Skip(Exception):
    """A part (or half of one) that cannot run here, with the reason."""


class PartTimeout(BaseException):
    """Raised in the main thread when a part's budget runs out (a BaseException: no `except Exception` eats it)."""


# ---------------------------------------------------------------------------------------------
# The run: one JSON, rewritten after every part
# ---------------------------------------------------------------------------------------------


class Report:
    def __init__(self, out: Path, meta: dict):
        self.out, self.data = out, {"meta": meta, **{p: {"status": "not_run"} for p in PARTS}}
        self.write()

    def write(self) -> None:
        """Atomically: a reader (or a run killed mid-write) sees the old file or the new one, never half of one."""
        self.out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.out.parent, prefix=f".{self.out.name}.")
        with os.fdopen(fd, "w") as f:
            json.dump(self.data, f, indent=2, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.out)


def run_part(report: Report, name: str, fn: Callable[["Ctx"], dict], ctx: "Ctx", budget_s: float,
             inject: Optional[str] = None) -> dict:
    """``fn(ctx)`` under a SIGALRM budget; its entry in the report: status, seconds, measurements, error."""
    report.data[name] = {"status": "running", "budget_s": budget_s}
    report.write()
    entry: dict = {"budget_s": budget_s}
    ctx.progress.clear()
    previous = signal.signal(signal.SIGALRM, _alarm)
    t0 = time.perf_counter()
    try:
        try:
            signal.setitimer(signal.ITIMER_REAL, budget_s)
            if inject == name:
                raise RuntimeError(f"injected failure (--inject-failure {name})")
            entry.update(status="ok", measurements=fn(ctx))
        finally:  # the alarm off before any handler runs
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    except PartTimeout:
        entry.update(status="timed_out", error=f"over its budget of {budget_s:g} s")
    except Skip as e:
        entry.update(status="skipped", reason=str(e))
    except Exception as e:  # every part reports, whatever another did
        entry.update(status="failed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-3000:])
        entry.update(getattr(e, "partial", {}))
    if ctx.progress and "measurements" not in entry:
        entry["measurements_so_far"] = dict(ctx.progress)
    entry["seconds"] = round(time.perf_counter() - t0, 3)
    measured = entry.get("measurements") or {}
    if isinstance(measured, dict) and measured.get("skipped_reason"):  # a part that ran but could not do its job
        entry.update(status="skipped", reason=measured.pop("skipped_reason"))
    if isinstance(measured, dict) and measured.get("failed_checks"):
        entry.update(status="failed", error="check failed: " + "; ".join(measured["failed_checks"]))
    entry = json.loads(json.dumps(entry, default=str))  # a copy: nothing the next part does can change it
    report.data[name] = entry
    report.write()
    probes.release(ctx.device)
    print(f"[gpu_check] {name} {entry['status']} in {entry['seconds']:.1f}s: "
          f"{json.dumps(entry.get('measurements', entry.get('error', entry.get('reason'))), default=str)[:600]}",
          flush=True)
    return entry


def _alarm(signum, frame):
    raise PartTimeout()


class CheckFailed(Exception):
    """A part whose checks failed after it measured: ``partial`` keeps the measurements in the report."""

    def __init__(self, message: str, partial: dict):
        super().__init__(message)
        self.partial = {"measurements": partial}


class Ctx(NamedTuple):
    device: str  # cuda | cpu
    tiny: bool
    wheels: Optional[Path]
    work: Path  # a scratch directory for the run
    vllm: dict  # P0's finding: {"ok": bool, "version"/"error": ...}
    launch_on_cpu: bool  # P6 on a CPU: launch anyway (r2m routes FSDP2 over gloo)
    progress: dict  # what the running part has measured so far: kept in the report if it times out or fails


# ---------------------------------------------------------------------------------------------
# P0: versions, GPU, datasets from the wheel folder, vLLM
# ---------------------------------------------------------------------------------------------


def version(name: str) -> Optional[str]:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def r2m_pins() -> list[str]:
    """The [project] dependencies of pyproject.toml, as written."""
    text = (ROOT / "pyproject.toml").read_text()
    block = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M)
    return re.findall(r'"([^"]+)"', block.group(1)) if block else []


def pins_against_installed() -> dict:
    from packaging.requirements import Requirement

    out = {}
    for pin in r2m_pins():
        req = Requirement(pin)
        have = version(req.name)
        out[req.name] = {"pin": str(req.specifier) or "any", "installed": have,
                         "satisfied": have is not None and req.specifier.contains(have, prereleases=True)}
    return out


def install_datasets(wheels: Optional[Path]) -> dict:
    """datasets, when missing: from the wheel folder only (`pip install --no-index`), never from a registry."""
    if version("datasets") is not None:
        return {"action": "none (installed)"}
    if wheels is None:
        return {"action": "none", "warning": "datasets is missing and no --wheels folder was given: P5 and P6 will "
                                             "fail (the world's data is read with datasets)"}
    cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(wheels), "datasets"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    importlib.invalidate_caches()
    out = {"action": " ".join(cmd), "returncode": proc.returncode, "installed": version("datasets"),
           "wheels": sorted(p.name for p in wheels.glob("*.whl"))}
    if proc.returncode != 0:
        out["error"] = (proc.stdout + proc.stderr)[-2000:]
    return out


def import_vllm() -> dict:
    if importlib.util.find_spec("vllm") is None:
        return {"ok": False, "error": "vllm is not installed"}
    try:
        import vllm
    except Exception as e:  # installed but broken (a torch/CUDA mismatch): say which
        return {"ok": False, "error": f"import vllm failed: {type(e).__name__}: {e}"[:1000]}
    return {"ok": True, "version": getattr(vllm, "__version__", None)}


def part_p0(ctx: Ctx) -> dict:
    import torch

    out = {"python": platform.python_version(), "platform": platform.platform(), "executable": sys.executable,
           "datasets_install": install_datasets(ctx.wheels),
           "versions": {name: version(name) for name in PACKAGES}, "r2m_pins": pins_against_installed(),
           "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    out["versions"]["datasets"] = version("datasets")
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        props = torch.cuda.get_device_properties(0)
        out.update(gpu=torch.cuda.get_device_name(0), gpu_count=torch.cuda.device_count(),
                   gpu_free_gib=free / 2**30, gpu_total_gib=total / 2**30, multiprocessors=props.multi_processor_count,
                   capability=f"{props.major}.{props.minor}", bf16_supported=torch.cuda.is_bf16_supported())
    ctx.vllm.update(import_vllm())
    out["vllm"] = dict(ctx.vllm)
    if ctx.device == "cuda" and not torch.cuda.is_available():
        raise CheckFailed("--device cuda, but torch.cuda.is_available() is False", out)
    return out


# ---------------------------------------------------------------------------------------------
# P5 and P6: `r2m rl` on the tiny world, saved and resumed
# ---------------------------------------------------------------------------------------------


def rl_args(ctx: Ctx, root: Path, name: str, steps: int) -> list[str]:
    args = ["rl", "-c", str(ROOT / "configs/world/rloo_r2m.yaml"), *WORLD, f"run.root={root}", f"run.name={name}",
            f"rl.steps={steps}", "rl.save_every=1", f"run.device={ctx.device}", "run.seed=0"]
    return args


def mixed_precision(ctx: Ctx) -> str:
    """bf16 autocast on a GPU (what configs/accelerate/fsdp.yaml sets), none on a CPU. P5 and P6 use the same, so
    that P6 finds the world P5 built (the world's cache key holds the mixed precision)."""
    return "bf16" if ctx.device == "cuda" else "no"


def run_checks(ctx: Ctx, root: Path, run: Path) -> tuple[dict, list[str]]:
    """What a saved-and-resumed run must show: both checkpoints and the final model, steps 1..3 once each, the
    policy's and R2M's weights moved, and a first-minibatch ratio of 1."""
    from safetensors.torch import load_file

    from r2m.runtime.runlog import read_metrics

    failed: list[str] = []
    rows = [r for r in read_metrics(run / "metrics.jsonl") if "policy/approx_kl" in r]
    steps = [r["step"] for r in rows]
    if steps != [1, 2, 3]:
        failed.append(f"training steps in metrics.jsonl: expected [1, 2, 3], got {steps}")
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir()) if (run / "checkpoints").is_dir() else []
    initial = sorted(root.glob("world/policy-*/model/model.safetensors"))
    final = run / "checkpoints/final"
    moved = probes.weights_moved(load_file(str(initial[-1])), load_file(str(final / "model.safetensors")))
    r2m_moved = probes.weights_moved(load_file(str(run / "checkpoints/step-000001/r2m/r2m.safetensors")),
                                     load_file(str(run / "checkpoints/final/r2m/r2m.safetensors")))
    dtype = "bfloat16" if mixed_precision(ctx) == "bf16" else "float32"
    ratio = [{"step": r["step"], "approx_kl": r["policy/approx_kl"], "clip_frac": r["policy/clip_frac"],
              "rms_log_ratio": math.sqrt(2 * r["policy/approx_kl"])} for r in rows]
    if moved["changed_tensors"] == 0:
        failed.append("the final policy's weights equal the initial policy's")
    if r2m_moved["changed_tensors"] == 0:
        failed.append("R2M's fusion and head did not move between step 1 and the end")
    if not ratio or ratio[0]["rms_log_ratio"] > RATIO_TOL[dtype]:
        failed.append(f"first minibatch's RMS |log ratio| {ratio[0]['rms_log_ratio'] if ratio else None} over "
                      f"{RATIO_TOL[dtype]} ({dtype})")
    finite = all(math.isfinite(v) for r in rows for k, v in r.items() if isinstance(v, float))
    if not finite:
        failed.append("a non-finite metric")
    return {"checkpoints": ckpts, "steps": steps, "policy_moved": moved, "r2m_moved": r2m_moved,
            "first_minibatch_ratio": ratio, "ratio_tolerance": RATIO_TOL[dtype], "metrics_finite": finite}, failed


def part_p5(ctx: Ctx) -> dict:
    import contextlib
    import io
    import logging

    from r2m.cli import main

    root = ctx.work / "runs"
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logging.getLogger("r2m").addHandler(handler)
    # bf16 on a GPU (run.mixed_precision's default, no, elsewhere: an override `no` would read as YAML's false)
    precision = ["run.mixed_precision=bf16"] if mixed_precision(ctx) == "bf16" else []
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(Tee(sys.stderr, errors)):
            t0 = time.perf_counter()
            rc = main([*rl_args(ctx, root, "p5", steps=2), *precision])
            t1 = time.perf_counter()
            rc_resume = main([*rl_args(ctx, root, "p5", steps=3), *precision, "--resume"]) if rc == 0 else None
            t2 = time.perf_counter()
    finally:
        logging.getLogger("r2m").removeHandler(handler)
    out = {"returncode": rc, "returncode_resume": rc_resume, "run_s": t1 - t0, "resume_s": t2 - t1,
           "resumed": [m for m in seen if m.startswith("resumed from")]}
    ctx.progress.update(out)
    if rc != 0 or rc_resume != 0:
        raise CheckFailed(f"r2m rl returned {rc} (run) and {rc_resume} (resume): {errors.getvalue()[-800:]}", out)
    checks, failed = run_checks(ctx, root, root / "p5")
    out.update(checks)
    if not any("at step 2" in m for m in out["resumed"]):
        failed.append(f"the resumed run did not log 'resumed from ... at step 2' (logged {out['resumed']})")
    out["failed_checks"] = failed
    return out


class Tee:
    """A text stream writing to two (the console, and a buffer the report quotes from)."""

    def __init__(self, *streams):
        self.streams = streams

    def write(self, text: str) -> int:
        for s in self.streams:
            s.write(text)
        return len(text)

    def flush(self) -> None:
        for s in self.streams:
            s.flush()


def fsdp_config(ctx: Ctx) -> Path:
    """configs/accelerate/fsdp.yaml on one process."""
    text = (ROOT / "configs/accelerate/fsdp.yaml").read_text()
    path = ctx.work / "fsdp_1proc.yaml"
    path.write_text(re.sub(r"^num_processes: \d+$", "num_processes: 1", text, flags=re.M))
    return path


def build_world(ctx: Ctx, root: Path) -> dict:
    """`r2m world --models` with P6's world settings and mixed precision (part of the world's cache key), so that the
    FSDP launch finds the world's SFT policy and RM instead of training them inside the launch."""
    argv = [sys.executable, "-m", "r2m", "world", "--models", "-c", str(ROOT / "configs/world/rloo_r2m.yaml"), *WORLD,
            f"run.root={root}", f"run.device={ctx.device}", "run.seed=0"]
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env = {**os.environ, "PYTHONPATH": path, "ACCELERATE_MIXED_PRECISION": mixed_precision(ctx)}
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise CheckFailed(f"r2m world --models failed (rc {proc.returncode}): {(proc.stdout + proc.stderr)[-600:]}")
    return {"rc": 0, "seconds": time.perf_counter() - t0}


def launch(ctx: Ctx, argv: list[str], tag: str) -> dict:
    """`accelerate launch --config_file <fsdp, 1 process> gpu_check.py --child-rl OUT -- <argv>`: its return code, the
    distributed type accelerate gave the run, and its output's tail. It runs until it ends or the part's budget runs
    out (PartTimeout), and then the launcher and its worker are killed together."""
    result = ctx.work / f"{tag}.json"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(fsdp_config(ctx)),
           "--num_processes", "1", "--mixed_precision", mixed_precision(ctx), str(Path(__file__).resolve()),
           "--child-rl", str(result), "--", *argv]
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env = {**os.environ, "PYTHONPATH": path}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        log, _ = proc.communicate()
    finally:  # a budget that ran out (PartTimeout): the launcher and its worker go together
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    child = json.loads(result.read_text()) if result.exists() else {}
    return {"launcher_returncode": proc.returncode, **child, "log_tail": (log or "")[-1500:]}


def part_p6(ctx: Ctx) -> dict:
    if ctx.device == "cpu" and not ctx.launch_on_cpu:
        raise Skip("P6 is the GPU's FSDP check; --launch-on-cpu runs it on the CPU (r2m routes FSDP2 over gloo there)")
    root = ctx.work / "runs"  # P5's, when P5 ran: the world's artifacts are reused
    out = ctx.progress
    out["world"] = build_world(ctx, root)  # before the launch, in one plain process, as docs/DISTRIBUTED.md says
    first = launch(ctx, rl_args(ctx, root, "p6", steps=2), "p6_run")
    out["run"] = first
    if first.get("rc") != 0:
        raise CheckFailed(f"the FSDP run failed (launcher {first['launcher_returncode']}, r2m {first.get('rc')}): "
                          f"{first['log_tail'][-400:]}", out)
    out["resume"] = resume = launch(ctx, [*rl_args(ctx, root, "p6", steps=3), "--resume"], "p6_resume")
    fsdp = first.get("distributed_type") == "FSDP"
    if resume.get("rc") != 0:
        raise CheckFailed(f"the resume failed (launcher {resume['launcher_returncode']}, r2m {resume.get('rc')}): "
                          f"{resume.get('error') or resume['log_tail'][-600:]}", out)
    checks, failed = run_checks(ctx, root, root / "p6")
    out.update(checks, failed_checks=failed)
    if not fsdp:
        out["skipped_reason"] = (f"FSDP not active: accelerate ran the launch as {first.get('distributed_type')} "
                                 f"(it enables FSDP only on an accelerator); the run, checkpoint and resume ran "
                                 "unsharded")
    return out


def child_rl(result: Path, argv: list[str]) -> int:
    """Inside `accelerate launch`: `r2m rl`, then the distributed type accelerate gave it, into ``result``."""
    out: dict = {}
    try:
        from r2m.cli import main

        out["rc"] = main(argv)
    except BaseException as e:  # SystemExit from argparse too: the parent reads the reason
        out.update(rc=getattr(e, "code", 1) or 1, error=f"{type(e).__name__}: {e}"[-2000:])
    from accelerate.state import AcceleratorState

    state = AcceleratorState._shared_state
    kind = state.get("distributed_type")
    plugin = state.get("fsdp_plugin")
    out.update(distributed_type=getattr(kind, "value", str(kind) if kind else None),
               fsdp_version=getattr(plugin, "fsdp_version", None), num_processes=state.get("num_processes"))
    result.write_text(json.dumps(out, default=str))
    return 0


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------

FUNCTIONS = {"P0": part_p0, "P1": probes.part_p1, "P2": probes.part_p2, "P3": probes.part_p3, "P4": probes.part_p4,
             "P5": part_p5, "P6": part_p6}


def parse(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="gpu_check.json", help="the JSON, rewritten after every part")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--tiny", action="store_true", help="tiny shapes (the script's own check on a CPU)")
    p.add_argument("--wheels", default=None, help="a folder of wheels for `pip install --no-index` of datasets")
    p.add_argument("--parts", default=",".join(PARTS), help="comma-separated parts to run (default: all)")
    p.add_argument("--budget-scale", type=float, default=1.0, help="multiply every part's budget")
    p.add_argument("--launch-on-cpu", action="store_true", help="P6 on a CPU: launch it anyway (FSDP2 over gloo)")
    p.add_argument("--inject-failure", default=None, choices=PARTS, help="make this part raise (the self-test)")
    p.add_argument("--child-rl", default=None, help=argparse.SUPPRESS)
    p.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.child_rl:
        return child_rl(Path(args.child_rl), args.rest)
    wanted = [p.strip() for p in args.parts.split(",") if p.strip()]
    meta = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "device": args.device, "tiny": args.tiny,
            "command": " ".join([Path(sys.executable).name, *sys.argv]), "commit": _commit(), "budgets_s": {
                p: BUDGET_S[p] * args.budget_scale for p in PARTS}}
    report = Report(Path(args.out), meta)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as work:
        ctx = Ctx(args.device, args.tiny, Path(args.wheels).resolve() if args.wheels else None, Path(work), {},
                  args.launch_on_cpu, {})
        for name in PARTS:
            if name not in wanted:
                report.data[name] = {"status": "skipped", "reason": "not in --parts", "seconds": 0.0}
                continue
            run_part(report, name, FUNCTIONS[name], ctx, BUDGET_S[name] * args.budget_scale, args.inject_failure)
    bad = [p for p in PARTS if report.data[p]["status"] in ("failed", "timed_out")]
    report.data["meta"].update(wall_s=round(time.perf_counter() - t0, 1), failed_parts=bad)
    report.write()
    print(f"[gpu_check] {'all parts ok or skipped' if not bad else 'failed: ' + ', '.join(bad)}; wrote {args.out}")
    return 1 if bad else 0


def _commit() -> Optional[str]:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


if __name__ == "__main__":
    sys.exit(main())
