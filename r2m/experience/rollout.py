"""Experience making, kept apart from optimisation, in three phases that the RL step calls in order:

    rollout = maker.rollout(prompts)          # sample K per prompt; pi_old's log-probs (and R2M's h), the reference's
    rewards = maker.score(rollout)            # the reward function on (x, y[, h]), shaped; gold; ReMax's baseline
    exp = maker.estimate(rollout, rewards)    # PPO's values, the KL penalty, advantages and returns -> Experience

A rollout batch holds B = n*K sequences laid out prompt-major: row ``i*K + j`` is sample j of
prompt i. Sequences are ``[left-padded prompt | right-padded response]``, so every response starts
at the same column P and per-token tensors over the response are (B, R).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import NamedTuple, Optional, Sequence

import torch
from torch import nn

from r2m.core.advantages import AdvantageInput, AdvantageParams, compute_advantages
from r2m.config.enums import Algorithm, KLMode, OldLogprobs
from r2m.config.models import R2MConfig
from r2m.config.training import RLConfig
from r2m.runtime.distributed import Dist
from r2m.core.losses import kl_penalty, masked_mean, masked_sum, masked_var
from r2m.models.critic import response_values
from r2m.models.logprobs import Forward, chunked_response_forward, length_sorted_chunks, real_columns
from r2m.experience.rewards import RewardFunction, RewardQuery
from r2m.utils import PhaseTimer, torch_dtype
from r2m.models.feedback import Feedback, feedback_mask
from r2m.models.forward import eval_mode, position_ids
from r2m.experience.sampling import Generation, concat_generations
from r2m.core.reward_shaping import RunningMoments, normalize_rewards, scale_rewards
from r2m.experience.generation import HFGenerator


# ---------------------------------------------------------------------------------------------
# Experience
# ---------------------------------------------------------------------------------------------


@dataclass
class Experience:
    """One rollout batch of B = n*K sequences (prompt-major)."""

    prompts: list[str]
    """(B,) prompt text of each sequence."""
    responses: list[str]
    """(B,) decoded response text, up to and including eos."""
    sequences: torch.Tensor
    """(B, P+R) token ids: left-padded prompt, right-padded response."""
    attention_mask: torch.Tensor
    """(B, P+R)."""
    action_mask: torch.Tensor
    """(B, R) 1 on response tokens."""
    prompt_len: int
    """P: the column where responses start."""
    old_logprobs: torch.Tensor
    """(B, R) log-probs under pi_old (the policy that sampled)."""
    ref_logprobs: torch.Tensor
    """(B, R) log-probs under the frozen reference."""
    scores: torch.Tensor
    """(B,) rewards from the reward function (before any KL penalty)."""
    advantages: torch.Tensor
    """(B, R) token-level advantages."""
    returns: torch.Tensor
    """(B, R) token-level returns."""
    gold: Optional[torch.Tensor] = None
    """(B,) gold reward, when the prompts are world prompts."""
    policy_hidden: Optional[torch.Tensor] = None
    """(B, P+R-1, D_p) R2M's h: pi_old's last-layer states over prompt+response (refreshed in the last epoch)."""
    policy_mask: Optional[torch.Tensor] = None
    """(B, P+R-1) 1 on the real positions of ``policy_hidden``."""
    rm_embeddings: Optional[torch.Tensor] = None
    """(B, D_m) the RM's reward token embeddings H_last from annotation (frozen backbone: reusable)."""
    step: int = 0
    """Training round t (0-based) the batch was made in."""
    values: Optional[torch.Tensor] = None
    """(B, R) the critic's values before each response token (ppo)."""
    raw_scores: Optional[torch.Tensor] = None
    """(B,) rewards before scaling/normalisation (equal to ``scores`` when no shaping is set)."""
    n: int = 0
    """Prompts in the batch."""
    k: int = 1
    """Samples per prompt."""

    @property
    def batch_size(self) -> int:
        return self.sequences.shape[0]

    def select(self, idx: torch.Tensor) -> "Experience":
        """The sub-batch of rows ``idx`` (group structure is not kept: use after advantages), for the policy update.
        R2M's h (``policy_hidden``) is not copied: the policy loss never reads it (the sub-batch holds None)."""
        rows = idx.tolist()
        kw = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "policy_hidden":
                kw[f.name] = None
            elif isinstance(v, torch.Tensor):
                kw[f.name] = v[idx.to(v.device)]
            elif isinstance(v, list):
                kw[f.name] = [v[i] for i in rows]
            else:
                kw[f.name] = v
        return Experience(**kw)


class OldPass(NamedTuple):
    logprobs: torch.Tensor  # (B, R) pi_old's log-probs of the sampled tokens
    feedback: Optional[Feedback]  # R2M's h, when the reward reads it


class Rollout(NamedTuple):
    """A sampled batch with pi_old's and the reference's log-probs: what rewards and advantages are computed on."""

    prompt_texts: Sequence[str]
    """(n,) the prompts, once each (ReMax's greedy baseline samples them again)."""
    prompt_ids: Sequence[Sequence[int]]
    """(n,) their token ids."""
    gen: Generation
    """(B = n*K) the samples, prompt-major."""
    old_logprobs: torch.Tensor
    """(B, R) log-probs under pi_old (the policy that sampled)."""
    ref_logprobs: torch.Tensor
    """(B, R) log-probs under the frozen reference."""
    query: RewardQuery
    """What the reward function reads: the texts, R2M's h (in the hidden store), the round t and K."""


class Rewards(NamedTuple):
    """A rollout's rewards."""

    raw: torch.Tensor
    """(B,) the reward function's scores."""
    scores: torch.Tensor
    """(B,) after scaling/normalisation (``raw`` when no shaping is set)."""
    gold: Optional[torch.Tensor]
    """(B,) the gold reward, when the prompts are world prompts."""
    baseline: Optional[torch.Tensor]
    """(n,) ReMax's baseline: the shaped reward of one greedy response per prompt."""
    embeddings: Optional[torch.Tensor]
    """(B, D_m) R2M's reward token embeddings H_last (its update reuses them)."""


class HiddenStore(NamedTuple):
    """Where and in which dtype R2M's h is kept between rollout and the RM update."""

    device: Optional[torch.device] = None
    """None: keep it where the policy computed it."""
    dtype: Optional[torch.dtype] = None
    """None: the dtype the policy computed it in (``reward.r2m.hidden_dtype=policy``)."""

    def put(self, h: torch.Tensor) -> torch.Tensor:
        """``h`` detached, on this store's device and in its dtype (no copy when it already is)."""
        return h.detach().to(device=self.device or h.device, dtype=self.dtype or h.dtype)

    def states(self, hidden: torch.Tensor) -> torch.Tensor:
        """A pass's last-layer states (b, P+R, D) -> R2M's h (b, P+R-1, D) as stored (:func:`feedback_states`)."""
        return self.put(hidden[:, :-1])


def hidden_store(cfg: R2MConfig, policy_dtype: str, mixed_precision: str) -> HiddenStore:
    """The store ``reward.r2m.hidden_device`` / ``hidden_dtype`` ask for; ``hidden_dtype=policy`` is the dtype the
    policy computes in: ``mixed_precision``'s (accelerate's ``bf16``/``fp16``) when set, else ``policy_dtype``."""
    device = torch.device("cpu") if cfg.hidden_device == "cpu" else None
    if cfg.hidden_dtype != "policy":
        return HiddenStore(device, torch_dtype(cfg.hidden_dtype))
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(str(mixed_precision))
    return HiddenStore(device, autocast or torch_dtype(policy_dtype))


class Shaping(NamedTuple):
    """Reward shaping between the reward function and the advantage estimator."""

    scaling: str = "none"  # none | sigmoid_centered
    normalize: bool = False  # running mean/std over the run
    clip: float = 0.0  # 0: no clipping


class ExperienceMaker:
    """Turns prompts into an :class:`Experience`: sample, score, compare to the reference, estimate."""

    def __init__(self, policy: nn.Module, ref: nn.Module, tokenizer, reward_fn: RewardFunction, cfg: RLConfig,
                 device: torch.device, gold_fn: Optional[RewardFunction] = None,
                 hidden_store: HiddenStore = HiddenStore(), critic: Optional[nn.Module] = None,
                 shaping: Shaping = Shaping(), dist: Dist = Dist(), generator=None, timer: Optional[PhaseTimer] = None):

        self.policy, self.ref, self.tokenizer = policy, ref, tokenizer
        self.reward_fn, self.gold_fn = reward_fn, gold_fn
        self.cfg, self.device = cfg, device
        self.hidden_store = hidden_store
        self.critic = critic
        self.shaping = shaping
        self.dist = dist
        self.moments = RunningMoments() if shaping.normalize else None
        self.params = AdvantageParams(gamma=cfg.gamma, lam=cfg.lam, whiten=cfg.whiten_advantages)
        self.timer = timer if timer is not None else PhaseTimer()
        """Times each phase (generate, logprobs, reward, greedy_baseline, values); the run passes its own."""
        # Rollouts (and ReMax's greedy baseline) sample through this; h never comes from it (see make).
        self.generator = generator or HFGenerator(policy, tokenizer.eos_token_id, tokenizer.pad_token_id, device)

    def shape(self, scores: torch.Tensor) -> torch.Tensor:
        """Scale/normalise this rank's scores with the statistics of the global batch."""
        s = self.shaping
        scores = scale_rewards(scores, s.scaling)
        if s.normalize or s.clip > 0:
            n = scores.shape[0]
            scores = self.dist.local_rows(normalize_rewards(self.dist.gather_rows(scores), self.moments, s.clip), n)
        return scores

    def decode(self, gen: Generation) -> list[str]:
        return [self.tokenizer.decode(ids, skip_special_tokens=False) for ids in response_ids(gen)]

    def _sample(self, prompt_ids: Sequence[Sequence[int]], temperature: float,
                seeds: Optional[Sequence[int]] = None, keep: bool = False) -> Generation:
        """Sample the rows; with ``seeds``, in len(seeds) equal chunks of rows, each from its own seed
        and without touching the global RNG stream (samples then do not depend on how the global
        batch is split over processes)."""
        if not seeds:
            return self._generate(prompt_ids, temperature, keep)
        parts = []
        devices = [self.device] if self.device.type == "cuda" else []
        n = len(prompt_ids) // len(seeds)
        for c, seed in enumerate(seeds):
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                parts.append(self._generate(prompt_ids[c * n: (c + 1) * n], temperature, keep))
        return concat_generations(parts, self.tokenizer.pad_token_id)

    def _generate(self, prompt_ids: Sequence[Sequence[int]], temperature: float, keep: bool = False) -> Generation:
        """The generator over the rows, ``rl.rollout_batch_size`` rows per call (all at once when 0).

        ``keep``: with ``rl.old_logprobs=generation``, also pi_old's log-probs (and, for R2M, h) from it."""
        size = self.cfg.rollout_batch_size or len(prompt_ids) or 1
        extra = {}
        if keep and self.cfg.old_logprobs == OldLogprobs.GENERATION:
            extra = dict(with_logprobs=True, with_hidden=self.reward_fn.needs_policy_hidden)
        parts = [self.generator.generate(prompt_ids[i: i + size], temperature, self.cfg.max_new_tokens, **extra)
                 for i in range(0, len(prompt_ids), size)]
        return concat_generations(parts, self.tokenizer.pad_token_id)

    def _query(self, texts: list[str], gen: Generation, feedback: Optional[Feedback], step: int,
               group_size: int = 0) -> RewardQuery:
        h, m = feedback if feedback is not None else (None, None)
        return RewardQuery(texts, self.decode(gen), policy_hidden=h, policy_mask=m, step=step, group_size=group_size,
                           response_ids=response_ids(gen))

    def _old_pass(self, gen: Generation, with_hidden: bool) -> "OldPass":
        """pi_old's log-probs and R2M's h (Algorithm 1 line 6), h already in the hidden store: from the generation
        pass itself with ``rl.old_logprobs=generation``, else from a second forward pass of the policy."""
        if gen.logprobs is not None:
            fb = Feedback(self.hidden_store.put(gen.hidden), feedback_mask(gen.attention_mask)) if with_hidden else None
            return OldPass(gen.logprobs, fb)
        old = self._forward(self.policy, gen, with_hidden)
        return OldPass(old.logprobs, Feedback(old.hidden, feedback_mask(gen.attention_mask)) if with_hidden else None)

    def _greedy_baseline(self, prompt_texts: Sequence[str], prompt_ids: Sequence[Sequence[int]], step: int) -> torch.Tensor:
        """ReMax's baseline: the reward of one greedy response per prompt, (n,)."""
        gen = self._sample(prompt_ids, temperature=0.0)
        fb = None
        if self.reward_fn.needs_policy_hidden:
            with eval_mode(self.policy):
                fb = Feedback(self._forward(self.policy, gen, True).hidden, feedback_mask(gen.attention_mask))
        return self.reward_fn(self._query(list(prompt_texts), gen, fb, step)).scores.to(self.device).float()

    def _forward(self, model: nn.Module, gen: Generation, with_hidden: bool) -> Forward:
        """The log-prob pass in chunks of ``rl.rollout_batch_size`` rows (all at once when 0), each cut to its own
        widest row; with ``with_hidden``, R2M's h (B, P+R-1, D) goes to the hidden store a chunk at a time."""
        return chunked_response_forward(model, gen.sequences, gen.attention_mask, gen.prompt_len, self.cfg.temperature,
                                        self.cfg.rollout_batch_size, with_hidden, self.hidden_store.states)

    def _values(self, gen: Generation) -> torch.Tensor:
        """PPO critic's values (B, R) before each response token, in the log-prob pass's row chunks, each cut to its
        own widest row."""
        values = torch.zeros(gen.action_mask.shape, device=gen.sequences.device)  # (B, R)
        for idx in length_sorted_chunks(gen.attention_mask, gen.prompt_len, self.cfg.rollout_batch_size):
            r = idx.to(gen.sequences.device)
            cols = real_columns(gen.attention_mask[r], gen.prompt_len)
            mask = cols.cut(gen.attention_mask[r])
            v = response_values(self.critic, cols.cut(gen.sequences[r]), mask, cols.cut_prompt_len, position_ids(mask))
            values[r] = cols.response(v)
        return values * gen.action_mask

    def _advantages(self, scores: torch.Tensor, mask: torch.Tensor, baseline: Optional[torch.Tensor],
                    values: Optional[torch.Tensor], kl: Optional[torch.Tensor]):
        """The estimator on the global batch (whitening sees every rank's rows); this rank's rows back."""
        d, K = self.dist, self.cfg.k
        B, R = mask.shape
        g = (lambda x: None if x is None else d.gather_rows(x))
        adv = compute_advantages(
            self.cfg.algorithm,
            AdvantageInput(scores=g(scores).view(-1, K), mask=g(mask), baseline=g(baseline), values=g(values),
                           kl_penalty=g(kl)),
            self.params,
        )
        return d.local_rows(adv.advantages, B, R), d.local_rows(adv.returns, B, R)

    @torch.no_grad()
    def rollout(self, prompt_texts: Sequence[str], prompt_ids: Sequence[Sequence[int]], step: int = 0,
                seeds: Optional[Sequence[int]] = None) -> Rollout:
        """K samples of each prompt at training round ``step`` (0-based; R2M's ω(t) reads it), with pi_old's
        log-probs (and R2M's h, Algorithm 1 line 6) and the reference's.

        ``seeds``: sample the prompts in that many equal chunks, one seed each (``rl.rollout_chunks``).
        """
        cfg, K = self.cfg, self.cfg.k
        with self.timer("generate"):
            gen = self._sample([ids for ids in prompt_ids for _ in range(K)], cfg.temperature, seeds, keep=True)
        with self.timer("logprobs"), eval_mode(self.policy):
            # R2M's h comes from the same pass of pi_old as its log-probs (generation or recompute), and
            # never from vLLM (it returns no hidden states), so h does not depend on the backend.
            old = self._old_pass(gen, self.reward_fn.needs_policy_hidden)
            ref = self._forward(self.ref, gen, False)
        query = self._query([t for t in prompt_texts for _ in range(K)], gen, old.feedback, step, group_size=K)
        return Rollout(prompt_texts, prompt_ids, gen, old.logprobs, ref.logprobs, query)

    @torch.no_grad()
    def score(self, rollout: Rollout) -> Rewards:
        """The reward function on the rollout (R2M: r_φ(x, y, h), Eq. 4), shaped over the global batch; the gold
        reward where known; ReMax's greedy baseline."""
        with self.timer("reward"):
            out = self.reward_fn(rollout.query)
            raw = out.scores.to(self.device).float()  # (B,)
            scores = self.shape(raw)
            gold = self.gold_fn(rollout.query).scores.to(self.device).float() if self.gold_fn is not None else None
        baseline = None
        if self.cfg.algorithm == Algorithm.REMAX:
            with self.timer("greedy_baseline"):
                baseline = self.shape(self._greedy_baseline(rollout.prompt_texts, rollout.prompt_ids,
                                                            rollout.query.step))
        return Rewards(raw, scores, gold, baseline, out.embeddings)

    @torch.no_grad()
    def estimate(self, rollout: Rollout, rewards: Rewards, beta: Optional[float] = None) -> Experience:
        """Advantages and returns of the scored rollout (PPO: over the critic's values), as an :class:`Experience`.

        ``beta`` is the current KL coefficient (the adaptive controller's); default ``rl.beta``.
        """
        beta = self.cfg.beta if beta is None else beta
        gen, query = rollout.gen, rollout.query
        values = None
        if self.critic is not None:
            with self.timer("values"), eval_mode(self.critic):
                values = self._values(gen)
        mask_f = gen.action_mask.float()
        kl_tok = kl_penalty(rollout.old_logprobs, rollout.ref_logprobs, self.cfg.kl_estimator, mask_f)  # (B, R)
        in_reward = self.cfg.kl_mode == KLMode.REWARD
        advantages, returns = self._advantages(rewards.scores, mask_f, rewards.baseline, values,
                                               beta * kl_tok if in_reward else None)
        return Experience(
            prompts=list(query.prompts), responses=list(query.responses), sequences=gen.sequences,
            attention_mask=gen.attention_mask, action_mask=gen.action_mask, prompt_len=gen.prompt_len,
            old_logprobs=rollout.old_logprobs, ref_logprobs=rollout.ref_logprobs, scores=rewards.scores,
            advantages=advantages, returns=returns, gold=rewards.gold, n=len(rollout.prompt_texts), k=self.cfg.k,
            step=query.step,
            policy_hidden=query.policy_hidden,  # in the hidden store since the log-prob pass
            policy_mask=query.policy_mask, rm_embeddings=rewards.embeddings, values=values, raw_scores=rewards.raw,
        )

    def make(self, prompt_texts: Sequence[str], prompt_ids: Sequence[Sequence[int]], step: int = 0,
             beta: Optional[float] = None, seeds: Optional[Sequence[int]] = None) -> Experience:
        """One rollout batch, its three phases in order (:meth:`rollout`, :meth:`score`, :meth:`estimate`)."""
        rollout = self.rollout(prompt_texts, prompt_ids, step, seeds)
        return self.estimate(rollout, self.score(rollout), beta)


def response_ids(gen: Generation) -> list[list[int]]:
    """Each row's sampled tokens, without padding."""
    resp = gen.sequences[:, gen.prompt_len:]
    return [r[m.bool()].tolist() for r, m in zip(resp.cpu(), gen.action_mask.cpu())]


def experience_metrics(exp: Experience, dist: Dist = Dist()) -> dict[str, float]:
    """Rollout statistics of the global batch (every rank's rows); KL as the R2M paper measures it
    (mean per-token log-prob difference)."""
    g = dist.gather_rows
    m = g(exp.action_mask.float())  # (B, R) over all ranks
    B = m.shape[0]
    lengths = m.sum(-1)  # (B,)
    adv = g(exp.advantages)
    adv_seq = (adv * m).sum(-1) / lengths.clamp(min=1)  # (B,)
    scores = g(exp.scores)
    raw = g(exp.raw_scores if exp.raw_scores is not None else exp.scores)
    log_ratio = g(exp.old_logprobs - exp.ref_logprobs)  # (B, R)
    groups = scores.view(-1, exp.k)
    out = {
        "reward/proxy": raw.mean().item(),
        "reward/proxy_std": raw.std().item() if B > 1 else 0.0,
        "reward/shaped": scores.mean().item(),
        "kl": masked_mean(log_ratio, m).item(),
        "kl/seq_sum": _sequence_kl(log_ratio, m),
        "response/length": lengths.mean().item(),
        "adv/mean": adv_seq.mean().item(),
        "adv/std": adv_seq.std().item() if B > 1 else 0.0,
        "groups/degenerate": (groups.max(-1).values - groups.min(-1).values < 1e-6).float().mean().item(),
        # The std of the raw reward within each group of K, averaged over groups (TRL's reward_std)
        "reward/group_std": raw.view(-1, exp.k).std(-1).mean().item() if exp.k > 1 else 0.0,
    }
    if exp.gold is not None:
        out["reward/gold"] = g(exp.gold).mean().item()
    if exp.values is not None:
        # Explained variance of the returns by the critic: 1 is perfect, <= 0 is no better than a constant.
        returns, values = g(exp.returns), g(exp.values)
        var_ret = masked_var(returns, m)
        out["critic/explained_var"] = (1 - masked_var(returns - values, m) / var_ret.clamp(min=1e-8)).item()
        out["critic/value_mean"] = masked_mean(values, m).item()
    return out


def _sequence_kl(log_ratio: torch.Tensor, mask: torch.Tensor) -> float:
    """The mean over rows of sum_t log pi_old/pi_ref over each response: log_ratio, mask (B, R) -> a number."""
    return masked_sum(log_ratio, mask, dim=-1).mean().item()


def sequence_kl(exp: Experience, dist: Dist = Dist()) -> float:
    """The batch's sequence-level KL to the reference (every rank's rows): what adaptive-KL targets are stated in
    (TRL, SER), and what the KL controller reads."""
    g = dist.gather_rows
    return _sequence_kl(g(exp.old_logprobs - exp.ref_logprobs), g(exp.action_mask.float()))
