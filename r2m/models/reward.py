"""The reward-model wrapper: a sequence-classification RM split into backbone and score head.

Hugging Face's decoder-only ``*ForSequenceClassification`` models apply a linear ``score`` head to
the last-layer hidden state of the last non-pad token. Exposing that hidden state (the reward token
embedding, RTE, ``H_last`` in the R2M paper) and the head separately lets R2M fuse policy feedback
into it before scoring, while the vanilla reward stays bit-for-bit what the HF model computes.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from r2m.config.models import RewardConfig
from r2m.data.chat import RMRenderer
from r2m.errors import ModelError

DEFAULT_MAX_LENGTH = RewardConfig.max_length
DEFAULT_BATCH_SIZE = RewardConfig.batch_size

_HEAD_NAMES = ("score", "v_head")


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last non-pad position of each row, for left or right padding."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)  # (S,)
    return (attention_mask.long() * positions).argmax(dim=-1)  # (B,)


class RewardModel(nn.Module):
    """Any decoder-only ``AutoModelForSequenceClassification`` with one label, as backbone + head."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 max_length: int = DEFAULT_MAX_LENGTH, name: str = "reward model"):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        """Longest input in RM tokens (reward.max_length); longer rows keep their last tokens, counted."""
        self.set_max_length(max_length)
        self.truncated = 0
        """Rows cut to max_length so far (see pop_truncated)."""
        self.prompt_view = None
        """A map applied to every prompt before the RM reads it (the blind world's masked digits,
        :func:`r2m.world.view.rm_prompt_view`); None: the prompt as given."""
        self.renderer = RMRenderer(tokenizer, name)
        self.backbone = getattr(model, model.base_model_prefix, None)
        head = next((getattr(model, n) for n in _HEAD_NAMES if isinstance(getattr(model, n, None), nn.Module)), None)
        if self.backbone is None or head is None:
            raise ModelError(
                f"reward model {type(model).__name__}: expected a decoder-only sequence-classification model "
                f"with a backbone '{model.base_model_prefix}' and a head among {_HEAD_NAMES}"
            )
        self.head = head

    @property
    def _no_split_modules(self) -> list[str]:
        """The wrapped model's decoder-layer classes: FSDP's TRANSFORMER_BASED_WRAP (accelerate reads this on the
        prepared module) shards each layer as its own unit, so one layer's weights are gathered at a time."""
        return list(getattr(self.model, "_no_split_modules", None) or [])

    def set_max_length(self, max_length: int) -> None:
        """``max_length``, but never more than the model's positions (a longer input could not run at all; the
        start-up checks refuse a budget over them, and what a chat template adds on top is cut and counted)."""
        limit = getattr(self.model.config.get_text_config(), "max_position_embeddings", None)
        self.max_length = min(max_length, limit) if limit else max_length

    @property
    def hidden_size(self) -> int:
        return self.model.config.get_text_config().hidden_size

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The reward token embedding H_last: last-layer state at the last non-pad token (one forward, no KV cache)."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                               use_cache=False).last_hidden_state  # (B, S, D_m)
        idx = last_token_index(attention_mask)  # (B,)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]  # (B, D_m)

    def score_embedding(self, h: torch.Tensor) -> torch.Tensor:
        """The head phi applied to an embedding: (B, D_m) -> (B,)."""
        return self.head(h.to(self.head.weight.dtype)).squeeze(-1).float()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # A fresh tensor, not a view of the head's output: FSDP2 warns that an in-place op on a view its root
        # returns would skip the backward all-gather.
        return self.score_embedding(self.embed(input_ids, attention_mask)).clone()  # (B,)

    def encode(self, prompts: Sequence[str], responses: Sequence[str]) -> list[list[int]]:
        """Token ids of prompt + response as this RM reads them (:class:`r2m.data.chat.RMRenderer`).

        A chat prompt is rendered with the RM's own chat template; a plain prompt and its response
        are tokenised separately and concatenated, so the boundary is the same as in the policy's
        view. Rows over ``max_length`` keep their last tokens (the reward token is the last one) and
        are counted in ``truncated``.
        """
        if self.prompt_view is not None:
            prompts = [self.prompt_view(p) for p in prompts]
        seqs = self.renderer.encode(prompts, responses)
        self.truncated += sum(len(s) > self.max_length for s in seqs)
        return [s[-self.max_length:] for s in seqs]

    def pad(self, seqs: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        """Right-padded ``input_ids`` and ``attention_mask``, (B, the longest row)."""
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, : len(s)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def tokenize(self, prompts: Sequence[str], responses: Sequence[str]) -> dict[str, torch.Tensor]:
        """:meth:`encode`, right-padded (:meth:`pad`)."""
        return self.pad(self.encode(prompts, responses))

    def read_policy(self, policy_tokenizer) -> None:
        """Rendered chats drop the policy's end-of-sequence text from responses (the RM's template ends the turn)."""
        eos = policy_tokenizer.eos_token_id
        self.renderer.policy_eos = (policy_tokenizer.decode([eos], skip_special_tokens=False)
                                    if eos is not None else None)

    def pop_truncated(self) -> int:
        """Rows cut to ``max_length`` since the last call."""
        n, self.truncated = self.truncated, 0
        return n

    def _by_length(self, prompts: Sequence[str], responses: Sequence[str], batch_size: int, fn) -> torch.Tensor:
        """``fn(input_ids, attention_mask)`` over ``batch_size``-row chunks, rows of similar length together (each
        chunk padded to its own longest row), in the rows' order: (B, ...)."""
        seqs = self.encode(prompts, responses)
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        parts = []
        for start in range(0, len(order), batch_size):
            enc = self.pad([seqs[i] for i in order[start: start + batch_size]])
            parts.append(fn(enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)))
        out = torch.cat(parts)  # (B, ...) in length order
        return out[torch.argsort(torch.tensor(order, device=out.device))]  # (B, ...) in the rows' order

    @torch.no_grad()
    def embed_texts(self, prompts: Sequence[str], responses: Sequence[str],
                    batch_size: int = DEFAULT_BATCH_SIZE) -> torch.Tensor:
        """H_last of each (prompt, response), (B, D_m) in the backbone's dtype: ``batch_size`` rows per forward,
        rows of similar length together, so each forward is padded to its own longest row."""
        return self._by_length(prompts, responses, batch_size, self.embed)

    @torch.no_grad()
    def score_texts(self, prompts: Sequence[str], responses: Sequence[str],
                    batch_size: int = DEFAULT_BATCH_SIZE) -> torch.Tensor:
        """Rewards for (prompt, response) text pairs, shape (B,), on the CPU (:meth:`embed_texts`' row chunks).

        Each chunk goes through ``self(...)``, the module's call: a model sharded by FSDP2 (``fully_shard``
        gathers its parameters in the root's forward hooks) scores the same way as a whole one."""
        return self._by_length(prompts, responses, batch_size, self).cpu()


def check_pairing(rm: RewardModel, policy_tokenizer, prompts: Sequence[str], max_sequence_tokens: int,
                  rm_path: str, policy_path: str) -> None:
    """Refuse a policy/RM pair that cannot work together, before any training.

    The RM re-tokenises the policy's text with its own tokenizer: every token the policy can emit in
    these prompts, and its end-of-sequence token, must be representable (no ``<unk>``), and the RM
    must accept the longest prompt + response.
    """
    tok = rm.tokenizer
    eos = policy_tokenizer.decode([policy_tokenizer.eos_token_id], skip_special_tokens=False)
    # What the RM reads: chat prompts rendered by its own template.
    texts = [rm.renderer.render(p, "").text or p for p in prompts] + [eos]
    if tok.unk_token_id is not None:
        ids = tok(texts, add_special_tokens=False)["input_ids"]
        for text, row in zip(texts, ids):
            if tok.unk_token_id in row:
                pieces = [t for t, i in zip(tok.convert_ids_to_tokens(row), row) if i == tok.unk_token_id]
                raise ModelError(
                    f"reward model at {rm_path} cannot read the text of policy {policy_path}: its tokenizer maps "
                    f"part of {text[:80]!r} to {tok.unk_token!r} ({pieces[:3]}); use a reward model whose "
                    "tokenizer covers the policy's vocabulary"
                )
    limit = getattr(rm.model.config.get_text_config(), "max_position_embeddings", None)
    if limit is not None and max_sequence_tokens > limit:
        raise ModelError(f"data.max_prompt_tokens + rl.max_new_tokens: reward model at {rm_path} accepts {limit} "
                         f"positions, but prompts + responses of policy {policy_path} reach {max_sequence_tokens} "
                         "tokens; lower them")


def check_positions(model, tokens: int, path: str) -> None:
    """Refuse prompts + responses longer than the policy's positions (before any rollout)."""
    limit = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    if limit is not None and tokens > limit:
        raise ModelError(f"data.max_prompt_tokens + rl.max_new_tokens: policy {path} accepts {limit} positions, but "
                         f"prompts + responses reach {tokens} tokens; lower them")


def count_truncated(rm: RewardModel, rows: Sequence[dict]) -> int:
    """Preference rows whose chosen or rejected input the RM cuts (at rm.max_length)."""
    prompts = [r["prompt"] for r in rows]
    lengths = [len(s) for key in ("chosen", "rejected") for s in rm.renderer.encode(prompts, [r[key] for r in rows])]
    n = len(rows)
    return sum(max(a, b) > rm.max_length for a, b in zip(lengths[:n], lengths[n:]))
