"""SER: Self-Evolved Reward Learning (Huang et al., arXiv 2411.00418), end to end (``r2m ser``).

    splits      data.pref_train -> SFT : RM : PPO (0.3 : 0.65 : 0.05); RM -> labelled seed (15%) + unlabelled
                pool; the labelled seed -> seed training pairs + D_val (no prompt in both)
    Loop 0      seed RM: ser.loss on the seed pairs for ser.seed_steps optimiser steps
    Loop k      calibrate the current RM's scores on D_val (ser.calibration), then its status (Eq. 2-3 and
                the Status 1 -> Status 2 shift of Sec. 3.1)                  -> STOP ends the loop
                self-label: calibrated probabilities of both answers of every unlabelled pair (Eq. 1)
                filter by the status (Eq. 4), oriented so the higher-scored answer is the chosen one
                                                                      -> an empty filter ends the loop
                retrain (ser.loss) on the filtered pairs (plus the seed's with ser.retrain_data), from the
                current or the seed RM
    baselines   Full: ser.loss on every labelled pair of the RM part (SER Table 1)
    kept        the last loop's RM, or the best on D_val (ser.keep)
    PPO         the kept RM, sigmoid-centred rewards, adaptive KL (SER App. C.3)

This module is the run (the stages of :class:`SERRun`, the loop, :func:`run_ser`). The pure rules live in
``r2m.ser.rules`` (calibration, status, filters, loss), the data in ``r2m.ser.data``, the report in
``reports.ser_report``, SER's RMs (factory, training, scoring) in ``ser_rm``, the PPO stage in ``ser_ppo`` and the
loop state in ``ser_resume``. Every loop writes its RM, a metrics row and the
loop state (atomically), so ``run.resume=auto`` continues after the last completed loop (docs/SER.md).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

from r2m.config.root import Config
from r2m.config.enums import RetrainData, RetrainFrom, SERVariant
from r2m.config.jobs import SERConfig
from r2m.config.parsing import config_hash, to_dict
from r2m.errors import ConfigError
from r2m.recipes.pipeline import data_paths, ensure_world_rm_backbone, precision_part, read_rows, ser_needs
from r2m.recipes.ser_ppo import run_ppo_stage
from r2m.recipes.ser_resume import (FullBaseline, LoopState, LoopStop, PPOSummary, StopEvidence, StopReason,
                                    before_damaged_rm)
from r2m.recipes.ser_rm import (FitResult, PairScores, _eval_metrics, evaluate_rm, fit_rm, load_rm, score_pairs,
                                score_rows)
from r2m.reports.ser_report import STATE_FILE, print_loop, print_report, ser_table, write_report
from r2m.runtime.hooks import Hooks
from r2m.ser.data import (PairSet, labelled_pairs, make_splits, pool_accuracy, pseudo_pairs, pseudo_quality,
                          write_splits)
from r2m.ser.rules import (LearningStatus, ScoreCalibration, Selection, StatusEvidence, calibrate, filter_pairs,
                           kept_loop, learning_status, release_filter, status_evidence)
from r2m.runtime.runlog import RunDir
from r2m.updates.supervised import make_accelerator

log = logging.getLogger("r2m")


# ---------------------------------------------------------------------------------------------
# Loop state (checkpoint / resume)
# ---------------------------------------------------------------------------------------------


STATUS_CODE = {"seed": 0.0, LearningStatus.STATUS1.value: 1.0, LearningStatus.STATUS2.value: 2.0, "release": 3.0}
"""``ser/status`` in metrics.jsonl: 0 Loop 0 (seed), 1 Status 1, 2 Status 2, 3 the release variant's OR filter."""


RESUME_FREE_SER = ("max_loops", "keep", "rl")
"""``ser.*`` fields (with ``ser.ppo*``) that may change on resume: how far the loop goes, which RM is kept, PPO."""


def state_key(cfg: Config) -> str:
    """What determines the loop's trajectory: the world, the data, the RM's training and architecture, the seed,
    the loop's ``ser.*`` fields (not :data:`RESUME_FREE_SER` nor ``ser.ppo*``) and the mixed precision.
    ``reward.lora`` shapes SER's RMs only when it is on and ``ser.lora`` is not."""
    loop = {k: v for k, v in to_dict(cfg.ser).items() if k not in RESUME_FREE_SER and not k.startswith("ppo")}
    lora = [cfg.reward.lora] if cfg.reward.lora.enabled and not cfg.ser.lora.enabled else []
    return config_hash(cfg.world, cfg.data, cfg.rm, cfg.reward.arch, cfg.reward.dtype, cfg.run.seed, loop, *lora,
                       precision_part(cfg))


def _resume_state(cfg: Config, run_dir: Path) -> Optional[LoopState]:
    if cfg.run.resume != "auto":
        (run_dir / STATE_FILE).unlink(missing_ok=True)
        return None
    state = LoopState.load(run_dir)
    if state is not None and state.key != state_key(cfg):
        raise ConfigError(f"run.resume: {run_dir / STATE_FILE} was written by another SER config (data, world, rm "
                          f"or ser settings differ); use another run.name or run.resume=never")

    return before_damaged_rm(state, run_dir) if state is not None else None


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
    """The kept RM (``ser.keep``)."""
    kept: dict
    """{"loop", "reason"}: which loop's RM is SER's result, and why."""


class SERRun:
    """State shared by the stages of one ``r2m ser`` run. ``callbacks`` (the object API's): ``on_save(loop, path)``
    when a loop's RM is saved, ``on_evaluate(loop, row)`` with its history row; True stops after that loop."""

    def __init__(self, cfg: Config, callbacks: Sequence = ()):
        self.cfg = cfg
        self.callbacks = list(callbacks)
        self.hooks = Hooks(callbacks)
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

    def fit(self, init: str, pairs: PairSet, tag: str, seed_offset: int, steps: int = 0) -> FitResult:
        """Train with the run's one pairwise loss (``ser.loss``; the release variant: BT)."""
        out = self.run_dir / tag / "checkpoints" / "final"
        return fit_rm(self.cfg, self.acc, init, pairs, self.cfg.ser.retrain_loss, out, f"{self.cfg.run.name}/{tag}",
                      self.cfg.run.seed + 1009 * seed_offset, steps)

    def current_rm(self, state: LoopState):
        if self.rm is None:
            self.rm = load_rm(self.cfg, self.run_dir / state.rm_dir)
        return self.rm

    def record(self, loop: int, status: str, metrics: dict[str, float], decision: str) -> dict:
        """Log loop ``loop``'s row to metrics.jsonl and return its history entry (with the decision's reason)."""
        self.run.log({"ser/status": STATUS_CODE[status], **metrics}, loop)
        return {"loop": loop, "status": status, "decision": decision, **metrics}

    # ------------------------------------------------------------------ stages

    def loop0(self) -> LoopState:
        t0 = time.perf_counter()
        pairs = labelled_pairs(self.splits.seed)
        fit = self.fit(self.init, pairs, "loop-0", 0, self.cfg.ser.seed_steps)
        self.hooks("on_save", 0, str(fit.path))
        ev = evaluate_rm(fit.rm, self.splits.val, self.test_rows)
        n = len(pairs.prompts)
        row = self.record(0, "seed", {"ser/selected": n, "ser/selected_frac": n / len(self.splits.rm),
                                      "ser/train_pairs": n, "ser/train_steps": fit.steps, **_eval_metrics(ev),
                                      "ser/train_loss": fit.final_loss, "ser/wall_s": time.perf_counter() - t0},
                          f"seed RM: {n} human-labelled pairs, {fit.steps} steps")
        print_loop(row)
        self.hooks("on_evaluate", 0, dict(row))
        state = LoopState(key=state_key(self.cfg), loop=0, rm_dir=self.rel(fit.path), seed_dir=self.rel(fit.path),
                          history=[row])
        state.save(self.run_dir)
        self.rm = fit.rm
        return state

    def decide(self, state: LoopState, rm) -> "Decided":
        """Calibrate the current RM on D_val, measure the status evidence, pick the status and filter the pool."""
        ser = self.cfg.ser
        val = score_rows(rm, self.splits.val)
        cal = calibrate(val.a, val.b, ser.calibration)
        p_c, p_r = val.probs(cal)  # (V,) each
        evidence = status_evidence(p_c, p_r, ser.tau_high, ser.tau_low, *last_loop(state.history))
        pool = self.splits.unlabeled
        raw = score_pairs(rm, pool.prompts, pool.first, pool.second)
        s1, s2 = raw.probs(cal)  # (N,) each
        if ser.variant == SERVariant.RELEASE:
            return Decided("release", "release variant: no status, OR of both filters", evidence, cal, raw,
                           release_filter(s1, s2, ser.tau_high, ser.tau_low, ser.filter_delta))
        decision = learning_status(evidence, ser.tau_delta, ser.min_status1, ser.marginal_gain)
        sel = filter_pairs(s1, s2, decision.status, ser.tau_high, ser.tau_low, ser.filter_delta)
        return Decided(decision.status.value, decision.reason, evidence, cal, raw, sel)

    def next_loop(self, state: LoopState) -> None:
        """One self-labelling loop: advances ``state`` by a loop, or sets ``state.stop`` when the loop ends."""
        ser, k = self.cfg.ser, state.loop + 1
        t0 = time.perf_counter()
        d = self.decide(state, self.current_rm(state))
        print(f"[ser] loop {k} decision: {d.status} ({d.reason})", flush=True)
        if d.status == LearningStatus.STOP.value:
            return self._stop(state, StopReason.STATUS, k, d)
        if not len(d.sel.index):
            return self._stop(state, StopReason.EMPTY, k, d)
        pool = self.splits.unlabeled
        quality = pseudo_quality(pool, d.sel)
        pairs = pseudo_pairs(pool, d.sel)
        if ser.retrain_data == RetrainData.FILTERED_PLUS_SEED:
            seed = labelled_pairs(self.splits.seed)
            pairs = PairSet(pairs.prompts + seed.prompts, pairs.chosen + seed.chosen, pairs.rejected + seed.rejected)
        init = self.run_dir / (state.rm_dir if ser.retrain_from == RetrainFrom.CURRENT else state.seed_dir)
        fit = self.fit(str(init), pairs, f"loop-{k}", k)
        self.hooks("on_save", k, str(fit.path))
        ev = evaluate_rm(fit.rm, self.splits.val, self.test_rows)
        n = len(d.sel.index)
        row = self.record(k, d.status, {
            "ser/selected": n, "ser/selected_frac": n / len(self.splits.rm), "ser/selected_frac_pool": n / len(pool),
            "ser/train_pairs": len(pairs.prompts), "ser/train_steps": fit.steps,
            "ser/pseudo_acc": quality.label_acc, "ser/pseudo_gold_acc": quality.gold_acc,
            "ser/pool_acc": pool_accuracy(pool, d.raw.a, d.raw.b), **_evidence_metrics(d),
            **_eval_metrics(ev), "ser/train_loss": fit.final_loss, "ser/wall_s": time.perf_counter() - t0},
            d.reason)
        print_loop(row)
        self.hooks("on_evaluate", k, dict(row))
        state.loop, state.rm_dir = k, self.rel(fit.path)
        state.history.append(row)
        state.save(self.run_dir)
        self.rm = fit.rm

    def _stop(self, state: LoopState, reason: StopReason, k: int, d: "Decided") -> None:
        ev = d.evidence
        state.stop = LoopStop(reason, k, d.reason, StopEvidence(ev.confident, ev.delta_p, ev.n, ev.gain, d.cal.centre,
                                                                d.cal.scale))
        state.save(self.run_dir)
        print(f"[ser] loop {k}: {reason.value} (validation: {ev.confident}/{ev.n} confident pairs, "
              f"delta_p {ev.delta_p:.3f}, last gain {ev.gain:+.4f}); the loop ends", flush=True)

    def full(self, state: LoopState) -> FullBaseline:
        """The Full baseline: ``ser.loss`` on every labelled pair of the RM part (trained once, kept in the state)."""
        if state.full is None:
            fit = self.fit(self.init, labelled_pairs(self.splits.rm), "full", 10_000)
            ev = evaluate_rm(fit.rm, self.splits.val, self.test_rows)
            state.full = FullBaseline(self.rel(fit.path), len(self.splits.rm), ev.val.accuracy, ev.val.gold_accuracy,
                                      ev.test.accuracy, ev.test.gold_accuracy, fit.steps, fit.wall_s,
                                      ev.test.equal_length_accuracy, ev.test.unequal_length_accuracy)
            state.save(self.run_dir)
        return state.full

    def ppo(self, state: LoopState, rm_dir: str) -> PPOSummary:
        """PPO with the kept RM (rerun when an earlier result used another RM)."""
        if state.ppo is None or state.ppo.rm_dir != rm_dir:
            state.ppo = run_ppo_stage(self.cfg, self.run_dir, rm_dir, self.callbacks)
            state.save(self.run_dir)
        return state.ppo


class Decided(NamedTuple):
    """One loop's decision and what it was made on."""

    status: str
    """A :class:`LearningStatus` value, or "release"."""
    reason: str
    evidence: StatusEvidence
    cal: ScoreCalibration
    raw: PairScores
    """The current RM's raw scores of the unlabelled pool."""
    sel: Selection


def _evidence_metrics(d: Decided) -> dict[str, float]:
    ev = d.evidence
    return {"ser/val_confident": ev.confident, "ser/val_delta_p": ev.delta_p, "ser/val_n": ev.n,
            "ser/status1_gain": ev.gain, "ser/cal_centre": d.cal.centre, "ser/cal_scale": d.cal.scale}


class LastLoop(NamedTuple):
    """The loop that made the current RM, as the status rule reads it."""

    status: Optional[LearningStatus]
    """None for the seed RM (and the release variant, which has no status)."""
    gain: float
    """Its validation accuracy minus the loop before it (NaN with no status)."""


def last_loop(history: Sequence[dict]) -> LastLoop:
    last = history[-1]
    if last["status"] not in (LearningStatus.STATUS1.value, LearningStatus.STATUS2.value):
        return LastLoop(None, float("nan"))
    return LastLoop(LearningStatus(last["status"]), last["ser/val_acc"] - history[-2]["ser/val_acc"])


def run_ser(cfg: Config, callbacks: Sequence = ()) -> SERResult:
    """Splits, Loop 0, self-labelling loops until STOP / an empty filter / ser.max_loops / a callback, the Full
    baseline, then PPO with the kept RM; resumes after the last completed loop with ``run.resume=auto``.
    ``callbacks``: see :class:`SERRun`; the PPO stage passes them to ``run_rl`` (steps restart at 0 there)."""
    ser_run = SERRun(cfg, callbacks)
    state = self_evolve(ser_run)
    full = ser_run.full(state)
    ser_run.run.close()
    kept = kept_loop([r["ser/val_acc"] for r in state.history], cfg.ser.keep, state.stop.reason.value)
    # The reports (a lower layer) and SERResult read the ser_state.json layout: plain dicts.
    full, stop = full.to_json(), state.stop.to_json()
    result_table = ser_table(state.history, full, ser_run.sizes, kept, cfg.ser.retrain_loss)
    write_report(ser_run.run_dir, state.history, stop, full, result_table, kept)
    rm_dir = loop_rm_dir(kept.index)
    ppo = ser_run.ppo(state, rm_dir).to_json() if cfg.ser.ppo else None
    print_report(state.history, stop, result_table, ppo, ser_run.run_dir, kept)
    return SERResult(ser_run.run_dir, state.history, result_table, stop, full, ppo,
                     ser_run.run_dir / rm_dir, {"loop": kept.index, "reason": kept.reason})


def loop_rm_dir(loop: int) -> str:
    """Loop ``loop``'s RM, relative to the run directory."""
    return f"loop-{loop}/checkpoints/final"


def self_evolve(ser_run: SERRun) -> LoopState:
    """Loop 0 (or the resumed state), then loops until STOP, an empty filter, ser.max_loops or a callback's True."""
    cfg = ser_run.cfg
    state = ser_run.state
    if state is None:
        state = ser_run.loop0()
    else:
        print(f"[ser] resumed after loop {state.loop} from {ser_run.run_dir / STATE_FILE}", flush=True)
        for row in state.history:
            print_loop(row)
    if _may_continue(state, cfg.ser):
        state.stop = None  # an earlier run ended on max_loops: go on to the new max_loops
    while state.stop is None and state.loop < cfg.ser.max_loops and not ser_run.hooks.stop_requested:
        ser_run.next_loop(state)
    if state.stop is None and ser_run.hooks.stop_requested and state.loop < cfg.ser.max_loops:
        state.stop = LoopStop(StopReason.CALLBACK, state.loop)
        print(f"[ser] loop {state.loop}: a callback asked to stop; the loop ends", flush=True)
    if state.stop is None:
        state.stop = LoopStop(StopReason.MAX_LOOPS, state.loop)
    state.save(ser_run.run_dir)
    return state


def _may_continue(state: LoopState, ser: SERConfig) -> bool:
    """An earlier run ended on max_loops or a callback (not on the loop's own rule): resuming goes on."""
    return state.stop is not None and state.stop.reason in (StopReason.MAX_LOOPS, StopReason.CALLBACK) \
        and state.loop < ser.max_loops
