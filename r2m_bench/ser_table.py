"""SER Table 1 of the benchmark: what one SER run keeps for the report, and the table per
world (mean ± std over seeds; the pairs, share and learning status of each loop; why the loop stopped)."""

from __future__ import annotations

from typing import Sequence

from r2m.reports.tables import format_table, mean_sd


def ser_summary(res) -> dict:
    """What the report needs from one :class:`r2m.recipes.ser.SERResult`: Table 1's rows and the loops."""
    headers, rows = res.table
    return {"table": {"headers": list(headers), "rows": [list(r) for r in rows]},
            "loops": [{"loop": h["loop"], "status": h["status"], "pairs": int(h["ser/selected"]),
                       "frac": h["ser/selected_frac"], "pseudo_acc": h.get("ser/pseudo_acc", float("nan")),
                       "val_acc": h["ser/val_acc"], "test_acc": h["ser/test_acc"]} for h in res.history],
            "stop": res.stop, "test_n_equal_len": res.history[0].get("ser/test_n_equal_len")}


def ser_tables(results: Sequence[dict]) -> str:
    """SER Table 1 (mean ± std over seeds) and the pairs each loop selected, per seed (Markdown)."""
    headers = results[0]["table"]["headers"]
    rows = []
    for i, first in enumerate(results[0]["table"]["rows"]):
        name = "SER (kept loop)" if i == 1 else first[0]
        cells = [r["table"]["rows"][i] for r in results]
        counts = sorted({str(c[1]) for c in cells}), sorted({str(c[2]) for c in cells})
        rows.append([name, "/".join(counts[0]), "/".join(counts[1]),
                     *[mean_sd([c[j] for c in cells]) for j in range(3, len(headers))]])
    main = format_table(headers, rows, markdown=True)
    n_loops = max(len(r["loops"]) for r in results)
    loop_rows = []
    for seed, r in enumerate(results):
        cells = [f"{lp['pairs']} ({100 * lp['frac']:.0f}%, {lp['status']}, test {lp['test_acc']:.3f})"
                 for lp in r["loops"]]
        stop = r.get("stop") or {}
        loop_rows.append([seed, *cells, *["-"] * (n_loops - len(cells)),
                          f"{stop.get('reason', '?')} at loop {stop.get('loop', '?')}", r["table"]["rows"][1][0]])
    loops = format_table(["run", *[f"loop {k}" for k in range(n_loops)], "ended", "kept"], loop_rows,
                         markdown=True)
    status2 = sum(any(lp["status"] == "status2" for lp in r["loops"]) for r in results)
    equal = "/".join("?" if r.get("test_n_equal_len") is None else str(r["test_n_equal_len"]) for r in results)
    return (main + "\n\nPairs trained per loop (share of the RM data, learning status, test accuracy), how the loop "
            "ended and the loop kept (`ser.keep`):\n\n" + loops
            + f"\n\nStatus 2 reached in {status2} of {len(results)} runs. Test pairs of equal length, per run: "
            + f"{equal}.")
