"""``r2m bench memory``'s adapter: a paper config's models at real width and vocabulary as fake tensors, and one
function per phase that calls the library's own entry points (the only place that does).

The models are built from the real architectures (:data:`ARCHS`, from each model's ``config.json``) with a chosen
depth, as fake tensors (:mod:`r2m.runtime.live_bytes`): shapes, dtypes and storages without data, so a pass at
real width, real vocabulary, real sequence lengths and real rows per rank is counted exactly and costs only its
dispatch. Tokenizers are the families' local ones (:func:`r2m_bench.families.train_tokenizer`; token ids stay
below 400, which is all an embedding lookup needs). The run is a :class:`BenchRun`: the parts of an
:class:`~r2m.recipes.rl.state.RLComponents` the step's phases read, built as
:func:`r2m.recipes.rl.build.build_run` builds them (fp32 master weights, the prepared policy, the reference, the
experience maker, the policy updater, GREBT), without data or a run directory.

Entry points, one function each (re-point these when the library's change): :func:`make_experience`
(``ExperienceMaker.rollout``, ``score`` and ``estimate`` as ``train_step`` calls them; its phases
``rollout_logprobs`` = ``ExperienceMaker._old_pass``, ``reference`` = ``ExperienceMaker._forward`` on the
reference, ``rm_scoring`` = ``FeedbackRewardModel.embed_texts`` or ``RewardModel.score_texts``,
``r2m_annotation`` = ``FeedbackRewardModel.score_rows`` (and init=matched's ``FeedbackReward.calibrate``)),
:func:`policy_update` (``PolicyUpdater.update`` keeping GREBT's states), :func:`r2m_update`
(``GREBTUpdater.update``), :func:`table3` (``r2m.eval.rm_accuracy``'s ``vanilla_pairwise_accuracy`` and
``feedback_pairwise_accuracy``, as ``r2m.recipes.rl.evaluation.rm_accuracy`` calls them), :func:`evaluation`
(``r2m.eval.policy.sample_policy``, as ``r2m.recipes.rl.evaluation.evaluate`` calls it), :func:`monitor`
(``r2m.eval.monitor.response_states``), :func:`generation` (``HFGenerator.generate``), :func:`r2m_logprobs`
(``ExperienceMaker._old_pass`` on one chunk) and :func:`trl_logprobs` (TRL's
``RLOOTrainer._get_per_token_logps_and_entropies``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import warnings
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from r2m.config.enums import RewardBaseline
from r2m.config.root import Config
from r2m.errors import ConfigError
from r2m.eval import policy as policy_eval
from r2m.eval.monitor import response_states
from r2m.eval.policy import sample_policy
from r2m.eval.rm_accuracy import feedback_pairwise_accuracy, vanilla_pairwise_accuracy
from r2m.experience.generation import HFGenerator
from r2m.experience.rewards import FeedbackReward, ModelReward
from r2m.experience.rollout import ExperienceMaker, Shaping, hidden_store
from r2m.experience.sampling import Generation, assemble_generation
from r2m.models.forward import eval_mode, left_pad
from r2m.models.loading import ensure_pad_token
from r2m.models.lora import enable_gradient_checkpointing
from r2m.models.r2m import build_feedback_rm
from r2m.models.reward import RewardModel
from r2m.recipes.rl.build import _reference
from r2m.recipes.rl.state import Models
from r2m.runtime.distributed import Dist
from r2m.runtime.precision import fp32_master_weights
from r2m.updates.grebt import GREBTUpdater
from r2m.updates.policy import PolicyUpdater
from r2m.updates.supervised import make_accelerator
from r2m.utils import seed_everything, torch_dtype
from r2m_bench.families import Family, Size, model_config, train_tokenizer
from r2m_bench.live_bytes import LiveBytes, storage_bytes

WORD = " the"
"""The filler text of prompts and responses: one token in every family's tokenizer (and in the real ones)."""


@dataclass(frozen=True)
class Arch:
    """A real model's architecture, as its ``config.json`` gives it."""

    family: Family
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool
    """tie_word_embeddings."""
    source: str
    """Where the numbers come from."""
    saved: Optional[str] = "bfloat16"
    """The checkpoint's weight dtype (config.json's ``torch_dtype``); None where not known. Loaded in this dtype,
    transformers maps the weights from the safetensors file instead of copying them (r2m_bench.memory_host)."""


_HF = "https://huggingface.co/{}/blob/main/config.json"
_QWEN05 = Arch(Family.QWEN2_5, 896, 4864, 24, 14, 2, 151936, True, _HF.format("Qwen/Qwen2.5-0.5B-Instruct"))
_QWEN3 = Arch(Family.QWEN2_5, 2048, 11008, 36, 16, 2, 151936, True, _HF.format("Qwen/Qwen2.5-3B-Instruct"))
_LLAMA3 = Arch(Family.LLAMA3, 4096, 14336, 32, 32, 8, 128256, False, _HF.format("meta-llama/Meta-Llama-3-8B-Instruct"))
# Skywork-Reward-(V2-)Llama-3.1-8B: Llama 3.1 8B with a pad token added (128257 rows, Skywork-Reward-Llama-3.1-8B's
# config.json); the RM computes no logits, so its vocabulary only sizes its embedding.
_SKYWORK = Arch(Family.LLAMA3_1, 4096, 14336, 32, 32, 8, 128257, False,
                _HF.format("Skywork/Skywork-Reward-Llama-3.1-8B"))
# The cleanrl TL;DR checkpoints' stored dtype is not recorded here: counted as a converted copy, the larger case.
_PYTHIA = Arch(Family.PYTHIA, 2560, 10240, 32, 32, 32, 50304, False, _HF.format("EleutherAI/pythia-2.8b-deduped"),
               saved=None)
ARCHS: dict[str, Arch] = {
    "Qwen/Qwen2.5-0.5B-Instruct": _QWEN05,
    "Qwen/Qwen2.5-3B-Instruct": _QWEN3,
    "meta-llama/Meta-Llama-3-8B-Instruct": _LLAMA3,
    "Skywork/Skywork-Reward-V2-Llama-3.1-8B": _SKYWORK,
    "cleanrl/EleutherAI_pythia-2.8b-deduped__sft__tldr": _PYTHIA,
    "cleanrl/EleutherAI_pythia-2.8b-deduped__reward__tldr": _PYTHIA,
}
"""The paper configs' models (policy.path / reward.path / rm.init_from) -> architecture."""


def arch_of(path: Optional[str], field: str) -> Arch:
    if path not in ARCHS:
        raise ConfigError(f"{field}: bench memory knows the architectures of {sorted(ARCHS)}; got {path!r} "
                          "(add it to r2m_bench.memory_phases.ARCHS with its config.json's numbers)")
    return ARCHS[path]


@dataclass(frozen=True)
class Shapes:
    """What one measurement runs: depths, rows and lengths (all real except the depths)."""

    policy_layers: int
    rm_layers: int
    rows: int
    """Sequences per rank in a step: prompts_per_step x k / gpus."""
    prompt_tokens: int
    response_tokens: int
    eval_rows: int
    """Prompts of one evaluation batch."""
    table3_rows: int
    """Preference pairs of one Table 3 batch."""
    fsdp: bool
    """Emulate FSDP2's policy: no autocast wrapper, bf16 compute and outputs (configs/accelerate/fsdp.yaml)."""


# ---------------------------------------------------------------------------------------------
# Models and the run
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def tokenizer(family: Family):
    """The family's local tokenizer (trained once per process), given a pad token as ``load_tokenizer`` gives a
    pad-less one (Llama 3's)."""
    return ensure_pad_token(train_tokenizer(family), f"bench memory's {family.value} tokenizer")


def fake_model(arch: Arch, layers: int, tok, dtype: torch.dtype, rm: bool, mode: FakeTensorMode) -> nn.Module:
    """``arch`` with ``layers`` layers as a fake-tensor ``*ForCausalLM`` (or ``*ForSequenceClassification``)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    config = model_config(arch.family, tok, Size(arch.hidden, layers, arch.heads, arch.kv_heads, arch.intermediate),
                          rm)
    config.vocab_size, config.tie_word_embeddings = arch.vocab, arch.tied
    auto = AutoModelForSequenceClassification if rm else AutoModelForCausalLM
    with mode:
        return auto.from_config(config, dtype=dtype)


class FillerGenerator:
    """A generator (``ExperienceMaker``'s injection point) answering every prompt with ``length`` filler tokens
    and no eos: the longest response the config allows, without a sampling loop."""

    whole_step = False
    """Called per chunk of ``rl.rollout_batch_size`` rows, as HF generation is (the rollout reads this)."""

    def __init__(self, token_id: int, eos_token_id: int, pad_token_id: int, length: int):
        self.token_id, self.eos, self.pad, self.length = token_id, eos_token_id, pad_token_id, length

    def generate(self, prompt_ids: Sequence[Sequence[int]], temperature: float, max_new_tokens: int,
                 with_logprobs: bool = False, with_hidden: bool = False) -> Generation:
        if with_logprobs or with_hidden:
            raise ConfigError("bench memory: rl.old_logprobs=generation is not measured (rollouts are not sampled)")
        ids, mask = left_pad(prompt_ids, self.pad)
        out = torch.cat([ids, torch.full((ids.shape[0], self.length), self.token_id)], dim=1)
        return assemble_generation(out, mask, self.eos, self.pad)

    def sync_weights(self, policy: nn.Module) -> None:
        pass


def reward_function(cfg: Config, model: nn.Module, tok, policy_dim: int):
    """The reward function ``r2m.experience.reward_factory.build_reward`` makes, on an RM already built."""
    rm = RewardModel(model, tok, cfg.reward.max_length, name="reward model")
    r2m, rows = cfg.reward.r2m, cfg.reward.batch_size
    if not (r2m.enabled or cfg.reward.baseline == RewardBaseline.ITERATIVE_HEAD):
        return ModelReward(rm, rows)
    backbone_dtype = None if r2m.backbone_dtype == "same" else torch_dtype(r2m.backbone_dtype)
    fb = build_feedback_rm(rm, policy_dim if r2m.enabled else None, r2m.inner_dim, r2m.num_heads, r2m.init,
                           backbone_dtype)
    return FeedbackReward(fb, r2m, total_steps=cfg.rl.steps, batch_size=rows, seed=cfg.run.seed)


@dataclass
class BenchRun:
    """The parts of an RL run (:class:`~r2m.recipes.rl.state.RLComponents`) that a step's phases, Table 3 and an
    evaluation read."""

    cfg: Config
    models: Models
    optimizer: torch.optim.Optimizer
    dist: Dist
    reward_fn: object
    r2m: Optional[FeedbackReward]
    generator: "FillerGenerator"
    maker: ExperienceMaker
    updater: PolicyUpdater
    grebt: Optional[GREBTUpdater]

    @property
    def acc(self):
        return self.models.acc

    @property
    def tok(self):
        return self.models.tokenizer

    @property
    def device(self) -> torch.device:
        return self.models.device


def _policy(cfg: Config, shapes: Shapes, acc, arch: Arch, tok, mode: FakeTensorMode):
    """The policy and its optimiser as ``build_run`` prepares them, and the reference. One GPU: fp32 master weights,
    prepared by accelerate (autocast, fp32 outputs). Under FSDP2 accelerate wraps no forward in autocast:
    fully_shard computes in bf16 and returns bf16, and the sharded fp32 masters are counted per rank by the caller
    (:func:`r2m_bench.memory.per_rank`), so the module stays in policy.dtype."""
    dtype = torch_dtype(cfg.policy.dtype)
    policy = fake_model(arch, shapes.policy_layers, tok, dtype, False, mode)
    ref = fake_model(arch, shapes.policy_layers, tok, dtype, False, mode)
    if not shapes.fsdp:
        with mode:
            fp32_master_weights(policy, "policy", acc)
    if cfg.policy.gradient_checkpointing:
        enable_gradient_checkpointing(policy)
    policy.train()
    # rl.optimizer_impl=auto is torch's choice, which on CUDA is foreach (its step holds a temporary per state)
    impl = cfg.rl.optimizer_impl.torch_kwargs or {"foreach": True}
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=cfg.rl.lr,
                                  weight_decay=0.0, **impl)
    # Prepared without moving the model (it is on the CPU; a fake trainable parameter cannot be swapped by
    # Module.to while autograd holds it).
    if not shapes.fsdp:
        policy, optimizer = acc.prepare(policy, optimizer, device_placement=[False, False])
    return policy, optimizer, _reference(acc, policy, ref)


def build_run(cfg: Config, shapes: Shapes, mode: FakeTensorMode) -> BenchRun:
    """A :class:`BenchRun` with fake models at ``shapes``' depths, its parts made as ``build_run`` makes them."""
    p_arch, m_arch = arch_of(cfg.policy.path, "policy.path"), arch_of(cfg.reward.path, "reward.path")
    acc = make_accelerator(cfg)
    dist = Dist(acc)
    seed_everything(cfg.run.seed)  # the update's minibatch order: which rows (one is padded) come first
    tok, rm_tok = tokenizer(p_arch.family), tokenizer(m_arch.family)
    policy, optimizer, ref = _policy(cfg, shapes, acc, p_arch, tok, mode)
    models = Models(acc, tok, policy, ref)
    with mode, warnings.catch_warnings():  # the fusion and head too: their gradients meet the fake h
        # Tensor.__deepcopy__ reads data_ptr() (the frozen copy of the head), which a fake tensor warns about
        warnings.filterwarnings("ignore", message="Accessing the data pointer of FakeTensor")
        rm_model = fake_model(m_arch, shapes.rm_layers, rm_tok, torch_dtype(cfg.reward.dtype), True, mode)
        reward = reward_function(cfg, rm_model, rm_tok, p_arch.hidden)
    token = tok(WORD, add_special_tokens=False)["input_ids"][0]
    generator = FillerGenerator(token, tok.eos_token_id, tok.pad_token_id, shapes.response_tokens)
    store = hidden_store(cfg.reward.r2m, cfg.policy.dtype, acc.mixed_precision)
    maker = ExperienceMaker(policy, ref, tok, reward, cfg.rl, acc.device, hidden_store=store,
                            shaping=Shaping(cfg.reward.scaling, cfg.reward.normalize, cfg.reward.clip), dist=dist,
                            generator=generator)
    updater = PolicyUpdater(policy, optimizer, acc, cfg.rl, None, None, dist)
    r2m = reward if isinstance(reward, FeedbackReward) else None
    grebt = GREBTUpdater(r2m.model, r2m.schedule, cfg.reward.r2m, dist, store) if r2m is not None else None
    return BenchRun(cfg, models, optimizer, dist, reward, r2m, generator, maker, updater, grebt)


def warm_optimizers(run: BenchRun) -> None:
    """The optimisers' state as after their first step (AdamW creates it lazily), and R2M's gradients, which its
    update leaves in place (it clears them before its backward, not after): all held from step 2 on. Outside any
    fake mode, so that AdamW's step counters are real tensors (their ``.item()`` is read)."""
    opts = [(run.optimizer, run.models.unwrapped_policy(), True)]
    if run.grebt is not None:
        opts.append((run.grebt.optimizer, run.grebt.model, False))
    for opt, model, clear in opts:
        for p in model.parameters():
            if p.requires_grad:
                p.grad = torch.zeros_like(p)
        opt.step()
        if clear:  # PolicyUpdater clears after each optimiser step
            opt.zero_grad(set_to_none=True)


def persistent_bytes(run: BenchRun) -> dict[str, int]:
    """Bytes held for the whole run: each model's parameters and buffers, and each optimiser's state."""
    policy = run.models.unwrapped_policy()
    ref = run.acc.unwrap_model(run.models.ref)
    rm = run.reward_fn.reward_model.model
    out = {"policy": storage_bytes([*policy.parameters(), *policy.buffers()]),
           "reference": storage_bytes([*ref.parameters(), *ref.buffers()]),
           "reward_model": storage_bytes([*rm.parameters(), *rm.buffers()]),
           "policy_optimizer": storage_bytes(_state_tensors(run.optimizer))}
    if run.grebt is not None:
        fb = run.grebt.model
        own = [t for n, t in [*fb.named_parameters(), *fb.named_buffers()] if not n.startswith("rm.")]
        out["r2m_fusion"] = storage_bytes(own)  # fusion and the frozen copy of the head (the head is the RM's)
        out["r2m_optimizer"] = storage_bytes(_state_tensors(run.grebt.optimizer))
        out["r2m_grads"] = storage_bytes([p.grad for p in run.grebt.params if p.grad is not None])
    return out


def _state_tensors(optimizer) -> list[torch.Tensor]:
    return [t for s in optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]


def param_shapes(run: BenchRun) -> set[tuple[int, ...]]:
    """Shapes of every trainable parameter: a new storage of one of them is a gradient, a state or a cast."""
    models = [run.models.unwrapped_policy()]
    if run.grebt is not None:
        models.append(run.grebt.model)
    return {tuple(p.shape) for m in models for p in m.parameters() if p.requires_grad}


def tag_models(run: BenchRun, inst: LiveBytes) -> None:
    """Segments of :class:`LiveBytes`: which model runs (its depth sets what a segment holds)."""
    inst.tag(run.models.unwrapped_policy(), "policy")
    inst.tag(run.acc.unwrap_model(run.models.ref), "reference")
    inst.tag(run.reward_fn.reward_model.backbone, "reward_model")


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


def prompts(run: BenchRun, n: int, tokens: int) -> tuple[list[str], list[list[int]]]:
    """``n`` prompt texts of ``tokens`` policy tokens each (the first one token shorter: the batch is padded)."""
    lengths = [tokens - (i == 0) for i in range(n)]
    texts = [WORD * k for k in lengths]
    return texts, [run.tok(t, add_special_tokens=True)["input_ids"][-k:] for t, k in zip(texts, lengths)]


@contextlib.contextmanager
def phase_of(obj, method: str, inst: LiveBytes, name: str, when=None) -> Iterator[None]:
    """While inside, ``obj.method`` runs in phase ``name`` (when ``when(*args)`` holds, if given)."""
    original = getattr(obj, method)

    def wrapped(*args, **kwargs):
        if when is not None and not when(*args):
            return original(*args, **kwargs)
        with inst.phase(name):
            return original(*args, **kwargs)

    setattr(obj, method, wrapped)
    try:
        yield
    finally:
        delattr(obj, method)


# ---------------------------------------------------------------------------------------------
# The phases (the library's entry points)
# ---------------------------------------------------------------------------------------------


def make_experience(run: BenchRun, inst: LiveBytes, shapes: Shapes):
    """The experience of this rank's prompts as ``train_step`` makes it (rollout, init=matched's calibration,
    rewards, advantages): rollout log-probs (with h for R2M), reference, RM scoring and R2M annotation, each its
    own phase."""
    maker, reward = run.maker, run.reward_fn
    texts, ids = prompts(run, shapes.rows // run.cfg.rl.k, shapes.prompt_tokens)
    with contextlib.ExitStack() as stack:
        stack.enter_context(phase_of(maker, "_old_pass", inst, "rollout_logprobs"))
        stack.enter_context(phase_of(maker, "_forward", inst, "reference", when=lambda m, *_: m is maker.ref))
        if isinstance(reward, FeedbackReward):
            stack.enter_context(phase_of(reward.model, "embed_texts", inst, "rm_scoring"))
            stack.enter_context(phase_of(reward.model, "score_rows", inst, "r2m_annotation"))
            stack.enter_context(phase_of(reward.model, "calibrate", inst, "r2m_annotation"))
        else:
            stack.enter_context(phase_of(reward.rm, "score_texts", inst, "rm_scoring"))
        rollout = maker.rollout(texts, ids, 0)
        if run.r2m is not None and run.r2m.calibrates(rollout.query):
            rollout = rollout._replace(query=run.r2m.calibrate(rollout.query))
        return maker.estimate(rollout, maker.score(rollout))


def policy_update(run: BenchRun, inst: LiveBytes, exp):
    """``PolicyUpdater.update`` over the step's rows as its last epoch (h refreshed). Only the first two micro-batches
    of the first two minibatches run; the later ones reuse the second's loss and are not run again: each would
    repeat its allocations (gradients exist from a minibatch's first micro-batch, the optimiser state from the
    first minibatch, both as in every later one)."""
    updater, acc = run.updater, run.acc
    updater.cfg = dataclasses.replace(updater.cfg, epochs=1)
    minibatches: list[dict] = []
    micro: list = []
    minibatch, micro_loss, backward = updater._minibatch, updater._micro_loss, acc.backward

    def first_minibatches(*args, **kwargs):
        if len(minibatches) < 2:
            micro.clear()
            minibatches.append(minibatch(*args, **kwargs))
        micro.clear()
        return minibatches[-1]

    def first_micro(*args, **kwargs):
        if len(micro) < 2:
            micro.append(micro_loss(*args, **kwargs))
        return micro[-1]

    def backward_once(loss, **kwargs):
        if not getattr(loss, "_bench_done", False):
            backward(loss, **kwargs)
            loss._bench_done = True

    updater._minibatch, updater._micro_loss, acc.backward = first_minibatches, first_micro, backward_once
    keep = run.grebt.keep_states if run.grebt is not None and exp.policy_hidden is not None else None
    try:
        with inst.phase("policy_micro_step"):
            return updater.update(exp, keep_states=keep)
    finally:
        del updater._minibatch, updater._micro_loss, acc.backward


def r2m_update(run: BenchRun, inst: LiveBytes, exp, fresh_hidden) -> None:
    """``GREBTUpdater.update`` with the h the policy update kept."""
    if run.grebt is None:
        return
    with inst.phase("r2m_update"):
        run.grebt.update(exp, fresh_hidden)


def pref_rows(run: BenchRun, n: int, shapes: Shapes) -> list[dict]:
    """``n`` preference pairs with prompt and answers at the config's longest."""
    prompt, answer = WORD * shapes.prompt_tokens, WORD * shapes.response_tokens
    return [{"prompt": prompt, "chosen": answer, "rejected": answer} for _ in range(n)]


def table3(run: BenchRun, inst: LiveBytes, shapes: Shapes) -> None:
    """Table 3 as ``r2m.recipes.rl.evaluation.rm_accuracy`` computes it: the vanilla RM, then R2M before (h from the
    reference) and after (h from the policy), ``reward.batch_size`` rows at a time, on ``shapes.table3_rows``
    pairs."""
    if run.grebt is None:
        return
    model, rows = run.grebt.model, pref_rows(run, shapes.table3_rows, shapes)
    w, size = run.grebt.schedule.omega(run.cfg.rl.steps), run.cfg.reward.batch_size
    with inst.phase("table3"):
        vanilla_pairwise_accuracy(model, rows, size)
        feedback_pairwise_accuracy(model, run.models.ref, run.tok, rows, w, run.device, size)
        feedback_pairwise_accuracy(model, run.models.unwrapped_policy(), run.tok, rows, w, run.device, size)


def _filler_generate(token_id: int):
    """``r2m.experience.sampling.generate``'s signature, answering with ``max_new_tokens`` filler tokens."""

    def generate(model, prompt_ids, prompt_mask, *, temperature, max_new_tokens, eos_token_id, pad_token_id,
                 **_) -> Generation:
        out = torch.cat([prompt_ids, torch.full((prompt_ids.shape[0], max_new_tokens), token_id)], dim=1)
        return assemble_generation(out, prompt_mask, eos_token_id, pad_token_id)

    return generate


def evaluation(run: BenchRun, inst: LiveBytes, shapes: Shapes) -> None:
    """One evaluation batch as ``r2m.recipes.rl.evaluation.evaluate`` samples it, after its generation: the policy's
    and the reference's log-probs and the reward of full-length answers (the sampling loop itself is
    :func:`generation`); then, in
    phase ``monitor``, the over-optimisation monitor's passes over those samples (``rl.monitor.enabled``)."""
    cfg = run.cfg
    texts, ids = prompts(run, shapes.eval_rows, shapes.prompt_tokens)
    original = policy_eval.generate
    policy_eval.generate = _filler_generate(run.generator.token_id)
    try:
        with inst.phase("evaluation"):
            samples = sample_policy(run.models.unwrapped_policy(), run.tok, texts, ids, cfg.eval,
                                    cfg.rl.max_new_tokens, run.device, ref=run.models.ref, reward_fn=run.reward_fn,
                                    gold_fn=None, kl_temperature=cfg.rl.temperature, step=cfg.rl.steps - 1,
                                    dist=run.dist, pass_rows=cfg.rl.rollout_batch_size)
    finally:
        policy_eval.generate = original
    if cfg.rl.monitor.enabled:
        monitor(run, inst, samples)


def monitor(run: BenchRun, inst: LiveBytes, samples) -> None:
    """The monitor's hidden-state signals at an evaluation (``r2m.eval.monitor``'s ``response_states`` of the policy
    and of the reference, in ``MonitorModels``' batches, as ``AlarmWatch`` runs them); its other signals read the
    samples' token ids and scores on the CPU."""
    batch = min(run.cfg.eval.batch_size, 64)  # as AlarmWatch._models
    args = (samples.prompt_ids, samples.response_ids, run.tok.pad_token_id, run.device, batch)
    with inst.phase("monitor"):
        states = response_states(run.models.unwrapped_policy(), *args)
        ref_states = response_states(run.models.ref, *args)
    del states, ref_states


def generation(run: BenchRun, inst: LiveBytes, rows: int, prompt_tokens: int, new_tokens: int,
               name: str = "generation") -> None:
    """The sampling loop (``HFGenerator.generate``, transformers ``generate`` on the policy as the rollout uses it) on
    ``rows`` prompts for ``new_tokens`` tokens (fake logits: every token is the filler, never eos). Its segments are
    the prefill and the decoding steps: the first holds a fixed amount per layer, the second grows by a fixed
    amount per layer and per token (the KV cache)."""
    _, ids = prompts(run, rows, prompt_tokens)
    gen = HFGenerator(run.models.policy, run.tok.eos_token_id, run.tok.pad_token_id, run.device)
    calls: list[str] = []

    def enter(*_):  # the first forward is the prefill; each later one decodes one token
        calls.append("decode" if calls else "prefill")
        inst.segment = calls[-1]

    def leave(*_):
        inst.segment = f"after {calls[-1]}"

    policy = run.models.unwrapped_policy()
    hooks = [policy.register_forward_pre_hook(enter), policy.register_forward_hook(leave)]
    try:
        with inst.phase(name):
            gen.generate(ids, run.cfg.rl.temperature, new_tokens)
    finally:
        for h in hooks:
            h.remove()


def filler_generation(run: BenchRun, rows: int, prompt_tokens: int) -> Generation:
    """``rows`` prompts answered at full length, as the rollout's generator returns them."""
    return run.generator.generate(prompts(run, rows, prompt_tokens)[1], run.cfg.rl.temperature,
                                  run.cfg.rl.max_new_tokens)


def r2m_logprobs(run: BenchRun, inst: LiveBytes, gen: Generation, name: str) -> None:
    """pi_old's log-probs of one chunk (``ExperienceMaker._old_pass``, with h when the reward reads it)."""
    with inst.phase(name), torch.no_grad(), eval_mode(run.models.policy):
        run.maker._old_pass(gen, run.reward_fn.needs_policy_hidden)


def trl_logprobs(model: nn.Module, acc, inst: LiveBytes, gen: Generation, temperature: float, name: str) -> None:
    """TRL's log-prob pass on the same chunk: ``RLOOTrainer._get_per_token_logps_and_entropies`` with the fused LM
    head ``RLOOTrainer`` adds to its policy (``trl.trainer.utils.add_fused_lm_head``); ``model`` is patched."""
    import types

    from trl.trainer.rloo_trainer import RLOOTrainer  # heavy: lazy
    from trl.trainer.utils import add_fused_lm_head  # heavy: lazy

    add_fused_lm_head(model, temperature=temperature)
    trainer = types.SimpleNamespace(accelerator=acc)  # the one attribute the method reads
    with inst.phase(name), torch.no_grad(), eval_mode(model):
        RLOOTrainer._get_per_token_logps_and_entropies(trainer, model, gen.sequences, gen.attention_mask,
                                                        gen.action_mask.shape[1])
