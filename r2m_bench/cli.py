"""``r2m bench``: the benchmark's subcommand, installed into r2m's command line through the entry-point group
``r2m.commands`` (pyproject.toml), which :func:`r2m.cli.build_parser` reads.

    r2m bench cost [-c CFG] [a.b=c ...] [--steps N] [--out F]   R2M's cost (Figure 7)
    r2m bench speed [--preset smoke|paper] [--out F]            r2m against TRL's RLOOTrainer
    r2m bench memory [--preset smoke|paper] [--out F]           peak memory per rank and phase of the paper configs
    r2m bench [run] --preset smoke|paper [--workers N] [--out F]  the design, phases A-C, verdicts (docs/BENCHMARKS.md)
    r2m bench report --from docs/bench/trajectories.json [--out F]  the verdicts and report again, nothing run
    r2m bench cell --world W --arm A --seed S [--preset paper] [--root DIR] [--from F]  one run of the design

Only the config layer is imported here, so ``r2m --help`` and ``r2m bench --help`` come before torch loads; each
benchmark imports its module when it runs.
"""

from __future__ import annotations

import argparse

from r2m.cli import add_common, resolve_config

WHATS = ("cost", "speed", "memory", "run", "report", "cell")


def add_command(sub: argparse._SubParsersAction) -> None:
    """Add ``bench`` to r2m's subcommands; its parser sets ``run_command`` (:func:`run`)."""
    p = sub.add_parser("bench", help="benchmarks: cost (Figure 7), speed against TRL, or the methods-by-seeds "
                       "matrix (run)")
    p.add_argument("what", nargs="?", default="run", help="cost, speed, memory, run, report or cell (default: run)")
    add_common(p)
    p.add_argument("--preset", default="smoke", choices=["smoke", "paper"],
                   help="run: matrix size; speed, memory: work size (smoke: tiny; paper: benchmarks/README.md)")
    p.add_argument("--steps", type=int, default=12, help="cost: RL steps per arm (the first is a warm-up)")
    p.add_argument("--workers", type=int, default=1, help="run: processes for the design's runs, one torch "
                   "thread each (2 on a 2-core machine; results are the same files, so a bench resumes either way)")
    p.add_argument("--out", default=None, help="cost, memory: JSON path (benchmarks/cost.json, memory.json); "
                   "run: Markdown path "
                   "(docs/BENCHMARKS.md for paper, <run.root>/bench-smoke/BENCHMARKS.md for smoke)")
    p.add_argument("--from", dest="from_path", default=None, help="report: the trajectories.json to read; cell: "
                   "the one whose plan (budgets, step caps, R2M setting) the cell takes (default "
                   "docs/bench/trajectories.json for paper)")
    p.add_argument("--world", default=None, help="cell: the world")
    p.add_argument("--arm", default=None, help="cell: the arm (r2m, vanilla, ladder_0.25, ...; '<arm>-kl' for the "
                   "KL-targeted regime)")
    p.add_argument("--seed", type=int, default=None, help="cell: the seed")
    p.add_argument("--root", default=None, help="cell: where the run goes (default <run.root>/cells)")
    p.set_defaults(run_command=run)


def run(args: argparse.Namespace) -> int:
    """The benchmark named by ``args.what``, on the config resolved as every r2m command resolves it."""
    if args.what not in WHATS:
        # `r2m bench --preset smoke a.b=c`: the optional positional took the first override.
        args.overrides, args.what = [args.what, *args.overrides], "run"
    cfg, _ = resolve_config(args)
    from r2m.utils import quiet_transformers  # heavy: lazy

    quiet_transformers()
    if args.what == "cost":
        from r2m_bench.cost import run_bench  # heavy: lazy

        return run_bench(cfg, "cost", args.steps, args.out or "benchmarks/cost.json")
    if args.what == "speed":  # r2m against TRL's RLOOTrainer (benchmarks/README.md)
        from r2m_bench.speed import run_bench_speed  # heavy: lazy

        return run_bench_speed(cfg, args.preset, args.out)
    if args.what == "memory":  # peak memory per rank and phase at the paper configs' shapes (benchmarks/README.md)
        from r2m_bench.memory import run_bench_memory  # heavy: lazy

        return run_bench_memory(args.preset, args.out, cfg.run.root)
    if args.what == "report":
        from r2m_bench.report import report_from  # heavy: lazy

        if not args.from_path:
            raise SystemExit("r2m bench report: --from <trajectories.json> is required")
        return report_from(args.from_path, args.out, args.command_line)
    if args.what == "cell":
        from r2m_bench.report import run_cell  # heavy: lazy

        trl = list(getattr(args, "trl", None) or [])
        if args.seed is None and "--seed" in trl:  # r2m's parser reads --seed as TRL's name (run.seed)
            args.seed = int(trl[trl.index("--seed") + 1])
        missing = [f"--{k}" for k in ("world", "arm", "seed") if getattr(args, k) is None]
        if missing:
            raise SystemExit(f"r2m bench cell: {', '.join(missing)} required")
        return run_cell(cfg, args.preset, args.world, args.arm, args.seed, args.root, args.from_path)
    from r2m_bench.report import run_bench_design  # heavy: lazy

    return run_bench_design(cfg, args.preset, args.out, command=args.command_line, workers=args.workers)
