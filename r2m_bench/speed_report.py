"""The text of ``r2m bench speed``'s result: a terminal table and its section of benchmarks/README.md."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from r2m.fileio import atomic_write_text

BEGIN, END = "<!-- bench-speed:begin -->", "<!-- bench-speed:end -->"
ARM_NAMES = {"r2m": "r2m (old log-probs recomputed)", "r2m_generation": "r2m (rl.old_logprobs=generation)",
             "r2m_r2m": "r2m RLOO+R2M", "trl": "TRL RLOOTrainer"}


def _f(x: Optional[float], digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _arm_rows(result: dict) -> list[str]:
    rows = ["| size | arm | median s/step | min | max | peak RSS MiB | mean answer tokens |",
            "|---|---|---|---|---|---|---|"]
    for size, arms in result["sizes"].items():
        for name, a in arms.items():
            rows.append(f"| {size} | {ARM_NAMES.get(name, name)} | {_f(a['median_s'])} | {_f(a['min_s'])} | "
                        f"{_f(a['max_s'])} | {_f(a['peak_rss_mb'], 0)} | {_f(a.get('response_length'), 1)} |")
    return rows


def _phase_rows(result: dict, size: str) -> list[str]:
    arm, fl = result["sizes"][size]["r2m"], result["floor"][size]
    rows = [f"| phase (r2m, size {size}) | time s | FLOP floor s |", "|---|---|---|"]
    for phase in ("generate", "logprobs", "reward", "update", "rm_update", "step"):
        if phase in arm["phases"]:
            floor_s = fl["phases_s"].get(phase, fl["step_s"] if phase == "step" else None)
            rows.append(f"| {phase} | {_f(arm['phases'][phase])} | {_f(floor_s)} |")
    return rows


def format_speed(result: dict) -> str:
    """Markdown tables of one result (also what the command prints)."""
    env, p4 = result["environment"], result["p4"]
    r, g = result["ratio_vs_trl"], result["ratio_vs_trl_generation"]
    lines = [
        f"preset {result['preset']}; {env['threads']} threads; fp32 GEMM {_f(env['gemm_gflops'], 1)} GFLOP/s "
        f"({env['gemm_n']}²); run.malloc {env.get('malloc', 'system')}; torch {env['torch']}, "
        f"trl {env['trl'] or 'not installed'}; load average "
        f"{_f(result['load_avg']['start'], 2)} -> {_f(result['load_avg']['end'], 2)}", "",
        *_arm_rows(result), "",
        f"- r2m / TRL (median s/step): A {_f(r['A'])}, B {_f(r['B'])}; with rl.old_logprobs=generation: "
        f"A {_f(g['A'])}, B {_f(g['B'])}",
        f"- size B vs the FLOP floor ({_f(result['floor']['B']['tflop_per_step'])} TFLOP/step): r2m "
        f"{_f(result['floor_multiple_B'], 2)}x, generation log-probs {_f(result['floor_multiple_B_generation'], 2)}x, "
        f"TRL {_f(result['floor_multiple_B_trl'], 2)}x",
        f"- R2M / RLOO step time: A {_f(result['r2m_overhead_A'])}, B {_f(result['r2m_overhead_B'])}; peak RSS: "
        f"A {_f(result['r2m_memory_ratio']['A'])}, B {_f(result['r2m_memory_ratio']['B'])}",
        f"- P4 (size B, r2m): prompts x K doubled {_f(p4['ratio_prompts_x2'], 2)}x, response length doubled "
        f"{_f(p4['ratio_tokens_x2'], 2)}x the step time (linear: 2.00); control, prompts x K doubled under "
        f"run.malloc=system (glibc's defaults): {_f(p4.get('ratio_prompts_x2_system_malloc'), 2)}x", "",
        *_phase_rows(result, "B"), "", *_phase_rows(result, "A"),
    ]
    return "\n".join(lines)


def write_readme_section(readme: Path, result: dict, json_path: str) -> None:
    """Replace (or append) the bench-speed section of ``readme`` with this result's tables."""
    body = "\n".join([BEGIN, f"Last run: `{Path(json_path).name}` (preset {result['preset']}).", "",
                      format_speed(result), END])
    replace_section(readme, body, BEGIN, END)


def replace_section(readme: Path, body: str, begin: str, end: str) -> None:
    """Write ``body`` (which starts with ``begin`` and ends with ``end``) over the section between those markers in
    ``readme``, or append it when the markers are not there; atomically."""
    text = readme.read_text() if readme.exists() else ""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + body + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + body + "\n"
    atomic_write_text(readme, text)
