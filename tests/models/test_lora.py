"""LoRA (peft) for the policy and the RM, gradient checkpointing, and mixed precision."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from r2m.config.models import ArchConfig
from r2m.errors import ConfigError
from r2m.config.parsing import load_config


def _lora_rl_cfg(tiny, name: str, *extra: str):
    return load_config(None, [*tiny, f"run.name={name}", "policy.lora.enabled=true", "policy.lora.r=4",
                              "rl.lr=1e-2", *extra])


def _split(model) -> tuple[dict, dict]:
    """(LoRA parameters, everything else) of a peft model, as detached copies."""
    lora, base = {}, {}
    for name, p in model.named_parameters():
        (lora if "lora_" in name else base)[name] = p.detach().clone()
    return lora, base


def test_lora_rl_trains_adapters_only_and_resumes(tiny, world_artifacts) -> None:
    from transformers import AutoModelForCausalLM

    from r2m.models.loading import load_policy
    from r2m.models.lora import AdapterFreeReference, is_peft
    from r2m.models.logprobs import response_forward
    from r2m.recipes.rl.build import build_run
    from r2m.recipes.rl.checkpoints import save_checkpoint
    from r2m.recipes.rl.run import finish_run
    from r2m.recipes.rl.step import train_step

    policy_dir = str(world_artifacts[0])
    cfg = _lora_rl_cfg(tiny, "lora-rl", "rl.save_every=1")
    rl = build_run(cfg)
    policy = rl.models.unwrapped_policy()
    assert is_peft(policy) and isinstance(rl.models.ref, AdapterFreeReference)
    assert all(("lora_" in n) == p.requires_grad for n, p in policy.named_parameters())
    lora0, base0 = _split(policy)

    m1 = train_step(rl, 1)
    save_checkpoint(rl.resumable, rl.cfg, rl.run, 1)
    m2 = train_step(rl, 2)
    for m in (m1, m2):
        assert all(torch.isfinite(torch.tensor(m[k])) for k in ("loss/total", "loss/policy", "kl", "reward/proxy"))
    lora2, base2 = _split(policy)
    assert all(torch.equal(base0[k], base2[k]) for k in base0), "a base weight moved"
    assert sum(not torch.equal(lora0[k], lora2[k]) for k in lora0) >= len(lora0) // 2, "the adapters did not train"

    # The reference is the base model: its log-probs are the SFT policy's exactly, while the policy moved.
    prompts = rl.train_prompts.texts[:4], rl.train_prompts.ids[:4]
    exp = rl.maker.make(*prompts, step=2)
    sft = load_policy(policy_dir).eval()
    with torch.no_grad():
        base_lp = response_forward(sft, exp.sequences, exp.attention_mask, exp.prompt_len, cfg.rl.temperature).logprobs
    assert torch.equal(exp.ref_logprobs, base_lp)
    assert not torch.equal(exp.old_logprobs, exp.ref_logprobs)
    assert policy.training, "the reference must leave the policy's mode as it was"

    # The checkpoint holds the adapter only; the final policy is a plain merged model plus the adapter.
    ckpt = Path(cfg.run.root) / "lora-rl" / "checkpoints" / "step-000001" / "policy"
    assert (ckpt / "adapter_config.json").exists() and not (ckpt / "model.safetensors").exists()
    finish_run(rl)
    final = Path(cfg.run.root) / "lora-rl" / "checkpoints" / "final"
    plain = AutoModelForCausalLM.from_pretrained(final)
    merged = copy.deepcopy(policy).merge_and_unload().state_dict()
    assert set(plain.state_dict()) == set(merged)
    assert all(torch.equal(v, merged[k]) for k, v in plain.state_dict().items())
    from_adapter = load_policy(str(final / "adapter"))  # base + adapter, merged on load
    for k, v in from_adapter.state_dict().items():
        torch.testing.assert_close(v, merged[k], rtol=0, atol=1e-6)

    # Resume from step 1: step 2 computes what the uninterrupted run did.
    resumed = build_run(_lora_rl_cfg(tiny, "lora-rl", "rl.save_every=1", "run.resume=auto"))
    assert resumed.progress.start_step == 1 and is_peft(resumed.models.unwrapped_policy())
    r2 = train_step(resumed, 2)
    for key in ("loss/total", "reward/proxy", "kl", "policy/grad_norm"):
        assert r2[key] == pytest.approx(m2[key], rel=1e-5, abs=1e-7), key
    resumed.run.close()


def test_lora_policy_with_r2m_runs_a_step(tiny, world_artifacts) -> None:
    from r2m.recipes.rl.run import run_rl

    cfg = _lora_rl_cfg(tiny, "lora-r2m", "reward.r2m.enabled=true", "rl.steps=1", "policy.gradient_checkpointing=true")
    result = run_rl(cfg)
    row = next(r for r in result.history if r["step"] == 1 and "loss/total" in r)
    assert all(torch.isfinite(torch.tensor(row[k])) for k in ("loss/total", "r2m/grebt", "eval/kl"))
    assert "rm_acc/r2m_after" in result.rm_accuracy
    assert (result.run_dir / "checkpoints" / "final" / "r2m").is_dir()


def test_lora_policy_with_ppo_and_checkpointed_critic(tiny, world_artifacts) -> None:
    from r2m.recipes.rl.build import build_run
    from r2m.recipes.rl.step import train_step

    rl = build_run(_lora_rl_cfg(tiny, "lora-ppo", "rl.algorithm=ppo", "policy.gradient_checkpointing=true"))
    critic = rl.models.acc.unwrap_model(rl.models.critic)
    assert any(getattr(m, "gradient_checkpointing", False) for m in critic.modules())
    m = train_step(rl, 1)
    assert all(torch.isfinite(torch.tensor(m[k])) for k in ("loss/total", "loss/value", "critic/explained_var"))
    rl.run.close()


@pytest.mark.parametrize("lora", [False, True])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(lora: bool) -> None:
    from r2m.config.models import LoRAConfig
    from r2m.models.loading import build_world_lm
    from r2m.models.lora import apply_lora, enable_gradient_checkpointing
    from r2m.world.tokenizer import build_tokenizer

    tok = build_tokenizer("policy")
    arch = ArchConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    torch.manual_seed(0)
    plain = build_world_lm(arch, tok, seed=0)
    if lora:
        plain = apply_lora(plain, LoRAConfig(enabled=True, r=4, dropout=0.0), "causal")
        with torch.no_grad():  # B = 0 at init: give the adapters a value so their gradients are not trivial
            for n, p in plain.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.1)
    checkpointed = copy.deepcopy(plain)
    enable_gradient_checkpointing(checkpointed)
    hf = checkpointed.get_base_model() if lora else checkpointed
    assert any(getattr(m, "gradient_checkpointing", False) for m in hf.modules())
    ids = torch.randint(4, len(tok), (3, 12), generator=torch.Generator().manual_seed(1))
    grads = []
    for model in (plain, checkpointed):
        model.train()
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        grads.append((loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}))
    (l0, g0), (l1, g1) = grads
    torch.testing.assert_close(l1, l0, rtol=1e-5, atol=1e-5)
    assert g0.keys() == g1.keys() and all(g is not None for g in g1.values())
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-5, atol=1e-5)


def test_rm_with_lora_trains_adapters_and_head_and_saves_a_merged_rm(tiny, world_artifacts) -> None:
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    from r2m.cli import main
    from r2m.models.loading import load_reward_model
    from r2m.recipes.pipeline import ensure_world_rm_backbone

    args = [*tiny, "run.name=rm-lora", "reward.lora.enabled=true", "reward.lora.r=4",
            "reward.lora.target_modules=[q_proj, v_proj]", "reward.gradient_checkpointing=true", "rm.max_steps=4",
            "rm.lr=1e-2"]
    assert main(["rm", *args]) == 0
    cfg = load_config(None, args)
    init = str(ensure_world_rm_backbone(cfg))
    final = Path(cfg.run.root) / "rm-lora" / "checkpoints" / "final"
    saved = load_file(str(final / "model.safetensors"))
    assert not any("lora" in k or "base_layer" in k or "modules_to_save" in k for k in saved)
    with torch.random.fork_rng():
        torch.manual_seed(cfg.world.seed)  # the fresh head run_rm started from
        start = load_reward_model(init).state_dict()
    assert saved.keys() == start.keys()
    moved = {k for k in saved if not torch.equal(saved[k], start[k])}
    assert "score.weight" in moved
    assert any("q_proj" in k for k in moved) and any("v_proj" in k for k in moved)
    assert all(k == "score.weight" or "q_proj" in k or "v_proj" in k for k in moved), moved
    rm = AutoModelForSequenceClassification.from_pretrained(final)
    assert rm.config.num_labels == 1


def test_adapter_directories_load_merged_and_bad_ones_are_refused(tmp_path) -> None:
    import json

    from transformers import LlamaConfig, LlamaForSequenceClassification

    from r2m.config.models import LoRAConfig
    from r2m.errors import ModelError
    from r2m.models.loading import load_policy, load_reward_model
    from r2m.models.lora import apply_lora, merged_copy

    cfg = LlamaConfig(vocab_size=16, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=2, num_labels=1, pad_token_id=0)
    torch.manual_seed(0)
    LlamaForSequenceClassification(cfg).save_pretrained(tmp_path / "base")
    peft = apply_lora(load_reward_model(str(tmp_path / "base")), LoRAConfig(enabled=True, r=2), "seq_cls",
                      base_path=str(tmp_path / "base"))
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if p.requires_grad:  # the adapters and the score head
                p.add_(0.1)
    peft.save_pretrained(tmp_path / "adapter")
    merged = merged_copy(peft).state_dict()
    loaded = load_reward_model(str(tmp_path / "adapter")).state_dict()
    assert loaded.keys() == merged.keys()
    for k in merged:
        torch.testing.assert_close(loaded[k], merged[k], rtol=0, atol=1e-6)

    (tmp_path / "adapter" / "adapter_model.safetensors").unlink()
    with pytest.raises(ModelError, match="adapter at .*: no adapter_model.safetensors"):
        load_policy(str(tmp_path / "adapter"))
    meta = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps({**meta, "base_model_name_or_path": None}))
    with pytest.raises(ModelError, match="names no base_model_name_or_path"):
        load_policy(str(tmp_path / "adapter"), allow_unsafe_weights=True)


def test_mixed_precision_validation(monkeypatch) -> None:
    from r2m.updates.supervised import resolve_mixed_precision

    with pytest.raises(ConfigError, match="run.mixed_precision: expected one of no, bf16, fp16, auto"):
        load_config(None, ["run.mixed_precision=fp8"])
    with pytest.raises(ConfigError, match="run.mixed_precision: expected no, bf16 or auto with run.device=cpu"):
        load_config(None, ["run.device=cpu", "run.mixed_precision=fp16"])
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert resolve_mixed_precision(load_config(None, ["run.device=cpu", "run.mixed_precision=auto"])) == "no"
    assert resolve_mixed_precision(load_config(None, ["run.device=cpu", "run.mixed_precision=bf16"])) == "bf16"
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="run.mixed_precision: fp16 needs a CUDA device"):
            resolve_mixed_precision(load_config(None, ["run.mixed_precision=fp16"]))
        # The launcher's choice applies when the config says no, and is checked the same way.
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
        with pytest.raises(ConfigError, match="defers to the launcher's ACCELERATE_MIXED_PRECISION=fp16"):
            resolve_mixed_precision(load_config(None, ["run.device=cpu"]))
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert resolve_mixed_precision(load_config(None, ["run.device=cpu"])) == "bf16"
    assert resolve_mixed_precision(load_config(None, ["run.device=cpu", "run.mixed_precision=auto"])) == "no"


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one process-wide state: leave it as a plain full-precision one for later tests."""
    from accelerate.state import AcceleratorState

    yield
    AcceleratorState._reset_state()


@pytest.mark.parametrize("lora", [False, True])
def test_bf16_on_cpu_reference_matches_the_policy_at_start(lora, tiny, world_artifacts, fresh_accelerate_state,
                                                           monkeypatch) -> None:
    from r2m.recipes.rl.build import build_run
    from r2m.recipes.rl.step import train_step

    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    policy_dir, rm_dir, _ = world_artifacts  # explicit paths: a bf16 run does not rebuild the fp32 world
    cfg = load_config(None, [*tiny, f"run.name=bf16-{lora}", "run.device=cpu", "run.mixed_precision=bf16",
                             f"policy.path={policy_dir}", f"reward.path={rm_dir}", f"policy.lora.enabled={lora}"])
    rl = build_run(cfg)
    assert rl.models.acc.mixed_precision == "bf16"
    m = train_step(rl, 1)
    assert torch.isfinite(torch.tensor(m["loss/total"]))
    assert m["kl"] == pytest.approx(0.0, abs=1e-6), "the reference must run in the policy's autocast"
    rl.run.close()
