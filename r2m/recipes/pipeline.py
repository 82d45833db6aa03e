"""Stages wired together, and the gold-reward world's artifacts built on demand.

Every subcommand runs with no config file: when a path (policy, reward model, data) is left
``None``, the world's artifact is used, and built first if it is not cached yet. The cache key is
a hash of the configs that determine the artifact, so changing e.g. ``world.length_bias`` builds a
new reward model while the RL seed never invalidates anything.

    <run.root>/world/data-<h>/          prompts, demonstrations and preference pairs (JSONL)
    <run.root>/world/policy-<h>/model   SFT policy (save_pretrained)
    <run.root>/world/rmbase-<h>/model   SFT-trained LM of another width: the RM's backbone
    <run.root>/world/rm-<h>/model       the proxy reward model (BT on the length-biased labels)
    <run.root>/world/rm-check-<h>/model the monitor's check RM (the same recipe on the disjoint pref_policy pairs)

Each entry holds ``cache.json`` with its format version (:data:`WORLD_CACHE_FORMAT`), written before it is built;
an entry of another version (or of none) is refused by name, never read.

The Pretrained-RM baseline's RM is cached there too for the world's RM; from a user's RM it is trained inside
the run directory (``<run.root>/<run.name>/rm-pretrained-<h>/model``): a run on a user's models writes nothing
beside its run directory.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

from r2m.config.root import Config
from r2m.config.enums import PPOPrompts, RewardBaseline, RewardSource
from r2m.config.parsing import config_hash, replace_path
from r2m.config.commands import is_world_artifact
from r2m.runtime.distributed import sharded_state_dict
from r2m.errors import ConfigError
from r2m.fileio import ArtifactFormat
from r2m.world.seeds import rm_seed, sft_world
from r2m.world.view import rm_prompt_view
from r2m.data import datasets, jsonl as plain
from r2m.data.sources import is_iterable
from r2m.models.reward import count_truncated as count_truncated_pairs
from r2m.models.loading import build_world_lm, load_policy, load_reward_model, load_tokenizer, save_model
from r2m.runtime.checkpoint import latest_checkpoint
from r2m.runtime.hooks import Hooks
from r2m.runtime.runlock import wait_until_free
from r2m.runtime.runlog import RunDir
from r2m.updates.rm import make_trainable_rm, merged_rm_model, train_reward_model
from r2m.updates.sft import count_truncated, sft_length, train_sft
from r2m.updates.supervised import make_accelerator, resolve_mixed_precision
from r2m.world.data import WorldFiles, generate_world
from r2m.world.tokenizer import build_tokenizer

log = logging.getLogger("r2m")


WORLD_CACHE_FORMAT = ArtifactFormat("world cache entry", 1, "delete the directory (r2m builds it again), or use "
                                    "another run.root")
"""``cache.json`` of each cache entry: the entry's layout (the files above) and how its key is hashed."""
CACHE_FILE = "cache.json"


def world_root(cfg: Config) -> Path:
    return Path(cfg.run.root) / "world"


def _cached(done: Path) -> bool:
    """Whether the entry of ``done`` (its last file) is built; an entry of another format version is refused."""
    if not done.exists():
        return False
    WORLD_CACHE_FORMAT.check_file(done.parent / CACHE_FILE)
    return True


def _must_build(done: Path, what: str) -> bool:
    """True when ``what`` (cached at ``done``, in the entry ``done.parent``) must be built now; the entry's
    ``cache.json`` is then written first.

    Refused under a multi-process launch (torchrun / accelerate set WORLD_SIZE): the processes would all
    build the same cache at once, and the world's SFT/RM training is a single-process job.
    """
    if _cached(done):
        return False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError(f"{what} is not built yet ({done.parent}). With several processes the world cache must "
                          "exist first: build it in one process with `r2m world --models` and the same config, "
                          "overrides and mixed precision (a launcher's --mixed_precision / ACCELERATE_MIXED_PRECISION "
                          "is part of the cache key), then launch again")

    wait_until_free(done.parent)  # another process may be building this very cache: let it finish, then reuse it
    if _cached(done):
        return False
    WORLD_CACHE_FORMAT.write(done.parent / CACHE_FILE, what=what)
    return True


def world_data(cfg: Config):
    """The world's JSONL files, generated once per world config."""
    out = world_root(cfg) / f"data-{config_hash(cfg.world)}"
    files = WorldFiles.in_dir(out)
    if _must_build(files.summary, "the gold-reward world's data"):
        log.info("generating the gold-reward world in %s", out)
        files = generate_world(cfg.world, out)
    return files


@dataclass(frozen=True)
class Inputs:
    """Resolved paths of everything a run reads."""

    policy: str
    reward_model: Optional[str]
    prompts: str
    eval_prompts: str
    sft: str
    pref_train: str
    pref_eval: str
    pref_policy: str
    world: bool
    """True when the prompts are the world's (gold reward available)."""


DATA_FIELDS = ("prompts", "eval_prompts", "sft", "pref_train", "pref_eval", "pref_policy")
MODEL_FIELDS = (("policy.path", lambda c: c.policy.path), ("reward.path", lambda c: c.reward.path),
                ("rm.init_from", lambda c: c.rm.init_from))


def user_models(cfg: Config) -> list[str]:
    """``field=value`` of each model path set by the user: not the world's own (under <run.root>/world)."""
    return [f"{name}={get(cfg)}" for name, get in MODEL_FIELDS
            if get(cfg) is not None and not is_world_artifact(get(cfg), cfg.run.root)]


def rl_needs(cfg: Config) -> tuple[str, ...]:
    """The data fields `r2m rl` must have from the user with a user's model: prompts, plus the held-out pairs of
    Table 3 (R2M, iterative head) and the Pretrained-RM baseline's pairs. data.eval_prompts is optional: without
    it the run does not evaluate (as TRL without an eval_dataset)."""
    need = ["prompts"]
    if cfg.reward.source == RewardSource.MODEL and (cfg.reward.r2m.enabled or
                                                    cfg.reward.baseline == RewardBaseline.ITERATIVE_HEAD):
        need.append("pref_eval")
    if cfg.reward.source == RewardSource.MODEL and cfg.reward.baseline == RewardBaseline.PRETRAINED_RM:
        need += ["pref_policy", "pref_eval"]
    return tuple(dict.fromkeys(need))


def ser_needs(cfg: Config) -> tuple[str, ...]:
    """The data fields `r2m ser` reads: its pairs, and for the PPO stage the evaluation prompts (and the
    training prompts with ser.ppo_prompts=world)."""
    need = ["pref_train", "pref_eval"]
    if cfg.ser.ppo:
        need.append("eval_prompts")
        if cfg.ser.ppo_prompts == PPOPrompts.WORLD:
            need.append("prompts")
    return tuple(need)


def check_no_world(cfg: Config, need: Sequence[str]) -> None:
    """Refuse a user's model with a data path left to the gold-reward world (its toy digit prompts).

    The world fills every unset path only when no model path is a user's: a real model with the world's
    prompts would train (or be evaluated) on text it was never meant for, without a word.
    """
    users = user_models(cfg)
    if not users:
        return
    for name in need:
        if getattr(cfg.data, name) is None:
            raise ConfigError(f"data.{name}: must be set when a model is a user's ({', '.join(users)}); left unset, "
                              "r2m would read the gold-reward world's toy data instead (docs/DATA.md)")
    if cfg.reward.source == RewardSource.MODEL and cfg.reward.path is None and cfg.policy.path is not None \
            and "prompts" in need:
        raise ConfigError(f"reward.path: must be set when the policy is a user's (policy.path={cfg.policy.path}); "
                          "left unset, r2m would train the gold-reward world's toy reward model")


def data_paths(cfg: Config, need: Sequence[str] = DATA_FIELDS) -> dict[str, str]:
    """Each data field's path: the user's, else the world's file. With a user's model, every field in ``need``
    must be the user's (:func:`check_no_world`) and the others are left empty, so nothing reads a world file."""
    d = cfg.data
    check_no_world(cfg, need)
    world_ok = not user_models(cfg)
    needs_world = world_ok and None in tuple(getattr(d, n) for n in DATA_FIELDS)
    files = world_data(cfg) if needs_world else None

    def pick(value: Optional[str], name: str) -> str:
        if value is not None:
            return value
        return str(getattr(files, name)) if files is not None else ""

    return {n: pick(getattr(d, n), n) for n in DATA_FIELDS}


def resolve_inputs(cfg: Config, need_policy: bool = True, need_rm: bool = True,
                   need: Optional[Sequence[str]] = None) -> Inputs:
    """Every path a run reads; ``need`` (default: what `r2m rl` reads) are the data fields that must be the
    user's when a model is."""
    paths = data_paths(cfg, rl_needs(cfg) if need is None else need)
    policy = cfg.policy.path if cfg.policy.path is not None else (str(ensure_world_policy(cfg)) if need_policy else "")
    rm = None
    if need_rm and cfg.reward.source == RewardSource.MODEL:
        rm = cfg.reward.path if cfg.reward.path is not None else str(ensure_world_rm(cfg))
        if cfg.reward.baseline == RewardBaseline.PRETRAINED_RM:
            rm = str(ensure_pretrained_rm(cfg, rm, paths["pref_policy"], paths["pref_eval"]))
    return Inputs(policy=policy, reward_model=rm, world=cfg.data.prompts is None, **paths)


# ---------------------------------------------------------------------------------------------
# Stages (shared by the CLI subcommands and the world cache)
# ---------------------------------------------------------------------------------------------


def fresh_world_lm(cfg: Config, variant: str):
    """A random Llama of the policy's (variant="policy") or the RM's (variant="rm") size."""
    tok = build_tokenizer(variant)
    arch = cfg.policy.arch if variant == "policy" else cfg.reward.arch
    return build_world_lm(arch, tok, seed=cfg.world.seed + (0 if variant == "policy" else 1)), tok


def run_sft(cfg: Config, base: Optional[str], variant: str, sft_path: str, out_dir: Path, run_name: str,
            accelerator=None, trackers: bool = False, resume: bool = False):
    """Fine-tune ``base`` (or a fresh world LM) on SFT rows; save to ``out_dir`` atomically.

    With ``resume``, training continues from the run's latest checkpoint (``sft.save_every``)."""

    if base is None:
        model, tok = fresh_world_lm(cfg, variant)
    else:
        tok = load_tokenizer(base, cfg.policy.trust_remote_code)
        model = load_policy(base, cfg.policy.dtype, cfg.policy.trust_remote_code, cfg.run.allow_unsafe_weights)
    rows = read_rows(cfg, "sft", sft_path, tok)
    acc = accelerator or make_accelerator(cfg, str(Path(cfg.run.root) / run_name) if trackers else None)
    run = RunDir(cfg, acc if trackers else None, name=run_name, resume_step=_resume_step(cfg, run_name, resume))
    t0 = time.perf_counter()
    result = train_sft(model, tok, rows, cfg, acc, run, seed=cfg.world.seed, checkpoint_dir=run.checkpoints,
                       resume=resume)
    state = sharded_state_dict(acc, model)  # FSDP / ZeRO-3: gathered on every rank
    if acc.is_main_process:  # one writer: the replicas are identical
        save_model(acc.unwrap_model(model), tok, out_dir, state)
    acc.wait_for_everyone()
    run.amend_last({"time/sft_total_s": time.perf_counter() - t0,
                    "data/sft_truncated": count_truncated(tok, rows, sft_length(cfg, acc.unwrap_model(model)))})
    run.close()
    return result


def run_rm(cfg: Config, init_from: str, train_path: str, eval_path: Optional[str], out_dir: Path, run_name: str,
           accelerator=None, trackers: bool = False, resume: bool = False, adapt: bool = False,
           callbacks: Sequence = ()):
    """Bradley-Terry RM training from ``init_from`` (a causal LM or an RM); saves to ``out_dir``.

    With ``resume``, training continues from the run's latest checkpoint (``rm.save_every``). With ``adapt``
    it honours reward.lora and reward.gradient_checkpointing (the world's own RM never does); the saved RM
    is a plain merged checkpoint either way. ``callbacks`` (the object API's): ``on_step_end(step, metrics)``
    after each optimiser step, ``on_evaluate(step, metrics)`` with the held-out accuracy, ``on_save(step, path)``
    after each checkpoint and the final model; one returning True ends training after that step (the model is
    still saved, and the result's ``stopped_early`` says so)."""
    import torch

    tok = load_tokenizer(init_from, cfg.reward.trust_remote_code)
    rows = read_rows(cfg, "pref_train", train_path, tok)
    eval_rows = read_rows(cfg, "pref_eval", eval_path, tok) if eval_path else None
    seed = rm_seed(cfg.world)  # world.rm_seed when set (bench seeds vary the RM), else world.seed as before
    with torch.random.fork_rng():
        # A new score head is drawn here: from a fixed seed, so the same config trains the same RM.
        torch.manual_seed(seed)
        model = load_reward_model(init_from, cfg.reward.dtype, cfg.reward.trust_remote_code, tok.pad_token_id,
                                  cfg.run.allow_unsafe_weights)
        trainable = make_trainable_rm(model, tok, cfg.reward.lora if adapt else None,
                                      adapt and cfg.reward.gradient_checkpointing, base_path=init_from)
    rm = trainable.rm
    rm.set_max_length(cfg.reward.max_length)
    rm.prompt_view = rm_prompt_view(cfg.world)  # the blind world's RM trains on the view it scores with
    acc = accelerator or make_accelerator(cfg, str(Path(cfg.run.root) / run_name) if trackers else None)
    run = RunDir(cfg, acc if trackers else None, name=run_name, resume_step=_resume_step(cfg, run_name, resume))
    t0 = time.perf_counter()
    hooks = Hooks(callbacks) if callbacks else None  # none: the loop makes no extra call (the CLI's path)
    result = train_reward_model(rm, rows, eval_rows, cfg, acc, run, seed=seed,
                                checkpoint_dir=run.checkpoints, resume=resume, hooks=hooks)
    state = sharded_state_dict(acc, rm.model) if trainable.peft is None else None
    if acc.is_main_process:
        save_model(merged_rm_model(trainable), tok, out_dir, state)
    acc.wait_for_everyone()
    if hooks is not None:
        hooks("on_save", result.steps, str(out_dir))
    run.amend_last({"time/rm_total_s": time.perf_counter() - t0, "data/rm_truncated": count_truncated_pairs(rm, rows)})
    run.close()
    return result


def precision_part(cfg: Config) -> dict:
    """The autocast mode (``no`` in full precision) as a cache-key part: a model trained under bf16 autocast is
    another model."""
    return {"mixed_precision": resolve_mixed_precision(cfg)}


def _resume_step(cfg: Config, run_name: str, resume: bool) -> Optional[int]:
    """The step of the latest complete checkpoint of ``run_name`` when resuming, else None."""
    latest = latest_checkpoint(Path(cfg.run.root) / run_name / "checkpoints") if resume else None
    return int(latest.name.split("-")[1]) if latest is not None else None


def ensure_world_policy(cfg: Config) -> Path:
    key = config_hash(sft_world(cfg.world), cfg.policy.arch, cfg.sft, precision_part(cfg))
    out = world_root(cfg) / f"policy-{key}" / "model"
    if _must_build(out, "the world's SFT policy"):
        log.info("training the world's SFT policy into %s", out)
        run_sft(cfg, None, "policy", str(world_data(cfg).sft), out, f"world/policy-{key}", resume=True)
    return out


def ensure_world_rm_backbone(cfg: Config) -> Path:
    key = config_hash(sft_world(cfg.world), cfg.reward.arch, cfg.sft, precision_part(cfg))
    out = world_root(cfg) / f"rmbase-{key}" / "model"
    if _must_build(out, "the world's RM backbone"):
        log.info("training the world's RM backbone (an SFT LM of width %d) into %s", cfg.reward.arch.hidden_size, out)
        run_sft(cfg, None, "rm", str(world_data(cfg).sft), out, f"world/rmbase-{key}", resume=True)
    return out


def ensure_world_rm(cfg: Config) -> Path:
    key = config_hash(cfg.world, cfg.reward.arch, cfg.sft, cfg.rm, precision_part(cfg))
    out = world_root(cfg) / f"rm-{key}" / "model"
    if _must_build(out, "the world's proxy reward model"):
        files = world_data(cfg)
        init = cfg.rm.init_from or str(ensure_world_rm_backbone(cfg))
        log.info("training the world's proxy reward model into %s", out)
        run_rm(cfg, init, str(files.pref_train), str(files.pref_eval), out, f"world/rm-{key}", resume=True)
    return out


def world_check_rm_dir(cfg: Config) -> Path:
    """Where the world's check RM is cached (built or not)."""
    key = config_hash(cfg.world, cfg.reward.arch, cfg.sft, cfg.rm, {"check_rm": "pref_policy"},
                      precision_part(cfg))
    return world_root(cfg) / f"rm-check-{key}" / "model"


def ensure_world_check_rm(cfg: Config) -> Path:
    """The over-optimisation monitor's check RM (rl.monitor.check_rm left null): the proxy RM's recipe (same
    backbone, rm config) on the world's pref_policy pairs, disjoint from the proxy RM's pref_train."""
    out = world_check_rm_dir(cfg)
    key = out.parent.name[len("rm-check-"):]
    if _must_build(out, "the monitor's check reward model"):
        files = world_data(cfg)
        init = cfg.rm.init_from or str(ensure_world_rm_backbone(cfg))
        log.info("training the monitor's check reward model (on pref_policy) into %s", out)
        run_rm(cfg, init, str(files.pref_policy), str(files.pref_eval), out, f"world/rm-check-{key}", resume=True)
    return out


def ensure_pretrained_rm(cfg: Config, rm_path: str, pairs: str, eval_pairs: str) -> Path:
    """The Pretrained-RM baseline: ``rm_path`` further trained with BT on the policy prompts' pairs.

    Cached by (RM path, pairs file, rm config, pretrain lr/epochs).
    """
    lora = [cfg.reward.lora] if cfg.reward.lora.enabled else []  # the adapter's fields matter only when it is on
    key = config_hash({"rm": rm_path, "pairs": pairs}, cfg.rm, cfg.reward.pretrain_lr, cfg.reward.pretrain_epochs,
                      *lora, precision_part(cfg))
    # The world's RM is cached with the world; a user's RM is trained inside the run directory (nothing of a
    # user's run is written beside it), where a resumed run finds it again.
    home = "world" if not user_models(cfg) else cfg.run.name
    out = Path(cfg.run.root) / home / f"rm-pretrained-{key}" / "model"
    if _must_build(out, "the Pretrained-RM baseline's reward model"):
        log.info("training the Pretrained-RM baseline into %s", out)
        pre = replace_path(cfg, rm__lr=cfg.reward.pretrain_lr, rm__epochs=cfg.reward.pretrain_epochs)
        run_rm(pre, rm_path, pairs, eval_pairs, out, f"{home}/rm-pretrained-{key}", adapt=True)
    return out


EVAL_FILES = ("eval_prompts", "pref_eval")


def _user_path(cfg: Config, path: str) -> bool:
    """Whether ``path`` is one the user set under a data field (world files are r2m's own plain JSONL)."""
    d = cfg.data
    return str(path) in {str(getattr(d, f)) for f in DATA_FIELDS if getattr(d, f) is not None}


def _data_format(cfg: Config, name: str) -> str:
    return getattr(cfg.data.formats, name, None) or cfg.data.format


def _split(cfg: Config, name: str) -> Optional[str]:
    d = cfg.data
    return getattr(d.splits, name, None) or (d.eval_split if name in EVAL_FILES else d.train_split)


def read_rows(cfg: Config, name: str, path: str, tokenizer=None) -> list:
    """The rows of data file ``name`` (a ``DataConfig`` path field) read from ``path``.

    World files go through :mod:`r2m.data.jsonl` (errors name file and line). A path the user set goes through
    :mod:`r2m.data.datasets` in its format (data.formats.<name>, else data.format): a plain one is read as r2m's
    JSONL, or in the format its columns name (TRL's, UltraFeedback's), from a JSONL, JSON or Parquet file, a
    dataset directory, a hub name or a Python dataset. Prompt files give a list of prompt strings; the others
    give row dicts.
    """
    d = cfg.data
    kind = "prompts" if name in ("prompts", "eval_prompts") else ("sft" if name == "sft" else "preferences")
    if not _user_path(cfg, path):
        return {"prompts": plain.read_prompts, "sft": plain.read_sft, "preferences": plain.read_preferences}[kind](path)
    load = {"prompts": datasets.load_prompts, "sft": datasets.load_sft, "preferences": datasets.load_preferences}[kind]
    rows = load(path, _data_format(cfg, name), _split(cfg, name), tokenizer,
                d.max_response_tokens or None, d.on_mismatch,
                datasets.Source(d.config, d.streaming))
    return [r["prompt"] for r in rows] if kind == "prompts" else rows


def prompt_stream(cfg: Config, path: str, tokenizer=None) -> Optional[Callable[[int], Iterator[str]]]:
    """The RL prompts of ``path`` as a stream, ``epoch -> that pass's prompts``, when they are one: an
    ``IterableDataset`` given to the object API, or a user's path with data.streaming. None: a finite set,
    read whole (:func:`read_rows`)."""
    if not _user_path(cfg, path) or not (cfg.data.streaming or is_iterable(path)):
        return None
    if cfg.data.max_response_tokens:
        raise ConfigError("data.max_response_tokens: measures each row's chosen response against the whole prompt "
                          "set, which a stream (data.streaming, an IterableDataset) does not hold; set it to 0")
    how = datasets.Source(cfg.data.config, cfg.data.streaming)
    fmt, split = _data_format(cfg, "prompts"), _split(cfg, "prompts")
    return lambda epoch: datasets.stream_prompts(path, fmt, split, tokenizer, how, epoch)
