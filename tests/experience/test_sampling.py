"""r2m samples from the distribution its log-probs describe, softmax(logits / T), whatever the checkpoint's
``generation_config.json`` says (repetition_penalty, no_repeat_ngram_size, top_k, top_p, min_p).

The model: a one-layer Llama over an 8-token vocabulary whose saved generation config sets every one of those
fields. The statistical test compares, over about 2,000 sampled tokens, (a) how often a token repeats the one before
it and (b) the summed log-probability of the sampled tokens with what the temperature-scaled softmax predicts
at each position: both are sums of martingale differences, so under exact sampling their z-scores are standard
normal. A repetition penalty, an n-gram ban or any truncation (top-k/top-p/min-p) moves them by tens of
standard deviations.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from r2m.experience.sampling import generate
from r2m.models.forward import position_ids

V, EOS, PAD, T = 8, 7, 6, 0.8
SHIPPED = dict(do_sample=True, temperature=0.5, repetition_penalty=1.8, no_repeat_ngram_size=2, top_k=3, top_p=0.7,
               min_p=0.2)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A saved and reloaded model whose generation_config.json sets non-neutral sampling fields."""
    from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=2, eos_token_id=EOS, pad_token_id=PAD, bos_token_id=0,
                      tie_word_embeddings=False)
    lm = LlamaForCausalLM(cfg)
    with torch.no_grad():
        lm.lm_head.weight.mul_(40.0)  # logits spread over a few units: a peaked, non-uniform next-token law
        lm.lm_head.weight[EOS] = lm.lm_head.weight[EOS] * 0.1 - 2.0 * lm.lm_head.weight[:EOS].mean(0)  # eos rare
    lm.generation_config = GenerationConfig(eos_token_id=EOS, pad_token_id=PAD, **SHIPPED)
    out = tmp_path_factory.mktemp("shipped")
    lm.save_pretrained(out)
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert loaded.generation_config.repetition_penalty == 1.8 and loaded.generation_config.min_p == 0.2
    return loaded


def _next_token_logprobs(model, gen) -> torch.Tensor:
    """log softmax(logits / T) before each response token: (B, R, V)."""
    with torch.no_grad():
        out = model(input_ids=gen.sequences, attention_mask=gen.attention_mask,
                    position_ids=position_ids(gen.attention_mask), use_cache=False)
    return F.log_softmax(out.logits[:, gen.prompt_len - 1: -1].float() / T, dim=-1)


def _z(observed: torch.Tensor, expected: torch.Tensor, variance: torch.Tensor) -> float:
    return float((observed.sum() - expected.sum()) / variance.sum().sqrt())


def test_samples_follow_the_temperature_scaled_softmax(model) -> None:
    torch.manual_seed(1)
    prompts = torch.randint(0, EOS, (192, 3))  # (B, 3)
    gen = generate(model, prompts, torch.ones_like(prompts), temperature=T, max_new_tokens=16, eos_token_id=EOS,
                   pad_token_id=PAD)
    logp = _next_token_logprobs(model, gen)  # (B, R, V)
    m = gen.action_mask.bool()  # (B, R)
    tokens = gen.sequences[:, gen.prompt_len:]  # (B, R)
    previous = gen.sequences[:, gen.prompt_len - 1: -1]  # (B, R) the token before each response token
    # (a) repeats of the previous token: observed vs sum_t p_t(y_{t-1})
    p_rep = logp.gather(-1, previous.unsqueeze(-1)).squeeze(-1).exp()  # (B, R)
    z_repeat = _z((tokens == previous)[m].float(), p_rep[m], (p_rep * (1 - p_rep))[m])
    # (b) log-likelihood of the samples: observed vs sum_t E_p[log p] = -H_t
    chosen = logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # (B, R)
    p = logp.exp()
    mean = (p * logp).sum(-1)  # (B, R)
    var = (p * logp.square()).sum(-1) - mean.square()
    z_loglik = _z(chosen[m], mean[m], var[m])
    print(f"\nz(repeats) = {z_repeat:.2f}, z(log-likelihood) = {z_loglik:.2f}, tokens {int(m.sum())}")
    assert abs(z_repeat) < 4 and abs(z_loglik) < 4, (z_repeat, z_loglik)
    assert int(m.sum()) > 1500  # enough tokens for the test to be decisive


def test_scores_are_the_raw_logits_over_temperature(model) -> None:
    """Deterministic: every logits processor ``generate`` runs is the temperature alone (scores = logits / T)."""
    from r2m.experience.sampling import own_generation_config, sampling_config

    prompts = torch.tensor([[1, 2, 2], [3, 1, 4]])
    cfg = sampling_config(T, 8, EOS, PAD, return_dict_in_generate=True, output_scores=True, output_logits=True)
    with own_generation_config(model):
        out = model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), generation_config=cfg)
    for scores, logits in zip(out.scores, out.logits):
        torch.testing.assert_close(scores, logits / T)
    assert model.generation_config.repetition_penalty == 1.8  # restored afterwards
    greedy = generate(model, prompts, torch.ones_like(prompts), temperature=0.0, max_new_tokens=8, eos_token_id=EOS,
                      pad_token_id=PAD)
    logp = _next_token_logprobs(model, greedy)
    tokens = greedy.sequences[:, greedy.prompt_len:]
    m = greedy.action_mask.bool()
    assert torch.equal(tokens[m], logp.argmax(-1)[m])  # greedy is the argmax, repeats and banned n-grams included


def test_the_shipped_fields_are_named_in_the_log(model) -> None:
    from r2m.experience.sampling import inherited_sampling

    found = inherited_sampling(model)
    assert {k: found[k] for k in SHIPPED if k != "do_sample"} == {k: v for k, v in SHIPPED.items() if k != "do_sample"}
    assert math.isclose(found["temperature"], 0.5)


def test_wrapped_models_inherit_nothing_either(model, monkeypatch) -> None:
    """A LoRA policy (PeftModel) and its adapter-free reference (which holds the PeftModel as a plain attribute)."""
    import copy

    from transformers.generation.utils import GenerationMixin

    from r2m.config.models import LoRAConfig
    from r2m.models.lora import AdapterFreeReference, apply_lora

    seen: list[set[str]] = []
    build = GenerationMixin._get_logits_processor

    def spy(m, *args, **kwargs):
        out = build(m, *args, **kwargs)
        seen.append({type(p).__name__ for p in out})
        return out

    monkeypatch.setattr(GenerationMixin, "_get_logits_processor", spy)
    policy = apply_lora(copy.deepcopy(model), LoRAConfig(enabled=True, r=2), "causal")
    prompts = torch.tensor([[1, 2, 2], [3, 1, 4]])
    for m in (policy, AdapterFreeReference(policy)):
        generate(m, prompts, torch.ones_like(prompts), temperature=T, max_new_tokens=4, eos_token_id=EOS,
                 pad_token_id=PAD)
    assert len(seen) == 2 and all(names == {"TemperatureLogitsWarper"} for names in seen), seen
    assert policy.get_base_model().generation_config.min_p == 0.2  # restored
