"""P1-P4 of the GPU check (scripts/gpu_check.py): memory and speed probes at real shapes, through r2m's own code.

Models are random, built from config on the device (nothing is downloaded). Memory is CUDA's
``max_memory_allocated`` around one call; on a CPU (``--device cpu --tiny``) only times are measured. Probes that
run a few layers of a deep model are measured at two depths and extrapolated linearly in depth (weights, their
gradients and optimiser state grow with depth; one layer's activations and the logits do not).
"""

from __future__ import annotations

import gc
import json
import math
import time
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30


class Qwen(NamedTuple):
    hidden: int
    inter: int
    heads: int
    kv: int
    vocab: int
    layers: int  # the real model's depth
    eos: int
    pad: int


class Llama(NamedTuple):
    hidden: int
    inter: int
    heads: int
    kv: int
    vocab: int
    layers: int


class Shapes(NamedTuple):
    qwen: Qwen  # P1, P4: Qwen2.5-0.5B (config.json of Qwen/Qwen2.5-0.5B-Instruct)
    llama: Llama  # P2, P3's H_last: Llama-3.1-8B (Skywork-Reward-V2-Llama-3.1-8B)
    depths: tuple[int, int]  # the two depths P1 and P2 measure
    chunk: tuple[int, int, int]  # P1's log-prob chunk: rows, prompt, response tokens
    micro_rows: int  # P1's training micro-batch (the paper configs' rl.micro_batch_size)
    rm_rows: tuple[int, int]  # P2's rows per RM forward
    rm_tokens: int
    r2m: tuple[int, int, int, tuple[int, int], int, int]  # P3: n prompts, k, h positions, D_p's, inner d, fusion batch
    gen: tuple[int, int, int, int]  # P4: rows, calls for the same rows, prompt tokens, new tokens


FULL = Shapes(Qwen(896, 4864, 14, 2, 151936, 24, eos=151645, pad=151643), Llama(4096, 14336, 32, 8, 128256, 32),
              depths=(2, 4), chunk=(16, 1024, 512), micro_rows=2, rm_rows=(64, 256), rm_tokens=1400,
              r2m=(64, 8, 1535, (896, 2048), 2048, 64), gen=(128, 8, 256, 128))
TINY = Shapes(Qwen(32, 64, 2, 1, 512, 4, eos=511, pad=510), Llama(32, 64, 4, 2, 512, 4), depths=(1, 2),
              chunk=(4, 12, 8), micro_rows=2, rm_rows=(4, 8), rm_tokens=24, r2m=(4, 2, 15, (16, 24), 16, 4),
              gen=(16, 8, 6, 4))


def shapes(ctx) -> Shapes:
    return TINY if ctx.tiny else FULL


def dtype_of(ctx) -> torch.dtype:
    return torch.bfloat16 if ctx.device == "cuda" else torch.float32


def release(device: str) -> None:
    gc.collect()
    if device == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def measure(ctx, fn: Callable[[], object]) -> tuple[object, dict]:
    """``fn()``'s result, its seconds, and (on CUDA) its peak allocated memory and the peak's rise over the start.
    An out-of-memory error is a measurement: {"oom": true, ...}."""
    cuda = ctx.device == "cuda"
    release(ctx.device)
    base = torch.cuda.memory_allocated() if cuda else 0
    t0 = time.perf_counter()
    try:
        out = fn()
        if cuda:
            torch.cuda.synchronize()
    except torch.cuda.OutOfMemoryError as e:
        release(ctx.device)
        return None, {"oom": True, "error": str(e)[:400], "base_gib": base / GIB}
    seconds = time.perf_counter() - t0
    if not cuda:
        return out, {"seconds": seconds}
    peak = torch.cuda.max_memory_allocated()
    return out, {"seconds": seconds, "peak_gib": peak / GIB, "base_gib": base / GIB, "rise_gib": (peak - base) / GIB}


LINEAR = ("seconds", "peak_gib", "base_gib", "rise_gib", "weights_gib")
"""The fields :func:`extrapolate` extends in depth."""


def extrapolate(at: dict[int, dict], depth: int) -> dict:
    """Each numeric field measured at two depths, extrapolated linearly to ``depth``."""
    (d1, m1), (d2, m2) = sorted(at.items())
    if m1.get("oom") or m2.get("oom"):
        return {"oom": True}
    return {k: m1[k] + (m2[k] - m1[k]) * (depth - d1) / (d2 - d1) for k in LINEAR if k in m1 and k in m2}


def build(cls, config, ctx):
    """A random model from ``config``, initialised on the device, in the check's dtype, in eval mode."""
    with torch.device(ctx.device):
        model = cls._from_config(config, dtype=dtype_of(ctx))
    return model.eval()


def qwen_config(q: Qwen, layers: int):
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=q.vocab, hidden_size=q.hidden, intermediate_size=q.inter, num_hidden_layers=layers,
                       num_attention_heads=q.heads, num_key_value_heads=q.kv, max_position_embeddings=32768,
                       tie_word_embeddings=True, eos_token_id=q.eos, pad_token_id=q.pad, bos_token_id=None)


def llama_config(m: Llama, layers: int, inter: Optional[int] = None):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=m.vocab, hidden_size=m.hidden, intermediate_size=inter or m.inter,
                       num_hidden_layers=layers, num_attention_heads=m.heads, num_key_value_heads=m.kv,
                       max_position_embeddings=131072, num_labels=1, pad_token_id=0, tie_word_embeddings=False)


def rollout_rows(rows: int, prompt: int, response: int, vocab: int, pad: int, device: str, seed: int = 0):
    """Ragged rollout rows ``[left-padded prompt | right-padded response]`` (row 0 fills both): ids, mask, action."""
    g = torch.Generator().manual_seed(seed)
    plen = prompt - torch.randint(0, max(1, prompt // 8), (rows,), generator=g)
    rlen = response - torch.randint(0, max(1, response // 4), (rows,), generator=g)
    plen[0], rlen[0] = prompt, response
    col = torch.arange(prompt + response)
    mask = ((col >= prompt - plen[:, None]) & (col < prompt + rlen[:, None])).long()  # (B, P+R)
    ids = torch.randint(0, pad, (rows, prompt + response), generator=g).masked_fill(mask == 0, pad)
    return ids.to(device), mask.to(device), mask[:, prompt:].to(device)


def weights_moved(before: dict, after: dict) -> dict:
    """How many tensors of two state dicts differ, and the largest absolute difference."""
    diffs = [(before[k].float() - after[k].float()).abs().max().item() for k in before if k in after]
    return {"tensors": len(diffs), "changed_tensors": sum(d > 0 for d in diffs),
            "max_abs_diff": max(diffs, default=0.0)}


# ---------------------------------------------------------------------------------------------
# P1: the log-prob chunk and a training micro-step at V = 151,936
# ---------------------------------------------------------------------------------------------


def logprob_chunk(ctx, q: Qwen, layers: int, rows: int, prompt: int, response: int) -> dict:
    from transformers import Qwen2ForCausalLM

    from r2m.models.logprobs import response_forward

    model = build(Qwen2ForCausalLM, qwen_config(q, layers), ctx)
    ids, mask, _ = rollout_rows(rows, prompt, response, q.vocab, q.pad, ctx.device)
    with torch.no_grad():
        _, m = measure(ctx, lambda: response_forward(model, ids, mask, prompt, temperature=1.0))
    m["weights_gib"] = sum(p.numel() * p.element_size() for p in model.parameters()) / GIB
    return m  # the model is freed on return


def micro_step(ctx, q: Qwen, layers: int, rows: int, prompt: int, response: int) -> dict:
    """One micro-batch of the policy update (PolicyUpdater's loss, its backward, an AdamW step)."""
    from transformers import Qwen2ForCausalLM

    from r2m.config.training import RLConfig
    from r2m.experience.rollout import Experience
    from r2m.models.logprobs import response_forward
    from r2m.updates.policy import PolicyUpdater

    model = build(Qwen2ForCausalLM, qwen_config(q, layers), ctx)
    ids, mask, action = rollout_rows(rows, prompt, response, q.vocab, q.pad, ctx.device, seed=1)
    with torch.no_grad():
        old = response_forward(model, ids, mask, prompt, temperature=1.0).logprobs  # (b, R)
    zeros = torch.zeros(rows, device=ctx.device)
    adv = torch.randn(action.shape, generator=torch.Generator().manual_seed(2)).to(ctx.device) * action  # (b, R)
    mb = Experience([""] * rows, [""] * rows, ids, mask, action, prompt, old, old, zeros, adv, adv)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    updater = PolicyUpdater(model, optimizer, None, RLConfig(max_new_tokens=response))
    model.train()

    def step():
        out = updater._micro_loss(mb, float(action.sum()), rows, False, 0.0)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return out

    out, m = measure(ctx, step)
    m["loss"] = None if out is None else out.loss.item()
    return m


def memory_json_reference() -> dict:
    """benchmarks/memory.json's log-prob chunk (`r2m bench memory`): its GiB and the shape it names."""
    path = ROOT / "benchmarks/memory.json"
    if not path.exists():
        return {"present": False, "why": "benchmarks/memory.json is absent (`r2m bench memory` writes it)"}
    data = json.loads(path.read_text())
    chunk = data.get("logprob_chunk") or {}
    one_gpu = (chunk.get("one_gpu_or_ddp") or {}).get("r2m_gib")
    return {"present": True, "logprob_chunk_gib": data.get("logprob_chunk_gib"), "one_gpu_r2m_gib": one_gpu,
            "config": chunk.get("config"), "rows": chunk.get("rows"), "tokens": chunk.get("tokens"),
            "vocab": chunk.get("vocab"), "spec_chunk": (data.get("spec") or {}).get("chunk"),
            "archs": data.get("archs") or {}}


def reference_arch(ref: dict) -> Optional[Qwen]:
    """The policy architecture of memory.json's chunk config: configs/paper/<config>.yaml's policy.path, looked up
    in memory.json's archs."""
    import yaml

    config = ROOT / "configs/paper" / f"{ref.get('config')}.yaml"
    if not config.exists():
        return None
    path = ((yaml.safe_load(config.read_text()) or {}).get("policy") or {}).get("path")
    a = ref["archs"].get(path)
    if not a:
        return None
    return Qwen(a["hidden"], a["intermediate"], a["heads"], a["kv_heads"], a["vocab"], a["layers"], eos=a["vocab"] - 2,
                pad=a["vocab"] - 1)


def compare_memory_json(ctx, s: Shapes) -> dict:
    """The log-prob chunk at memory.json's own shape (its config's policy, rows and tokens), its rise over the
    weights against memory.json's one-GPU figure."""
    ref = memory_json_reference()
    if not ref["present"]:
        return ref
    archs = ref.pop("archs")
    if ctx.device != "cuda":
        return {**ref, "compared": False, "why": "no CUDA memory statistics on a CPU"}
    arch = reference_arch({**ref, "archs": archs})
    spec = ref.get("spec_chunk")
    if arch is None or not spec or len(spec) != 3:
        return {**ref, "compared": False, "why": "memory.json names no policy architecture or chunk shape"}
    measured = logprob_chunk(ctx, arch, s.depths[0], *spec)
    expected = ref["one_gpu_r2m_gib"] or ref["logprob_chunk_gib"]
    ratio = measured.get("rise_gib", math.nan) / expected if expected else None
    return {**ref, "compared": True, "measured": measured, "measured_dtype": str(dtype_of(ctx)),
            "measured_depth": s.depths[0], "measured_rise_over_memory_json": ratio,
            "agrees_within_25pct": ratio is not None and abs(ratio - 1) <= 0.25}


def part_p1(ctx) -> dict:
    s = shapes(ctx)
    q, (rows, prompt, response) = s.qwen, s.chunk
    chunk = {d: logprob_chunk(ctx, q, d, rows, prompt, response) for d in s.depths}
    step = {d: micro_step(ctx, q, d, s.micro_rows, prompt, response) for d in s.depths}
    return {"shape": {"hidden": q.hidden, "vocab": q.vocab, "rows": rows, "tokens": prompt + response,
                      "response_tokens": response, "micro_rows": s.micro_rows, "dtype": str(dtype_of(ctx))},
            "logprob_chunk": {"by_depth": chunk, f"at_{q.layers}_layers": extrapolate(chunk, q.layers)},
            "micro_step": {"by_depth": step, f"at_{q.layers}_layers": extrapolate(step, q.layers)},
            "memory_json": compare_memory_json(ctx, s)}


# ---------------------------------------------------------------------------------------------
# P2: RM scoring, a Llama-3.1-8B-shaped backbone
# ---------------------------------------------------------------------------------------------


def part_p2(ctx) -> dict:
    from transformers import LlamaForSequenceClassification

    from r2m.models.reward import RewardModel
    from r2m.world.tokenizer import build_tokenizer

    s = shapes(ctx)
    m, tokens = s.llama, s.rm_tokens
    by_rows: dict[int, dict] = {rows: {} for rows in s.rm_rows}
    for depth in s.depths:
        rm = RewardModel(build(LlamaForSequenceClassification, llama_config(m, depth), ctx), build_tokenizer("rm"),
                         max_length=tokens)
        for rows in s.rm_rows:
            ids, mask, _ = rollout_rows(rows, 0, tokens, m.vocab, m.vocab - 1, ctx.device, seed=rows)  # right-padded
            with torch.no_grad():
                scores, by_rows[rows][depth] = measure(ctx, lambda rm=rm, ids=ids, mask=mask: rm(ids, mask))
            if scores is not None and not torch.isfinite(scores).all():
                by_rows[rows][depth]["non_finite_scores"] = True
        rm = None  # this depth's model freed before the next is built
    out = {"shape": {"hidden": m.hidden, "vocab": m.vocab, "tokens": tokens, "dtype": str(dtype_of(ctx))}}
    for rows, at in by_rows.items():
        full = extrapolate(at, m.layers)
        if "seconds" in full:
            full["rows_per_s"] = rows / full["seconds"]
        out[f"rows_{rows}"] = {"by_depth": at, f"at_{m.layers}_layers": full}
    oom = [f"{rows} rows at depth {d}" for rows, at in by_rows.items() for d, r in at.items() if r.get("oom")]
    if oom:
        out["failed_checks"] = [f"out of memory: {', '.join(oom)}"]
    return out


# ---------------------------------------------------------------------------------------------
# P3: the R2M (GREBT) update at paper scale
# ---------------------------------------------------------------------------------------------


def grebt_at(ctx, s: Shapes, policy_dim: int) -> dict:
    from transformers import LlamaForSequenceClassification

    from r2m.config.enums import FusionInit
    from r2m.config.models import R2MConfig
    from r2m.experience.rewards import R2MSchedule
    from r2m.experience.rollout import Experience, HiddenStore
    from r2m.models.r2m import build_feedback_rm
    from r2m.models.reward import RewardModel
    from r2m.updates.grebt import GREBTUpdater
    from r2m.world.tokenizer import build_tokenizer

    n, k, positions, _, inner, fusion_batch = s.r2m
    B, dev = n * k, ctx.device
    # The RM's backbone never runs in the update (H_last comes from annotation): one narrow layer at the real width.
    backbone = build(LlamaForSequenceClassification, llama_config(s.llama._replace(vocab=512), 1, inter=64), ctx)
    cfg = R2MConfig(enabled=True, inner_dim=inner, num_heads=1, fusion_batch_size=fusion_batch)
    model = build_feedback_rm(RewardModel(backbone, build_tokenizer("rm")), policy_dim, inner, 1, FusionInit.RANDOM)
    updater = GREBTUpdater(model, R2MSchedule(cfg.omega_floor, total_steps=100), cfg, store=HiddenStore())
    g = torch.Generator(device=dev).manual_seed(policy_dim)  # on the device: h is 3.2 GB at D_p = 2048
    lengths = positions - torch.randint(0, positions // 2, (B,), generator=g, device=dev)  # ragged rows
    policy_mask = (torch.arange(positions, device=dev) < lengths[:, None]).long()  # (B, S)
    h = torch.randn(B, positions, policy_dim, generator=g, device=dev, dtype=dtype_of(ctx))  # (B, S, D_p)
    rte = torch.randn(B, s.llama.hidden, generator=g, device=dev)  # (B, D_m) H_last
    one = torch.zeros(B, 1, device=dev)
    exp = Experience([""] * B, [""] * B, one.long(), one.long(), one, 0, one, one, one[:, 0], one, one,
                     policy_mask=policy_mask, rm_embeddings=rte, step=10, n=n, k=k)
    before = {k: v.detach().clone() for k, v in model.fusion.state_dict().items()}
    runs = []
    for _ in range(2):  # the first includes AdamW's state allocation and kernel warm-up
        stats, m = measure(ctx, lambda: updater.update(exp, h))
        runs.append({**m, **({k: stats[k] for k in ("r2m/grebt", "r2m/grad_norm")} if stats else {})})
    moved = weights_moved(before, model.fusion.state_dict())
    return {"h_gib": B * positions * policy_dim * torch.finfo(dtype_of(ctx)).bits / 8 / GIB, "updates": runs,
            "fusion_moved": moved}


def part_p3(ctx) -> dict:
    s = shapes(ctx)
    n, k, positions, dims, inner, fusion_batch = s.r2m
    out = {"shape": {"rows": n * k, "positions": positions, "rm_dim": s.llama.hidden, "inner_dim": inner,
                     "fusion_batch_size": fusion_batch, "h_dtype": str(dtype_of(ctx))}}
    failed = []
    for d in dims:
        out[f"policy_dim_{d}"] = r = grebt_at(ctx, s, d)
        if any(u.get("oom") for u in r["updates"]):
            failed.append(f"out of memory at D_p={d}")
        elif not all(math.isfinite(u["r2m/grebt"]) for u in r["updates"]) or r["fusion_moved"]["changed_tensors"] == 0:
            failed.append(f"D_p={d}: a non-finite GREBT loss or a fusion that did not move")
    out["failed_checks"] = failed
    return out


# ---------------------------------------------------------------------------------------------
# P4: generation throughput, HF against vLLM
# ---------------------------------------------------------------------------------------------


def tokens_per_s(ctx, generator, prompts: list[list[int]], calls: int, new_tokens: int) -> dict:
    """``prompts`` sampled in ``calls`` equal calls of ``generator.generate``: response tokens per second."""
    size = len(prompts) // calls

    def run():
        return [generator.generate(prompts[i: i + size], 1.0, new_tokens) for i in range(0, len(prompts), size)]

    gens, m = measure(ctx, run)
    if gens is None:
        return m
    tokens = sum(int(g.action_mask.sum()) for g in gens)
    return {**m, "calls": calls, "rows_per_call": size, "response_tokens": tokens,
            "tokens_per_s": tokens / m["seconds"]}


def part_p4(ctx) -> dict:
    from transformers import Qwen2ForCausalLM

    from r2m.experience.generation import HFGenerator

    s = shapes(ctx)
    q, (rows, calls, prompt_len, new_tokens) = s.qwen, s.gen
    policy = build(Qwen2ForCausalLM, qwen_config(q, q.layers), ctx)
    g = torch.Generator().manual_seed(4)
    prompts = torch.randint(0, q.pad, (rows, prompt_len), generator=g).tolist()
    hf = HFGenerator(policy, q.eos, q.pad, torch.device(ctx.device))
    hf.generate(prompts[:2], 1.0, 2)  # warm-up: CUDA context, kernels
    out = {"shape": {"layers": q.layers, "vocab": q.vocab, "rows": rows, "prompt_tokens": prompt_len,
                     "new_tokens": new_tokens, "dtype": str(dtype_of(ctx))},
           "hf": {"one_call": tokens_per_s(ctx, hf, prompts, 1, new_tokens),
                  f"{calls}_calls": tokens_per_s(ctx, hf, prompts, calls, new_tokens),
                  "weight_sync_s": 0.0}}  # HF samples from the live policy: nothing to sync
    try:
        out["vllm"] = vllm_half(ctx, policy, prompts, calls, new_tokens)
    except Exception as e:  # the HF half stands; the vLLM half says why it failed
        out["vllm"] = {"status": "failed", "error": f"{type(e).__name__}: {e}"[:2000]}
        out["failed_checks"] = [f"vLLM half: {out['vllm']['error'][:300]}"]
    del policy, hf
    return out


def vllm_half(ctx, policy, prompts: list[list[int]], calls: int, new_tokens: int) -> dict:
    """The same through r2m's VLLMGenerator: generation, one weight sync, sleep/wake at levels 1 and 2."""
    if not ctx.vllm.get("ok"):
        return {"status": "skipped", "reason": ctx.vllm.get("error") or "vllm was not checked (P0 did not run)"}
    if ctx.device != "cuda":
        return {"status": "skipped", "reason": "vLLM runs on CUDA only"}
    from r2m.config.training import VLLMConfig
    from r2m.experience.generation import VLLMGenerator
    from r2m.world.tokenizer import build_tokenizer

    model_dir = ctx.work / "p4_policy"
    policy.save_pretrained(model_dir)  # the engine's architecture; its weights come from the policy (sync)
    build_tokenizer("policy").save_pretrained(model_dir)  # prompts are token ids: the tokenizer only detokenizes
    q = shapes(ctx).qwen
    t0 = time.perf_counter()
    gen = VLLMGenerator(str(model_dir), policy, q.eos, q.pad, torch.device("cuda"),
                        VLLMConfig(gpu_memory_utilization=0.35, sleep_level=2),
                        max_model_len=len(prompts[0]) + new_tokens, seed=0)
    out = {"status": "ok", "engine_start_s": time.perf_counter() - t0,
           "one_call": tokens_per_s(ctx, gen, prompts, 1, new_tokens),
           f"{calls}_calls": tokens_per_s(ctx, gen, prompts, calls, new_tokens)}
    gen.wake()  # the sync timed on an awake engine
    t0 = time.perf_counter()
    gen.sync_weights(policy)
    out["weight_sync_s"] = time.perf_counter() - t0
    out["sleep_wake"] = sleep_wake(gen, policy, prompts[:8], new_tokens)
    del gen
    return out


def sleep_wake(gen, policy, prompts: list[list[int]], new_tokens: int) -> dict:
    """The step's sleep and wake through r2m's own calls, at vLLM's sleep levels 1 (weights to CPU, KV cache freed)
    and 2 (weights dropped): ``release()`` (sleep), ``sync_weights`` (the new policy), then the next ``generate``,
    which wakes the weights, pushes them and wakes the KV cache; one small call after each wake checks the engine
    still samples."""
    import dataclasses

    out: dict = {}
    for level in (1, 2):
        try:
            gen.cfg = dataclasses.replace(gen.cfg, sleep_level=level)
            t0 = time.perf_counter()
            gen.release()
            t1 = time.perf_counter()
            gen.sync_weights(policy)
            gen.wake()
            t2 = time.perf_counter()
            g = gen.generate(prompts, 1.0, new_tokens)
            out[f"level_{level}"] = {"sleep_s": t1 - t0, "wake_and_push_s": t2 - t1,
                                     "tokens_after_wake": int(g.action_mask.sum())}
        except Exception as e:
            out[f"level_{level}"] = {"error": f"{type(e).__name__}: {e}"[:600]}
    return out
