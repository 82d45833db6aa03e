"""The tables of ``r2m bench memory`` (benchmarks/memory.json) and its section of benchmarks/README.md."""

from __future__ import annotations

import json
from pathlib import Path

from r2m.reports.tables import format_table
from r2m_bench.speed_report import replace_section

BEGIN, END = "<!-- bench-memory:begin -->", "<!-- bench-memory:end -->"


def _gb(x) -> str:
    return "-" if x is None else f"{x:.1f}"


def _gib(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def _yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


def config_table(result: dict) -> str:
    """Per config: the per-rank peak on its GPUs and on one GPU, beside r2m's and TRL's log-prob chunk."""
    rows = []
    for name, c in result["configs"].items():
        one = c.get("one_gpu", {}).get("per_rank_peak_gb", c["per_rank_peak_gb"] if c["gpus"] == 1 else None)
        chunk = c["logprob_chunk"]
        rows.append([f"`{name}`", str(c["gpus"]), _gb(c["per_rank_peak_gb"]), c["peak_phase"], _gb(one),
                     f"{chunk['rows']} x {c['shapes']['prompt_tokens'] + c['shapes']['response_tokens']}",
                     _gib(chunk["r2m_gib"]), _gib(chunk["trl_gib"]), f"{100 * c['check']['max_rel_error']:.2f}%"])
    head = ["config", "GPUs", "per rank, 8x80 GB (GB)", "peak phase", "one 80 GB GPU (GB)", "log-prob chunk",
            "r2m chunk (GiB)", "TRL chunk (GiB)", "depth-fit check error"]
    return format_table(head, rows, markdown=True)


def host_table(result: dict) -> str:
    """Per config: the host peak per rank while the run loads (rank 0, each other rank) and per node."""
    rows = []
    cases = dict(result["configs"])
    cases["single GPU (0.5B + 8B RM)"] = result["single_gpu"]
    for name, c in cases.items():
        h = c.get("host")
        if h is None:
            continue
        other = h.get("other_ranks")
        rows.append([f"`{name}`" if name in result["configs"] else name, str(c.get("gpus", 1)),
                     _gb(h["rank0"]["peak_gb"]), _gb(other["peak_gb"]) if other else "-", _gb(h["node_gb"]),
                     _gb(h["node_page_cache_gb"]),
                     ", ".join(f"{k} {v:.1f}" for k, v in h["rank0"]["stages_gb"].items())])
    head = ["config", "GPUs", "host peak, rank 0 (GB)", "each other rank (GB)", "node (GB)",
            "checkpoints mapped, node (GB)", "rank 0 stages, anonymous (GB)"]
    return format_table(head, rows, markdown=True)


def host_check_line(check: dict) -> str:
    """The host formula's CPU check, one line."""
    cases = "; ".join(f"width {c['width']} {c['stage']}: {c['measured_mb']:.0f} MB measured, "
                      f"{c['predicted_mb']:.0f} predicted" for c in check["cases"])
    return (f"- Host check (the library's loading calls in fresh processes, real vocabularies, bf16 checkpoints; "
            f"anonymous memory, sampled): {cases}; largest error {check['max_error_mb']:.1f} MB; the process "
            f"itself {check['process_bytes'] / 1e9:.2f} GB before loading.")


def phase_table(result: dict) -> str:
    """GB per rank at each phase's peak, one column per config (on its GPUs) and the single-GPU case."""
    cols = {name: c["phases"] for name, c in result["configs"].items()}
    cols["single GPU (0.5B + 8B RM)"] = result["single_gpu"]["phases"]
    phases = list(next(iter(cols.values())))
    rows = [[p, *(_gb(c.get(p)) for c in cols.values())] for p in phases]
    return format_table(["phase", *(f"`{n}`" if n in result["configs"] else n for n in cols)], rows, markdown=True)


def format_memory(result: dict) -> str:
    s, chunk, t = result["single_gpu"], result["logprob_chunk"], result["targets"]
    lines = [config_table(result), "", "GB per rank at each phase's peak (weights, optimiser state and what the "
             "phase holds):", "", phase_table(result), "",
             f"- Single GPU, `{s['policy']}` + `{s['reward_model']}` with R2M: peak {_gb(s['peak_gb'])} GB "
             f"({s['peak_phase']}), {_gb(s['peak_with_margin_gb'])} GB with the margin; fits 80 GB: "
             f"{_yes(t['single_gpu_fits_80gb_with_margin'])}.",
             f"- Log-prob chunk, {chunk['rows']} rows x {chunk['tokens']} tokens at V = {chunk['vocab']:,}: r2m "
             f"{_gib(chunk['fsdp2']['r2m_gib'])} GiB under FSDP2, {_gib(chunk['one_gpu_or_ddp']['r2m_gib'])} GiB on "
             f"one GPU or DDP; TRL {_gib(chunk['fsdp2']['trl_gib'])} / {_gib(chunk['one_gpu_or_ddp']['trl_gib'])} "
             f"GiB; <= 3 GiB: {_yes(t['logprob_chunk_le_3gib'])}.",
             "- Per rank <= 64 GB on 8 GPUs: " + ", ".join(f"`{k}` {_yes(v)}"
                                                           for k, v in t["per_rank_8gpu_le_64gb"].items()) + "."]
    for m in result.get("missed", []):
        lines.append(f"- Missed, `{m['config']}` ({m['target']}): {m['why']}" + (f"; {m['note']}" if m.get("note")
                                                                                  else "") + ".")
    if result.get("not_measured"):
        lines.append("- Not measured: " + "; ".join(f"`{k}` ({v})" for k, v in result["not_measured"].items()) + ".")
    if any("host" in c for c in result["configs"].values()):
        lines += ["", "Host memory per rank while the run loads, anonymous (`r2m_bench/memory_host.py`: FSDP2 with "
                  "`fsdp_cpu_ram_efficient_loading`, the other ranks' trained policy on the meta device; each stage's "
                  "models go to the GPU before the next loads; checkpoints loaded in their own dtype are mapped from "
                  "their files, page cache the node's ranks share):", "", host_table(result)]
        if result.get("host_check"):
            lines += ["", host_check_line(result["host_check"])]
    return "\n".join(lines)


def compare_table(before: dict, after: dict) -> str:
    """GB per rank at each phase's peak, before -> after, per config on its GPUs and for the single-GPU case."""
    cols = {n: (before["configs"][n]["phases"], c["phases"]) for n, c in after["configs"].items()
            if n in before.get("configs", {})}
    cols["single GPU"] = (before["single_gpu"]["phases"], after["single_gpu"]["phases"])
    phases = list(after["single_gpu"]["phases"])
    rows = [[p, *(f"{_gb(b.get(p))} -> {_gb(a.get(p))}" for b, a in cols.values())] for p in phases]
    rows.append(["log-prob chunk (GiB)", *([""] * (len(cols) - 1)),
                 f"{_gib(before['logprob_chunk_gib'])} -> {_gib(after['logprob_chunk_gib'])}"])
    return format_table(["phase", *(f"`{n}`" if n in after["configs"] else n for n in cols)], rows, markdown=True)


def write_readme_section(readme: Path, result: dict, json_path: str) -> None:
    """Replace (or append) the bench-memory section of ``readme`` with this result's tables; with a
    ``memory_before.json`` beside ``json_path`` (another file), also the before -> after table."""
    parts = [BEGIN, f"Last run: `{Path(json_path).name}` (preset {result['preset']}).", "", format_memory(result)]
    before = Path(json_path).with_name("memory_before.json")
    if before.exists() and before.resolve() != Path(json_path).resolve():
        parts += ["", f"Before -> after (`{before.name}` -> `{Path(json_path).name}`), GB per rank:", "",
                  compare_table(json.loads(before.read_text()), result)]
    body = "\n".join([*parts, END])
    replace_section(readme, body, BEGIN, END)
