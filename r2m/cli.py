"""The ``r2m`` command line. ``main(argv) -> int`` runs in-process (tests call it directly).

    r2m world   [-c CFG] [a.b=c ...] [--out DIR]   write the gold-reward world's JSONL files
    r2m sft     [-c CFG] [a.b=c ...]               supervised fine-tuning of the policy
    r2m rm      [-c CFG] [a.b=c ...]               Bradley-Terry reward-model training
    r2m rl      [-c CFG] [a.b=c ...]               policy optimisation (rloo, grpo, reinforce_pp, ...)
    r2m eval policy|rm [-c CFG] [a.b=c ...]        evaluate a policy or a reward model
    r2m eval winrate --policy-responses P --ref-responses R [--judge gold|reward_model|api]
    r2m analyze hidden-states [-c CFG] [--out DIR] [--checkpoints DIR ...]   R2M Section 3 analyses
    r2m demo    [-c CFG] [a.b=c ...]               world -> SFT -> RM -> RL arms -> table and plot
    r2m ser     [-c CFG] [a.b=c ...] [--resume]    SER: self-evolved RM loops, Loop 0 / SER / Full table, then PPO
    r2m bench cost [-c CFG] [a.b=c ...] [--steps N] [--out F]   R2M's cost (Figure 7)
    r2m bench speed [--preset smoke|paper] [--out F]            r2m against TRL's RLOOTrainer (issue 18)
    r2m bench memory [--preset smoke|paper] [--out F]           peak memory per rank and phase of the paper configs
    r2m bench [run] --preset smoke|paper [--out F]  the issue-14 design: verdicts at matched KL (docs/BENCHMARKS.md)
    r2m config  [-c CFG] [a.b=c ...]               print the resolved config
    r2m monitor RUN_DIR [name=value ...] [--no-plot]   replay the over-optimisation alarm on a finished run

Every subcommand runs on the world's defaults when no config file is given.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path
from typing import Optional, Sequence

from r2m.runtime import runlock
from r2m.config import Config, load_config, to_dict
from r2m.config.help import config_help
from r2m.config.trl_names import cli_overrides
from r2m.errors import R2MError
from r2m.utils import quiet_transformers
from r2m.errors import NumericError, TrainingInterrupted
from r2m.recipes.bench import run_bench
from r2m.recipes.bench_report import run_bench_design
from r2m.recipes.demo import run_demo
from r2m.recipes.eval import analyze_hidden_states, eval_policy, eval_rm, eval_winrate
from r2m.recipes.pipeline import data_paths, ensure_world_rm_backbone, resolve_inputs, run_rm, run_sft, world_data
from r2m.recipes.rl.run import run_rl
from r2m.recipes.ser import run_ser
from r2m.world import generate_world
from r2m.recipes.alarm import check_rm_path
from r2m.recipes.bench_speed import run_bench_speed
from r2m.recipes.bench_memory import run_bench_memory
from r2m.recipes.monitor import cmd_monitor


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", default=None, help="YAML config file (default: the world's defaults)")
    p.add_argument("overrides", nargs="*", help="overrides: section.key=value, --section.key value, or TRL's names "
                   "(--num_generations 4, --output_dir runs/x; docs/TRL.md)")
    p.add_argument("--help-config", action="store_true", help="print every config field with its docstring, and exit")


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    """Parse, accepting overrides after options too (``r2m eval policy -c f.yaml a.b=c``).

    argparse matches a subcommand's positionals in one go, so after ``eval policy`` the empty
    override list is already taken when ``-c f.yaml`` comes; the leftover ``a.b=c`` are overrides.
    """
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), "rl")
    # --section.key value and TRL's names (--num_generations 4) become a.b=c (r2m.config.trl_names)
    try:
        argv = cli_overrides(argv, "rm" if command == "rm" else "sft" if command == "sft" else "rl")
    except R2MError as e:
        parser.error(str(e))  # exits with status 2, the usage and the message
    args, extra = parser.parse_known_args(argv)
    unknown = [e for e in extra if e.startswith("-") or "=" not in e]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        if not hasattr(args, "overrides"):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    return args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="r2m", description="RLHF whose reward models keep up with the policy.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("world", help="write the gold-reward world's prompts, demonstrations and preferences")
    _add_common(p)
    p.add_argument("--out", default=None, help="output directory (default: the world cache under run.root)")
    p.add_argument("--models", action="store_true",
                   help="also build the world's SFT policy and reward model(s) into the cache (do this in one process "
                        "before a multi-process launch)")
    for name, text in [("demo", "the end-to-end world demo"), ("config", "print the resolved config as YAML")]:
        _add_common(sub.add_parser(name, help=text))
    for name, text in [("sft", "supervised fine-tuning"), ("rm", "reward-model training (Bradley-Terry)")]:
        p = sub.add_parser(name, help=text)
        _add_common(p)
        p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint (run.resume=auto)")
    p = sub.add_parser("rl", help="policy optimisation against the reward")
    _add_common(p)
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint (run.resume=auto)")
    p = sub.add_parser("ser", help="SER: self-evolved reward learning, then PPO with the evolved RM")
    _add_common(p)
    p.add_argument("--resume", action="store_true", help="continue after the last completed loop (run.resume=auto)")
    p = sub.add_parser("eval", help="evaluate a policy, a reward model, or win rates")
    p.add_argument("what", choices=["policy", "rm", "winrate"])
    _add_common(p)
    p.add_argument("--policy-responses", help="winrate: JSONL of {prompt, response} from the policy")
    p.add_argument("--ref-responses", help="winrate: JSONL of {prompt, response} to compare against")
    p.add_argument("--judge", default="gold", choices=["gold", "reward_model", "api"],
                   help="winrate: the judge (api: eval.judge.* settings, else R2M_JUDGE_* env vars; docs/EVAL.md)")
    p = sub.add_parser("analyze", help="analyses of the R2M paper (hidden states)")
    p.add_argument("what", choices=["hidden-states"])
    _add_common(p)
    p.add_argument("--out", default=None, help="output directory (default: <run.root>/<run.name>/analysis)")
    p.add_argument("--checkpoints", nargs="*", default=[], help="policy checkpoints for the similarity matrices")
    p = sub.add_parser("bench", help="benchmarks: cost (Figure 7) or the methods-by-seeds matrix (run)")
    p.add_argument("what", nargs="?", default="run", help="cost, speed, memory or run (default: run)")
    _add_common(p)
    p.add_argument("--preset", default="smoke", choices=["smoke", "paper"],
                   help="run: matrix size; speed, memory: work size (smoke: seconds, tiny; paper: the real shapes)")
    p.add_argument("--steps", type=int, default=12, help="cost: RL steps per arm (the first is a warm-up)")
    p.add_argument("--workers", type=int, default=1, help="run: processes for the design's runs, one torch "
                   "thread each (2 on a 2-core machine; results are the same files, so a bench resumes either way)")
    p.add_argument("--out", default=None, help="cost, memory: JSON path (benchmarks/cost.json, "
                   "benchmarks/memory.json); run: Markdown path "
                   "(docs/BENCHMARKS.md for paper, <run.root>/bench-smoke/BENCHMARKS.md for smoke)")
    p = sub.add_parser("monitor", help="replay the over-optimisation alarm on a finished run (docs/MONITOR.md)")
    p.add_argument("run_dir", help="the run directory (<run.root>/<run.name>)")
    p.add_argument("overrides", nargs="*", help="alarm thresholds, e.g. token_js=0.05 min_signals=1 (null: off)")
    p.add_argument("--no-plot", action="store_true", help="do not write RUN_DIR/plots/monitor.png")
    return parser


def cmd_world(cfg: Config, out: Optional[str], models: bool = False) -> int:

    files = generate_world(cfg.world, out) if out else world_data(cfg)
    print(json.dumps({k: str(v) for k, v in vars(files).items()}, indent=2))
    print(Path(files.summary).read_text())
    if models:
        inputs = resolve_inputs(cfg)
        built = {"policy": inputs.policy, "reward_model": inputs.reward_model}
        if cfg.rl.monitor.enabled:

            built["check_rm"] = check_rm_path(cfg, inputs.world)  # the monitor's (docs/MONITOR.md)
        print(json.dumps(built, indent=2))
    return 0


def cmd_sft(cfg: Config) -> int:
    out = Path(cfg.run.root) / cfg.run.name / "checkpoints" / "final"
    result = run_sft(cfg, cfg.policy.path, "policy", data_paths(cfg, ("sft",))["sft"], out, cfg.run.name, trackers=True,
                     resume=cfg.run.resume == "auto")
    print(f"sft: {result.steps} steps, final loss {result.final_loss:.4f}; model saved to {out}")
    return 0


def cmd_rm(cfg: Config) -> int:
    paths = data_paths(cfg, ("pref_train", "pref_eval"))
    init = cfg.rm.init_from or str(ensure_world_rm_backbone(cfg))
    out = Path(cfg.run.root) / cfg.run.name / "checkpoints" / "final"
    result = run_rm(cfg, init, paths["pref_train"], paths["pref_eval"], out, cfg.run.name, trackers=True,
                    resume=cfg.run.resume == "auto", adapt=True)
    acc = result.eval
    print(f"rm: {result.steps} steps, final BT loss {result.final_loss:.4f}; "
          f"held-out accuracy {acc.accuracy:.3f} (vs gold {acc.gold_accuracy:.3f}, n={acc.n}); saved to {out}")
    return 0


def cmd_rl(cfg: Config) -> int:
    res = run_rl(cfg)
    print(f"rl: done in {res.wall_s:.1f}s; run directory {res.run_dir}")
    for k, v in sorted(res.final_eval.items()):
        print(f"  {k:28s} {v:.4f}")
    if res.peak_gold_step is not None:
        print(f"  {'peak gold step':28s} {res.peak_gold_step}")
    if res.alarm_step is not None:
        kept = f"; kept {res.best_before_alarm}" if res.best_before_alarm is not None else ""
        print(f"  {'over-optimisation alarm step':28s} {res.alarm_step}{kept}")
    return 0


def cmd_eval(cfg: Config, what: str) -> int:
    print(json.dumps(eval_policy(cfg) if what == "policy" else eval_rm(cfg), indent=2))
    return 0


def cmd_demo(cfg: Config) -> int:
    run_demo(cfg)
    return 0


def _cmd_extra(args, cfg: Config) -> int:
    """bench, analyze and eval winrate: subcommands with flags of their own."""
    if args.command == "bench":
        if args.what == "cost":
            return run_bench(cfg, "cost", args.steps, args.out or "benchmarks/cost.json")
        if args.what == "speed":  # issue 18: r2m against TRL's RLOOTrainer (benchmarks/README.md)

            return run_bench_speed(cfg, args.preset, args.out)
        if args.what == "memory":  # peak memory per rank and phase at the paper configs' shapes (benchmarks/README.md)
            return run_bench_memory(args.preset, args.out, cfg.run.root)
        # The issue-14 design (r2m/recipes/bench_design.py); the report's default path is bench_report.default_out.
        return run_bench_design(cfg, args.preset, args.out, command=args.command_line, workers=args.workers)
    if args.command == "analyze":
        print(analyze_hidden_states(cfg, args.out, args.checkpoints))
        return 0

    print(json.dumps(eval_winrate(cfg, args.policy_responses, args.ref_responses, args.judge), indent=2))
    return 0


def cmd_ser(cfg: Config) -> int:
    run_ser(cfg)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    # The command as typed (in-process callers pass argv): the bench report's provenance names it.
    args.command_line = "r2m " + shlex.join(sys.argv[1:] if argv is None else [str(a) for a in argv])
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    quiet_transformers()
    try:
        if args.command == "bench" and args.what not in ("cost", "run", "speed", "memory"):
            # `r2m bench --preset smoke a.b=c`: the optional positional took the first override.
            args.overrides, args.what = [args.what, *args.overrides], "run"
        if args.command == "monitor":

            return cmd_monitor(args.run_dir, args.overrides, not args.no_plot)
        if getattr(args, "help_config", False):
            print(config_help())
            return 0
        overrides = list(args.overrides) + (["run.resume=auto"] if getattr(args, "resume", False) else [])
        if args.command in ("bench", "analyze") or getattr(args, "what", None) == "winrate":
            return _cmd_extra(args, load_config(args.config, overrides))
        cfg = load_config(args.config, overrides)
        if args.command == "config":
            import yaml

            print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
            return 0
        if args.command == "world":
            return cmd_world(cfg, args.out, args.models)
        if args.command == "eval":
            return cmd_eval(cfg, args.what)
        command = {"sft": cmd_sft, "rm": cmd_rm, "rl": cmd_rl, "demo": cmd_demo, "ser": cmd_ser}[args.command]
        if args.command == "demo" or not runlock.is_rank_zero():
            return command(cfg)
        # One run per directory: a second process is refused at once, before any model loads.
        with runlock.holding(Path(cfg.run.root) / cfg.run.name):
            return command(cfg)
    except R2MError as e:
        print(f"r2m: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        if isinstance(e, TrainingInterrupted):
            print(f"r2m: stopped: {e}", file=sys.stderr)
            return 130
        if isinstance(e, NumericError):
            print(f"r2m: error: {e}", file=sys.stderr)
            return 3
        raise


def main_entry() -> None:
    sys.exit(main())
