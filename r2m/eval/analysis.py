"""Hidden-state analyses behind R2M's motivation (R2M paper Section 3, Appendix D, G.1-G.2).

Every analysis reads one vector per (prompt, response): the mean over its valid tokens of a layer's
hidden states (``mean_pooled_states``), and compares vectors by cosine similarity rescaled to [0, 1]
as (cos + 1) / 2 ("after regularizing the cosine similarity values to the range [0, 1]", G.1).

- Figure 1: per layer, mean similarity of same-preference pairs (intra) vs different-preference
  pairs (cross), over all unique pairs of the chosen and rejected samples (:func:`preference_similarity`).
- Figure 2: similarity against the absolute reward difference over sampled pairs, with Pearson's r
  (:func:`similarity_vs_reward_gap`).
- Figure 9a / Table 5: similarity within hacking, within non-hacking and across the two
  (:func:`hacking_similarity`); in the gold-reward world :func:`world_hacking_labels` labels responses.
- Figure 9b: one (prompt, response) through several policy checkpoints (:func:`checkpoint_similarity_matrix`).

Works with any Hugging Face causal LM and its tokenizer.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, NamedTuple, Optional, Sequence

import torch
from torch import nn

from r2m.models.forward import left_pad, position_ids
from r2m.fileio import atomic_savefig, atomic_write_text
from r2m.errors import ConfigError
from r2m.world.task import is_hacking, parse_prompt

if TYPE_CHECKING:
    from r2m.eval.judges import Scorer

HackingLabeller = Callable[[Sequence[str], Sequence[str]], list[bool]]
"""(prompts, responses) -> is-hacking per response, e.g. :func:`world_hacking_labels`."""

# ---------------------------------------------------------------------------------------------
# Hidden states and similarities
# ---------------------------------------------------------------------------------------------


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def num_layers(model: nn.Module) -> int:
    """Transformer blocks L; ``output_hidden_states`` gives L + 1 tensors (index 0: the embeddings)."""
    return model.config.get_text_config().num_hidden_layers


def default_layers(model: nn.Module, count: int = 5) -> list[int]:
    """``count`` evenly spaced layers ending at the last (32 layers, 5: 6, 13, 19, 26, 32; the paper used 6..30)."""
    total = num_layers(model)
    return sorted({max(1, round(total * i / count)) for i in range(1, count + 1)})


def _layer_index(layer: int, total: int) -> int:
    """A layer as an index into ``hidden_states`` (0 = embeddings, L = last; negatives count from the end)."""
    index = layer + total + 1 if layer < 0 else layer
    if not 0 <= index <= total:
        raise ValueError(f"layer {layer}: expected -{total + 1}..{total} for a model with {total} layers")
    return index


@torch.no_grad()
def mean_pooled_states(model: nn.Module, tokenizer, prompts: Sequence[str], responses: Sequence[str],
                       layers: Sequence[int], batch_size: int = 32) -> dict[int, torch.Tensor]:
    """Per layer, (N, D) float32 CPU means of the hidden states over the valid tokens of prompt + response.

    Prompt and response are tokenised separately and joined, as the policy sees them in RL
    (:func:`r2m.experience.rollout.text_feedback`); rows are left-padded with positions that skip the padding,
    so a row's vector does not depend on its batch. Keys are layer indices into ``hidden_states``
    (negative layers are resolved: -1 -> L). Layer L is the last block's output as HF returns it
    (for Llama, after the final norm: the states R2M feeds to the reward model).
    """
    if len(prompts) != len(responses):
        raise ValueError(f"mean_pooled_states: got {len(prompts)} prompts and {len(responses)} responses")
    total = num_layers(model)
    index = {_layer_index(layer, total) for layer in layers}
    was_training = model.training
    model.eval()
    out: dict[int, list[torch.Tensor]] = {i: [] for i in sorted(index)}
    p_ids = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    r_ids = tokenizer(list(responses), add_special_tokens=False)["input_ids"]
    seqs = [p + r for p, r in zip(p_ids, r_ids)]
    for start in range(0, len(seqs), batch_size):
        ids, mask = left_pad(seqs[start: start + batch_size], tokenizer.pad_token_id)  # (B, S)
        ids, mask = ids.to(_device(model)), mask.to(_device(model))
        hidden = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask),
                       output_hidden_states=True, use_cache=False).hidden_states  # L+1 x (B, S, D)
        weights = mask.unsqueeze(-1).float()  # (B, S, 1)
        for i in out:
            pooled = (hidden[i].float() * weights).sum(1) / weights.sum(1).clamp(min=1)  # (B, D)
            out[i].append(pooled.cpu())
    model.train(was_training)
    return {i: torch.cat(parts) for i, parts in out.items()}


def cosine_matrix(x: torch.Tensor, y: Optional[torch.Tensor] = None, rescale: bool = True) -> torch.Tensor:
    """(N, M) cosine similarities of the rows of x (N, D) and y (M, D) (y = x by default); in [0, 1]
    as (cos + 1) / 2 when ``rescale`` (the paper's regularisation), else in [-1, 1]."""
    y = x if y is None else y
    xn = torch.nn.functional.normalize(x.double(), dim=-1)
    yn = torch.nn.functional.normalize(y.double(), dim=-1)
    cos = (xn @ yn.T).clamp(-1.0, 1.0)  # (N, M); clamp: rounding can step past +-1
    return (cos + 1) / 2 if rescale else cos


class GroupSimilarity(NamedTuple):
    """Mean pairwise similarity within and across two labelled groups, over unique pairs."""

    within_true: float
    """Pairs whose two items are both labelled True (NaN if none)."""
    within_false: float
    """Pairs both labelled False (NaN if none)."""
    within: float
    """All same-label pairs pooled (the paper's P_intra)."""
    cross: float
    """Pairs with different labels (the paper's P_cross)."""
    n_within_true: int
    n_within_false: int
    n_cross: int


def _mean(values: torch.Tensor) -> float:
    return values.mean().item() if values.numel() else float("nan")


def labelled_pair_similarity(states: torch.Tensor, labels: Sequence[bool], groups: Optional[Sequence[int]] = None,
                             rescale: bool = True) -> GroupSimilarity:
    """Partition all unique pairs (i < j) of ``states`` (N, D) by label and average their similarity.

    With ``groups``, only pairs inside the same group count (e.g. responses to the same prompt, as
    in Table 5, where each group holds 8 hacking and 8 normal responses to one query).
    """
    lab = torch.as_tensor(list(labels), dtype=torch.bool)  # (N,)
    if lab.numel() != states.shape[0]:
        raise ValueError(f"labelled_pair_similarity: {states.shape[0]} states but {lab.numel()} labels")
    i, j = torch.triu_indices(len(lab), len(lab), offset=1)  # (P,) each: every unique pair once
    if groups is not None:
        g = torch.as_tensor(list(groups))
        same = g[i] == g[j]
        i, j = i[same], j[same]
    sim = cosine_matrix(states, rescale=rescale)[i, j]  # (P,)
    both_true, both_false = lab[i] & lab[j], ~lab[i] & ~lab[j]
    cross = lab[i] != lab[j]
    return GroupSimilarity(
        within_true=_mean(sim[both_true]), within_false=_mean(sim[both_false]),
        within=_mean(sim[both_true | both_false]), cross=_mean(sim[cross]),
        n_within_true=int(both_true.sum()), n_within_false=int(both_false.sum()), n_cross=int(cross.sum()),
    )


class PreferenceSimilarity(NamedTuple):
    """One layer of Figure 1."""

    intra: float
    """Mean similarity of pairs with the same preference label (chosen-chosen and rejected-rejected)."""
    cross: float
    """Mean similarity of chosen-rejected pairs."""
    n_intra: int
    n_cross: int


def preference_similarity(states_chosen: dict[int, torch.Tensor],
                          states_rejected: dict[int, torch.Tensor],
                          rescale: bool = True) -> dict[int, PreferenceSimilarity]:
    """Figure 1 / G.1: per layer, all C(Nc+Nr, 2) unique pairs of the union, split into intra and cross."""
    out = {}
    for layer, chosen in states_chosen.items():
        rejected = states_rejected[layer]
        labels = [True] * len(chosen) + [False] * len(rejected)
        s = labelled_pair_similarity(torch.cat([chosen, rejected]), labels, rescale=rescale)
        out[layer] = PreferenceSimilarity(s.within, s.cross, s.n_within_true + s.n_within_false, s.n_cross)
    return out


class HackingSimilarity(NamedTuple):
    """Table 5."""

    hacking: float
    """Mean similarity between two hacking responses."""
    non_hacking: float
    """Mean similarity between two non-hacking responses."""
    cross: float
    """Mean similarity between a hacking and a non-hacking response."""
    n_hacking: int
    n_non_hacking: int
    n_cross: int


def hacking_similarity(states: torch.Tensor, is_hacking: Sequence[bool], groups: Optional[Sequence[int]] = None,
                       rescale: bool = True) -> HackingSimilarity:
    """Table 5 on (N, D) states labelled hacking / not (pairs within ``groups`` only, when given)."""
    s = labelled_pair_similarity(states, is_hacking, groups, rescale)
    return HackingSimilarity(s.within_true, s.within_false, s.cross, s.n_within_true, s.n_within_false, s.n_cross)


def world_hacking_labels(prompts: Sequence[str], responses: Sequence[str]) -> list[bool]:
    """:func:`r2m.world.task.is_hacking` on texts: the sorted digits, then extra tokens (world prompts only)."""
    return [is_hacking(parse_prompt(p), r.split()) for p, r in zip(prompts, responses)]


def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    """Pearson's r of two (N,) vectors; NaN when either is constant or N < 2."""
    x, y = x.double().flatten(), y.double().flatten()
    if x.numel() < 2:
        return float("nan")
    xc, yc = x - x.mean(), y - y.mean()
    denom = (xc.norm() * yc.norm()).item()
    return (xc @ yc).item() / denom if denom > 0 else float("nan")


class SimilarityGap(NamedTuple):
    """Figure 2."""

    similarity: torch.Tensor
    """(P,) hidden-state similarity of each sampled pair."""
    reward_gap: torch.Tensor
    """(P,) |r_p - r_q| of the same pairs."""
    pearson: float
    """Pearson's r between the two (the paper finds it strongly negative)."""


def similarity_vs_reward_gap(states: torch.Tensor, rewards: Sequence[float] | torch.Tensor, num_pairs: int = 300,
                             seed: int = 0, rescale: bool = True) -> SimilarityGap:
    """Figure 2 / G.1: ``num_pairs`` unique pairs drawn without replacement (all when fewer exist)."""
    r = torch.as_tensor(rewards, dtype=torch.float64).flatten()  # (N,)
    if r.numel() != states.shape[0]:
        raise ValueError(f"similarity_vs_reward_gap: {states.shape[0]} states but {r.numel()} rewards")
    i, j = torch.triu_indices(len(r), len(r), offset=1)  # (P_all,)
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(i), generator=gen)[:num_pairs]
    i, j = i[pick], j[pick]
    sim = cosine_matrix(states, rescale=rescale)[i, j]  # (P,)
    gap = (r[i] - r[j]).abs()  # (P,)
    return SimilarityGap(sim, gap, pearson(sim, gap))


@torch.no_grad()
def checkpoint_similarity_matrices(models: Iterable[nn.Module], tokenizer, prompts: Sequence[str],
                                   responses: Sequence[str], layer: int = -1, rescale: bool = True) -> torch.Tensor:
    """Figure 9b: (R, C, C) similarities of each (prompt, response) across C checkpoints.

    ``models`` is consumed one at a time (a generator that loads each checkpoint keeps one in memory).
    All checkpoints must share the hidden size (the same architecture at different steps).
    """
    per_model = []
    for model in models:
        states = mean_pooled_states(model, tokenizer, prompts, responses, [layer])
        per_model.append(next(iter(states.values())))  # (R, D)
    if not per_model:
        raise ValueError("checkpoint_similarity_matrices: expected at least one checkpoint")
    if len({s.shape[-1] for s in per_model}) > 1:
        raise ValueError(f"checkpoint_similarity_matrices: checkpoints differ in hidden size "
                         f"{sorted({s.shape[-1] for s in per_model})}")
    stacked = torch.stack(per_model, dim=1)  # (R, C, D)
    return torch.stack([cosine_matrix(s, rescale=rescale) for s in stacked])  # (R, C, C)


def checkpoint_similarity_matrix(models: Iterable[nn.Module], tokenizer, prompt: str, response: str,
                                 layer: int = -1, rescale: bool = True) -> torch.Tensor:
    """Figure 9b for one (prompt, response): (C, C)."""
    return checkpoint_similarity_matrices(models, tokenizer, [prompt], [response], layer, rescale)[0]


# ---------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib  # heavy: lazy

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # heavy: lazy

    return plt


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    atomic_savefig(fig, path)
    _pyplot().close(fig)
    return path


def plot_layer_similarity(result: dict[int, PreferenceSimilarity], path: str | Path,
                          title: str = "Hidden-state similarity by layer (R2M Fig. 1)") -> Path:
    """Grouped bars per layer: same-preference vs different-preference pairs."""
    plt = _pyplot()
    layers = sorted(result)
    xs = torch.arange(len(layers)).tolist()
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    width = 0.38
    ax.bar([x - width / 2 for x in xs], [result[k].intra for k in layers], width, label="same preference (intra)")
    ax.bar([x + width / 2 for x in xs], [result[k].cross for k in layers], width, label="different preference (cross)")
    values = [v for k in layers for v in (result[k].intra, result[k].cross) if not math.isnan(v)]
    if values:  # zoom on the range the bars differ in; similarities of one model are often all near 1
        lo, hi = min(values), max(values)
        pad = max(0.05 * (hi - lo), 1e-3)
        ax.set_ylim(max(0.0, lo - 4 * pad), min(1.0, hi + pad))
    ax.set_xticks(xs, [str(k) for k in layers])
    ax.set_xlabel("layer")
    ax.set_ylabel("mean cosine similarity, (cos+1)/2")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_similarity_vs_gap(result: SimilarityGap, path: str | Path,
                           title: str = "Similarity vs reward difference (R2M Fig. 2)") -> Path:
    """Scatter of |Δr| against similarity, with the least-squares line and Pearson's r."""
    plt = _pyplot()
    x, y = result.similarity.double(), result.reward_gap.double()
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=110)
    ax.scatter(x.tolist(), y.tolist(), s=10, alpha=0.6, label="pair")
    if x.numel() >= 2 and x.std() > 0:
        slope = ((x - x.mean()) @ (y - y.mean())) / ((x - x.mean()) @ (x - x.mean()))
        intercept = y.mean() - slope * x.mean()
        line_x = torch.linspace(x.min().item(), x.max().item(), 2, dtype=torch.float64)
        ax.plot(line_x.tolist(), (intercept + slope * line_x).tolist(), color="C3",
                label=f"least squares (Pearson r = {result.pearson:.3f})")
    ax.set_xlabel("hidden-state similarity, (cos+1)/2")
    ax.set_ylabel("|reward difference|")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_similarity_heatmaps(matrices: Sequence[torch.Tensor], tick_labels: Sequence[str], path: str | Path,
                             title: str, subtitles: Optional[Sequence[str]] = None,
                             axis_label: str = "checkpoint") -> Path:
    """One heatmap per (C, C) matrix, side by side with a shared colour scale and colorbar (Fig. 9)."""
    plt = _pyplot()
    mats = [m.double() for m in matrices]
    lo = min(m.min().item() for m in mats)
    hi = max(m.max().item() for m in mats)
    fig, axes = plt.subplots(1, len(mats), figsize=(3.6 * len(mats) + 1.2, 3.8), dpi=110, squeeze=False)
    image = None
    for k, (ax, m) in enumerate(zip(axes[0], mats)):
        image = ax.imshow(m.numpy(), vmin=lo, vmax=hi if hi > lo else lo + 1e-6, cmap="viridis")
        ticks = list(range(m.shape[0]))
        show = len(ticks) <= 16
        ax.set_xticks(ticks, list(tick_labels) if show else [], rotation=45 if show else 0)
        ax.set_yticks(ticks, list(tick_labels) if show and k == 0 else [])  # shared rows: label them once
        ax.set_xlabel(axis_label)
        if k == 0:
            ax.set_ylabel(axis_label)
        if subtitles:
            ax.set_title(subtitles[k], fontsize=9)
        if m.shape[0] <= 6:
            for (r, c), v in zip([(r, c) for r in ticks for c in ticks], m.flatten().tolist()):
                dark = v < (lo + hi) / 2  # viridis is dark at the low end
                ax.text(c, r, f"{v:.3f}", ha="center", va="center", fontsize=7, color="white" if dark else "black")
    fig.colorbar(image, ax=axes[0].tolist(), label="similarity, (cos+1)/2")
    fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_savefig(fig, path, bbox_inches="tight")  # not tight_layout: it fights the shared colorbar
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# The whole analysis
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HiddenStateAnalysisConfig:
    """What :func:`run_hidden_state_analysis` samples and computes."""

    layers: tuple[int, ...] = ()
    """Layers for Figure 1 (0 = embeddings, L = last, negatives from the end); empty: 5 evenly spaced."""
    n_samples: int = 100
    """Chosen and, independently, rejected responses sampled from the pairs (the paper: 100 each)."""
    reward_pairs: int = 300
    """Pairs sampled for Figure 2 (the paper: 300), at the deepest analysed layer."""
    checkpoint_responses: int = 4
    """(prompt, chosen) pairs shown across checkpoints in Figure 9b (the paper: 4)."""
    heatmap_per_class: int = 8
    """Hacking and non-hacking responses in the Figure 9a heatmap (the paper: 8 each)."""
    batch_size: int = 32
    """Sequences per forward pass."""
    seed: int = 0
    """Seed of the sampling (independent of torch's global RNG)."""
    rescale: bool = True
    """Report (cos + 1) / 2 as the paper does; False: raw cosine in [-1, 1]."""

    def __post_init__(self) -> None:
        for name in ("n_samples", "reward_pairs", "checkpoint_responses", "heatmap_per_class", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"analysis.{name}: expected >= 1, got {getattr(self, name)!r}")


class Checkpoint(NamedTuple):
    """A policy checkpoint for Figure 9b, loaded only when its turn comes."""

    label: str
    """Tick label, e.g. ``t=60``."""
    load: Callable[[], nn.Module]


@dataclass
class HiddenStateReport:
    """Numbers of :func:`run_hidden_state_analysis` (also written as JSON) and the plots it wrote."""

    layers: list[int]
    preference: dict[int, PreferenceSimilarity]
    reward_gap: Optional[SimilarityGap] = None
    hacking: Optional[HackingSimilarity] = None
    checkpoints: Optional[torch.Tensor] = None
    """(R, C, C) Figure 9b matrices."""
    checkpoint_labels: list[str] = field(default_factory=list)
    plots: dict[str, str] = field(default_factory=dict)
    """Figure name -> PNG path."""

    def to_json(self) -> dict:
        out: dict = {"layers": self.layers,
                     "preference_similarity": {str(k): v._asdict() for k, v in self.preference.items()},
                     "plots": self.plots}
        if self.reward_gap is not None:
            out["similarity_vs_reward_gap"] = {"pearson": self.reward_gap.pearson,
                                               "n_pairs": int(self.reward_gap.similarity.numel()),
                                               "similarity": self.reward_gap.similarity.tolist(),
                                               "reward_gap": self.reward_gap.reward_gap.tolist()}
        if self.hacking is not None:
            out["hacking_similarity"] = self.hacking._asdict()
        if self.checkpoints is not None:
            out["checkpoint_similarity"] = {"labels": self.checkpoint_labels, "matrices": self.checkpoints.tolist()}
        return out


def _sample(rows: Sequence[dict], n: int, rng: random.Random) -> list[dict]:
    return rng.sample(list(rows), min(n, len(rows)))


def _nan_to_none(value):
    """JSON has no NaN: write null instead (json.dumps would emit the non-standard NaN token)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value


def run_hidden_state_analysis(model: nn.Module, tokenizer, pairs: Sequence[dict], out_dir: str | Path,
                              cfg: HiddenStateAnalysisConfig = HiddenStateAnalysisConfig(),
                              scorer: Optional["Scorer"] = None, hacking_labels: Optional[HackingLabeller] = None,
                              checkpoints: Sequence[Checkpoint] = ()) -> HiddenStateReport:
    """Figures 1, 2, 9a, 9b and Table 5 on preference ``pairs`` ({"prompt", "chosen", "rejected"}).

    - Figure 1 always; ``n_samples`` chosen and ``n_samples`` rejected responses, drawn independently.
    - Figure 2 when ``scorer`` (a :class:`r2m.eval.judges.Scorer`: gold or a reward model) is given.
    - Table 5 and Figure 9a when ``hacking_labels`` (e.g. :func:`world_hacking_labels`) finds both kinds
      among the sampled responses; pairs are pooled across prompts.
    - Figure 9b when ``checkpoints`` are given, on the first ``checkpoint_responses`` sampled (prompt, chosen).

    Writes ``hidden_states.json`` and ``fig*.png`` into ``out_dir``.
    """
    if not pairs:
        raise ValueError("run_hidden_state_analysis: expected at least one preference pair")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(cfg.seed)
    chosen_rows, rejected_rows = _sample(pairs, cfg.n_samples, rng), _sample(pairs, cfg.n_samples, rng)
    prompts = [r["prompt"] for r in chosen_rows] + [r["prompt"] for r in rejected_rows]
    responses = [r["chosen"] for r in chosen_rows] + [r["rejected"] for r in rejected_rows]
    layers = list(cfg.layers) or default_layers(model)
    states = mean_pooled_states(model, tokenizer, prompts, responses, layers, cfg.batch_size)  # layer -> (N, D)
    n_c = len(chosen_rows)
    preference = preference_similarity({k: v[:n_c] for k, v in states.items()},
                                       {k: v[n_c:] for k, v in states.items()}, cfg.rescale)
    report = HiddenStateReport(layers=sorted(states), preference=preference)
    report.plots["fig1_layer_similarity"] = str(plot_layer_similarity(preference, out / "fig1_layer_similarity.png"))
    deep = states[max(states)]  # (N, D) the deepest analysed layer, as the paper's Figure 2 uses layer 30
    if scorer is not None:
        rewards = scorer.score(prompts, responses)
        report.reward_gap = similarity_vs_reward_gap(deep, rewards, cfg.reward_pairs, cfg.seed, cfg.rescale)
        report.plots["fig2_similarity_vs_reward_gap"] = str(
            plot_similarity_vs_gap(report.reward_gap, out / "fig2_similarity_vs_reward_gap.png"))
    if hacking_labels is not None:
        last = states.get(num_layers(model))
        if last is None:  # Table 5 uses the last layer, the states R2M feeds to the RM
            last = mean_pooled_states(model, tokenizer, prompts, responses, [-1], cfg.batch_size)[num_layers(model)]
        _hacking(report, last, hacking_labels(prompts, responses), cfg, out)
    if checkpoints:
        _checkpoints(report, tokenizer, chosen_rows[: cfg.checkpoint_responses], checkpoints, cfg, out)
    atomic_write_text(out / "hidden_states.json", json.dumps(_nan_to_none(report.to_json()), indent=2) + "\n")
    return report


def _hacking(report: HiddenStateReport, states: torch.Tensor, labels: list[bool], cfg: HiddenStateAnalysisConfig,
             out: Path) -> None:
    """Table 5 and the Figure 9a heatmap from last-layer states (N, D)."""
    if not any(labels) or all(labels):
        return  # one class only: nothing to contrast
    report.hacking = hacking_similarity(states, labels, rescale=cfg.rescale)
    hack = [i for i, h in enumerate(labels) if h][: cfg.heatmap_per_class]
    normal = [i for i, h in enumerate(labels) if not h][: cfg.heatmap_per_class]
    order = hack + normal
    matrix = cosine_matrix(states[order], rescale=cfg.rescale)
    ticks = [f"h{k}" for k in range(len(hack))] + [f"n{k}" for k in range(len(normal))]
    report.plots["fig9a_hacking_similarity"] = str(plot_similarity_heatmaps(
        [matrix], ticks, out / "fig9a_hacking_similarity.png",
        "Hacking (h) vs normal (n) responses (R2M Fig. 9a)", axis_label="response"))


def _checkpoints(report: HiddenStateReport, tokenizer, rows: list[dict], checkpoints: Sequence[Checkpoint],
                 cfg: HiddenStateAnalysisConfig, out: Path) -> None:
    prompts, responses = [r["prompt"] for r in rows], [r["chosen"] for r in rows]
    models = (c.load() for c in checkpoints)  # one checkpoint in memory at a time
    report.checkpoints = checkpoint_similarity_matrices(models, tokenizer, prompts, responses, rescale=cfg.rescale)
    report.checkpoint_labels = [c.label for c in checkpoints]
    report.plots["fig9b_checkpoint_similarity"] = str(plot_similarity_heatmaps(
        list(report.checkpoints), report.checkpoint_labels, out / "fig9b_checkpoint_similarity.png",
        "One response across policy checkpoints (R2M Fig. 9b)", subtitles=[f"s{k}" for k in range(len(rows))]))
