"""Generation backends: HF is today's generate() exactly; vLLM (against a fake ``vllm`` module: no GPU or
vLLM here) gives the same layout, receives every weight after each step, and R2M's h still comes
from the log-prob pass."""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from r2m.config.models import ArchConfig
from r2m.config.parsing import load_config
from r2m.config.run import WorldConfig
from r2m.config.training import RLConfig, VLLMConfig
from r2m.errors import ConfigError
from r2m.experience import generation
from r2m.experience.generation import HFGenerator, VLLMGenerator, build_generator, policy_weights
from r2m.experience.rewards import GoldReward
from r2m.experience.rollout import ExperienceMaker
from r2m.experience.sampling import generate
from r2m.models.forward import left_pad
from r2m.models.loading import build_world_lm
from r2m.models.logprobs import response_forward
from r2m.world.task import format_prompt
from r2m.world.tokenizer import build_tokenizer

sys.path.insert(0, str(Path(__file__).parent))
import fake_vllm as fake_vllm_module  # noqa: E402
from fake_vllm import FakeLLM, OldFakeLLM, fake_module, fake_tokens  # noqa: E402

DIGITS = ([3, 1, 2], [9, 0, 4, 4], [5, 5, 1], [7, 2, 8, 1, 0], [6, 3], [1, 2, 0])


def _policy():
    tok = build_tokenizer("policy")
    return build_world_lm(ArchConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64), tok, 0), tok


def _prompt_ids(tok, digits=DIGITS) -> list[list[int]]:
    return [tok(format_prompt(d))["input_ids"] for d in digits]


@pytest.fixture
def fake_vllm(monkeypatch):
    """Install the fake as ``vllm`` and pretend the (CPU) device is CUDA; returns an installer."""
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "x")
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING")  # restored (unset) after the test
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)

    def install(llm_cls=FakeLLM, engine_args: bool = False, lora: bool = False) -> type:
        return fake_vllm_module.install(monkeypatch, llm_cls, engine_args, lora)

    install()
    return install


def _vllm_gen(policy, tok, cfg: VLLMConfig = VLLMConfig(), **kw) -> VLLMGenerator:
    return VLLMGenerator("/models/policy", policy, tok.eos_token_id, tok.pad_token_id, torch.device("cpu"), cfg,
                         max_model_len=32, seed=5, **kw)


# ---------------------------------------------------------------------------------------------
# HF: today's generate(), bit for bit
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_hf_generator_is_the_old_generate_bit_for_bit(temperature) -> None:
    policy, tok = _policy()
    prompts = _prompt_ids(tok)
    torch.manual_seed(0)
    ids, mask = left_pad(prompts, tok.pad_token_id)
    old = generate(policy, ids, mask, temperature=temperature, max_new_tokens=6, eos_token_id=tok.eos_token_id,
                   pad_token_id=tok.pad_token_id)
    old_rng = torch.get_rng_state()
    torch.manual_seed(0)
    new = HFGenerator(policy, tok.eos_token_id, tok.pad_token_id, torch.device("cpu")).generate(prompts, temperature, 6)
    assert torch.equal(torch.get_rng_state(), old_rng)  # same RNG use
    for a, b in zip(old, new):
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
    maker = ExperienceMaker(policy, policy, tok, GoldReward(WorldConfig()), RLConfig(prompts_per_step=2, k=2),
                            torch.device("cpu"))
    assert isinstance(maker.generator, HFGenerator)  # the default


# ---------------------------------------------------------------------------------------------
# vLLM against the fake
# ---------------------------------------------------------------------------------------------


def test_vllm_layout_matches_the_hf_path(fake_vllm) -> None:
    policy, tok = _policy()
    prompts = _prompt_ids(tok)
    gen = _vllm_gen(policy, tok).generate(prompts, temperature=1.0, max_new_tokens=5)
    eos, pad = tok.eos_token_id, tok.pad_token_id
    ids, mask = left_pad(prompts, pad)
    P = ids.shape[1]
    assert gen.prompt_len == P and gen.sequences.shape == (6, P + 5) and gen.attention_mask.shape == (6, P + 5)
    assert torch.equal(gen.sequences[:, :P], ids) and torch.equal(gen.attention_mask[:, :P], mask)
    params = FakeLLM.instances[0].params[0]
    for i, (p, row, m) in enumerate(zip(prompts, gen.sequences[:, P:], gen.action_mask)):
        toks = fake_tokens(p, i, params)
        n = len(toks)
        assert m[:n].all() and not m[n:].any()  # a prefix: up to and including eos, or the whole response
        assert row[:n].tolist() == toks and (row[n:] == pad).all()
        if i % 3 == 0:
            assert toks[-1] == eos and eos not in toks[:-1]  # stopped at eos, which is kept
        elif i % 3 == 1:
            assert n == 5 and eos not in toks  # hit max_new_tokens
        else:
            assert n == 1  # stopped early without eos: the pads after it are not actions
    assert torch.equal(gen.attention_mask[:, P:], gen.action_mask)


def test_vllm_engine_and_sampling_arguments(fake_vllm) -> None:
    policy, tok = _policy()
    g = _vllm_gen(policy, tok)
    llm = FakeLLM.instances[0]
    assert llm.kwargs == dict(model="/models/policy", dtype="auto", gpu_memory_utilization=0.3, enforce_eager=False,
                              max_model_len=32, seed=5, tensor_parallel_size=1, trust_remote_code=False,
                              load_format="safetensors", enable_sleep_mode=True, max_num_batched_tokens=4096)
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"  # the engine runs in this process
    g.generate(_prompt_ids(tok)[:3], temperature=0.7, max_new_tokens=4)
    sp = llm.params[-1]  # one SamplingParams for the whole call
    assert not isinstance(sp, list) and sp.kwargs["temperature"] == 0.7
    assert sp.top_p == 1.0 and sp.top_k == -1 and sp.n == 1 and sp.max_tokens == 4
    # every sampling field at its neutral value, explicitly: nothing left to the engine's or checkpoint's defaults
    assert (sp.min_p == 0.0 and sp.repetition_penalty == 1.0 and sp.presence_penalty == 0.0
            and sp.frequency_penalty == 0.0 and sp.min_tokens == 0 and sp.ignore_eos is False)
    assert sp.stop_token_ids == [tok.eos_token_id]
    assert "seed" not in sp.kwargs  # no per-request seed: vLLM's batched sampler, the engine's seed
    g.generate(_prompt_ids(tok)[:3], temperature=0.0, max_new_tokens=4)  # greedy (ReMax's baseline)
    assert llm.params[-1].temperature == 0.0 and "seed" not in llm.params[-1].kwargs
    # Newer vLLM: the checkpoint's generation_config does not add stop ids; unsafe weights only when allowed;
    # sleep level 0 and max_num_batched_tokens 0 leave vLLM's own behaviour.
    fake_vllm(FakeLLM, engine_args=True)
    _vllm_gen(policy, tok, VLLMConfig(dtype="bfloat16", sleep_level=0, max_num_batched_tokens=0),
              allow_unsafe_weights=True)
    kw = FakeLLM.instances[-1].kwargs
    assert kw["generation_config"] == "vllm" and kw["load_format"] == "auto" and kw["dtype"] == "bfloat16"
    assert kw["enable_sleep_mode"] is False and "max_num_batched_tokens" not in kw
    assert "distributed_executor_backend" not in kw  # one process: vLLM's own in-process executor


@pytest.mark.parametrize("llm_cls", [FakeLLM, OldFakeLLM], ids=["collective_rpc", "driver_worker"])
def test_sync_pushes_every_weight_by_name(fake_vllm, llm_cls) -> None:
    fake_vllm(llm_cls)
    policy, tok = _policy()
    g = _vllm_gen(policy, tok, VLLMConfig(sleep_level=0))
    llm = llm_cls.instances[0]
    assert len(llm.model.loads) == 1 and llm.prefix_resets == 1  # never asleep: pushed at construction
    params = dict(policy.named_parameters())
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.5)
    g.sync_weights(policy)
    assert len(llm.model.loads) == 2 and llm.prefix_resets == 2
    pushed = llm.model.loads[-1]
    assert set(params) <= set(pushed) and set(pushed) == set(policy.state_dict())
    for name, p in params.items():
        assert torch.equal(pushed[name], p.detach()), name
    assert not torch.equal(llm.model.loads[0]["model.norm.weight"], pushed["model.norm.weight"])
    g.release()
    assert llm.counts()["sleeps"] == []  # sleep level 0: never sleeps


def test_sleep_level_2_wakes_weights_pushes_then_kv_cache(fake_vllm) -> None:
    policy, tok = _policy()
    g = _vllm_gen(policy, tok)  # rl.vllm.sleep_level=2, the default
    llm = FakeLLM.instances[0]
    assert llm.kwargs["enable_sleep_mode"] is True
    assert llm.events == ["sleep2"]  # asleep from construction: its memory is training's until the first rollout
    for step in range(2):
        g.generate(_prompt_ids(tok)[:2], 1.0, 3)
        g.generate(_prompt_ids(tok)[2:4], 0.0, 3)  # ReMax's greedy baseline: the engine is awake already
        g.release()
        with torch.no_grad():
            policy.model.norm.weight.add_(1.0)
        g.sync_weights(policy)  # asleep: the push waits for the wake-up
        assert len(llm.model.loads) == step + 1
    # one sleep and one wake (weights, push, KV cache) per step, however many generate calls the step makes
    assert llm.events == ["sleep2"] + 2 * ["wake:weights", "load", "wake:kv_cache", "generate", "generate", "sleep2"]
    g.generate(_prompt_ids(tok)[:1], 1.0, 3)
    assert torch.equal(llm.model.loads[-1]["model.norm.weight"], policy.model.norm.weight)  # the latest weights
    # Level 1 keeps the weights (offloaded to CPU): pushed again only after a sync.
    one = _vllm_gen(policy, tok, VLLMConfig(sleep_level=1))
    llm1 = FakeLLM.instances[-1]
    one.generate(_prompt_ids(tok)[:1], 1.0, 3)
    one.release()
    one.generate(_prompt_ids(tok)[:1], 1.0, 3)  # no sync in between: nothing to push
    assert llm1.events == ["sleep1", "wake:weights", "load", "wake:kv_cache", "generate", "sleep1", "wake:weights",
                           "wake:kv_cache", "generate"]


def test_one_step_at_the_paper_sizes(fake_vllm) -> None:
    """configs/paper/r2m_qwen2.5-3b_ultrafeedback_rloo.yaml's batch (64 prompts x K=8, rl.rollout_batch_size=16,
    rl.rollout_chunks=8) on one process: one generate of all 512 rows, one sleep at level 2, a wake of the
    weights, one push, a wake of the KV cache; no per-request seed, the engine seeded once."""
    from r2m.recipes.rl.step import chunk_seeds
    from r2m.runtime.distributed import Dist

    policy, tok = _policy()
    cfg = RLConfig(prompts_per_step=64, k=8, rollout_batch_size=16, rollout_chunks=8, max_new_tokens=4,
                   generator="vllm", minibatches=4)
    g = _vllm_gen(policy, tok, cfg.vllm)
    llm = FakeLLM.instances[0]
    maker = ExperienceMaker(policy, policy, tok, GoldReward(WorldConfig()), cfg, torch.device("cpu"), generator=g)
    digits = [DIGITS[i % len(DIGITS)] for i in range(64)]
    llm.events.clear()
    rollout = maker.rollout([str(d) for d in digits], _prompt_ids(tok, digits), 0, chunk_seeds(8, 0, Dist(), 1))
    g.release()  # train_step: after the rewards, before the update
    g.sync_weights(policy)  # train_step: after the update
    assert rollout.gen.sequences.shape[0] == 512
    assert llm.counts() == {"generate": 1, "rows": [512], "sleeps": ["sleep2"],
                            "wakes": ["wake:weights", "wake:kv_cache"], "loads": 1}
    assert llm.events == ["wake:weights", "load", "wake:kv_cache", "generate", "sleep2"]
    assert "seed" not in llm.params[0].kwargs and llm.kwargs["seed"] == 5
    assert maker.generator.whole_step and not HFGenerator.whole_step  # hf keeps rl.rollout_batch_size's chunks


def test_lora_policy_is_merged_for_the_engine() -> None:
    peft = pytest.importorskip("peft")
    policy, _ = _policy()
    lora = peft.get_peft_model(copy.deepcopy(policy), peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj",
                                                                                                        "v_proj"]))
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_()
    own = {k: v.clone() for k, v in lora.state_dict().items()}
    weights = dict(policy_weights(lora))
    merged = copy.deepcopy(lora).merge_and_unload().state_dict()
    assert set(weights) == set(merged) == set(policy.state_dict())
    for name, t in merged.items():
        torch.testing.assert_close(weights[name], t, rtol=1e-6, atol=1e-6)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(weights[q], policy.state_dict()[q])  # the adapter is in the pushed weight
    # merged on the fly: the policy's own weights (and the adapter-free reference's base) are untouched, bit for bit
    assert all(torch.equal(own[k], v) for k, v in lora.state_dict().items())


def _lora_policy(r: int = 2):
    peft = pytest.importorskip("peft")
    policy, tok = _policy()
    lora = peft.get_peft_model(policy, peft.LoraConfig(r=r, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_()
    return lora, tok


def test_lora_adapter_goes_to_vllm_as_a_lora_request(fake_vllm) -> None:
    """Where vLLM serves LoRA, the adapter is written as PEFT saves it and passed as a LoRARequest with a new id
    per sync; the base weights go unmerged, and only when the engine lost them (level 2 sleep, or first)."""
    from safetensors.torch import load_file

    fake_vllm(FakeLLM, engine_args=True, lora=True)
    lora, tok = _lora_policy()
    g = _vllm_gen(lora, tok, VLLMConfig(sleep_level=0))
    llm = FakeLLM.instances[0]
    assert llm.kwargs["enable_lora"] is True and llm.kwargs["max_loras"] == 1 and llm.kwargs["max_lora_rank"] == 8
    base = dict(llm.model.loads[0])
    q = "model.layers.0.self_attn.q_proj.weight"
    assert set(base) == set(_policy()[0].state_dict())
    assert torch.equal(base[q], lora.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight)  # unmerged
    g.generate(_prompt_ids(tok)[:2], 1.0, 3)
    req = llm.lora_requests[-1]
    assert req.lora_int_id == 1 and Path(req.lora_path, "adapter_config.json").exists()
    saved = load_file(str(Path(req.lora_path, "adapter_model.safetensors")))
    b = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"
    assert torch.equal(saved[b], lora.base_model.model.model.layers[0].self_attn.q_proj.lora_B["default"].weight)
    with torch.no_grad():
        lora.base_model.model.model.layers[0].self_attn.q_proj.lora_B["default"].weight.add_(1.0)
    g.sync_weights(lora)
    g.generate(_prompt_ids(tok)[:2], 1.0, 3)
    assert len(llm.model.loads) == 1  # awake: the base stays; only the adapter moves
    req2 = llm.lora_requests[-1]
    assert req2.lora_int_id == 2
    saved = load_file(str(Path(req2.lora_path, "adapter_model.safetensors")))
    assert torch.equal(saved[b], lora.base_model.model.model.layers[0].self_attn.q_proj.lora_B["default"].weight)
    # Level 2 sleep discards the base: pushed again at every wake-up.
    g2 = _vllm_gen(lora, tok)
    llm2 = FakeLLM.instances[-1]
    for _ in range(2):
        g2.generate(_prompt_ids(tok)[:1], 1.0, 3)
        g2.release()
    assert llm2.counts()["loads"] == 2 and [r.lora_int_id for r in llm2.lora_requests] == [1, 2]
    # Without vLLM's LoRA support: the merged weights, and no LoRA request.
    fake_vllm(FakeLLM, engine_args=True, lora=False)
    _vllm_gen(lora, tok, VLLMConfig(sleep_level=0)).generate(_prompt_ids(tok)[:1], 1.0, 3)
    llm3 = FakeLLM.instances[-1]
    assert "enable_lora" not in llm3.kwargs and llm3.lora_requests == [None]
    assert not torch.equal(llm3.model.loads[0][q], base[q])  # W + BA


def test_sleep_mode_refuses_expandable_segments(fake_vllm, monkeypatch) -> None:
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:128,expandable_segments:True")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cfg = load_config(None, ["rl.generator=vllm"])
    with pytest.raises(ConfigError, match=r"rl.vllm.sleep_level=2: vLLM's sleep mode cannot run with "
                                          r"expandable_segments:True in PYTORCH_CUDA_ALLOC_CONF .*unset that "
                                          r"environment variable"):
        generation.check_generator(cfg)
    generation.check_generator(load_config(None, ["rl.generator=vllm", "rl.vllm.sleep_level=0"]))  # no sleep: fine
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:False")
    generation.check_generator(cfg)


def test_missing_vllm_or_cuda_is_a_clear_config_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # not installed
    with pytest.raises(ConfigError, match=r"rl.generator=vllm needs the vllm package \(pip install vllm\) and a "
                                          r"CUDA GPU .*use rl.generator=hf"):
        generation.require_vllm(torch.device("cpu"))
    monkeypatch.setitem(sys.modules, "vllm", fake_module(FakeLLM))  # installed, but no GPU
    with pytest.raises(ConfigError, match="needs a CUDA GPU") as err:
        generation.require_vllm(torch.device("cpu"))
    assert "pip install" not in str(err.value)


def test_rl_refuses_vllm_without_it_before_building_anything(monkeypatch, tiny, capsys) -> None:
    import r2m.recipes.pipeline
    import r2m.recipes.rl.build
    from r2m.cli import main

    def no_build(*a, **k):
        raise AssertionError("world artifacts or models were built before the check")

    # Where the RL run looks the name up (its module's top-level import), and at its home.
    monkeypatch.setattr(r2m.recipes.rl.build, "resolve_inputs", no_build)
    monkeypatch.setattr(r2m.recipes.pipeline, "resolve_inputs", no_build)
    monkeypatch.setitem(sys.modules, "vllm", None)
    root = Path(tiny[-1].split("=", 1)[1])
    assert main(["rl", *tiny, "run.name=vllm-missing", "rl.generator=vllm"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("r2m: error: rl.generator=vllm needs the vllm package (pip install vllm) and a CUDA GPU")
    assert "\n" not in err and not (root / "vllm-missing").exists()
    docs = (Path(__file__).resolve().parents[2] / "docs" / "ERRORS.md").read_text()
    assert err.split(" (vLLM runs")[0] in docs and "without them use rl.generator=hf (the default)" in docs


def test_rl_steps_with_vllm_and_r2m(fake_vllm, tiny, world_artifacts) -> None:
    """End to end with the fake: samples come from the engine, h from the policy's log-prob pass; each step wakes
    the engine once (the weights of the previous update pushed), generates once and sleeps before the update."""
    from r2m.recipes.rl.build import build_run
    from r2m.recipes.rl.step import train_step

    rl = build_run(load_config(None, [*tiny, "run.name=vllm-r2m", "rl.generator=vllm", "reward.r2m.enabled=true"]))
    assert isinstance(rl.generator, VLLMGenerator) and rl.maker.generator is rl.generator
    llm = FakeLLM.instances[0]
    assert llm.kwargs["model"] == rl.inputs.policy and llm.kwargs["max_model_len"] == 64  # 64 + 10, capped by the model
    assert llm.kwargs["seed"] == rl.cfg.run.seed and llm.events == ["sleep2"]
    policy = rl.models.unwrapped_policy()

    idx, train = [0, 1, 2, 3], rl.train_prompts
    exp = rl.maker.make([train.texts[i] for i in idx], [train.ids[i] for i in idx], step=0)
    params = llm.params[-1]
    prompts = [ids for i in idx for ids in [train.ids[i]] * rl.cfg.rl.k]
    for j, (row, m) in enumerate(zip(exp.sequences[:, exp.prompt_len:], exp.action_mask)):
        assert row[m.bool()].tolist() == fake_tokens(prompts[j], j, params)  # the engine's samples
    B, S = exp.sequences.shape
    assert exp.policy_hidden.shape == (B, S - 1, 32) and exp.policy_mask.shape == (B, S - 1)
    with torch.no_grad():
        h = response_forward(policy, exp.sequences, exp.attention_mask, exp.prompt_len, rl.cfg.rl.temperature,
                             with_hidden=True).hidden[:, :-1]
    torch.testing.assert_close(exp.policy_hidden, h)  # h from pi_old's forward pass over the sampled tokens
    assert all(torch.equal(llm.model.loads[0][k], v) for k, v in policy.state_dict().items())  # pushed at the wake

    llm.events.clear()
    m1 = train_step(rl, 1)  # awake (make() above does not release): no push; sleeps before the update
    assert "r2m/grebt" in m1 and m1["r2m/hidden_mb"] > 0 and "loss/policy" in m1
    assert llm.events == ["generate", "sleep2"]  # the update's weights wait for the next wake-up
    after1 = {k: v.clone() for k, v in policy.state_dict().items()}
    assert any(not torch.equal(llm.model.loads[0][k], v) for k, v in after1.items())
    llm.events.clear()
    train_step(rl, 2)
    assert llm.events == ["wake:weights", "load", "wake:kv_cache", "generate", "sleep2"]
    assert all(torch.equal(llm.model.loads[-1][k], v) for k, v in after1.items())  # step 1's updated weights
    rows = rl.cfg.rl.prompts_per_step * rl.cfg.rl.k
    assert len(llm.params) == 3 and llm.counts()["rows"] == [4 * rl.cfg.rl.k, rows, rows]


@pytest.mark.parametrize("override, message", [
    ("rl.generator=sglang", "rl.generator: expected one of hf, vllm, got 'sglang'"),
    ("rl.vllm.gpu_memory_utilization=1.5", "rl.vllm.gpu_memory_utilization: expected in (0, 1), got 1.5"),
    ("rl.vllm.dtype=int8", "rl.vllm.dtype: expected one of auto, float32, bfloat16, float16"),
    ("rl.vllm.max_model_len=-1", "rl.vllm.max_model_len: expected >= 0"),
    ("rl.vllm.nope=1", "rl.vllm.nope: unknown key"),
])
def test_generator_config_is_validated(override, message) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert message in str(err.value)
    cfg = load_config(None, ["rl.generator=vllm", "rl.vllm.sleep_level=1", "rl.vllm.tensor_parallel_size=2"])
    assert cfg.rl.generator == "vllm" and cfg.rl.vllm.sleep_level == 1 and load_config().rl.generator == "hf"
    assert load_config().rl.vllm.sleep_level == 2 and load_config().rl.vllm.max_num_batched_tokens == 4096


def test_build_generator_defaults_to_hf_and_checks_the_tensor_parallel_size(fake_vllm) -> None:
    policy, tok = _policy()
    cpu = torch.device("cpu")
    assert isinstance(build_generator(load_config(), "/p", policy, tok, cpu), HFGenerator)
    acc = SimpleNamespace(num_processes=3, process_index=0, local_process_index=0, unwrap_model=lambda m: m)
    with pytest.raises(ConfigError, match="rl.vllm.tensor_parallel_size: expected a divisor of the 3 processes, got 2"):
        build_generator(load_config(None, ["rl.generator=vllm", "rl.vllm.tensor_parallel_size=2"]), "/p", policy,
                        tok, cpu, acc)
    g = build_generator(load_config(None, ["rl.generator=vllm", "rl.vllm.max_model_len=20"]), "/p", policy, tok, cpu)
    assert isinstance(g, VLLMGenerator) and FakeLLM.instances[-1].kwargs["max_model_len"] == 20


@pytest.mark.slow
def test_process_layout_under_torchrun(tmp_path) -> None:
    """`torchrun --nproc_per_node 2` (gloo, CPU) against the fake: one engine per rank with the external launcher,
    seeded run.seed + rank; then one tensor-parallel group of 2 that gathers both ranks' prompts in rank order into
    one engine call (seeded alike on both ranks) and hands each rank its own outputs back."""
    import json
    import socket
    import subprocess

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                           "127.0.0.1", "--master_port", str(port), str(Path(__file__).with_name("vllm_tp_worker.py")),
                           str(tmp_path)], cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r, o in enumerate(out):
        dp = o["tp1"]
        assert dp["engines"] == 1 and dp["kwargs"]["distributed_executor_backend"] == "external_launcher"
        assert dp["kwargs"]["tensor_parallel_size"] == 1 and dp["kwargs"]["seed"] == 7 + r
        assert dp["engine_rows"] == [dp["local_prompts"]]  # its own rows only
        assert dp["responses"] == dp["expected_own"]
        assert o["env"] == {"RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2"}
        tp = o["tp2"]
        assert tp["engines"] == 1 and tp["kwargs"]["tensor_parallel_size"] == 2 and tp["kwargs"]["seed"] == 7
        assert tp["kwargs"]["distributed_executor_backend"] == "external_launcher"
        both = out[0]["tp2"]["local_prompts"] + out[1]["tp2"]["local_prompts"]
        assert tp["engine_rows"] == [both]  # rank 0's rows then rank 1's, in one call on each rank
        assert tp["responses"] == tp["expected_in_group"]  # the group's outputs at this rank's offset
    assert len(out[0]["tp2"]["local_prompts"]) == 3 and len(out[1]["tp2"]["local_prompts"]) == 2  # ragged shares
    assert out[0]["tp2"]["responses"] != out[1]["tp2"]["responses"]


def test_the_gpu_checks_sleep_wake_probe_drives_r2ms_generator(fake_vllm) -> None:
    """scripts/gpu_check_probes.py's P4 sleep/wake goes through VLLMGenerator's own release / sync_weights / wake
    (the calls a step makes), at levels 1 and 2, and samples after each wake: no error, events in the step's order."""
    import importlib.util

    script = Path(__file__).resolve().parents[2] / "scripts" / "gpu_check_probes.py"
    spec = importlib.util.spec_from_file_location("gpu_check_probes", script)
    probes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probes)
    policy, tok = _policy()
    g = _vllm_gen(policy, tok, VLLMConfig(gpu_memory_utilization=0.35, sleep_level=2))  # the probe's config
    llm = FakeLLM.instances[-1]
    g.wake()
    out = probes.sleep_wake(g, policy, _prompt_ids(tok)[:2], 3)
    assert set(out) == {"level_1", "level_2"} and all("error" not in v for v in out.values()), out
    assert all(v["tokens_after_wake"] > 0 for v in out.values())
    # built asleep; the probe's wake; then per level: sleep, wake the weights, push the synced policy, wake the KV
    # cache, sample
    assert llm.events == ["sleep2", "wake:weights", "load", "wake:kv_cache",
                          "sleep1", "wake:weights", "load", "wake:kv_cache", "generate",
                          "sleep2", "wake:weights", "load", "wake:kv_cache", "generate"]
