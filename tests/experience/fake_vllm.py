"""A fake ``vllm`` module for the tests (no GPU or vLLM here): it records what it is asked (engine arguments,
generate calls and their prompts, sleeps, tagged wake-ups, weight loads, LoRA requests) and answers
deterministically. Used by test_generation.py and by the torchrun worker vllm_tp_worker.py."""

from __future__ import annotations

import dataclasses
import sys
import types
from types import SimpleNamespace

import torch


class FakeSamplingParams:
    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.__dict__.update(kwargs)


class FakeLoRARequest:
    def __init__(self, lora_name: str, lora_int_id: int, lora_path: str):
        self.lora_name, self.lora_int_id, self.lora_path = lora_name, lora_int_id, lora_path


class FakeModel:
    """vLLM's model: ``load_weights`` takes HF-named (name, tensor) pairs; it keeps a copy of each push."""

    def __init__(self, events: list):
        self.loads: list[dict[str, torch.Tensor]] = []
        self.events = events

    def load_weights(self, weights):
        self.loads.append({name: t.detach().clone() for name, t in weights})
        self.events.append("load")


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
        self.events: list = []
        self.model = FakeModel(self.events)
        self.params: list = []  # per generate call: the SamplingParams (one object, or a list per request)
        self.prompts: list = []  # per generate call: the prompts' token ids
        self.lora_requests: list = []  # per generate call
        self.prefix_resets = 0
        type(self).instances.append(self)

    def generate(self, prompts, sampling_params=None, use_tqdm=True, lora_request=None):
        params = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(prompts)
        self.params.append(sampling_params)
        self.prompts.append([list(p["prompt_token_ids"]) for p in prompts])
        self.lora_requests.append(lora_request)
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

    def wake_up(self, tags=None):
        self.events.append("wake:" + ",".join(tags) if tags else "wake:all")

    def counts(self) -> dict:
        """What the engine was asked, in numbers."""
        ev = self.events
        return {"generate": ev.count("generate"), "rows": [len(p) for p in self.prompts],
                "sleeps": [e for e in ev if e.startswith("sleep")], "wakes": [e for e in ev if e.startswith("wake")],
                "loads": ev.count("load")}


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
    enable_lora: bool = False


def fake_module(llm_cls=FakeLLM, engine_args: bool = False, lora: bool = False) -> types.ModuleType:
    """The module to install as ``vllm``; ``engine_args``: it has EngineArgs (generation_config, enable_lora);
    ``lora``: it has vllm.lora.request.LoRARequest."""
    mod = types.ModuleType("vllm")
    mod.LLM, mod.SamplingParams = llm_cls, FakeSamplingParams
    mod.inputs = types.ModuleType("vllm.inputs")
    mod.inputs.TokensPrompt = dict
    if engine_args:
        mod.EngineArgs = FakeEngineArgs
    if lora:
        mod.lora = types.ModuleType("vllm.lora")
        mod.lora.request = types.ModuleType("vllm.lora.request")
        mod.lora.request.LoRARequest = FakeLoRARequest
    llm_cls.instances = []
    return mod


def install(monkeypatch=None, llm_cls=FakeLLM, engine_args: bool = False, lora: bool = False) -> type:
    """Install the fake as ``vllm`` (and its LoRA submodules) and pretend the (CPU) device is CUDA."""
    from r2m.experience import generation

    mod = fake_module(llm_cls, engine_args, lora)
    modules = {"vllm": mod, "vllm.lora": getattr(mod, "lora", None),
               "vllm.lora.request": getattr(getattr(mod, "lora", None), "request", None)}
    for name, m in modules.items():
        if monkeypatch is not None:
            monkeypatch.setitem(sys.modules, name, m)
        else:
            sys.modules[name] = m
    if monkeypatch is not None:
        monkeypatch.setattr(generation, "_cuda_device", lambda device: True)
    else:
        generation._cuda_device = lambda device: True
    return llm_cls
