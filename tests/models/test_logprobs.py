"""The log-prob pass and the h pass at a real vocabulary size (Qwen2.5's 151,936) on a narrow model: logits over
the response only, a chunked selective log-softmax, the decoder's last states only, padding cut per chunk, and the
same numbers as a full-logits log_softmax; through accelerate's autocast wrapper and through DDP's forward."""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from types import MethodType

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from r2m.config.models import ArchConfig
from r2m.models.feedback import text_feedback
from r2m.models.forward import last_states, position_ids
from r2m.models.loading import build_world_lm
from r2m.models.logprobs import LOGIT_CHUNK_ELEMENTS, chunked_response_forward, real_columns, response_forward
from r2m.world.tokenizer import build_tokenizer

sys.path.insert(0, str(Path(__file__).parents[1]))
from memory_probe import Allocations  # noqa: E402

QWEN_VOCAB = 151_936


def _narrow_qwen(vocab: int = QWEN_VOCAB) -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=vocab, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, intermediate_size=32, max_position_embeddings=1024,
                      tie_word_embeddings=True)
    return Qwen2ForCausalLM(cfg).eval()


def _rows(vocab: int, prompts: list[int], responses: list[int], P: int, R: int, seed: int = 0):
    """[left-padded prompt | right-padded response] rows of the given lengths, pad id 0."""
    g = torch.Generator().manual_seed(seed)
    seq = torch.zeros((len(prompts), P + R), dtype=torch.long)
    mask = torch.zeros_like(seq)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        seq[i, P - p: P + r] = torch.randint(1, vocab, (p + r,), generator=g)
        mask[i, P - p: P + r] = 1
    return seq, mask


def _full_logits_logprobs(model, seq, mask, P: int, temperature: float) -> torch.Tensor:
    """The formulation the pass replaces: every position's logits, / temperature, log_softmax, gather."""
    with torch.no_grad():
        logits = model(input_ids=seq, attention_mask=mask, position_ids=position_ids(mask),
                       use_cache=False).logits[:, P - 1: -1].float()
        return torch.log_softmax(logits / temperature, -1).gather(-1, seq[:, P:, None]).squeeze(-1)  # (B, R)


def test_logprob_pass_at_real_vocabulary_holds_one_chunk_of_logits() -> None:
    model = _narrow_qwen()
    P, R = 24, 480
    seq, mask = _rows(QWEN_VOCAB, [24, 15], [480, 250], P, R)  # 730 response tokens: two chunks
    want = _full_logits_logprobs(model, seq, mask, P, 0.7)
    with torch.no_grad(), Allocations() as probe:
        got = response_forward(model, seq, mask, P, 0.7, with_hidden=True)
    # No (rows, P+R, V) or (rows, R, V) logits: the largest block is one chunk's float32 logits.
    assert probe.largest <= 4 * LOGIT_CHUNK_ELEMENTS < 4 * 2 * R * QWEN_VOCAB
    assert not probe.with_numel_at_least(2 * R * QWEN_VOCAB)
    real = mask[:, P:].bool()
    torch.testing.assert_close(got.logprobs[real], want[real], atol=2e-5, rtol=1e-5)
    assert (got.logprobs[~real] == 0).all()
    # h is the last layer's states only, (B, P+R, D).
    assert got.hidden.shape == (2, P + R, 16)


def test_logprob_pass_under_accelerates_autocast_wrapper_copies_no_outputs_to_fp32() -> None:
    """accelerate's mixed precision wraps forward in autocast and converts its outputs to float32: the pass runs
    inside that forward (the same autocast) and the outputs it converts are one position's logits."""
    from accelerate.utils import convert_outputs_to_fp32

    model = _narrow_qwen()
    wrapped = copy.deepcopy(model)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16)(type(wrapped).forward)
    wrapped.forward = MethodType(convert_outputs_to_fp32(autocast), wrapped)
    P, R = 16, 64
    seq, mask = _rows(QWEN_VOCAB, [16, 9, 12], [64, 40, 31], P, R, seed=1)
    want = _full_logits_logprobs(wrapped, seq, mask, P, 1.0)  # the bf16 autocast logits, converted
    with torch.no_grad(), Allocations() as probe:
        got = response_forward(wrapped, seq, mask, P, 1.0).logprobs
    real = mask[:, P:].bool()
    torch.testing.assert_close(got[real], want[real], atol=0.05, rtol=0.02)  # bf16 matmuls of other shapes
    assert not probe.with_numel_at_least(3 * R * QWEN_VOCAB)  # neither (rows, R, V) logits nor a float32 copy
    assert (got[real] - _full_logits_logprobs(model, seq, mask, P, 1.0)[real]).abs().max() > 0  # autocast ran


def test_no_grad_pass_under_autocast_keeps_no_casts_of_the_fp32_master_weights() -> None:
    """Under accelerate's bf16 autocast wrapper, with float32 weights that require grad (the trained policy's master
    weights), autocast would keep a bf16 cast of every weight until the forward ends. The no-grad pass holds, op
    by op, exactly the bytes of the same pass on weights that require no grad (which autocast never caches), with
    bit-identical results, and leaves autocast's state as it was."""
    from accelerate.utils import convert_outputs_to_fp32

    from r2m_bench.live_bytes import LiveBytes

    P, R = 12, 40
    seq, mask = _rows(4096, [12, 7, 10], [40, 23, 31], P, R, seed=2)

    def run(requires_grad: bool):
        torch.manual_seed(0)
        cfg = Qwen2Config(vocab_size=4096, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                          num_key_value_heads=2, intermediate_size=128, tie_word_embeddings=True)
        model = Qwen2ForCausalLM(cfg).eval().requires_grad_(requires_grad)
        autocast = torch.autocast("cpu", dtype=torch.bfloat16)(type(model).forward)
        model.forward = MethodType(convert_outputs_to_fp32(autocast), model)
        inst = LiveBytes()
        with inst, inst.phase("pass"), torch.no_grad():
            out = response_forward(model, seq, mask, P, 0.7, with_hidden=True)
        return inst.phase_peak("pass").total, out

    trained_peak, got = run(True)
    frozen_peak, want = run(False)
    assert trained_peak == frozen_peak > 0
    assert torch.equal(got.logprobs, want.logprobs) and torch.equal(got.hidden, want.hidden)
    assert not torch.is_autocast_enabled("cpu") and torch.is_autocast_cache_enabled()


def test_h_pass_reads_the_last_states_without_logits() -> None:
    model = _narrow_qwen()
    tok = build_tokenizer("policy")
    tok_ids = torch.tensor([[tok.pad_token_id] * 3 + list(range(5, 10)), list(range(5, 13))])
    mask = (tok_ids != tok.pad_token_id).long()
    with torch.no_grad():
        ref = model(input_ids=tok_ids, attention_mask=mask, position_ids=position_ids(mask),
                    output_hidden_states=True).hidden_states[-1]
    with torch.no_grad(), Allocations() as probe:
        h = last_states(model, tok_ids, mask, lambda s: s.clone())
    torch.testing.assert_close(h, ref)
    assert not probe.with_numel_at_least(2 * 2 * QWEN_VOCAB)  # only (B, 1, V): one position per row
    fb = text_feedback(model, tok, ["<bos> 3 1 2 =>"], [" 1 2 3 <eos>"], torch.device("cpu"))
    assert fb.hidden.shape[-1] == 16


def test_each_pass_is_cut_to_its_own_widest_row() -> None:
    tok = build_tokenizer("policy")
    model = build_world_lm(ArchConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64), tok, 0).eval()
    P, R = 12, 10
    # Widest prompt 7 (5 columns of left padding in every row), widest response 6 (4 columns of right padding).
    seq, mask = _rows(len(tok), [7, 3, 5, 2], [6, 2, 5, 1], P, R)
    widths = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: widths.append(kw["input_ids"].shape[1]), with_kwargs=True)
    try:
        with torch.no_grad():
            whole = response_forward(model, seq, mask, P, 0.7, with_hidden=True)
            assert widths == [7 + 6] and real_columns(mask, P)[:2] == (5, 18)
            widths.clear()
            chunked = chunked_response_forward(model, seq, mask, P, 0.7, rows=2, with_hidden=True)
    finally:
        hook.remove()
    # Rows sorted by length: the two short rows together (prompt 3/2, response 2/1), then the two long ones.
    assert sorted(widths) == [3 + 2, 7 + 6]
    real = mask[:, P:].bool()
    torch.testing.assert_close(chunked.logprobs[real], whole.logprobs[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(chunked.hidden[mask.bool()], whole.hidden[mask.bool()], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(whole.logprobs[real], _full_logits_logprobs(model, seq, mask, P, 0.7)[real],
                               atol=1e-5, rtol=1e-5)


def test_training_pass_through_ddp_gives_the_plain_gradients(tmp_path) -> None:
    """With gradients the pass still runs DDP's forward (gradient synchronisation) and its hook's head and
    log-softmax are part of the graph: the gradients equal the plain module's."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    tok = build_tokenizer("policy")
    model = build_world_lm(ArchConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64), tok, 0)
    plain = copy.deepcopy(model)
    seq, mask = _rows(len(tok), [5, 3], [6, 4], 6, 7, seed=2)
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        ddp = DistributedDataParallel(model)
        for m in (ddp, plain):
            f = response_forward(m, seq, mask, 6, 0.7, with_entropy=True, with_hidden=True)
            (f.logprobs.sum() + f.hidden.sum().detach()).backward()
    finally:
        dist.destroy_process_group()
    for (name, a), b in zip(model.named_parameters(), plain.parameters()):
        assert a.grad is not None, name
        torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("temperature", [0.7, 1.0])
def test_entropy_and_logprobs_match_the_full_softmax(temperature) -> None:
    tok = build_tokenizer("policy")
    model = build_world_lm(ArchConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64), tok, 1).eval()
    seq, mask = _rows(len(tok), [4, 2, 3], [5, 1, 3], 5, 6, seed=3)
    with torch.no_grad():
        f = response_forward(model, seq, mask, 5, temperature, with_entropy=True)
        logits = model(input_ids=seq, attention_mask=mask, position_ids=position_ids(mask)).logits[:, 4:-1]
        logits = logits / temperature
    real = mask[:, 5:].bool()
    logp = torch.log_softmax(logits, -1)
    torch.testing.assert_close(f.entropy[real], -(logp.exp() * logp).sum(-1)[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(f.logprobs[real], logp.gather(-1, seq[:, 5:, None]).squeeze(-1)[real],
                               atol=1e-5, rtol=1e-5)


def _family(name: str):
    from transformers import (
        Gemma2Config,
        Gemma2ForCausalLM,
        GPTNeoXConfig,
        GPTNeoXForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
    )

    torch.manual_seed(0)
    small = dict(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    return {"llama": lambda: LlamaForCausalLM(LlamaConfig(**small)),
            "qwen2": lambda: _narrow_qwen(64),
            "gpt_neox": lambda: GPTNeoXForCausalLM(GPTNeoXConfig(**small)),
            "gemma2_softcap": lambda: Gemma2ForCausalLM(Gemma2Config(**small, head_dim=8, num_key_value_heads=1,
                                                                     final_logit_softcapping=0.1))}[name]().eval()


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt_neox"])
def test_the_pass_equals_full_logits_for_each_family_with_left_padding(family) -> None:
    """logits_to_keep and the decoder's last states work for the families the paper configs use, left-padded."""
    model = _family(family)
    seq, mask = _rows(64, [5, 2, 4], [6, 3, 1], 5, 6, seed=4)
    with torch.no_grad():
        f = response_forward(model, seq, mask, 5, 0.7, with_hidden=True)
        full = model(input_ids=seq, attention_mask=mask, position_ids=position_ids(mask), output_hidden_states=True)
    real = mask[:, 5:].bool()
    torch.testing.assert_close(f.logprobs[real], _full_logits_logprobs(model, seq, mask, 5, 0.7)[real],
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(f.hidden[mask.bool()], full.hidden_states[-1][mask.bool()], atol=1e-5, rtol=1e-5)


def test_a_model_that_transforms_its_logits_after_the_head_is_refused() -> None:
    """Gemma 2 softcaps its logits after the LM head: the response-only pass would read other logits, so it refuses."""
    from r2m.errors import ModelError

    seq, mask = _rows(64, [3, 2], [4, 2], 3, 4, seed=5)
    with torch.no_grad(), pytest.raises(ModelError, match="Gemma2ForCausalLM: its logits are not its output"):
        response_forward(_family("gemma2_softcap"), seq, mask, 3, 1.0)
