"""``r2m bench speed``: the FLOP floor by hand, answers that never stop early, the report section,
and the command end to end at the smoke size (seconds; no timing is asserted)."""

from __future__ import annotations

import json

import pytest
import torch

from r2m.cli import main
from r2m.config.models import ArchConfig
from r2m.experience.sampling import generate
from r2m.models.forward import left_pad
from r2m.world.tokenizer import build_tokenizer
from r2m_bench.speed import no_eos_lm, step_flops, summarize
from r2m_bench.speed_report import BEGIN, END, write_readme_section
from r2m_bench.speed_trl import trl_available


def test_step_flops_by_hand() -> None:
    # N = 3 policy weights, 5 RM weights, 7 tokens, 2 epochs: 2NT = 42 a forward pass.
    f = step_flops(3, 5, 7.0, 2)
    assert f == {"generate": 42.0, "logprobs": 84.0, "reward": 70.0, "update": 252.0}


def test_no_eos_lm_answers_run_to_the_limit() -> None:
    tok = build_tokenizer("policy")
    model = no_eos_lm(ArchConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_positions=64),
                      "policy", 0)
    ids, mask = left_pad([tok("3 1 2")["input_ids"]] * 16, tok.pad_token_id)
    torch.manual_seed(0)
    gen = generate(model, ids, mask, temperature=1.0, max_new_tokens=12, eos_token_id=tok.eos_token_id,
                   pad_token_id=tok.pad_token_id)
    assert gen.action_mask.shape == (16, 12) and bool(gen.action_mask.all())


def test_summarize_pools_rounds() -> None:
    parts = [{"step_s": [0.7, 0.9], "peak_rss_mb": 10.0, "phases": {"update": 0.5}},
             {"step_s": [0.8], "peak_rss_mb": 12.0, "phases": {"update": 0.7}}]
    s = summarize(parts)
    assert (s["median_s"], s["min_s"], s["max_s"], s["peak_rss_mb"]) == (0.8, 0.7, 0.9, 12.0)
    assert s["phases"]["update"] == pytest.approx(0.6)


def test_readme_section_is_replaced_in_place(tmp_path, monkeypatch) -> None:
    import r2m_bench.speed_report as speed

    readme = tmp_path / "README.md"
    readme.write_text("# Benchmarks\n\nintro\n")
    monkeypatch.setattr(speed, "format_speed", lambda result: f"table {result['preset']}")
    write_readme_section(readme, {"preset": "one"}, "speed.json")
    (tmp_path / "README.md").write_text(readme.read_text() + "\n## after\n")
    write_readme_section(readme, {"preset": "two"}, "speed.json")
    text = readme.read_text()
    assert text.count(BEGIN) == 1 and text.count(END) == 1
    assert "table two" in text and "table one" not in text and text.startswith("# Benchmarks") and "## after" in text


@pytest.mark.slow
def test_bench_speed_smoke(tiny, world_artifacts, tmp_path, capsys) -> None:
    out = tmp_path / "speed.json"
    assert main(["bench", "speed", *tiny, "run.name=speed-smoke", "--preset", "smoke", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["ratio_vs_trl"]) == {"A", "B"}
    assert {"floor_multiple_B", "r2m_overhead_B", "r2m_overhead_A", "p4", "sizes", "floor"} <= set(result)
    assert result["floor_multiple_B"] > 0 and result["r2m_overhead_B"] > 0
    for size in ("A", "B"):
        arms = result["sizes"][size]
        assert {"r2m", "r2m_generation", "r2m_r2m"} <= set(arms)
        assert {"generate", "logprobs", "reward", "update", "step"} <= set(arms["r2m"]["phases"])
        assert ("trl" in arms) == trl_available() and (result["ratio_vs_trl"][size] is not None) == trl_available()
    assert result["sizes"]["B"]["r2m"]["response_length"] == 6  # size B: every answer runs to b_tokens
    assert result["p4"]["response_length"]["tokens_x2"] == 12
    assert {"generate", "update"} <= set(result["p4"]["phases"]["prompts_x2"])
    assert result["p4"]["peak_rss_mb"]["base"] > 0
    # the control: base and prompts x K doubled again under glibc's default allocator
    assert result["p4"]["ratio_prompts_x2_system_malloc"] > 0 and result["environment"]["malloc"] == "heap"
    assert result["p4"]["response_length"]["prompts_x2_system_malloc"] == 6
    assert BEGIN in (tmp_path / "README.md").read_text()
    assert "r2m / TRL" in capsys.readouterr().out
