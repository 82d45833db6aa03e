"""The ``r2m`` command line. ``main(argv) -> int`` runs in-process (tests call it directly).

    r2m world   [-c CFG] [a.b=c ...] [--out DIR]   write the gold-reward world's JSONL files
    r2m world --ceilings [JSON] [a.b=c ...]        the presets' exact label ceilings (docs/bench/worlds.json)
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
from typing import Any, Optional, Sequence

from r2m.config.root import Config
from r2m.config.commands import check_models
from r2m.config.parsing import read_config_file, load_config, parse_override, replace_path, to_dict
from r2m.config.trl_map import FLAGS, map_trl, steps_for
from r2m.config.trl_names import RULES
from r2m.config.trl_recipe import parse_recipe, split_recipe
from r2m.errors import ConfigError, R2MError

# Only the config layer is imported here: `--help`, `--help-config` and argument errors come before torch loads
# (tests/test_cli.py checks sys.modules); each command imports its recipe when it runs.

_R2M_FLAGS = {"config", "help-config", "out", "models", "resume", "policy-responses", "ref-responses", "judge",
              "checkpoints", "preset", "steps", "workers", "no-plot", "verbose", "help", "ceilings"}


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", default=None, help="YAML config file: r2m's sections, or a flat TRL recipe "
                   "(r2m rl / rm; TRL's names at the top level, docs/TRL.md). Default: the world's defaults")
    p.add_argument("overrides", nargs="*", help="overrides: section.key=value, --section.key value, or TRL's names "
                   "(--num_generations 4, --output_dir runs/x; docs/TRL.md)")
    p.add_argument("--help-config", action="store_true", help="print every config field this command reads, with "
                   "its docstring, and exit")


def split_trl(argv: list[str]) -> tuple[list[str], list[str]]:
    """(argv with ``--section.key value`` as ``section.key=value``, the ``--<TRL name> [value]`` tokens)."""

    out, trl, i = [], [], 0
    while i < len(argv):
        token = argv[i]
        key = token[2:].split("=", 1)[0] if token.startswith("--") else ""
        if not key or key in _R2M_FLAGS or not ("." in key or key in RULES):
            out.append(token)
            i += 1
            continue
        if "=" in token:
            raw, i = token.split("=", 1)[1], i + 1
        elif key in FLAGS and (i + 1 == len(argv) or argv[i + 1].startswith("-")):
            raw, i = "true", i + 1
        elif i + 1 < len(argv):
            raw, i = argv[i + 1], i + 2
        else:
            raise R2MError(f"{token}: expected a value after it")
        if "." in key:
            out.append(f"{key}={raw}")
        else:
            trl += [f"--{key}", raw]
    return out, trl


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    """Parse, accepting overrides after options too (``r2m eval policy -c f.yaml a.b=c``).

    argparse matches a subcommand's positionals in one go, so after ``eval policy`` the empty
    override list is already taken when ``-c f.yaml`` comes; the leftover ``a.b=c`` are overrides.
    TRL's names (``--num_generations 4``) are kept apart in ``args.trl`` (``--name value`` pairs).
    """
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        argv, trl = split_trl(argv)
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
    if trl and not hasattr(args, "overrides"):
        parser.error(f"unrecognized arguments: {' '.join(trl)}")
    args.trl = trl
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
    p.add_argument("--ceilings", nargs="?", const="docs/bench/worlds.json", default=None, metavar="JSON",
                   help="write the labeller's ceiling and the best accuracy through the RM's view and the full view, "
                        "exactly, for each world preset (configs/world/worlds/, plus any a.b=c) to JSON (default: "
                        "docs/bench/worlds.json; docs/WORLDS.md)")
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
    from r2m.recipes.pipeline import resolve_inputs, world_data  # heavy: lazy
    from r2m.world.data import generate_world  # heavy: lazy

    files = generate_world(cfg.world, out) if out else world_data(cfg)
    print(json.dumps({k: str(v) for k, v in vars(files).items()}, indent=2))
    print(Path(files.summary).read_text())
    if models:
        inputs = resolve_inputs(cfg)
        built = {"policy": inputs.policy, "reward_model": inputs.reward_model}
        if cfg.rl.monitor.enabled:
            from r2m.recipes.alarm import check_rm_path  # heavy: lazy

            built["check_rm"] = check_rm_path(cfg, inputs.world)  # the monitor's (docs/MONITOR.md)
        print(json.dumps(built, indent=2))
    return 0


def cmd_world_ceilings(out: str, overrides: Sequence[str]) -> int:
    """``r2m world --ceilings``: :func:`r2m.world.ceiling.write_world_ceilings` over the bench's world presets."""
    from r2m.recipes.bench_design import WORLD_PRESETS, WORLDS  # heavy: lazy
    from r2m.world.ceiling import write_world_ceilings  # heavy: lazy

    worlds = {name: load_config(WORLD_PRESETS / f"{name}.yaml", overrides).world for name in WORLDS}
    print(json.dumps(write_world_ceilings(worlds, out), indent=2))
    print(f"written to {out}")
    return 0


def cmd_sft(cfg: Config) -> int:
    from r2m.recipes.pipeline import data_paths, run_sft  # heavy: lazy

    out = Path(cfg.run.root) / cfg.run.name / "checkpoints" / "final"
    result = run_sft(cfg, cfg.policy.path, "policy", data_paths(cfg, ("sft",))["sft"], out, cfg.run.name, trackers=True,
                     resume=cfg.run.resume == "auto")
    print(f"sft: {result.steps} steps, final loss {result.final_loss:.4f}; model saved to {out}")
    return 0


def cmd_rm(cfg: Config) -> int:
    """Without data.pref_eval (a user's model), no held-out accuracy: as TRL without an eval_dataset."""
    from r2m.recipes.pipeline import data_paths, ensure_world_rm_backbone, run_rm  # heavy: lazy

    paths = data_paths(cfg, ("pref_train",))
    init = cfg.rm.init_from or str(ensure_world_rm_backbone(cfg))
    out = Path(cfg.run.root) / cfg.run.name / "checkpoints" / "final"
    result = run_rm(cfg, init, paths["pref_train"], paths["pref_eval"] or None, out, cfg.run.name, trackers=True,
                    resume=cfg.run.resume == "auto", adapt=True)
    acc = result.eval
    held_out = (f"held-out accuracy {acc.accuracy:.3f} (vs gold {acc.gold_accuracy:.3f}, n={acc.n})" if acc is not None
                else "no held-out pairs (data.pref_eval)")
    print(f"rm: {result.steps} steps, final BT loss {result.final_loss:.4f}; {held_out}; saved to {out}")
    return 0


def _rl_rewards(cfg: Config, trl: Any) -> tuple[Any, list, float]:
    """A recipe's reward_funcs (dotted paths, TRL's names) beside the reward model: (primary, extra terms, the
    primary's weight), as :func:`r2m.recipes.rl.run.run_rl` takes them."""
    if trl is None or not trl.reward_funcs:
        return None, [], 1.0
    from r2m.api.rewards import CallableReward, import_reward  # heavy: lazy
    from r2m.models.loading import load_tokenizer  # heavy: lazy
    from r2m.recipes.pipeline import resolve_inputs  # heavy: lazy

    tok = load_tokenizer(resolve_inputs(cfg, need_rm=False).policy, cfg.policy.trust_remote_code)
    has_rm = cfg.reward.source.value == "model"
    weights = list(trl.reward_weights or [1.0] * (len(trl.reward_funcs) + has_rm))
    if len(weights) != len(trl.reward_funcs) + has_rm:
        raise R2MError(f"reward_weights: {len(weights)} weights for {len(trl.reward_funcs) + has_rm} rewards")
    terms = [(w, CallableReward(import_reward(name), tok)) for w, name in zip(weights[has_rm:], trl.reward_funcs)]
    if has_rm:
        return None, terms, weights[0]
    return terms[0][1], terms[1:], terms[0][0]


def cmd_rl(cfg: Config, trl: Any = None) -> int:
    from r2m.recipes.rl.run import run_rl  # heavy: lazy

    cfg = _steps_from_epochs(cfg, trl)
    primary, extra, weight = _rl_rewards(cfg, trl)
    res = run_rl(cfg, reward_fn=primary, extra_rewards=extra, reward_weight=weight)
    print(f"rl: done in {res.wall_s:.1f}s; run directory {res.run_dir}")
    for k, v in sorted(res.final_eval.items()):
        print(f"  {k:28s} {v:.4f}")
    if res.peak_gold_step is not None:
        print(f"  {'peak gold step':28s} {res.peak_gold_step}")
    if res.alarm_step is not None:
        kept = f"; kept {res.best_before_alarm}" if res.best_before_alarm is not None else ""
        print(f"  {'over-optimisation alarm step':28s} {res.alarm_step}{kept}")
    return 0


def _steps_from_epochs(cfg: Config, trl: Any) -> Config:
    """TRL's num_train_epochs (with max_steps <= 0): rl.steps from the number of training prompts."""
    if trl is None or trl.train_epochs is None:
        return cfg
    from r2m.models.loading import load_tokenizer  # heavy: lazy
    from r2m.recipes.pipeline import read_rows, resolve_inputs  # heavy: lazy

    inputs = resolve_inputs(cfg, need_rm=False)
    n = len(read_rows(cfg, "prompts", inputs.prompts, load_tokenizer(inputs.policy, cfg.policy.trust_remote_code)))
    steps = steps_for(trl, n, cfg.rl.prompts_per_step)
    logging.getLogger("r2m").info("num_train_epochs=%s over %d prompts: rl.steps=%d", trl.train_epochs, n,
                                  steps["rl.steps"])
    return replace_path(cfg, **{k.replace(".", "__"): v for k, v in steps.items()})


def cmd_eval(cfg: Config, what: str) -> int:
    from r2m.recipes.eval import eval_policy, eval_rm  # heavy: lazy

    print(json.dumps(eval_policy(cfg) if what == "policy" else eval_rm(cfg), indent=2))
    return 0


def cmd_demo(cfg: Config) -> int:
    from r2m.recipes.demo import run_demo  # heavy: lazy

    run_demo(cfg)
    return 0


def _cmd_extra(args, cfg: Config) -> int:
    """bench, analyze and eval winrate: subcommands with flags of their own."""
    if args.command == "bench":
        if args.what == "cost":
            from r2m.recipes.bench import run_bench  # heavy: lazy

            return run_bench(cfg, "cost", args.steps, args.out or "benchmarks/cost.json")
        if args.what == "speed":  # issue 18: r2m against TRL's RLOOTrainer (benchmarks/README.md)
            from r2m.recipes.bench_speed import run_bench_speed  # heavy: lazy

            return run_bench_speed(cfg, args.preset, args.out)
        if args.what == "memory":  # peak memory per rank and phase at the paper configs' shapes (benchmarks/README.md)
            from r2m.recipes.bench_memory import run_bench_memory  # heavy: lazy

            return run_bench_memory(args.preset, args.out, cfg.run.root)
        # The issue-14 design (r2m/recipes/bench_design.py); the report's default path is bench_report.default_out.
        from r2m.recipes.bench_report import run_bench_design  # heavy: lazy

        return run_bench_design(cfg, args.preset, args.out, command=args.command_line, workers=args.workers)
    from r2m.recipes.eval import analyze_hidden_states, eval_winrate  # heavy: lazy

    if args.command == "analyze":
        print(analyze_hidden_states(cfg, args.out, args.checkpoints))
        return 0
    print(json.dumps(eval_winrate(cfg, args.policy_responses, args.ref_responses, args.judge), indent=2))
    return 0


def cmd_ser(cfg: Config) -> int:
    from r2m.recipes.ser import run_ser  # heavy: lazy

    run_ser(cfg)
    return 0


def resolve_config(args: argparse.Namespace) -> tuple[Config, Any]:
    """The config: the file (r2m's sections, or a flat TRL recipe parsed by TRL's parser), TRL's names, then r2m's
    ``a.b=c`` overrides; and what TRL's names became (:class:`r2m.config.trl_map.TrlMapping`, or None). Refuses a
    model path the command would not read (r2m.config.commands.check_models)."""

    command, what = args.command, getattr(args, "what", None)
    overrides = list(args.overrides) + (["run.resume=auto"] if getattr(args, "resume", False) else [])
    given = {parse_override(o)[0] for o in overrides}
    data = read_config_file(args.config) if args.config else {}
    recipe = split_recipe(data) if args.config else None
    trl = None
    if recipe is not None:
        trl, layers = _recipe_layers(args, recipe, overrides)
        given |= {k for layer in layers for k in layer}
        cfg = load_config(args.config, overrides, layers=layers, data={})
    elif args.trl:
        base = load_config(args.config, overrides, data=data)
        values = _trl_values(args.trl)
        trl = map_trl(values, command, what=what, world=_world(), base=lambda dotted: _field(base, dotted))
        given |= set(trl.overrides)
        cfg = load_config(args.config, overrides, layers=[trl.overrides], data=data)
    else:
        cfg = load_config(args.config, overrides, data=data)
    if trl is not None:
        for text in trl.warnings:
            logging.getLogger("r2m").warning("%s", text)
        if trl.resume:
            from r2m.api.trl_args import resume_config  # heavy: lazy

            cfg = resume_config(cfg, trl.resume)
    if command in ("sft", "rm", "rl", "ser", "eval"):
        check_models(cfg, command, what, given)
    return cfg, trl


def _recipe_layers(args: argparse.Namespace, recipe: tuple[dict, dict], overrides: list[str]) -> tuple[Any, list]:
    """A flat TRL recipe's layers: TRL's values mapped (every field, TRL's defaults included), then the recipe's
    own r2m sections; with callables only (reward_funcs), no reward model."""
    from r2m.api.trl_args import dotted  # heavy: lazy

    r2m_part, trl_part = recipe
    command = "rl" if args.command == "config" else args.command
    algorithm = dict(parse_override(o) for o in overrides).get("rl.algorithm") or (r2m_part.get("rl") or {}).get(
        "algorithm")
    values, trainer = parse_recipe(trl_part, args.trl, command, algorithm, args.config)
    trl = map_trl(values, command, complete=True, trainer=trainer, world=_world())
    own = dotted(r2m_part)
    layers = [trl.overrides, own]
    if trl.reward_funcs and not values.get("reward_model_name_or_path") and "reward.path" not in own:
        layers.append({"reward.source": "gold"})  # TRL's script: reward functions only, no reward model
    return trl, layers


def _trl_values(tokens: list[str]) -> dict[str, Any]:
    import yaml

    return {tokens[i][2:]: (yaml.safe_load(tokens[i + 1]) if tokens[i + 1].strip() else "")
            for i in range(0, len(tokens), 2)}


def _field(cfg: Config, dotted: str) -> Any:
    value: Any = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def _world() -> int:
    import os

    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    # The command as typed (in-process callers pass argv): the bench report's provenance names it.
    args.command_line = "r2m " + shlex.join(sys.argv[1:] if argv is None else [str(a) for a in argv])
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        if args.command == "bench" and args.what not in ("cost", "run", "speed", "memory"):
            # `r2m bench --preset smoke a.b=c`: the optional positional took the first override.
            args.overrides, args.what = [args.what, *args.overrides], "run"
        if args.command == "monitor":
            from r2m.recipes.monitor import cmd_monitor  # heavy: lazy

            return cmd_monitor(args.run_dir, args.overrides, not args.no_plot)
        if getattr(args, "help_config", False):
            from r2m.config.help import config_help  # heavy: lazy

            print(config_help(args.command))
            return 0
        if args.command == "world" and args.ceilings:
            if args.config:
                raise ConfigError(f"r2m world --ceilings reads the world presets (configs/world/worlds); expected no "
                                  f"-c/--config (got {args.config}), only a.b=c overrides applied to every preset")
            return cmd_world_ceilings(args.ceilings, list(args.overrides))
        cfg, trl = resolve_config(args)
        return _run(args, cfg, trl)
    except R2MError as e:
        print(f"r2m: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        from r2m.errors import NumericError, TrainingInterrupted  # heavy: lazy

        if isinstance(e, TrainingInterrupted):
            print(f"r2m: stopped: {e}", file=sys.stderr)
            return 130
        if isinstance(e, NumericError):
            print(f"r2m: error: {e}", file=sys.stderr)
            return 3
        raise


def _run(args: argparse.Namespace, cfg: Config, trl: Any) -> int:
    """The command, on its config."""
    if args.command == "config":
        import yaml

        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    from r2m.runtime import runlock  # heavy: lazy
    from r2m.utils import quiet_transformers  # heavy: lazy

    quiet_transformers()
    if args.command in ("bench", "analyze") or getattr(args, "what", None) == "winrate":
        return _cmd_extra(args, cfg)
    if args.command == "world":
        return cmd_world(cfg, args.out, args.models)
    if args.command == "eval":
        return cmd_eval(cfg, args.what)
    command = {"sft": cmd_sft, "rm": cmd_rm, "rl": lambda c: cmd_rl(c, trl), "demo": cmd_demo,
               "ser": cmd_ser}[args.command]
    if args.command == "demo" or not runlock.is_rank_zero():
        return command(cfg)
    # One run per directory: a second process is refused at once, before any model loads.
    with runlock.holding(Path(cfg.run.root) / cfg.run.name):
        return command(cfg)


def main_entry() -> None:
    sys.exit(main())
