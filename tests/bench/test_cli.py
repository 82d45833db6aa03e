"""``r2m bench`` as an installed command (r2m_bench.cli): declared in pyproject.toml's entry-point group
``r2m.commands``, found by r2m's command line, and a clear error when it is not installed."""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path

import tomllib

import r2m.cli
from r2m.cli import COMMANDS, main, parse_args
from r2m_bench.cli import add_command, run

ROOT = Path(__file__).resolve().parents[2]


def test_pyproject_declares_the_bench_command() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"][COMMANDS] == {"bench": "r2m_bench.cli:add_command"}
    assert "r2m_bench*" in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"][
        "find"]["include"]


def test_the_installed_entry_point_is_the_bench() -> None:
    """Fails until r2m is installed again (``pip install -e .``) after the entry point was added."""
    found = {ep.name: ep for ep in entry_points(group=COMMANDS)}
    assert "bench" in found, f"no 'bench' entry point in {COMMANDS!r}: reinstall r2m (pip install -e .)"
    assert found["bench"].load() is add_command


def test_bench_parses_its_flags_through_r2m() -> None:
    args = parse_args(["bench", "cost", "--steps", "3", "rl.k=2", "--out", "x.json"])
    assert (args.command, args.what, args.steps, args.overrides, args.out) == ("bench", "cost", 3, ["rl.k=2"], "x.json")
    assert args.run_command is run
    args = parse_args(["bench", "--preset", "paper", "--workers", "2"])
    assert (args.what, args.preset, args.workers) == ("run", "paper", 2)


def test_an_override_in_the_subcommand_place_is_an_override(monkeypatch) -> None:
    """``r2m bench --preset smoke a.b=c``: the optional positional takes ``a.b=c``; run() gives it back."""
    import r2m_bench.report as report

    seen = {}
    monkeypatch.setattr(report, "run_bench_design", lambda cfg, preset, out, command, workers:
                        seen.update(k=cfg.rl.k, preset=preset, command=command) or 0)
    assert main(["bench", "--preset", "smoke", "rl.k=3"]) == 0
    assert seen == {"k": 3, "preset": "smoke", "command": "r2m bench --preset smoke rl.k=3"}


def test_without_the_entry_point_bench_says_how_to_install(monkeypatch, capsys) -> None:
    monkeypatch.setattr(r2m.cli, "entry_points", lambda group: [])
    for argv in (["bench", "cost", "--steps", "2"], ["bench", "--preset", "smoke", "--num_generations", "4", "a.b=1"],
                 ["bench", "--help"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "r2m bench: the benchmark (the r2m_bench package) is not installed" in err
        assert "r2m.commands" in err and "pip install -e ." in err
    assert main(["config", "rl.k=2"]) == 0  # the library's commands do not need it


def test_bench_cell_reads_its_flags(monkeypatch) -> None:
    """``r2m bench cell --world W --arm A --seed S``: --seed reaches the cell although r2m's parser reads it as
    TRL's name."""
    import r2m_bench.report as report

    seen = {}
    monkeypatch.setattr(report, "run_cell", lambda cfg, preset, world, arm, seed, root, plan_from:
                        seen.update(preset=preset, world=world, arm=arm, seed=seed, root=root, plan=plan_from) or 0)
    assert main(["bench", "cell", "--preset", "paper", "--world", "noisy", "--arm", "r2m", "--seed", "7",
                 "--root", "/tmp/x"]) == 0
    assert seen == {"preset": "paper", "world": "noisy", "arm": "r2m", "seed": 7, "root": "/tmp/x", "plan": None}
