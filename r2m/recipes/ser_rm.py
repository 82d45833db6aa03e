"""SER's reward models: built through the one RM factory, trained on pairs with SER's loss (BT or the Eq. 5 hinge),
saved merged, scored and evaluated on D_val and the test pairs."""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import NamedTuple, Sequence

import torch

from r2m.ser.data import PairSet, labelled_pairs
from r2m.ser.rules import ScoreCalibration, pair_loss
from r2m.config.root import Config
from r2m.config.enums import PairLoss
from r2m.config.training import RMConfig
from r2m.eval.rm_accuracy import RMAccuracy, accuracy_from_scores
from r2m.models.loading import load_reward_model, load_tokenizer, save_model
from r2m.models.reward import RewardModel
from r2m.runtime.runlog import RunDir
from r2m.updates.rm import TrainableRM, fit_pairs, make_trainable_rm, merged_rm_model
from r2m.updates.supervised import LoopResult
from r2m.utils import resolve_device, seed_everything
from r2m.world.view import rm_prompt_view


# ---------------------------------------------------------------------------------------------
# Reward-model training on pairs (BT or the Eq. 5 hinge; full fine-tuning or LoRA)
# ---------------------------------------------------------------------------------------------


def build_trainable_rm(cfg: Config, init: str) -> TrainableRM:
    """An RM from ``init`` (a causal LM gets a fresh score head), through the one RM factory
    (:func:`r2m.updates.rm.make_trainable_rm`): LoRA adapters with ``ser.lora`` when ``ser.lora.enabled`` (SER's
    settings), else ``reward.lora``; gradient checkpointing when ``reward.gradient_checkpointing``."""
    tok = load_tokenizer(init, cfg.reward.trust_remote_code)
    model = load_reward_model(init, cfg.reward.dtype, cfg.reward.trust_remote_code, tok.pad_token_id,
                              cfg.run.allow_unsafe_weights)
    lora = cfg.ser.lora if cfg.ser.lora.enabled else cfg.reward.lora
    trainable = make_trainable_rm(model, tok, lora, cfg.reward.gradient_checkpointing, base_path=init)
    trainable.rm.set_max_length(cfg.reward.max_length)
    trainable.rm.prompt_view = rm_prompt_view(cfg.world)  # the blind world: SER's RM reads the masked view
    return trainable


def save_trainable_rm(trainable: TrainableRM, out_dir: Path):
    """Save as a plain sequence-classification checkpoint (LoRA merged) and return the RM to evaluate."""
    model = merged_rm_model(trainable)
    save_model(model, trainable.rm.tokenizer, out_dir)
    rm = RewardModel(model, trainable.rm.tokenizer, trainable.rm.max_length).eval()
    rm.prompt_view = trainable.rm.prompt_view  # the saved RM scores through the view it trained on
    return rm


def steps_config(rmc: RMConfig, n_pairs: int, steps: int) -> RMConfig:
    """``rmc`` set to exactly ``steps`` optimiser steps over ``n_pairs`` pairs (whatever rm.epochs says)."""
    epochs = math.ceil(steps * rmc.batch_size / n_pairs)  # passes enough for ``steps`` batches; max_steps cuts
    return dataclasses.replace(rmc, epochs=float(epochs), max_steps=steps)


def train_pairs(rm, pairs: PairSet, loss: PairLoss, margin: float, cfg: RMConfig, accelerator, run, seed: int,
                show_progress: bool = True) -> LoopResult:
    """Train ``rm`` on ``pairs`` with the pairwise ``loss``; returns the steps and the last window's mean loss.

    The RM trainer's own fitting (:func:`r2m.updates.rm.fit_pairs`) with SER's loss and, as SER App. C.3
    does, a linear learning-rate decay.
    """
    result = fit_pairs(rm, pairs.prompts, pairs.chosen, pairs.rejected, cfg, accelerator, run, seed,
                       pair_loss=lambda c, r: pair_loss(c, r, loss, margin), linear_decay=True,
                       show_progress=show_progress)
    accelerator.free_memory()  # drop the accelerator's references to this model and optimiser
    return result


class FitResult(NamedTuple):
    rm: torch.nn.Module
    """The trained RM (eval mode)."""
    path: Path
    """Where it was saved."""
    final_loss: float
    wall_s: float
    steps: int
    """Optimiser steps taken."""


def fit_rm(cfg: Config, accelerator, init: str, pairs: PairSet, loss: PairLoss, out_dir: Path, name: str,
           seed: int, steps: int = 0) -> FitResult:
    """Build an RM from ``init``, train it on ``pairs`` (``steps`` optimiser steps, or 0: rm.epochs), save it to
    ``out_dir``; its curve goes to ``<name>/``."""
    t0 = time.perf_counter()
    seed_everything(seed)  # the fresh score head and LoRA's init: the same whether resumed or not
    trainable = build_trainable_rm(cfg, init)
    run = RunDir(cfg, None, name=name)
    rmc = steps_config(cfg.rm, len(pairs.prompts), steps) if steps else cfg.rm
    result = train_pairs(trainable.rm, pairs, loss, cfg.ser.margin, rmc, accelerator, run, seed, cfg.run.progress)
    rm = save_trainable_rm(trainable, out_dir)
    return FitResult(rm, out_dir, result.final_loss, time.perf_counter() - t0, result.steps)


# ---------------------------------------------------------------------------------------------
# Scoring and evaluation
# ---------------------------------------------------------------------------------------------


class PairProbs(NamedTuple):
    """Probabilities in (0, 1) of the two answers of each pair, (N,) each: the p and s of Eq. 2-4."""

    p1: torch.Tensor
    p2: torch.Tensor


class PairScores(NamedTuple):
    """Raw RM scores of the two answers of each pair, (N,) each, on the CPU."""

    a: torch.Tensor
    b: torch.Tensor

    def probs(self, cal: ScoreCalibration = ScoreCalibration(0.0, 1.0)) -> PairProbs:
        """Mapped into (0, 1) before any threshold (SER App. C.3), by ``cal`` (default: the plain sigmoid)."""
        return PairProbs(cal.probs(self.a), cal.probs(self.b))


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
            "ser/test_acc": ev.test.accuracy, "ser/test_gold_acc": ev.test.gold_accuracy,
            **length_split_metrics(ev.test)}


def length_split_metrics(test: RMAccuracy) -> dict[str, float]:
    """Test accuracy on equal-length and on unequal-length pairs (SER Table 1 per world, issue 14 item 6), and
    how many test pairs are of equal length."""
    return {"ser/test_acc_equal_len": test.equal_length_accuracy,
            "ser/test_acc_unequal_len": test.unequal_length_accuracy,
            "ser/test_n_equal_len": test.n_equal_length}


def load_rm(cfg: Config, path: Path):
    tok = load_tokenizer(str(path), cfg.reward.trust_remote_code)
    model = load_reward_model(str(path), cfg.reward.dtype, cfg.reward.trust_remote_code, tok.pad_token_id,
                              cfg.run.allow_unsafe_weights)
    rm = RewardModel(model, tok, cfg.reward.max_length).to(resolve_device(cfg.run.device)).eval()
    rm.prompt_view = rm_prompt_view(cfg.world)
    return rm
