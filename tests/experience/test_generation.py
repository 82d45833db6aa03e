"""Generation backends: HF is today's generate() exactly; vLLM (against a fake ``vllm`` module: no GPU or
vLLM here) gives the same layout, receives every weight after each step, and R2M's h still comes
from the log-prob pass."""

from __future__ import annotations

import copy
import dataclasses
import os
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from r2m.experience import generation
from r2m.config.models import ArchConfig
from r2m.errors import ConfigError
from r2m.config.training import RLConfig, VLLMConfig
from r2m.config.run import WorldConfig
from r2m.config.parsing import load_config
from r2m.experience.generation import HFGenerator, VLLMGenerator, build_generator, policy_weights
from r2m.models.loading import build_world_lm
from r2m.experience.rewards import GoldReward
from r2m.experience.rollout import ExperienceMaker
from r2m.models.logprobs import response_forward
from r2m.experience.sampling import generate
from r2m.models.forward import left_pad
from r2m.world.tokenizer import build_tokenizer
from r2m.world.task import format_prompt

DIGITS = ([3, 1, 2], [9, 0, 4, 4], [5, 5, 1], [7, 2, 8, 1, 0], [6, 3], [1, 2, 0])


def _policy():
    tok = build_tokenizer("policy")
    return build_world_lm(ArchConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64), tok, 0), tok


def _prompt_ids(tok, digits=DIGITS) -> list[list[int]]:
    return [tok(format_prompt(d))["input_ids"] for d in digits]


# ---------------------------------------------------------------------------------------------
# A fake vllm: records what it is asked, answers deterministically
# ---------------------------------------------------------------------------------------------


class FakeSamplingParams:
    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.__dict__.update(kwargs)


class FakeModel:
    """vLLM's model: ``load_weights`` takes HF-named (name, tensor) pairs; it keeps a copy of each push."""

    def __init__(self):
        self.loads: list[dict[str, torch.Tensor]] = []

    def load_weights(self, weights):
        self.loads.append({name: t.detach().clone() for name, t in weights})


def fake_tokens(prompt_ids: list[int], index: int, params: FakeSamplingParams) -> list[int]:
    """Row 3i: the sorted digits + eos; 3i+1: digits until max_tokens (no eos); 3i+2: stops early without eos
    (another stop id, as a checkpoint's generation_config may add)."""
    eos, n = params.stop_token_ids[0], params.max_tokens
    digits = prompt_ids[1:-1]  # <bos> d d d =>
    if index % 3 == 0:
        return (sorted(digits)[: n - 1] + [eos])[:n]
    if index % 3 == 1:
        return (digits * n)[:n]
    return digits[:1]


class _FakeLLMBase:
    instances: list = []

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.model = FakeModel()
        self.params: list = []
        self.events: list = []
        self.prefix_resets = 0
        type(self).instances.append(self)

    def generate(self, prompts, sampling_params=None, use_tqdm=True):
        params = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(prompts)
        self.params.append(params)
        self.events.append("generate")
        outs = []
        for i, (p, sp) in enumerate(zip(prompts, params)):
            toks = fake_tokens(list(p["prompt_token_ids"]), i, sp)
            reason = "length" if len(toks) == sp.max_tokens and toks[-1] != sp.stop_token_ids[0] else "stop"
            outs.append(SimpleNamespace(outputs=[SimpleNamespace(token_ids=tuple(toks), finish_reason=reason)]))
        return outs

    def reset_prefix_cache(self):
        self.prefix_resets += 1

    def sleep(self, level=1):
        self.events.append(f"sleep{level}")

    def wake_up(self):
        self.events.append("wake")


class FakeLLM(_FakeLLMBase):
    """Newer vLLM: ``collective_rpc`` runs a callable on each worker (one here)."""

    def collective_rpc(self, method, args=(), kwargs=None):
        worker = SimpleNamespace(model_runner=SimpleNamespace(model=self.model))
        return [method(worker, *args, **(kwargs or {}))]


class OldFakeLLM(_FakeLLMBase):
    """Older vLLM: no collective_rpc; the model sits on the driver worker."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        worker = SimpleNamespace(model_runner=SimpleNamespace(model=self.model))
        self.llm_engine = SimpleNamespace(model_executor=SimpleNamespace(driver_worker=worker))


@dataclasses.dataclass
class FakeEngineArgs:
    model: str = ""
    generation_config: str = "auto"


def _fake_module(llm_cls, engine_args: bool = False) -> types.ModuleType:
    mod = types.ModuleType("vllm")
    mod.LLM, mod.SamplingParams = llm_cls, FakeSamplingParams
    mod.inputs = types.ModuleType("vllm.inputs")
    mod.inputs.TokensPrompt = dict
    if engine_args:
        mod.EngineArgs = FakeEngineArgs
    llm_cls.instances = []
    return mod


@pytest.fixture
def fake_vllm(monkeypatch):
    """Install the fake as ``vllm`` and pretend the (CPU) device is CUDA; returns an installer."""
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "x")
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING")  # restored (unset) after the test
    monkeypatch.setattr(generation, "_cuda_device", lambda device: True)

    def install(llm_cls=FakeLLM, engine_args: bool = False) -> type:
        monkeypatch.setitem(sys.modules, "vllm", _fake_module(llm_cls, engine_args))
        return llm_cls

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
        toks = fake_tokens(p, i, params[i])
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
                              load_format="safetensors")
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"  # the engine runs in this process
    torch.manual_seed(0)
    g.generate(_prompt_ids(tok)[:3], temperature=0.7, max_new_tokens=4)
    sp = llm.params[-1]
    assert [p.kwargs["temperature"] for p in sp] == [0.7] * 3
    assert all(p.top_p == 1.0 and p.top_k == -1 and p.n == 1 and p.max_tokens == 4 for p in sp)
    # every sampling field at its neutral value, explicitly: nothing left to the engine's or checkpoint's defaults
    assert all(p.min_p == 0.0 and p.repetition_penalty == 1.0 and p.presence_penalty == 0.0
               and p.frequency_penalty == 0.0 and p.min_tokens == 0 and p.ignore_eos is False for p in sp)
    assert all(p.stop_token_ids == [tok.eos_token_id] for p in sp)
    seeds = [p.seed for p in sp]
    assert seeds == list(range(seeds[0], seeds[0] + 3))  # one draw from torch's RNG, one seed per request
    torch.manual_seed(0)
    g.generate(_prompt_ids(tok)[:3], temperature=0.7, max_new_tokens=4)
    assert [p.seed for p in llm.params[-1]] == seeds  # reproducible from the torch seed
    g.generate(_prompt_ids(tok)[:3], temperature=0.0, max_new_tokens=4)  # greedy (ReMax's baseline)
    assert all(p.temperature == 0.0 and "seed" not in p.kwargs for p in llm.params[-1])
    # Newer vLLM: the checkpoint's generation_config does not add stop ids; unsafe weights only when allowed.
    fake_vllm(FakeLLM, engine_args=True)
    _vllm_gen(policy, tok, VLLMConfig(per_request_seed=False, dtype="bfloat16"), allow_unsafe_weights=True)
    kw = FakeLLM.instances[-1].kwargs
    assert kw["generation_config"] == "vllm" and kw["load_format"] == "auto" and kw["dtype"] == "bfloat16"


@pytest.mark.parametrize("llm_cls", [FakeLLM, OldFakeLLM], ids=["collective_rpc", "driver_worker"])
def test_sync_pushes_every_weight_by_name(fake_vllm, llm_cls) -> None:
    fake_vllm(llm_cls)
    policy, tok = _policy()
    g = _vllm_gen(policy, tok)
    llm = llm_cls.instances[0]
    assert len(llm.model.loads) == 1 and llm.prefix_resets == 1  # pushed at construction
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


def test_sleep_mode_defers_the_push_to_the_wake_up(fake_vllm) -> None:
    policy, tok = _policy()
    g = _vllm_gen(policy, tok, VLLMConfig(enable_sleep_mode=True))
    llm = FakeLLM.instances[0]
    assert llm.kwargs["enable_sleep_mode"] is True
    g.generate(_prompt_ids(tok)[:2], 1.0, 3)
    assert llm.events == ["generate", "sleep1"]
    g.sync_weights(policy)
    assert len(llm.model.loads) == 1  # asleep: nothing pushed yet
    g.generate(_prompt_ids(tok)[:2], 1.0, 3)
    assert llm.events == ["generate", "sleep1", "wake", "generate", "sleep1"] and len(llm.model.loads) == 2


def test_lora_policy_is_merged_for_the_engine() -> None:
    peft = pytest.importorskip("peft")
    policy, _ = _policy()
    lora = peft.get_peft_model(copy.deepcopy(policy), peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj",
                                                                                                        "v_proj"]))
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_()
    weights = dict(policy_weights(lora))
    merged = copy.deepcopy(lora).merge_and_unload().state_dict()
    assert set(weights) == set(merged) == set(policy.state_dict())
    for name, t in merged.items():
        torch.testing.assert_close(weights[name], t, rtol=1e-6, atol=1e-6)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(weights[q], policy.state_dict()[q])  # the adapter is in the pushed weight


def test_missing_vllm_or_cuda_is_a_clear_config_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # not installed
    with pytest.raises(ConfigError, match=r"rl.generator=vllm needs the vllm package \(pip install vllm\) and a "
                                          r"CUDA GPU .*use rl.generator=hf"):
        generation.require_vllm(torch.device("cpu"))
    monkeypatch.setitem(sys.modules, "vllm", _fake_module(FakeLLM))  # installed, but no GPU
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
    """End to end with the fake: samples come from the engine, h from the policy's log-prob pass, and the
    engine gets the updated weights after every step."""
    from r2m.recipes.rl.build import build_run
    from r2m.recipes.rl.step import train_step

    rl = build_run(load_config(None, [*tiny, "run.name=vllm-r2m", "rl.generator=vllm", "reward.r2m.enabled=true"]))
    assert isinstance(rl.generator, VLLMGenerator) and rl.maker.generator is rl.generator
    llm = FakeLLM.instances[0]
    assert llm.kwargs["model"] == rl.inputs.policy and llm.kwargs["max_model_len"] == 64  # 64 + 10, capped by the model
    policy = rl.models.unwrapped_policy()

    idx, train = [0, 1, 2, 3], rl.train_prompts
    exp = rl.maker.make([train.texts[i] for i in idx], [train.ids[i] for i in idx], step=0)
    params = llm.params[-1]
    prompts = [ids for i in idx for ids in [train.ids[i]] * rl.cfg.rl.k]
    for j, (row, m) in enumerate(zip(exp.sequences[:, exp.prompt_len:], exp.action_mask)):
        assert row[m.bool()].tolist() == fake_tokens(prompts[j], j, params[j])  # the engine's samples
    B, S = exp.sequences.shape
    assert exp.policy_hidden.shape == (B, S - 1, 32) and exp.policy_mask.shape == (B, S - 1)
    with torch.no_grad():
        h = response_forward(policy, exp.sequences, exp.attention_mask, exp.prompt_len, rl.cfg.rl.temperature,
                             with_hidden=True).hidden[:, :-1]
    torch.testing.assert_close(exp.policy_hidden, h)  # h from pi_old's forward pass over the sampled tokens

    assert len(llm.model.loads) == 1
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    m1 = train_step(rl, 1)
    assert "r2m/grebt" in m1 and m1["r2m/hidden_mb"] > 0 and "loss/policy" in m1
    assert len(llm.model.loads) == 2
    pushed = llm.model.loads[-1]
    assert all(torch.equal(pushed[k], v) for k, v in policy.state_dict().items())  # the updated weights
    assert any(not torch.equal(before[k], v) for k, v in policy.state_dict().items())
    train_step(rl, 2)
    assert len(llm.model.loads) == 3 and len(llm.params) == 3


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
    cfg = load_config(None, ["rl.generator=vllm", "rl.vllm.enable_sleep_mode=true"])
    assert cfg.rl.generator == "vllm" and cfg.rl.vllm.enable_sleep_mode and load_config().rl.generator == "hf"


def test_build_generator_defaults_to_hf_and_refuses_several_processes(fake_vllm) -> None:
    policy, tok = _policy()
    cpu = torch.device("cpu")
    assert isinstance(build_generator(load_config(), "/p", policy, tok, cpu), HFGenerator)
    acc = SimpleNamespace(num_processes=2, unwrap_model=lambda m: m)
    with pytest.raises(ConfigError, match="rl.generator=vllm: one training process only"):
        build_generator(load_config(None, ["rl.generator=vllm"]), "/p", policy, tok, cpu, acc)
    g = build_generator(load_config(None, ["rl.generator=vllm", "rl.vllm.max_model_len=20"]), "/p", policy, tok, cpu)
    assert isinstance(g, VLLMGenerator) and FakeLLM.instances[-1].kwargs["max_model_len"] == 20
