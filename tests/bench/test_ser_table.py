"""SER Table 1 of the benchmark (r2m_bench.ser_table) on constructed run summaries."""

from __future__ import annotations

from r2m_bench.ser_table import ser_tables

HEADERS = ["RM (hinge loss)", "human labels", "pairs trained", "test acc", "test gold acc", "val acc",
           "test acc, equal length", "test acc, unequal length"]


def _result(ser_acc: float, equal: float, statuses: list[str], n_equal: int) -> dict:
    rows = [["Loop 0 (seed)", 488, 390, 0.7, 0.8, 0.7, 0.6, 0.75],
            [f"SER (loop {len(statuses)})", 488, 1200, ser_acc, 0.8, 0.7, equal, 0.8],
            ["Full dataset", 3250, 3250, 0.82, 0.85, 0.8, 0.7, 0.85]]
    loops = [{"loop": 0, "status": "seed", "pairs": 390, "frac": 0.12}]
    loops[0]["test_acc"] = 0.7
    loops += [{"loop": k + 1, "status": s, "pairs": 1200, "frac": 0.37, "test_acc": 0.71}
              for k, s in enumerate(statuses)]
    return {"table": {"headers": HEADERS, "rows": rows}, "loops": loops,
            "stop": {"reason": "stop_status", "loop": len(statuses) + 1}, "test_n_equal_len": n_equal}


def test_table_means_the_length_split_and_counts_status2() -> None:
    text = ser_tables([_result(0.71, 0.55, ["status1"], 120), _result(0.73, 0.65, ["status1", "status2"], 131)])
    ser_row = next(line for line in text.splitlines() if line.startswith("| SER (kept loop)"))
    # test acc (0.71, 0.73): mean 0.72, sd 0.014; equal length (0.55, 0.65): 0.60 ± 0.071
    assert "0.720 ± 0.014" in ser_row and "0.600 ± 0.071" in ser_row and "1200" in ser_row
    assert "Status 2 reached in 1 of 2 runs" in text and "per run: 120/131." in text
    assert "1200 (37%, status2, test 0.710)" in text and "stop_status at loop 3" in text
    assert "| SER (loop 2)" in text  # the kept loop of the second run


def test_a_run_made_before_the_split_shows_a_dash() -> None:
    old = _result(0.71, float("nan"), ["status1"], None)
    assert "| -" in next(line for line in ser_tables([old]).splitlines() if line.startswith("| SER (kept loop)"))
