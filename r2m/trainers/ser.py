"""SER: Self-Evolved Reward Learning (Huang et al., arXiv 2411.00418), end to end (``r2m ser``).

    splits      data.pref_train -> SFT : RM : PPO (0.3 : 0.65 : 0.05); RM -> labelled seed (15%) + unlabelled
                pool; the labelled seed -> seed training pairs + validation set D_val
    Loop 0      seed RM: Bradley-Terry on the seed pairs
    Loop k      status S of the current RM on D_val (Eq. 2-3)        -> STOP ends the loop
                self-label: sigmoid scores of both answers of every unlabelled pair (Eq. 1)
                filter by S (Eq. 4), oriented so the higher-scored answer is the chosen one
                                                                      -> an empty filter ends the loop
                retrain on the filtered pairs (Eq. 5 hinge, or log-sigmoid), from the current or the seed RM
    baselines   Full: Bradley-Terry on every labelled pair of the RM part (SER Table 1)
    PPO         the evolved RM, sigmoid-centred rewards, adaptive KL (SER App. C.3)

Every loop writes its RM, a metrics row and the loop state (atomically), so ``run.resume=auto``
continues after the last completed loop. The design choices are in docs/SER.md.
"""

from __future__ import annotations

import enum
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

import torch

from r2m.config import Config, PairLoss, PPOPrompts, RetrainFrom, RMConfig, SERConfig, SERVariant, config_hash, to_dict
from r2m.eval.rm_accuracy import RMAccuracy, accuracy_from_scores, pairwise_wins
from r2m.losses import bradley_terry_loss, margin_pairwise_loss
from r2m.trainers.rm import TrainableRM, make_trainable_rm, merged_rm_model

log = logging.getLogger("r2m")

STATE_FILE = "ser_state.json"


# ---------------------------------------------------------------------------------------------
# Learning status and data filter (SER Section 3.1, Eq. 2-4)
# ---------------------------------------------------------------------------------------------


class LearningStatus(str, enum.Enum):
    """What the RM is ready to learn next (Eq. 3)."""

    STATUS1 = "status1"
    """It separates clearly good from clearly bad answers: train on such pairs."""
    STATUS2 = "status2"
    """Its scores spread pairs apart on average: train on pairs with a large score gap."""
    STOP = "stop"
    """Neither: self-training ends."""


class StatusEvidence(NamedTuple):
    """The two quantities Eq. 3 decides on."""

    confident: int
    """Pairs with p1 > tau_high and p2 < tau_low (answer 1 confidently good, answer 2 confidently bad)."""
    delta_p: float
    """Eq. 2: mean |p1 - p2| over the pairs (NaN for no pairs)."""


def _confident(p_good: torch.Tensor, p_bad: torch.Tensor, tau_high: float, tau_low: float) -> torch.Tensor:
    return (p_good > tau_high) & (p_bad < tau_low)  # (N,)


def status_evidence(p1: torch.Tensor, p2: torch.Tensor, tau_high: float, tau_low: float) -> StatusEvidence:
    """Counts behind :func:`learning_status`; ``p1``, ``p2`` (N,) sigmoid scores, p1 the chosen answer's."""
    confident = int(_confident(p1, p2, tau_high, tau_low).sum())
    delta_p = (p1 - p2).abs().mean().item() if p1.numel() else float("nan")
    return StatusEvidence(confident, delta_p)


def learning_status(p1: torch.Tensor, p2: torch.Tensor, tau_high: float, tau_low: float, tau_delta: float,
                    min_status1: int) -> LearningStatus:
    """Eq. 3 on labelled validation pairs: ``p1`` (N,) the chosen answers' sigmoid scores, ``p2`` (N,) the others'.

    Status 1 when at least ``min_status1`` pairs are confidently right (p1 > tau_high and p2 < tau_low);
    else Status 2 when Delta_p = mean |p1 - p2| (Eq. 2, unsigned, over all N pairs) reaches tau_delta;
    else STOP. A confidently *wrong* pair (the paper's "vice versa") does not count towards Status 1:
    on D_val the labels are known, and self-training on confident mistakes is what must not start.
    """
    ev = status_evidence(p1, p2, tau_high, tau_low)
    if ev.confident >= min_status1:
        return LearningStatus.STATUS1
    if ev.delta_p >= tau_delta:  # NaN (no pairs) compares False: STOP
        return LearningStatus.STATUS2
    return LearningStatus.STOP


class Selection(NamedTuple):
    """Self-labelled pairs kept by a filter."""

    index: torch.Tensor
    """(K,) long: positions of the kept pairs."""
    first_is_chosen: torch.Tensor
    """(K,) bool: answer 1 scored higher, so it is the pseudo-chosen one."""


def _select(keep: torch.Tensor, s1: torch.Tensor, s2: torch.Tensor) -> Selection:
    index = keep.nonzero().flatten()  # (K,)
    return Selection(index, s1[index] > s2[index])


def filter_pairs(s1: torch.Tensor, s2: torch.Tensor, status: LearningStatus, tau_high: float, tau_low: float,
                 delta: float) -> Selection:
    """Eq. 4 on sigmoid scores ``s1``, ``s2`` (N,) of the two answers of each unlabelled pair.

    Status 1 keeps pairs with one answer above tau_high and the other below tau_low (either order);
    Status 2 keeps pairs with |s1 - s2| > delta; STOP keeps nothing. Kept pairs are oriented so that
    the higher-scored answer is the chosen one.
    """
    status = LearningStatus(status)
    if status is LearningStatus.STATUS1:
        keep = _confident(s1, s2, tau_high, tau_low) | _confident(s2, s1, tau_high, tau_low)  # (N,)
    elif status is LearningStatus.STATUS2:
        keep = (s1 - s2).abs() > delta  # (N,)
    else:
        keep = torch.zeros_like(s1, dtype=torch.bool)
    return _select(keep, s1, s2)


def release_filter(s1: torch.Tensor, s2: torch.Tensor, tau_high: float, tau_low: float, delta: float) -> Selection:
    """The public scripts' filter (``ser.variant=release``): no status, both Eq. 4 rules joined by OR.

    A pair is kept when s1 > tau_high and s2 < tau_low, or s1 - s2 > delta, or the mirror of either
    (the pair swapped); the higher-scored answer becomes the chosen one.
    """
    forward = _confident(s1, s2, tau_high, tau_low) | (s1 - s2 > delta)  # (N,) answer 1 wins
    mirrored = _confident(s2, s1, tau_high, tau_low) | (s2 - s1 > delta)  # (N,) answer 2 wins
    return _select(forward | mirrored, s1, s2)


def pair_loss(chosen: torch.Tensor, rejected: torch.Tensor, loss: PairLoss, margin: float) -> torch.Tensor:
    """SER's pairwise loss on raw RM scores (N,): the Eq. 5 hinge on the sigmoid scores, or log-sigmoid."""
    if PairLoss(loss) is PairLoss.HINGE:
        # Eq. 5 compares RM(Q, A) as Eq. 4 does: sigmoid-normalised into (0, 1) (SER App. C.3).
        return margin_pairwise_loss(torch.sigmoid(chosen), torch.sigmoid(rejected), margin)
    return bradley_terry_loss(chosen, rejected)


# ---------------------------------------------------------------------------------------------
# Splits (SER Appendix D.1)
# ---------------------------------------------------------------------------------------------


class SplitSizes(NamedTuple):
    sft: int
    rm: int
    ppo: int
    labelled: int
    """Pairs of the RM part that keep their labels: seed training pairs + validation."""
    val: int


@dataclass(frozen=True)
class UnlabeledPool:
    """The RM part's pairs without their labels, in a random answer order.

    The learner reads only ``prompts``, ``first`` and ``second``; the hidden label and the gold
    rewards are kept to measure how good the pseudo-labels are.
    """

    prompts: list[str]
    first: list[str]
    second: list[str]
    label_first: torch.Tensor
    """(N,) bool: the hidden label prefers the first answer."""
    gold_first: Optional[torch.Tensor]
    """(N,) gold reward of the first answer (world rows), else None."""
    gold_second: Optional[torch.Tensor]

    def __len__(self) -> int:
        return len(self.prompts)


@dataclass(frozen=True)
class SERSplits:
    sft: list[dict]
    """SFT part (its chosen answers are SFT demonstrations; in the world the world's SFT policy is used)."""
    seed: list[dict]
    """Labelled pairs Loop 0 trains on."""
    val: list[dict]
    """D_val, labelled: learning status and validation accuracy."""
    unlabeled: UnlabeledPool
    """The rest of the RM part, labels hidden."""
    rm: list[dict]
    """The whole RM part with its labels: the Full baseline's training set."""
    ppo: list[dict]
    """PPO part: its prompts are PPO's training prompts (``ser.ppo_prompts=split``)."""


def split_sizes(n: int, ser: SERConfig) -> SplitSizes:
    """Sizes of every part for ``n`` preference pairs; a part that would be empty is a ConfigError."""
    from r2m.errors import ConfigError

    n_sft, n_ppo = round(ser.sft_frac * n), round(ser.ppo_frac * n)
    n_rm = n - n_sft - n_ppo
    labelled = round(ser.seed_frac * n_rm)
    val = ser.val_size or max(1, round(ser.val_frac * labelled))
    if labelled - val < 1:
        field = "ser.val_size" if ser.val_size else "ser.seed_frac"
        raise ConfigError(f"{field}: the labelled seed ({labelled} of {n_rm} RM pairs) leaves no training pair after "
                          f"{val} validation pairs; expected a larger ser.seed_frac or fewer validation pairs")
    if n_rm - labelled < 1:
        raise ConfigError(f"ser.seed_frac: expected some unlabelled RM pairs, got {labelled} labelled of {n_rm}")
    return SplitSizes(n_sft, n_rm, n_ppo, labelled, val)


def make_splits(rows: Sequence[dict], ser: SERConfig, seed: int) -> SERSplits:
    """Random SFT/RM/PPO parts, the labelled seed with its validation set, and the unlabelled pool."""
    sizes = split_sizes(len(rows), ser)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(rows), generator=gen).tolist()
    shuffled = [rows[i] for i in order]
    sft, rm = shuffled[: sizes.sft], shuffled[sizes.sft: sizes.sft + sizes.rm]
    ppo = shuffled[sizes.sft + sizes.rm:]
    val, seed_rows, hidden = rm[: sizes.val], rm[sizes.val: sizes.labelled], rm[sizes.labelled:]
    label_first = torch.rand(len(hidden), generator=gen) < 0.5  # (N,) random order: position leaks nothing
    return SERSplits(sft=sft, seed=seed_rows, val=val, unlabeled=_hide_labels(hidden, label_first), rm=rm, ppo=ppo)


def _hide_labels(rows: Sequence[dict], label_first: torch.Tensor) -> UnlabeledPool:
    first = [r["chosen"] if f else r["rejected"] for r, f in zip(rows, label_first.tolist())]
    second = [r["rejected"] if f else r["chosen"] for r, f in zip(rows, label_first.tolist())]
    gold_first = gold_second = None
    if rows and "gold_chosen" in rows[0]:
        g_c = torch.tensor([r["gold_chosen"] for r in rows], dtype=torch.float32)  # (N,)
        g_r = torch.tensor([r["gold_rejected"] for r in rows], dtype=torch.float32)  # (N,)
        gold_first, gold_second = torch.where(label_first, g_c, g_r), torch.where(label_first, g_r, g_c)
    return UnlabeledPool([r["prompt"] for r in rows], first, second, label_first, gold_first, gold_second)


def write_splits(splits: SERSplits, out: Path) -> dict[str, int]:
    """The parts as JSONL under ``out`` (for inspection and reuse), and their sizes."""
    from r2m.data import write_jsonl
    from r2m.utils import atomic_write_text

    pool = splits.unlabeled
    write_jsonl(out / "sft.jsonl", [{"prompt": r["prompt"], "response": r["chosen"]} for r in splits.sft])
    write_jsonl(out / "seed.jsonl", splits.seed)
    write_jsonl(out / "val.jsonl", splits.val)
    write_jsonl(out / "rm_full.jsonl", splits.rm)
    write_jsonl(out / "unlabeled.jsonl", [
        {"prompt": p, "first": a, "second": b, "first_is_chosen": bool(f)}
        for p, a, b, f in zip(pool.prompts, pool.first, pool.second, pool.label_first.tolist())])
    write_jsonl(out / "ppo_prompts.jsonl", [{"prompt": r["prompt"]} for r in splits.ppo])
    sizes = {"sft": len(splits.sft), "rm": len(splits.rm), "ppo": len(splits.ppo), "seed": len(splits.seed),
             "val": len(splits.val), "unlabeled": len(pool)}
    atomic_write_text(out / "sizes.json", json.dumps(sizes, indent=2) + "\n")
    return sizes


# ---------------------------------------------------------------------------------------------
# Pseudo-labels and their quality
# ---------------------------------------------------------------------------------------------


class PairSet(NamedTuple):
    """Preference pairs as three parallel lists."""

    prompts: list[str]
    chosen: list[str]
    rejected: list[str]


def labelled_pairs(rows: Sequence[dict]) -> PairSet:
    return PairSet([r["prompt"] for r in rows], [r["chosen"] for r in rows], [r["rejected"] for r in rows])


def pseudo_pairs(pool: UnlabeledPool, sel: Selection) -> PairSet:
    """The kept pairs, chosen = the answer the RM scored higher."""
    idx, first = sel.index.tolist(), sel.first_is_chosen.tolist()
    chosen = [pool.first[i] if f else pool.second[i] for i, f in zip(idx, first)]
    rejected = [pool.second[i] if f else pool.first[i] for i, f in zip(idx, first)]
    return PairSet([pool.prompts[i] for i in idx], chosen, rejected)


class PseudoQuality(NamedTuple):
    label_acc: float
    """Share of kept pairs whose pseudo-label agrees with the hidden label (NaN when none are kept)."""
    gold_acc: float
    """Share of kept pairs with distinct gold rewards whose pseudo-chosen answer has the higher gold (NaN: none)."""


def pseudo_quality(pool: UnlabeledPool, sel: Selection) -> PseudoQuality:
    if not len(sel.index):
        return PseudoQuality(float("nan"), float("nan"))
    label_acc = (sel.first_is_chosen == pool.label_first[sel.index]).float().mean().item()
    gold_acc = float("nan")
    if pool.gold_first is not None:
        g1, g2 = pool.gold_first[sel.index], pool.gold_second[sel.index]  # (K,)
        distinct = g1 != g2
        if distinct.any():
            gold_acc = (sel.first_is_chosen == (g1 > g2))[distinct].float().mean().item()
    return PseudoQuality(label_acc, gold_acc)


def pool_accuracy(pool: UnlabeledPool, s1: torch.Tensor, s2: torch.Tensor) -> float:
    """The RM's agreement with the hidden labels over the whole pool, before any filtering (ties half)."""
    wins = pairwise_wins(s1, s2)  # (N,) 1 where answer 1 scores higher
    return torch.where(pool.label_first, wins, 1.0 - wins).mean().item()


# ---------------------------------------------------------------------------------------------
# Reward-model training on pairs (BT or the Eq. 5 hinge; full fine-tuning or LoRA)
# ---------------------------------------------------------------------------------------------


def build_trainable_rm(cfg: Config, init: str) -> TrainableRM:
    """An RM from ``init`` (a causal LM gets a fresh score head), with LoRA adapters when ``ser.lora`` (SER's
    settings) or else ``reward.lora``, and gradient checkpointing when ``reward.gradient_checkpointing``."""
    from r2m.models.loading import load_reward_model, load_tokenizer
    from r2m.models.reward import RewardModel

    tok = load_tokenizer(init, cfg.reward.trust_remote_code)
    model = load_reward_model(init, cfg.reward.dtype, cfg.reward.trust_remote_code, tok.pad_token_id,
                              cfg.run.allow_unsafe_weights)
    if not cfg.ser.lora:
        trainable = make_trainable_rm(model, tok, cfg.reward.lora, cfg.reward.gradient_checkpointing, base_path=init)
        trainable.rm.set_max_length(cfg.reward.max_length)
        return trainable
    from peft import LoraConfig, TaskType, get_peft_model

    from r2m.models.lora import enable_gradient_checkpointing

    # SER App. C.3. modules_to_save keeps the score head trainable (a fresh head must learn).
    lora = LoraConfig(r=cfg.ser.lora_r, lora_alpha=cfg.ser.lora_alpha, lora_dropout=cfg.ser.lora_dropout,
                      task_type=TaskType.SEQ_CLS, modules_to_save=["score"])
    peft_model = get_peft_model(model, lora)
    if cfg.reward.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    # The RewardModel wraps the injected HF model (backbone + head), not the PEFT shell.
    return TrainableRM(RewardModel(peft_model.base_model.model, tok, cfg.reward.max_length), peft_model)


def save_trainable_rm(trainable: TrainableRM, out_dir: Path):
    """Save as a plain sequence-classification checkpoint (LoRA merged) and return the RM to evaluate."""
    from r2m.models.loading import save_model
    from r2m.models.reward import RewardModel

    model = merged_rm_model(trainable)
    save_model(model, trainable.rm.tokenizer, out_dir)
    return RewardModel(model, trainable.rm.tokenizer, trainable.rm.max_length).eval()


def train_pairs(rm, pairs: PairSet, loss: PairLoss, margin: float, cfg: RMConfig, accelerator, run, seed: int,
                show_progress: bool = True) -> float:
    """Train ``rm`` on ``pairs`` with the pairwise ``loss``; returns the mean loss of the last logging window.

    The RM trainer's own fitting (:func:`r2m.trainers.rm.fit_pairs`) with SER's loss and, as SER App. C.3
    does, a linear learning-rate decay.
    """
    from r2m.trainers.rm import fit_pairs

    result = fit_pairs(rm, pairs.prompts, pairs.chosen, pairs.rejected, cfg, accelerator, run, seed,
                       pair_loss=lambda c, r: pair_loss(c, r, loss, margin), linear_decay=True,
                       show_progress=show_progress)
    accelerator.free_memory()  # drop the accelerator's references to this model and optimiser
    return result.final_loss


class FitResult(NamedTuple):
    rm: torch.nn.Module
    """The trained RM (eval mode)."""
    path: Path
    """Where it was saved."""
    final_loss: float
    wall_s: float


def fit_rm(cfg: Config, accelerator, init: str, pairs: PairSet, loss: PairLoss, out_dir: Path, name: str,
           seed: int) -> FitResult:
    """Build an RM from ``init``, train it on ``pairs``, save it to ``out_dir``; its curve goes to ``<name>/``."""
    from r2m.runlog import RunDir
    from r2m.utils import seed_everything

    t0 = time.perf_counter()
    seed_everything(seed)  # the fresh score head and LoRA's init: the same whether resumed or not
    trainable = build_trainable_rm(cfg, init)
    run = RunDir(cfg, None, name=name)
    final = train_pairs(trainable.rm, pairs, loss, cfg.ser.margin, cfg.rm, accelerator, run, seed,
                        cfg.run.progress)
    rm = save_trainable_rm(trainable, out_dir)
    return FitResult(rm, out_dir, final, time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------
# Scoring and evaluation
# ---------------------------------------------------------------------------------------------


class PairProbs(NamedTuple):
    """Sigmoid scores in (0, 1) of the two answers of each pair, (N,) each: the p and s of Eq. 2-4."""

    p1: torch.Tensor
    p2: torch.Tensor


class PairScores(NamedTuple):
    """Raw RM scores of the two answers of each pair, (N,) each, on the CPU."""

    a: torch.Tensor
    b: torch.Tensor

    def probs(self) -> PairProbs:
        """Sigmoid-normalised (SER App. C.3: the RM's scores are mapped into (0, 1) before any threshold)."""
        return PairProbs(torch.sigmoid(self.a), torch.sigmoid(self.b))


def score_pairs(rm, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> PairScores:
    return PairScores(rm.score_texts(list(prompts), list(a)), rm.score_texts(list(prompts), list(b)))


def score_rows(rm, rows: Sequence[dict]) -> PairScores:
    """Scores of (chosen, rejected) of labelled rows."""
    pairs = labelled_pairs(rows)
    return score_pairs(rm, pairs.prompts, pairs.chosen, pairs.rejected)


class RMEval(NamedTuple):
    val: RMAccuracy
    test: RMAccuracy
    val_scores: PairScores
    """Chosen/rejected scores on D_val (the next loop's learning status reads them)."""


def evaluate_rm(rm, val_rows: Sequence[dict], test_rows: Sequence[dict]) -> RMEval:
    val_scores = score_rows(rm, val_rows)
    test_scores = score_rows(rm, test_rows)
    return RMEval(accuracy_from_scores(val_scores.a, val_scores.b, val_rows),
                  accuracy_from_scores(test_scores.a, test_scores.b, test_rows), val_scores)


def _eval_metrics(ev: RMEval) -> dict[str, float]:
    return {"ser/val_acc": ev.val.accuracy, "ser/val_gold_acc": ev.val.gold_accuracy,
            "ser/test_acc": ev.test.accuracy, "ser/test_gold_acc": ev.test.gold_accuracy}


# ---------------------------------------------------------------------------------------------
# Loop state (checkpoint / resume)
# ---------------------------------------------------------------------------------------------


class StopReason(str, enum.Enum):
    """Why the self-training loop ended."""

    STATUS = "stop_status"
    """The learning status on D_val was STOP (Eq. 3)."""
    EMPTY = "empty_filter"
    """The filter kept no pair."""
    MAX_LOOPS = "max_loops"
    """ser.max_loops loops ran."""


STATUS_CODE = {"seed": 0.0, LearningStatus.STATUS1.value: 1.0, LearningStatus.STATUS2.value: 2.0, "release": 3.0}
"""``ser/status`` in metrics.jsonl: 0 Loop 0 (seed), 1 Status 1, 2 Status 2, 3 the release variant's OR filter."""


@dataclass
class LoopState:
    """Everything needed to continue after the last completed loop (``<run>/ser_state.json``)."""

    key: str
    """Hash of the config parts that shape the loop: a state of another config is refused."""
    loop: int
    """Last completed loop (0: the seed RM)."""
    rm_dir: str
    """The current RM, relative to the run directory."""
    seed_dir: str
    """The Loop-0 RM, relative to the run directory."""
    history: list
    """One dict per completed loop (the metrics row, plus the status as text)."""
    stop: Optional[dict] = None
    """How the loop ended: {"reason", "loop", "confident", "delta_p"}; None while it may go on."""
    full: Optional[dict] = None
    """The Full baseline: {"rm_dir", metrics...}, once trained."""
    ppo: Optional[dict] = None
    """PPO stage summary, once run."""

    def save(self, run_dir: Path) -> None:
        from r2m.utils import atomic_write_text

        atomic_write_text(run_dir / STATE_FILE, json.dumps(vars(self), indent=1) + "\n")

    @classmethod
    def load(cls, run_dir: Path) -> Optional["LoopState"]:
        path = run_dir / STATE_FILE
        return cls(**json.loads(path.read_text())) if path.exists() else None


def state_key(cfg: Config) -> str:
    """What determines the loop's trajectory; max_loops and the PPO stage may change on resume."""
    from r2m.pipeline import precision_part

    loop_only = {k: v for k, v in to_dict(cfg.ser).items() if k != "max_loops" and not k.startswith("ppo")}
    lora = [cfg.reward.lora] if cfg.reward.lora.enabled and not cfg.ser.lora else []  # old keys stay valid
    return config_hash(cfg.world, cfg.data, cfg.rm, cfg.reward.arch, cfg.reward.dtype, cfg.run.seed, loop_only,
                       *lora, *precision_part(cfg))


def _resume_state(cfg: Config, run_dir: Path) -> Optional[LoopState]:
    from r2m.errors import ConfigError

    if cfg.run.resume != "auto":
        (run_dir / STATE_FILE).unlink(missing_ok=True)
        return None
    state = LoopState.load(run_dir)
    if state is not None and state.key != state_key(cfg):
        raise ConfigError(f"run.resume: {run_dir / STATE_FILE} was written by another SER config (data, world, rm "
                          f"or ser settings differ); use another run.name or run.resume=never")
    return state


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SERResult:
    run_dir: Path
    history: list
    """One row per completed loop (see :class:`LoopState`)."""
    table: tuple
    """SER Table 1: (headers, rows) for Loop 0, SER and Full."""
    stop: Optional[dict]
    full: dict
    ppo: Optional[dict]
    final_rm: Path
    """The evolved RM (the last loop's)."""


class SERRun:
    """State shared by the stages of one ``r2m ser`` run."""

    def __init__(self, cfg: Config):
        from r2m.pipeline import read_rows
        from r2m.pipeline import data_paths, ensure_world_rm_backbone, ser_needs
        from r2m.runlog import RunDir
        from r2m.trainers.common import make_accelerator, set_threads

        self.cfg = cfg
        set_threads(cfg)
        self.run_dir = Path(cfg.run.root) / cfg.run.name
        paths = data_paths(cfg, ser_needs(cfg))
        self.splits = make_splits(read_rows(cfg, "pref_train", paths["pref_train"]), cfg.ser, cfg.run.seed)
        self.test_rows = read_rows(cfg, "pref_eval", paths["pref_eval"])
        self.init = cfg.rm.init_from or str(ensure_world_rm_backbone(cfg))
        self.state = _resume_state(cfg, self.run_dir)
        self.acc = make_accelerator(cfg, str(self.run_dir))
        self.run = RunDir(cfg, self.acc, resume_step=self.state.loop if self.state else None)
        self.sizes = write_splits(self.splits, self.run_dir / "splits")
        self.rm = None  # the current RM in memory (loaded from the state's rm_dir when resuming)

    def rel(self, path: Path) -> str:
        return str(path.relative_to(self.run_dir))

    def fit(self, init: str, pairs: PairSet, loss: PairLoss, tag: str, seed_offset: int) -> FitResult:
        out = self.run_dir / tag / "checkpoints" / "final"
        return fit_rm(self.cfg, self.acc, init, pairs, loss, out, f"{self.cfg.run.name}/{tag}",
                      self.cfg.run.seed + 1009 * seed_offset)

    def current_rm(self, state: LoopState):
        if self.rm is None:
            self.rm = _load_rm(self.cfg, self.run_dir / state.rm_dir)
        return self.rm

    def record(self, loop: int, status: str, metrics: dict[str, float]) -> dict:
        """Log loop ``loop``'s row to metrics.jsonl and return its history entry."""
        self.run.log({"ser/status": STATUS_CODE[status], **metrics}, loop)
        return {"loop": loop, "status": status, **metrics}

    # ------------------------------------------------------------------ stages

    def loop0(self) -> LoopState:
        t0 = time.perf_counter()
        pairs = labelled_pairs(self.splits.seed)
        fit = self.fit(self.init, pairs, PairLoss.BT, "loop-0", 0)
        ev = evaluate_rm(fit.rm, self.splits.val, self.test_rows)
        n = len(pairs.prompts)
        row = self.record(0, "seed", {"ser/selected": n, "ser/selected_frac": n / len(self.splits.rm),
                                      **_eval_metrics(ev), "ser/train_loss": fit.final_loss,
                                      "ser/wall_s": time.perf_counter() - t0})
        _print_loop(row)
        state = LoopState(key=state_key(self.cfg), loop=0, rm_dir=self.rel(fit.path), seed_dir=self.rel(fit.path),
                          history=[row])
        state.save(self.run_dir)
        self.rm = fit.rm
        return state

    def next_loop(self, state: LoopState) -> None:
        """One self-labelling loop: advances ``state`` by a loop, or sets ``state.stop`` when the loop ends."""
        ser, k, rm = self.cfg.ser, state.loop + 1, self.current_rm(state)
        t0 = time.perf_counter()
        p_c, p_r = score_rows(rm, self.splits.val).probs()  # (V,) each
        evidence = status_evidence(p_c, p_r, ser.tau_high, ser.tau_low)
        pool = self.splits.unlabeled
        raw = score_pairs(rm, pool.prompts, pool.first, pool.second)
        s1, s2 = raw.probs()  # (N,) each
        if ser.variant == SERVariant.RELEASE:
            status = "release"
            sel = release_filter(s1, s2, ser.tau_high, ser.tau_low, ser.filter_delta)
        else:
            decided = learning_status(p_c, p_r, ser.tau_high, ser.tau_low, ser.tau_delta, ser.min_status1)
            if decided is LearningStatus.STOP:
                return self._stop(state, StopReason.STATUS, k, evidence)
            status = decided.value
            sel = filter_pairs(s1, s2, decided, ser.tau_high, ser.tau_low, ser.filter_delta)
        if not len(sel.index):
            return self._stop(state, StopReason.EMPTY, k, evidence)
        quality = pseudo_quality(pool, sel)
        init = self.run_dir / (state.rm_dir if ser.retrain_from == RetrainFrom.CURRENT else state.seed_dir)
        fit = self.fit(str(init), pseudo_pairs(pool, sel), ser.retrain_loss, f"loop-{k}", k)
        ev = evaluate_rm(fit.rm, self.splits.val, self.test_rows)
        n = len(sel.index)
        row = self.record(k, status, {
            "ser/selected": n, "ser/selected_frac": n / len(self.splits.rm), "ser/selected_frac_pool": n / len(pool),
            "ser/pseudo_acc": quality.label_acc, "ser/pseudo_gold_acc": quality.gold_acc,
            "ser/pool_acc": pool_accuracy(pool, raw.a, raw.b), "ser/val_confident": evidence.confident,
            "ser/val_delta_p": evidence.delta_p, **_eval_metrics(ev), "ser/train_loss": fit.final_loss,
            "ser/wall_s": time.perf_counter() - t0})
        _print_loop(row)
        state.loop, state.rm_dir = k, self.rel(fit.path)
        state.history.append(row)
        state.save(self.run_dir)
        self.rm = fit.rm

    def _stop(self, state: LoopState, reason: StopReason, k: int, ev: StatusEvidence) -> None:
        state.stop = {"reason": reason.value, "loop": k, "confident": ev.confident, "delta_p": ev.delta_p}
        state.save(self.run_dir)
        print(f"[ser] loop {k}: {reason.value} (validation: {ev.confident} confident pairs, "
              f"delta_p {ev.delta_p:.3f}); the loop ends", flush=True)

    def full(self, state: LoopState) -> dict:
        """The Full baseline: BT on every labelled pair of the RM part (trained once, kept in the state)."""
        if state.full is None:
            fit = self.fit(self.init, labelled_pairs(self.splits.rm), PairLoss.BT, "full", 10_000)
            ev = evaluate_rm(fit.rm, self.splits.val, self.test_rows)
            state.full = {"rm_dir": self.rel(fit.path), "ser/selected": len(self.splits.rm), **_eval_metrics(ev),
                          "ser/wall_s": fit.wall_s}
            state.save(self.run_dir)
        return state.full

    def ppo(self, state: LoopState) -> dict:
        if state.ppo is None:
            from r2m.trainers.pg import run_rl

            res = run_rl(ppo_config(self.cfg, self.run_dir / state.rm_dir, self.run_dir / "splits" / "ppo_prompts.jsonl"))
            nan = float("nan")
            sft = next((r for r in res.history if r["step"] == 0 and "eval/length" in r), {})  # the SFT policy
            f = res.final_eval
            state.ppo = {"run_dir": str(res.run_dir), "rm_dir": state.rm_dir, "steps": self.cfg.ser.ppo_steps,
                         "sft_gold": sft.get("eval/gold", nan),
                         **{k: f[k] for k in ("eval/gold", "eval/win_rate_vs_sft", "eval/lc_win_rate_vs_sft",
                                              "eval/proxy", "eval/kl", "eval/length", "eval/exact_match") if k in f},
                         "sft_length": sft.get("eval/length", nan), "wall_s": res.wall_s}
            state.save(self.run_dir)
        return state.ppo


def ppo_config(cfg: Config, rm_dir: Path, split_prompts: Path) -> Config:
    """The RL config of SER's PPO stage: the evolved RM, sigmoid-centred rewards, SER's KL settings."""
    from r2m.config import replace_path
    from r2m.pipeline import user_models, world_data

    ser = cfg.ser
    split = ser.ppo_prompts == PPOPrompts.SPLIT
    prompts = str(split_prompts) if split else cfg.data.prompts
    # The split's prompt file is r2m's plain JSONL, whatever data.format the source pairs had.
    fmt = "plain" if split else cfg.data.formats.prompts
    eval_prompts = cfg.data.eval_prompts
    if not user_models(cfg):
        # A SER run in the gold-reward world: the evolved RM is a path now, so name the world's files (r2m refuses
        # to fill a data path behind a model path by itself).
        files = world_data(cfg)
        eval_prompts = eval_prompts or str(files.eval_prompts)
        prompts = prompts or str(files.prompts)
    return replace_path(cfg, run__name=f"{cfg.run.name}-ppo", rl__algorithm="ppo", rl__steps=ser.ppo_steps,
                        reward__source="model", reward__path=str(rm_dir), reward__scaling="sigmoid_centered",
                        rl__beta=ser.ppo_beta, rl__kl_adaptive=ser.ppo_kl_adaptive, rl__kl_target=ser.ppo_kl_target,
                        data__prompts=prompts, data__formats__prompts=fmt, data__eval_prompts=eval_prompts)


def run_ser(cfg: Config) -> SERResult:
    """Splits, Loop 0, self-labelling loops until STOP / an empty filter / ser.max_loops, the Full baseline,
    then PPO with the evolved RM; resumes after the last completed loop with ``run.resume=auto``."""
    ser_run = SERRun(cfg)
    state = self_evolve(ser_run)
    full = ser_run.full(state)
    ser_run.run.close()
    result_table = ser_table(state.history, full, ser_run.sizes)
    write_report(ser_run.run_dir, state.history, full, result_table)
    ppo = ser_run.ppo(state) if cfg.ser.ppo else None
    print_report(state, result_table, ppo, ser_run.run_dir)
    return SERResult(ser_run.run_dir, state.history, result_table, state.stop, full, ppo,
                     ser_run.run_dir / state.rm_dir)


def self_evolve(ser_run: SERRun) -> LoopState:
    """Loop 0 (or the resumed state), then loops until STOP, an empty filter or ser.max_loops."""
    cfg = ser_run.cfg
    state = ser_run.state
    if state is None:
        state = ser_run.loop0()
    else:
        print(f"[ser] resumed after loop {state.loop} from {ser_run.run_dir / STATE_FILE}", flush=True)
        for row in state.history:
            _print_loop(row)
    if _may_continue(state, cfg.ser):
        state.stop = None  # an earlier run ended on max_loops: go on to the new max_loops
    done_before = state.loop
    while state.stop is None and state.loop < cfg.ser.max_loops:
        ser_run.next_loop(state)
    if state.loop > done_before:
        state.ppo = None  # an earlier PPO result used an RM that is no longer the final one
    if state.stop is None:
        state.stop = {"reason": StopReason.MAX_LOOPS.value, "loop": state.loop}
    state.save(ser_run.run_dir)
    return state


def _may_continue(state: LoopState, ser: SERConfig) -> bool:
    return state.stop is not None and state.stop["reason"] == StopReason.MAX_LOOPS.value and state.loop < ser.max_loops


def _load_rm(cfg: Config, path: Path):
    from r2m.models.loading import load_reward_model, load_tokenizer
    from r2m.models.reward import RewardModel
    from r2m.utils import resolve_device

    tok = load_tokenizer(str(path), cfg.reward.trust_remote_code)
    model = load_reward_model(str(path), cfg.reward.dtype, cfg.reward.trust_remote_code, tok.pad_token_id,
                              cfg.run.allow_unsafe_weights)
    return RewardModel(model, tok, cfg.reward.max_length).to(resolve_device(cfg.run.device)).eval()


# ---------------------------------------------------------------------------------------------
# Report: SER Table 1, per-loop table, Figures 2-3
# ---------------------------------------------------------------------------------------------


def ser_table(history: Sequence[dict], full: dict, sizes: dict[str, int]) -> tuple[list[str], list[list]]:
    """SER Table 1 for this run: held-out (data.pref_eval) accuracy of Loop 0, SER (the last loop) and Full."""
    headers = ["RM", "human labels", "pairs trained", "test acc", "test gold acc", "val acc"]
    labelled = sizes["seed"] + sizes["val"]
    first, last = history[0], history[-1]
    return headers, [
        ["Loop 0 (seed)", labelled, int(first["ser/selected"]), first["ser/test_acc"], first["ser/test_gold_acc"],
         first["ser/val_acc"]],
        [f"SER (loop {last['loop']})", labelled, int(last["ser/selected"]), last["ser/test_acc"],
         last["ser/test_gold_acc"], last["ser/val_acc"]],
        ["Full dataset", sizes["rm"], int(full["ser/selected"]), full["ser/test_acc"], full["ser/test_gold_acc"],
         full["ser/val_acc"]],
    ]


def loop_table(history: Sequence[dict]) -> tuple[list[str], list[list]]:
    """Per-loop statistics (SER Figures 2-3)."""
    nan = float("nan")
    headers = ["loop", "status", "pairs", "% RM data", "pseudo acc", "pseudo gold", "pool acc", "val acc",
               "test acc", "test gold"]
    rows = [[r["loop"], r["status"], int(r["ser/selected"]), 100 * r["ser/selected_frac"],
             r.get("ser/pseudo_acc", nan), r.get("ser/pseudo_gold_acc", nan), r.get("ser/pool_acc", nan),
             r["ser/val_acc"], r["ser/test_acc"], r["ser/test_gold_acc"]] for r in history]
    return headers, rows


def _print_loop(row: dict) -> None:
    extra = ""
    if row["loop"] > 0:
        extra = (f", pseudo-label acc {row['ser/pseudo_acc']:.3f} (gold {row['ser/pseudo_gold_acc']:.3f})"
                 f", pool acc {row['ser/pool_acc']:.3f}")
    print(f"[ser] loop {row['loop']} ({row['status']}): {int(row['ser/selected'])} pairs "
          f"({100 * row['ser/selected_frac']:.1f}% of the RM data){extra}; val acc {row['ser/val_acc']:.3f}, "
          f"test acc {row['ser/test_acc']:.3f} (gold {row['ser/test_gold_acc']:.3f})", flush=True)


def write_report(run_dir: Path, history: Sequence[dict], full: dict, table: tuple) -> list[Path]:
    from r2m.eval.report import format_table

    text = ("## SER Table 1 (held-out pairs)\n\n" + format_table(*table, markdown=True) + "\n\n## Loops\n\n"
            + format_table(*loop_table(history), markdown=True) + "\n")
    (run_dir / "table.md").write_text(text)
    return [plot_accuracy(history, full, run_dir / "plots" / "accuracy_per_loop.png"),
            plot_data_fraction(history, run_dir / "plots" / "data_per_loop.png")]


def print_report(state: LoopState, table: tuple, ppo: Optional[dict], run_dir: Path) -> None:
    from r2m.eval.report import format_table

    stop = state.stop or {}
    print(f"\n[ser] loop ended: {stop.get('reason')} at loop {stop.get('loop')}")
    print("\nSER loops\n" + format_table(*loop_table(state.history)))
    print("\nSER Table 1: reward-model accuracy on held-out pairs (test = data.pref_eval)\n" + format_table(*table))
    if ppo is not None:
        nan = float("nan")
        rows = [["SFT", ppo["sft_gold"], 0.5, nan, 0.0, ppo["sft_length"]],
                ["PPO + SER RM", ppo.get("eval/gold", nan), ppo.get("eval/win_rate_vs_sft", nan),
                 ppo.get("eval/proxy", nan), ppo.get("eval/kl", nan), ppo.get("eval/length", nan)]]
        print(f"\nPPO with the evolved RM ({ppo['steps']} steps; gold judge)\n"
              + format_table(["policy", "gold", "win vs SFT", "proxy", "KL", "length"], rows))
    print(f"\nrun directory: {run_dir} (metrics.jsonl, table.md, plots/, {STATE_FILE})", flush=True)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy(history: Sequence[dict], full: dict, path: Path) -> Path:
    """SER Figure 2: accuracy per loop, with the Full-dataset baseline as horizontal lines."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    loops = [r["loop"] for r in history]
    for key, label in [("ser/test_acc", "test acc (labels)"), ("ser/test_gold_acc", "test acc (gold)"),
                       ("ser/val_acc", "validation acc")]:
        line, = ax.plot(loops, [r[key] for r in history], marker="o", label=label)
        if key != "ser/val_acc":
            ax.axhline(full[key], color=line.get_color(), linestyle="--", linewidth=1, label=f"Full dataset: {label}")
    pseudo = [(r["loop"], r["ser/pseudo_acc"]) for r in history if "ser/pseudo_acc" in r]
    if pseudo:
        xs, ys = zip(*pseudo)
        ax.plot(xs, ys, marker="s", linestyle=":", label="pseudo-label acc (selected pairs)")
    ax.set_xticks(loops)
    ax.set_xlabel("SER loop (0: seed RM)")
    ax.set_ylabel("pairwise accuracy")
    ax.set_title("SER: reward-model accuracy per loop")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, plt, path)


def plot_data_fraction(history: Sequence[dict], path: Path) -> Path:
    """SER Figure 3: share of the RM data each loop trains on (Loop 0: the labelled seed)."""
    plt = _plt()
    from matplotlib.patches import Patch

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    loops = [r["loop"] for r in history]
    fracs = [100 * r["ser/selected_frac"] for r in history]
    colors = ["tab:grey" if r["loop"] == 0 else "tab:blue" for r in history]
    bars = ax.bar(loops, fracs, color=colors)
    for bar, r in zip(bars, history):
        ax.annotate(r["status"], (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                    fontsize=8)
    full = ax.axhline(100, color="black", linestyle="--", linewidth=1)
    ax.set_xticks(loops)
    ax.set_xlabel("SER loop")
    ax.set_ylabel("% of the RM part trained on")
    ax.set_title("SER: data selected per loop (bar labels: learning status)")
    ax.set_ylim(0, 140)  # room for the legend above the Full line
    ax.legend([Patch(color="tab:grey"), Patch(color="tab:blue"), full],
              ["human-labelled seed (loop 0)", "self-labelled, filtered (loops >= 1)", "Full dataset (all RM labels)"],
              fontsize=8, loc="upper left")
    return _save(fig, plt, path)


def _save(fig, plt, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
