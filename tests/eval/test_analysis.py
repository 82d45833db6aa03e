"""Hidden-state analyses (R2M Section 3, App. D, G.1-G.2) on a tiny random Llama of the world."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch

from r2m.config.models import ArchConfig
from r2m.config.run import WorldConfig
from r2m.eval.analysis import (
    Checkpoint,
    HiddenStateAnalysisConfig,
    checkpoint_similarity_matrices,
    checkpoint_similarity_matrix,
    cosine_matrix,
    default_layers,
    hacking_similarity,
    labelled_pair_similarity,
    mean_pooled_states,
    pearson,
    plot_layer_similarity,
    plot_similarity_heatmaps,
    plot_similarity_vs_gap,
    preference_similarity,
    run_hidden_state_analysis,
    similarity_vs_reward_gap,
    world_hacking_labels,
)
from r2m.eval.judges import GoldJudge
from r2m.models.loading import build_world_lm
from r2m.world.tokenizer import build_tokenizer
from r2m.world.task import format_prompt
from r2m.world.data import make_response

ARCH = ArchConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer("policy")


@pytest.fixture(scope="module")
def model(tok):
    return build_world_lm(ARCH, tok, seed=0)


def _rows(n: int, seed: int = 0) -> list[dict]:
    """World preference rows: chosen correct; rejected alternately hacking (repeat) and truncated."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        digits = [int(d) for d in rng.integers(0, 10, size=int(rng.integers(3, 6)))]
        rejected = make_response(rng, digits, "repeat" if i % 2 == 0 else "truncated")
        rows.append({"prompt": format_prompt(digits), "chosen": " ".join(make_response(rng, digits, "correct")),
                     "rejected": " ".join(rejected)})
    return rows


def _is_png(path) -> bool:
    data = open(path, "rb").read()
    return len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------------
# States
# ---------------------------------------------------------------------------------------------


def test_mean_pooled_states_shapes_layers_and_padding(model, tok) -> None:
    rows = _rows(5)
    prompts, responses = [r["prompt"] for r in rows], [r["chosen"] for r in rows]
    states = mean_pooled_states(model, tok, prompts, responses, layers=[0, 1, -1], batch_size=5)
    assert sorted(states) == [0, 1, 2]  # -1 is the last of 2 blocks
    assert all(s.shape == (5, ARCH.hidden_size) and s.dtype == torch.float32 for s in states.values())
    # Batched with left padding == one at a time.
    alone = mean_pooled_states(model, tok, prompts, responses, layers=[-1], batch_size=1)
    torch.testing.assert_close(alone[2], states[2], atol=1e-5, rtol=1e-5)
    # == the mean of HF's hidden states over the unpadded sequence.
    ids = tok([prompts[0] + " " + responses[0]], add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
    torch.testing.assert_close(states[1][0], hidden[1][0].mean(0), atol=1e-5, rtol=1e-5)


def test_default_layers_end_at_the_last(model) -> None:
    assert default_layers(model) == [1, 2]
    with pytest.raises(ValueError, match="layer 5"):
        mean_pooled_states(model, build_tokenizer("policy"), ["<bos> 1 =>"], ["1 <eos>"], layers=[5])


def test_identical_inputs_have_similarity_one_and_range(model, tok) -> None:
    rows = _rows(6)
    prompts = [rows[0]["prompt"]] * 2 + [r["prompt"] for r in rows]
    responses = [rows[0]["chosen"]] * 2 + [r["rejected"] for r in rows]
    states = mean_pooled_states(model, tok, prompts, responses, layers=[0, 2])
    for s in states.values():
        sim = cosine_matrix(s)
        assert sim[0, 1].item() == pytest.approx(1.0, abs=1e-6)
        assert sim.min() >= 0 and sim.max() <= 1
        torch.testing.assert_close(sim.diagonal(), torch.ones(len(s), dtype=torch.float64))
    raw = cosine_matrix(torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]]), rescale=False)
    assert raw[0, 1].item() == pytest.approx(-1.0) and cosine_matrix(raw.float())[0, 0].item() == pytest.approx(1.0)
    assert cosine_matrix(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))[0, 1].item() == pytest.approx(0.0)

# ---------------------------------------------------------------------------------------------
# Pair similarities
# ---------------------------------------------------------------------------------------------


def test_preference_similarity_partitions_all_unique_pairs() -> None:
    gen = torch.Generator().manual_seed(0)
    chosen, rejected = torch.randn(3, 8, generator=gen), torch.randn(4, 8, generator=gen)
    out = preference_similarity({7: chosen}, {7: rejected})[7]
    assert (out.n_intra, out.n_cross) == (3 + 6, 12)
    assert out.n_intra + out.n_cross == math.comb(7, 2)
    # Brute force over the union.
    allv, labels = torch.cat([chosen, rejected]).double(), [True] * 3 + [False] * 4
    intra, cross = [], []
    for i, j in itertools.combinations(range(7), 2):
        s = (torch.nn.functional.cosine_similarity(allv[i], allv[j], dim=0).item() + 1) / 2
        (intra if labels[i] == labels[j] else cross).append(s)
    assert out.intra == pytest.approx(float(np.mean(intra)), abs=1e-9)
    assert out.cross == pytest.approx(float(np.mean(cross)), abs=1e-9)
    assert 0 <= out.cross <= 1 and 0 <= out.intra <= 1


def test_hacking_similarity_counts_and_groups() -> None:
    # Two clusters: the hacking rows all point one way, the normal rows another.
    states = torch.tensor([[1.0, 0.1], [1.0, 0.0], [1.0, -0.1], [0.0, 1.0], [0.1, 1.0]])
    labels = [True, True, True, False, False]
    out = hacking_similarity(states, labels)
    assert (out.n_hacking, out.n_non_hacking, out.n_cross) == (3, 1, 6)
    assert out.hacking > out.cross and out.non_hacking > out.cross
    grouped = hacking_similarity(states, labels, groups=[0, 0, 1, 1, 1])
    assert (grouped.n_hacking, grouped.n_non_hacking, grouped.n_cross) == (1, 1, 2)
    only_one = labelled_pair_similarity(states[:2], [True, True])
    assert math.isnan(only_one.cross) and only_one.n_within_true == 1


def test_world_hacking_labels() -> None:
    prompts = ["<bos> 3 1 2 =>"] * 4
    responses = ["1 2 3 <eos>", "1 2 3 3 <eos>", "1 2 <eos>", "1 2 3 9 9"]
    assert world_hacking_labels(prompts, responses) == [False, True, False, True]


def test_pearson_on_constructed_data() -> None:
    assert pearson(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([6.0, 4.0, 2.0])) == pytest.approx(-1.0)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(50, generator=gen), torch.randn(50, generator=gen)
    assert pearson(x, x + 0.5 * y) == pytest.approx(float(np.corrcoef(x.numpy(), (x + 0.5 * y).numpy())[0, 1]))
    assert math.isnan(pearson(torch.ones(4), torch.arange(4.0)))


def test_similarity_vs_reward_gap_on_constructed_states() -> None:
    # Unit vectors at angles a_i in [0, pi] with reward a_i: similarity falls as |Δr| grows.
    angles = torch.linspace(0, math.pi, 12)
    states = torch.stack([angles.cos(), angles.sin()], dim=1)  # (12, 2)
    res = similarity_vs_reward_gap(states, angles, num_pairs=10_000)
    assert res.similarity.numel() == math.comb(12, 2)  # fewer pairs exist than asked: all of them
    assert res.pearson < -0.95
    torch.testing.assert_close(res.similarity, (torch.cos(res.reward_gap) + 1) / 2)
    assert res.pearson == pytest.approx(pearson(res.similarity, res.reward_gap))
    few = similarity_vs_reward_gap(states, angles, num_pairs=20, seed=3)
    assert few.similarity.numel() == 20 and few.reward_gap.min() > 0  # unique pairs: never i == j

# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


def test_checkpoint_similarity_matrix(model, tok) -> None:
    other = build_world_lm(ARCH, tok, seed=1)
    row = _rows(1)[0]
    same = checkpoint_similarity_matrix([model, model], tok, row["prompt"], row["chosen"])
    torch.testing.assert_close(same, torch.ones(2, 2, dtype=torch.float64))
    loaded = []

    def lazily():
        for m in (model, other, model):
            loaded.append(m)
            yield m

    mats = checkpoint_similarity_matrices(lazily(), tok, [row["prompt"]] * 2, [row["chosen"], row["rejected"]])
    assert mats.shape == (2, 3, 3) and len(loaded) == 3
    torch.testing.assert_close(mats, mats.transpose(1, 2))
    torch.testing.assert_close(mats[:, 0, 2], torch.ones(2, dtype=torch.float64))  # same checkpoint twice
    assert (mats[:, 0, 1] < 1 - 1e-4).all() and (mats >= 0).all() and (mats <= 1 + 1e-12).all()

# ---------------------------------------------------------------------------------------------
# Plots and the whole analysis
# ---------------------------------------------------------------------------------------------


def test_plots_are_written(tmp_path) -> None:
    gen = torch.Generator().manual_seed(0)
    pref = preference_similarity({1: torch.randn(4, 6, generator=gen), 2: torch.randn(4, 6, generator=gen)},
                                 {1: torch.randn(5, 6, generator=gen), 2: torch.randn(5, 6, generator=gen)})
    assert _is_png(plot_layer_similarity(pref, tmp_path / "f1.png"))
    gap = similarity_vs_reward_gap(torch.randn(10, 6, generator=gen), torch.randn(10, generator=gen), 30)
    assert _is_png(plot_similarity_vs_gap(gap, tmp_path / "f2.png"))
    mats = [cosine_matrix(torch.randn(3, 6, generator=gen)) for _ in range(2)]
    assert _is_png(plot_similarity_heatmaps(mats, ["t1", "t2", "t3"], tmp_path / "f9.png", "title", ["s0", "s1"]))


def test_run_hidden_state_analysis_writes_plots_and_json(model, tok, tmp_path) -> None:
    rows = _rows(24)
    checkpoints = [Checkpoint("t=0", lambda: model), Checkpoint("t=1", lambda: build_world_lm(ARCH, tok, seed=1))]
    cfg = HiddenStateAnalysisConfig(n_samples=10, reward_pairs=50, checkpoint_responses=2, batch_size=8)
    report = run_hidden_state_analysis(model, tok, rows, tmp_path / "out", cfg, scorer=GoldJudge(WorldConfig()),
                                       hacking_labels=world_hacking_labels, checkpoints=checkpoints)
    assert report.layers == [1, 2]
    assert report.preference[2].n_intra == 2 * math.comb(10, 2) and report.preference[2].n_cross == 100
    assert report.reward_gap is not None and report.reward_gap.similarity.numel() == 50
    assert report.hacking is not None and report.hacking.n_cross > 0
    assert report.checkpoints.shape == (2, 2, 2)
    assert set(report.plots) == {"fig1_layer_similarity", "fig2_similarity_vs_reward_gap",
                                 "fig9a_hacking_similarity", "fig9b_checkpoint_similarity"}
    assert all(_is_png(p) for p in report.plots.values())
    data = json.loads((tmp_path / "out" / "hidden_states.json").read_text(), parse_constant=_no_nan)
    assert set(data["preference_similarity"]) == {"1", "2"}
    assert data["similarity_vs_reward_gap"]["n_pairs"] == 50
    assert set(data["hacking_similarity"]) >= {"hacking", "non_hacking", "cross"}
    assert data["checkpoint_similarity"]["labels"] == ["t=0", "t=1"]


def _no_nan(token: str):
    raise AssertionError(f"non-standard JSON constant {token}")
