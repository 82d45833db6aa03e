"""``r2m bench memory``: the live-byte instrument on hand-worked cases and against real tensors, the depth fit on
synthetic data, the FSDP2 accounting on hand-worked numbers, and the smoke preset through the CLI."""

from __future__ import annotations

import json
import random

import pytest
import torch

from r2m.cli import main
from r2m.config.enums import ReduceDtype
from r2m.config.run import DistConfig
from r2m.models.logprobs import response_forward
from r2m_bench import memory as bm
from r2m_bench import memory_phases as ph
from r2m_bench.families import Family, Size, model_config, train_tokenizer
from r2m_bench.live_bytes import LiveBytes, clear_memo, fake_mode, storage_bytes
from r2m_bench.memory_report import BEGIN, END

# ---------------------------------------------------------------------------------------------
# The instrument
# ---------------------------------------------------------------------------------------------


def test_live_bytes_counts_a_matmul_by_hand() -> None:
    inst = LiveBytes()
    with inst, inst.phase("p"):
        a = torch.randn(100, 10)  # 4000 B
        b = torch.randn(10, 20)  # 800 B
        c = a @ b  # 100 x 20 x 4 = 8000 B
        assert inst.counts.act == 12800
        del c
        assert inst.counts.act == 4800
        v = a.t()  # a view: no new storage
        a.mul_(0.7)  # in place: none either
        assert inst.counts.act == 4800
        del a, v
        assert inst.counts.act == 800
    assert inst.phase_peak("p").total == 12800
    assert inst.phase_peak("p").act == 12800


def test_live_bytes_tags_gradients_by_parameter_shape() -> None:
    lin = torch.nn.Linear(8, 4)
    inst = LiveBytes([tuple(p.shape) for p in lin.parameters()])
    x = torch.randn(3, 8)
    with inst, inst.phase("p"):
        lin(x).sum().backward()
    # The weight's gradient (4 x 8 x 4 B) and the bias's (4 x 4 B, summed with keepdim, then viewed): 144 B.
    assert inst.counts.param == 144 == storage_bytes([lin.weight.grad, lin.bias.grad])
    assert inst.counts.act == 0  # the activations are freed; only the gradients are left


def test_live_bytes_keeps_peaks_per_phase_and_segment() -> None:
    lin = torch.nn.Linear(4, 4)
    inst = LiveBytes()
    inst.tag(lin, "layer")
    with inst:
        with inst.phase("outer"), inst.phase("inner"):
            y = lin(torch.zeros(5, 4))  # input 80 B, output 80 B
            big = torch.zeros(100)  # 400 B, after the layer ran
        del y, big
    seg = inst.segments("inner")
    assert seg["layer"].total == 160
    assert seg["after layer"].total == 560
    assert inst.phase_peak("outer").total == inst.phase_peak("inner").total == 560


def test_fake_tensors_count_what_real_tensors_do() -> None:
    """A tiny Llama's log-prob pass (no-grad, and with a backward) holds the same bytes, op by op, with real
    weights as with fake ones: the fake path is exact."""
    tok = train_tokenizer(Family.LLAMA3)
    config = model_config(Family.LLAMA3, tok, Size(64, 2, 4, 2, 128))
    config.vocab_size = 1000
    ids = torch.randint(0, 400, (3, 20))
    mask = torch.ones(3, 20, dtype=torch.long)
    mask[0, :4] = 0  # a padded row

    def peak(model, mode, backward: bool):
        inst = LiveBytes([tuple(p.shape) for p in model.parameters()], fake=mode)
        with inst, inst.phase("p"):
            with torch.set_grad_enabled(backward):
                out = response_forward(model, ids, mask, 12, 0.7, with_entropy=backward, with_hidden=True)
                if backward:
                    out.logprobs.sum().backward()
        return inst.phase_peak("p")

    from transformers import AutoModelForCausalLM

    for dtype in (torch.float32, torch.bfloat16):
        for backward in (False, True):
            torch.manual_seed(0)
            real = AutoModelForCausalLM.from_config(config, dtype=dtype)
            mode = fake_mode()
            with mode:
                fake = AutoModelForCausalLM.from_config(config, dtype=dtype)
            clear_memo(mode)
            got, want = peak(fake, mode, backward), peak(real, None, backward)
            assert got == want and want.total > 0, (dtype, backward)


def test_fake_values_are_placeholders() -> None:
    mode = fake_mode()
    with mode:
        x = torch.ones(4, 6)
    inst = LiveBytes(token_id=7, fake=mode)
    with inst:
        assert x.sum().item() == 1.0  # no value: the placeholder
        tokens = torch.multinomial(torch.softmax(x, -1), 1)
        assert not isinstance(tokens, type(x)) and tokens.tolist() == [[7]] * 4
        picked = x[torch.tensor([True, False, True, False])]  # a real mask on a fake tensor
        assert picked.shape == (2, 6)


# ---------------------------------------------------------------------------------------------
# The fit and the accounting
# ---------------------------------------------------------------------------------------------


def test_depth_fit_recovers_linear_data_and_flags_curvature() -> None:
    rng = random.Random(0)
    coef = {("total", "p", s): [rng.uniform(0, 9.7), rng.uniform(0, 3.1), rng.uniform(0, 0.7)] for s in "abc"}

    def values(x):
        out = {k: c[0] + c[1] * x[0] + c[2] * x[1] for k, c in coef.items()}
        out[("total", "q", "-")] = 0.7 * x[0] ** 2  # not linear in depth
        return out

    points = {x: values(x) for x in ((1, 1), (2, 1), (1, 2))}
    got = bm.fit(points, bm.depth_terms)
    for k, c in coef.items():
        assert got[k] == pytest.approx(c, rel=1e-9)
    real = bm.predict(got, (36, 32), bm.depth_terms)
    assert real[("total", "p", "b")] == pytest.approx(values((36, 32))[("total", "p", "b")], rel=1e-9)
    err = bm.check_errors(bm.predict(got, (3, 3), bm.depth_terms), values((3, 3)))
    assert err["p"] == pytest.approx(0.0, abs=1e-12)
    assert err["q"] == pytest.approx(abs(0.7 * (1 + 3 * (3 - 1)) - 6.3) / 6.3)  # 0.7 L^2 fitted as 0.7 (3L - 2)


def test_sampling_loop_fit_is_bilinear_in_depth_and_tokens() -> None:
    # A KV cache: 0.7 per layer per token on top of 5 + 2 per layer.
    f = lambda x: {("act", "generation", "decode"): 5 + 2 * x[0] + 0.7 * x[0] * x[1]}  # noqa: E731
    got = bm.fit({x: f(x) for x in ((1, 4), (2, 4), (1, 8), (2, 8))}, bm.gen_terms)
    assert bm.predict(got, (36, 512), bm.gen_terms)[("act", "generation", "decode")] == pytest.approx(
        5 + 72 + 0.7 * 36 * 512)


def test_phase_peak_is_the_largest_segment() -> None:
    vals = {("total", "p", "a"): 3.0, ("total", "p", "b"): 7.0, ("act", "p", "a"): 1.0, ("total", "q", "a"): 2.0}
    assert bm.phase_peaks(vals, "total") == {"p": 7.0, "q": 2.0}
    assert bm.phase_peaks(vals, "act") == {"p": 1.0}


def test_per_rank_fsdp_accounting_by_hand() -> None:
    """8 GPUs, a policy of 100 + 10 L parameters at L = 2 (120): sharded fp32 master + AdamW = 12 x 120 / 8 = 180 B;
    while the policy runs, its bf16 root and two layers gathered: 2 x (100 + 20) = 240 B."""
    pred = {("persistent", "reference"): 1000.0, ("persistent", "policy"): 240.0,
            ("persistent", "policy_optimizer"): 480.0, ("count", "policy_params"): 120.0,
            ("total", "rollout_logprobs", "policy"): 50.0, ("act", "rollout_logprobs", "policy"): 50.0,
            ("total", "reference", "reference"): 70.0, ("act", "reference", "reference"): 70.0,
            ("total", "policy_micro_step", "after policy"): 900.0, ("act", "policy_micro_step", "after policy"): 30.0}
    coefs = {("count", "policy_params"): [100.0, 10.0, 0.0]}
    phases, persistent = bm.per_rank(pred, coefs, gpus=8)
    assert persistent == {"reference": 1000.0, "policy": 180.0, "policy_optimizer": 0.0}
    assert phases["reference"] == 1180.0 + 70.0  # the reference is whole, and no policy layer is gathered
    assert phases["rollout_logprobs"] == 1180.0 + 50.0 + 240.0
    # the update: act + unsharded bf16 grads 240 + sharded fp32 grads 60 + incoming root grad 200 + AdamW temp 60
    assert phases["policy_micro_step"] == 1180.0 + 30.0 + 240.0 + 60.0 + 200.0 + 60.0 + 240.0
    one, _ = bm.per_rank(pred, coefs, gpus=1)
    assert one["policy_micro_step"] == 1000.0 + 240.0 + 480.0 + 900.0  # one GPU: everything as measured
    # dist.sync_every_micro_batch: no accumulated unsharded gradients, only those not yet reduce-scattered: the
    # root's and one layer's in bf16 2 x (100 + 10) = 220, the previous layer's reduce-scatter input in float32 40
    sync = DistConfig(sync_every_micro_batch=True)
    phases, _ = bm.per_rank(pred, coefs, gpus=8, dist=sync)
    assert phases["policy_micro_step"] == 1180.0 + 30.0 + 220.0 + 60.0 + 40.0 + 60.0 + 240.0
    assert phases["rollout_logprobs"] == 1180.0 + 50.0 + 240.0  # only the update changes
    bf16 = DistConfig(sync_every_micro_batch=True, reduce_dtype=ReduceDtype.BFLOAT16)
    assert bm.per_rank(pred, coefs, gpus=8, dist=bf16)[0]["policy_micro_step"] == phases["policy_micro_step"] - 20.0
    assert "unsharded_bf16_grads_no_sync" not in bm.fsdp_update_terms(120.0, 100.0, 10.0, 8, sync)


def test_every_paper_config_names_its_gpus_and_known_models() -> None:
    for name in bm.PAPER_CONFIGS:
        cfg = bm.setup_config(name, (), bm.PRESETS["paper"])
        assert bm.gpus_of(bm.PAPER_DIR / f"{name}.yaml") == 8
        ph.arch_of(cfg.policy.path, "policy.path")
        ph.arch_of(cfg.reward.path, "reward.path")
    assert bm.gpus_of(bm.PAPER_DIR / "ser_ultrafeedback.yaml") == 1


# ---------------------------------------------------------------------------------------------
# The smoke preset, through the CLI
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_bench_memory_smoke_writes_every_key(tmp_path) -> None:
    out = tmp_path / "memory.json"
    assert main(["bench", "memory", "--preset", "smoke", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    config = result["configs"]["r2m_qwen2.5-3b_ultrafeedback_rloo"]
    assert config["gpus"] == 8
    assert set(config["phases"]) == set(bm.PHASES)
    assert config["per_rank_peak_gb"] == max(config["phases"].values()) > 0
    assert config["check"]["max_rel_error"] < 1e-6  # decoder layers are identical: the depth fit is exact
    assert config["check"]["generation_rel_error"] < 1e-6
    assert config["logprob_chunk"]["r2m_gib"] > 0 and config["logprob_chunk"]["trl_gib"] > 0
    single = result["single_gpu"]
    assert single["policy"] == "Qwen/Qwen2.5-0.5B-Instruct" and single["peak_gb"] > 0
    assert set(single["phases"]) == set(bm.PHASES)
    assert result["logprob_chunk_gib"] > 0
    assert set(result["targets"]) == {"per_rank_8gpu_le_64gb", "single_gpu_fits_80gb_with_margin",
                                      "logprob_chunk_le_3gib", "all_met"}
    readme = (tmp_path / "README.md").read_text()
    assert BEGIN in readme and END in readme and "r2m_qwen2.5-3b_ultrafeedback_rloo" in readme


def test_readme_section_compares_with_the_before_file(tmp_path) -> None:
    """memory.json's section shows before -> after per phase when memory_before.json lies beside it."""
    from r2m_bench.memory_report import write_readme_section

    def result(scale: float) -> dict:
        phases = {p: scale * (i + 1) for i, p in enumerate(bm.PHASES)}
        config = {"gpus": 8, "per_rank_peak_gb": max(phases.values()), "peak_phase": "evaluation", "phases": phases,
                  "shapes": {"prompt_tokens": 4, "response_tokens": 2}, "check": {"max_rel_error": 0.0},
                  "logprob_chunk": {"rows": 2, "r2m_gib": scale, "trl_gib": 0.5}}
        chunk = {"rows": 16, "tokens": 1535, "vocab": 151936, "fsdp2": {"r2m_gib": scale, "trl_gib": 0.5},
                 "one_gpu_or_ddp": {"r2m_gib": scale, "trl_gib": 0.5}}
        return {"preset": "paper", "configs": {"c": config}, "logprob_chunk_gib": scale, "logprob_chunk": chunk,
                "single_gpu": {"policy": "p", "reward_model": "m", "peak_gb": 9.0, "peak_with_margin_gb": 12.9,
                               "peak_phase": "evaluation", "phases": phases},
                "targets": {"per_rank_8gpu_le_64gb": {"c": True}, "single_gpu_fits_80gb_with_margin": True,
                            "logprob_chunk_le_3gib": scale <= 3, "all_met": scale <= 3}}

    (tmp_path / "memory_before.json").write_text(json.dumps(result(10.0)))
    write_readme_section(tmp_path / "README.md", result(1.0), str(tmp_path / "memory.json"))
    text = (tmp_path / "README.md").read_text()
    assert "Before -> after (`memory_before.json` -> `memory.json`)" in text
    assert "| table3 " in text and "80.0 -> 8.0" in text  # table3 is the 8th phase: 10 x 8 -> 1 x 8
    assert "10.00 -> 1.00" in text  # the log-prob chunk, GiB
    write_readme_section(tmp_path / "README.md", result(10.0), str(tmp_path / "memory_before.json"))
    assert "Before -> after" not in (tmp_path / "README.md").read_text()  # the before run itself: no comparison


def test_missed_targets_name_the_phase_and_what_it_holds() -> None:
    """A config over 64 GB per rank is listed with its peak phase, the bytes held for the whole run and the phase's
    own; a met target is not listed."""
    over = {"gpus": 8, "per_rank_peak_gb": 70.5, "peak_phase": "policy_micro_step",
            "phases": {"policy_micro_step": 70.5, "reference": 50.25},
            "persistent_gb": {"reference": 16.1, "reward_model": 15.0, "policy": 12.0}}
    fits = {**over, "per_rank_peak_gb": 50.25, "peak_phase": "reference"}
    result = {"configs": {"big": over, "small": fits}, "logprob_chunk_gib": 2.5,
              "single_gpu": {"peak_gb": 60.0, "peak_with_margin_gb": 69.0},
              "logprob_chunk": {}}
    result["targets"] = bm.targets(result)
    assert result["targets"]["per_rank_8gpu_le_64gb"] == {"big": False, "small": True}
    (miss,) = bm.misses(result)
    assert miss["config"] == "big" and miss["peak_phase"] == "policy_micro_step"
    assert miss["persistent_gb"] == pytest.approx(43.1) and miss["phase_gb"] == pytest.approx(27.4)
    assert miss["why"].startswith("policy_micro_step peaks at 70.5 GB: 43.1 GB held for the whole run (reference 16.1")
