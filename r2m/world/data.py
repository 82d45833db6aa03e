"""Datasets of the gold-reward world: SFT demonstrations, labelled preference pairs and prompts.

Every product draws from its own random stream, ``default_rng([seed, stream_id])``, so that resizing
one (say ``n_rl_prompts``) leaves the others byte-identical, and rows are drawn one after another
so that growing a budget only appends rows; the same config always gives the same files. The preference labeller is length-biased on purpose: it is the flaw that a reward model
learns and a policy then exploits, measurable because the gold reward is known.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from r2m.config.run import MixtureConfig, WorldConfig
from r2m.config.parsing import to_dict
from r2m.world.seeds import stream_seed
from r2m.world.task import EOS, format_prompt, gold_reward
from r2m.world.task import parse_prompt

# Stream ids: never reuse or renumber one, or previously generated worlds change.
STREAMS: dict[str, int] = {"sft": 1, "pref_train": 2, "pref_eval": 3, "rl_prompts": 4, "eval_prompts": 5,
                           "pref_policy": 6}

_FILENAMES: dict[str, str] = {
    "prompts": "prompts.jsonl",
    "eval_prompts": "eval_prompts.jsonl",
    "sft": "sft.jsonl",
    "pref_train": "pref_train.jsonl",
    "pref_eval": "pref_eval.jsonl",
    "pref_policy": "pref_policy.jsonl",
    "summary": "world.json",
}


@dataclass(frozen=True)
class WorldFiles:
    """Paths of a generated world's files (see :func:`generate_world`)."""

    prompts: Path
    eval_prompts: Path
    sft: Path
    pref_train: Path
    pref_eval: Path
    pref_policy: Path
    summary: Path

    @classmethod
    def in_dir(cls, out_dir: str | Path) -> "WorldFiles":
        """Where the files of a world in ``out_dir`` are, without generating anything."""
        out = Path(out_dir)
        return cls(**{name: out / fname for name, fname in _FILENAMES.items()})

    def exists(self) -> bool:
        """All files present (the summary is written last, but check every file anyway)."""
        return all(getattr(self, f.name).is_file() for f in fields(self))


# --------------------------------------------------------------------------------------------
# Random streams and prompts
# --------------------------------------------------------------------------------------------


def _rng(cfg: WorldConfig, stream: str) -> np.random.Generator:
    """The generator of one product (world.rm_seed for the RM's pairs, see r2m.world.seeds); the modulo maps
    negative seeds to valid seed entropy."""
    return np.random.default_rng([stream_seed(cfg, stream) % 2**64, STREAMS[stream]])


def _digits(cfg: WorldConfig, u: np.ndarray) -> list[int]:
    """One prompt's digits from ``1 + max_digits`` uniforms: u[0] sets n, u[1:1+n] the digits.

    Drawing every row from a fixed number of uniforms keeps the stream prefix-stable: growing a
    budget appends rows and never changes the earlier ones.
    """
    n = cfg.min_digits + int(u[0] * (cfg.max_digits - cfg.min_digits + 1))
    return (u[1 : 1 + n] * 10).astype(np.int64).tolist()


def _draw_digits(rng: np.random.Generator, cfg: WorldConfig, m: int) -> list[list[int]]:
    """``m`` prompts' digits, lengths uniform in [min_digits, max_digits], digits uniform 0-9."""
    u = rng.random(size=(m, 1 + cfg.max_digits))  # [m, 1 + max_digits], row-major: prefix-stable
    return [_digits(cfg, row) for row in u]


def _kind_cdf(mixture: MixtureConfig) -> np.ndarray:
    """Cumulative shares of the kinds, ending exactly at 1.0 (so a uniform < 1 never falls off)."""
    cum = np.cumsum(np.asarray(mixture.weights(), dtype=np.float64))  # [K]
    return cum / cum[-1]


def _kind(kinds: Sequence[str], cdf: np.ndarray, u: float) -> str:
    """The kind a uniform ``u`` falls on; side="right" skips kinds of zero weight."""
    return kinds[int(np.searchsorted(cdf, u, side="right"))]


def make_prompts(cfg: WorldConfig, split: str = "rl_prompts") -> list[dict[str, str]]:
    """Prompt rows ``{"prompt": ...}`` for ``split`` = "rl_prompts" or "eval_prompts"."""
    sizes = {"rl_prompts": cfg.n_rl_prompts, "eval_prompts": cfg.n_eval_prompts}
    if split not in sizes:
        raise ValueError(f"make_prompts split: expected one of {sorted(sizes)}, got {split!r}")
    return [{"prompt": format_prompt(d)} for d in _draw_digits(_rng(cfg, split), cfg, sizes[split])]


# --------------------------------------------------------------------------------------------
# Demonstrations
# --------------------------------------------------------------------------------------------


def _correct(rng: np.random.Generator, digits: list[int]) -> list[int]:
    return sorted(digits)


def _truncated(rng: np.random.Generator, digits: list[int]) -> list[int]:
    """Too short: 1-2 digits dropped from the end, at least one kept (so n=1 stays correct)."""
    s = sorted(digits)
    drop = min(int(rng.integers(1, 3)), len(s) - 1)
    return s[: len(s) - drop]


def _swap(rng: np.random.Generator, digits: list[int]) -> list[int]:
    """One adjacent pair of different digits swapped; correct when every digit is the same."""
    s = sorted(digits)
    spots = [i for i in range(len(s) - 1) if s[i] != s[i + 1]]
    if spots:
        i = spots[int(rng.integers(len(spots)))]
        s[i], s[i + 1] = s[i + 1], s[i]
    return s


def _unsorted(rng: np.random.Generator, digits: list[int]) -> list[int]:
    return list(digits)


def _random(rng: np.random.Generator, digits: list[int]) -> list[int]:
    return rng.integers(0, 10, size=len(digits)).tolist()


def _repeat(rng: np.random.Generator, digits: list[int]) -> list[int]:
    """Too long: 1-3 extra copies of the last sorted digit (the length hack in the data)."""
    s = sorted(digits)
    return s + [s[-1]] * int(rng.integers(1, 4))


def _wrong_digit(rng: np.random.Generator, digits: list[int]) -> list[int]:
    """Well-formed but wrong: one digit (a uniform position) replaced by one of the 9 others, then sorted.

    Sorted and of the right length, so only a reader of the prompt can tell it from the correct answer (the
    ``blind`` world's hidden information, docs/WORLDS.md)."""
    s = sorted(digits)
    i, y = int(rng.integers(len(s))), int(rng.integers(9))
    s[i] = y + (y >= s[i])  # uniform over the 9 digits other than s[i]
    return sorted(s)


_MAKERS: dict[str, Callable[[np.random.Generator, list[int]], list[int]]] = {
    "correct": _correct,
    "truncated": _truncated,
    "swap": _swap,
    "unsorted": _unsorted,
    "random": _random,
    "repeat": _repeat,
    "wrong_digit": _wrong_digit,
}


def make_response(rng: np.random.Generator, digits: Sequence[int], kind: str) -> list[str]:
    """A demonstration of quality ``kind`` (see :class:`MixtureConfig`) as tokens, ending in ``<eos>``."""
    if kind not in _MAKERS:
        raise ValueError(f"response kind: expected one of {sorted(_MAKERS)}, got {kind!r}")
    return [str(d) for d in _MAKERS[kind](rng, list(digits))] + [EOS]


def _gold(cfg: WorldConfig, digits: Sequence[int], tokens: Sequence[str]) -> float:
    return gold_reward(digits, tokens, cfg.extra_token_penalty, cfg.missing_eos_penalty)


def make_sft(cfg: WorldConfig) -> list[dict[str, Any]]:
    """``cfg.n_sft`` rows ``{"prompt", "response", "kind", "gold"}`` of mixed quality."""
    rng, kinds, cdf, rows = _rng(cfg, "sft"), cfg.mixture.kinds(), _kind_cdf(cfg.mixture), []
    for _ in range(cfg.n_sft):
        u = rng.random(size=2 + cfg.max_digits)  # [kind, n, digits...]
        digits, kind = _digits(cfg, u[1:]), _kind(kinds, cdf, u[0])
        tokens = make_response(rng, digits, kind)
        rows.append({"prompt": format_prompt(digits), "response": " ".join(tokens), "kind": kind,
                     "gold": _gold(cfg, digits, tokens)})
    return rows


# --------------------------------------------------------------------------------------------
# Preference pairs
# --------------------------------------------------------------------------------------------


def label_probability(gold_a: float, gold_b: float, len_a: int, len_b: int, tau: float, length_bias: float) -> float:
    """The labeller's P(a > b) = sigmoid((g_a - g_b)/tau + length_bias*(len_a - len_b)).

    Written out (and overflow-safe) so that analyses and tests can recompute ``p_chosen``.
    """
    x = (gold_a - gold_b) / tau + length_bias * (len_a - len_b)
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def _pair_row(cfg: WorldConfig, digits: list[int], a: tuple[str, list[str]], b: tuple[str, list[str]],
              u: float) -> dict[str, Any]:
    """Label one pair: ``a`` is chosen when the uniform draw ``u`` falls below P(a > b)."""
    (kind_a, tok_a), (kind_b, tok_b) = a, b
    g_a, g_b = _gold(cfg, digits, tok_a), _gold(cfg, digits, tok_b)
    p_a = label_probability(g_a, g_b, len(tok_a), len(tok_b), cfg.tau, cfg.length_bias)
    if u < p_a:
        (kc, tc, gc, kr, tr, gr, p) = (kind_a, tok_a, g_a, kind_b, tok_b, g_b, p_a)
    else:  # P(b > a) computed directly rather than 1 - p_a, which loses precision near 1
        p_b = label_probability(g_b, g_a, len(tok_b), len(tok_a), cfg.tau, cfg.length_bias)
        (kc, tc, gc, kr, tr, gr, p) = (kind_b, tok_b, g_b, kind_a, tok_a, g_a, p_b)
    return {"prompt": format_prompt(digits), "chosen": " ".join(tc), "rejected": " ".join(tr),
            "gold_chosen": gc, "gold_rejected": gr, "p_chosen": p, "kind_chosen": kc, "kind_rejected": kr}


def make_pairs(cfg: WorldConfig, split: str = "pref_train") -> list[dict[str, Any]]:
    """Labelled pairs for ``split`` = "pref_train" or "pref_eval"; identical pairs are redrawn.

    A pair whose two responses are identical carries no preference, so it is dropped and a fresh
    prompt takes its place until the budget is met.
    """
    sizes = {"pref_train": cfg.n_pref_train, "pref_eval": cfg.n_pref_eval}
    if split not in sizes:
        raise ValueError(f"make_pairs split: expected one of {sorted(sizes)}, got {split!r}")
    need, rng, kinds, cdf = sizes[split], _rng(cfg, split), cfg.mixture.kinds(), _kind_cdf(cfg.mixture)
    rows: list[dict[str, Any]] = []
    max_tries = 1000 + 100 * need
    for _ in range(max_tries):
        u = rng.random(size=4 + cfg.max_digits)  # [kind_a, kind_b, label, n, digits...]
        digits = _digits(cfg, u[3:])
        ka, kb = _kind(kinds, cdf, u[0]), _kind(kinds, cdf, u[1])
        tok_a, tok_b = make_response(rng, digits, ka), make_response(rng, digits, kb)
        if tok_a != tok_b:
            rows.append(_pair_row(cfg, digits, (ka, tok_a), (kb, tok_b), float(u[2])))
            if len(rows) == need:
                return rows
    raise ValueError(f"world.mixture: could not draw {need} non-identical preference pairs in {max_tries} "
                     f"tries; expected a mixture whose kinds give different responses")


def make_policy_pairs(cfg: WorldConfig, prompts: Sequence[dict[str, str]]) -> list[dict[str, Any]]:
    """Labelled pairs on the RL prompts themselves (the Pretrained-RM baseline of the R2M paper).

    One pair for each of the first ``n_pref_policy`` RL prompts, labelled like the RM's training
    pairs; a prompt whose draws keep coming out identical is skipped.
    """
    rng, kinds, cdf = _rng(cfg, "pref_policy"), cfg.mixture.kinds(), _kind_cdf(cfg.mixture)
    rows: list[dict[str, Any]] = []
    for row in prompts[: cfg.n_pref_policy]:
        digits = parse_prompt(row["prompt"])
        for _ in range(20):
            u = rng.random(size=3)  # [kind_a, kind_b, label]
            ka, kb = _kind(kinds, cdf, u[0]), _kind(kinds, cdf, u[1])
            tok_a, tok_b = make_response(rng, digits, ka), make_response(rng, digits, kb)
            if tok_a != tok_b:
                rows.append(_pair_row(cfg, digits, (ka, tok_a), (kb, tok_b), float(u[2])))
                break
    return rows


# --------------------------------------------------------------------------------------------
# Summary and files
# --------------------------------------------------------------------------------------------


def _frac(hits: int, total: int) -> float | None:
    return round(hits / total, 6) if total else None


def _pair_stats(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """How the labeller behaved: how often it followed gold, and how often length."""
    lens = [(len(r["chosen"].split()), len(r["rejected"].split())) for r in rows]
    gold_diff = [r for r in rows if r["gold_chosen"] != r["gold_rejected"]]
    len_diff = [(lc, lr) for lc, lr in lens if lc != lr]
    # Pairs where the longer answer is the worse one: the length bias against the gold reward.
    conflict = [lc > lr for r, (lc, lr) in zip(rows, lens)
                if lc != lr and (r["gold_chosen"] - r["gold_rejected"]) * (lc - lr) < 0]
    return {
        "n": len(rows),
        "frac_chose_higher_gold": _frac(sum(r["gold_chosen"] > r["gold_rejected"] for r in gold_diff), len(gold_diff)),
        "n_unequal_gold": len(gold_diff),
        "frac_chose_longer": _frac(sum(lc > lr for lc, lr in len_diff), len(len_diff)),
        "n_unequal_length": len(len_diff),
        "frac_chose_longer_when_worse": _frac(sum(conflict), len(conflict)),
        "n_longer_is_worse": len(conflict),
        "mean_p_chosen": _frac(sum(r["p_chosen"] for r in rows), len(rows)),
    }


def _sft_stats(rows: Sequence[dict[str, Any]], mixture: MixtureConfig) -> dict[str, Any]:
    counts = {k: 0 for k in mixture.kinds()}
    for r in rows:
        counts[r["kind"]] += 1
    return {
        "n": len(rows),
        "kind_share": {k: _frac(c, len(rows)) for k, c in counts.items()},
        "mean_gold": _frac(sum(r["gold"] for r in rows), len(rows)),
        "frac_perfect": _frac(sum(r["gold"] == 1.0 for r in rows), len(rows)),
    }


def _write_atomic(path: Path, write: Callable[[Any], None]) -> None:
    """Write via a temporary file in the same directory, fsync, then rename: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """One JSON object per line, written atomically."""
    _write_atomic(Path(path), lambda fh: fh.writelines(json.dumps(r) + "\n" for r in rows))


def _write_json(path: str | Path, obj: Any) -> None:
    _write_atomic(Path(path), lambda fh: fh.write(json.dumps(obj, indent=2) + "\n"))


def _read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a JSONL file (blank lines skipped)."""
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def generate_world(cfg: WorldConfig, out_dir: str | Path) -> WorldFiles:
    """Generate every dataset of the world into ``out_dir`` (deterministic: same cfg, same bytes).

    The summary ``world.json`` is written last, so its presence marks a complete world.
    """
    files = WorldFiles.in_dir(out_dir)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    sft = make_sft(cfg)
    pref_train, pref_eval = make_pairs(cfg, "pref_train"), make_pairs(cfg, "pref_eval")
    prompts, eval_prompts = make_prompts(cfg, "rl_prompts"), make_prompts(cfg, "eval_prompts")
    pref_policy = make_policy_pairs(cfg, prompts)
    for path, rows in ((files.prompts, prompts), (files.eval_prompts, eval_prompts), (files.sft, sft),
                       (files.pref_train, pref_train), (files.pref_eval, pref_eval), (files.pref_policy, pref_policy)):
        _write_jsonl(path, rows)
    summary = {
        "counts": {"prompts": len(prompts), "eval_prompts": len(eval_prompts), "sft": len(sft),
                   "pref_train": len(pref_train), "pref_eval": len(pref_eval), "pref_policy": len(pref_policy)},
        "sft": _sft_stats(sft, cfg.mixture),
        "pref_train": _pair_stats(pref_train),
        "pref_eval": _pair_stats(pref_eval),
        "pref_policy": _pair_stats(pref_policy),
        "config": to_dict(cfg),
    }
    _write_json(files.summary, summary)
    return files
