"""The R2M reward model r_φ(x, y, h): a frozen RM backbone, the fusion module and the score head.

Only the fusion module (cross-attention) and the head φ train (R2M paper Section 4.2, Appendix
H.2); the backbone is frozen, in eval mode and optionally in lower precision. Because it is frozen,
the reward token embedding H_last of a (prompt, response) pair does not change during a step: it
is computed once at reward annotation and reused by the RM update, which therefore never runs the
backbone again.

With ``fusion=None`` the same class is the Iterative RM-head baseline: φ(H_last) with a trainable head.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

import torch
from torch import nn

from r2m.config import FusionInit
from r2m.core.losses import within_group_spread
from r2m.models.fusion import PolicyFeedbackFusion
from r2m.models.reward import RewardModel
from r2m.models.loading import load_reward_model, load_tokenizer
from r2m.runtime.safeio import load_safetensors as load_file, read_json

_FILE = "r2m.safetensors"
_META = "r2m.json"


class ScoreParts(NamedTuple):
    """r_φ(x, y, h) = fusion + embedding + bias, since the head φ is linear (Eq. 4):
    fusion = (1 − ω)·w·Ĥ, embedding = ω·w·H_last, bias = φ(0)."""

    fusion: torch.Tensor  # (B,)
    embedding: torch.Tensor  # (B,)


class FeedbackRewardModel(nn.Module):
    def __init__(self, rm: RewardModel, fusion: Optional[PolicyFeedbackFusion], backbone_dtype: Optional[torch.dtype] = None):
        super().__init__()
        self.rm = rm
        self.fusion = fusion
        rm.model.eval()
        rm.model.requires_grad_(False)
        if backbone_dtype is not None:
            rm.backbone.to(backbone_dtype)
        # The original head, frozen: the vanilla reward φ₀(H_last) stays available for comparison.
        self.base_head = copy.deepcopy(rm.head).requires_grad_(False)
        rm.head.requires_grad_(True)
        rm.head.float()

    @property
    def head(self) -> nn.Module:
        return self.rm.head

    def trainable_parameters(self) -> list[nn.Parameter]:
        params = list(self.head.parameters())
        if self.fusion is not None:
            params += list(self.fusion.parameters())
        return params

    def train(self, mode: bool = True) -> "FeedbackRewardModel":
        super().train(mode)
        self.rm.model.eval()  # the backbone never leaves eval mode
        return self

    @torch.no_grad()
    def embed_texts(self, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """H_last of each (prompt, response), (B, D_m) float32, from the RM's own tokenizer."""
        out = []
        for i in range(0, len(prompts), batch_size):
            enc = self.rm.tokenize(prompts[i: i + batch_size], responses[i: i + batch_size])
            out.append(self.rm.embed(enc["input_ids"].to(self.rm.device), enc["attention_mask"].to(self.rm.device)))
        return torch.cat(out).float()

    def score(self, rte: torch.Tensor, policy_hidden: Optional[torch.Tensor], policy_mask: Optional[torch.Tensor],
              w: float) -> torch.Tensor:
        """r_φ(x, y, h) = φ((1 - ω) Ĥ + ω H_last), shape (B,). Without fusion: φ(H_last)."""
        if self.fusion is None or policy_hidden is None:
            return self.head(rte).squeeze(-1).float()
        dev = self.head.weight.device
        h_hat = self.fusion(rte, policy_hidden.to(dev), policy_mask.to(dev))  # (B, D_m)
        h_fin = (1.0 - w) * h_hat + w * rte.to(h_hat.dtype)  # (B, D_m)   Eq. 4
        return self.head(h_fin.float()).squeeze(-1)

    @torch.no_grad()
    def score_parts(self, rte: torch.Tensor, policy_hidden: torch.Tensor, policy_mask: torch.Tensor,
                    w: float) -> ScoreParts:
        """The two terms of the score that vary within a group (the head's bias is shared)."""
        dev = self.head.weight.device
        h_hat = self.fusion(rte, policy_hidden.to(dev), policy_mask.to(dev)).float()  # (B, D_m)
        weight = self.head.weight.float().view(-1)  # (D_m,) the linear head's w
        return ScoreParts((1.0 - w) * (h_hat @ weight), w * (rte.to(dev).float() @ weight))

    @torch.no_grad()
    def calibrate(self, rte: torch.Tensor, policy_hidden: torch.Tensor, policy_mask: torch.Tensor,
                  k: int) -> Optional[float]:
        """init=matched: rescale W_o once so that φ(Ĥ) has φ(H_last)'s within-group spread on this batch.

        Returns the factor applied, or None when there is nothing to do (already calibrated, or no fusion).
        """
        if self.fusion is None or bool(self.fusion.calibrated):
            return None
        parts = self.score_parts(rte, policy_hidden, policy_mask, 0.0)  # ω = 0: fusion = w·Ĥ, embedding = 0
        target = within_group_spread(rte.to(self.head.weight.device).float() @ self.head.weight.float().view(-1), k)
        spread = within_group_spread(parts.fusion, k)
        factor = float(target / spread) if spread > 0 else 1.0
        self.fusion.rescale_output(factor)
        return factor

    @torch.no_grad()
    def vanilla_score(self, rte: torch.Tensor) -> torch.Tensor:
        """The unmodified RM's reward φ₀(H_last), (B,)."""
        return self.base_head(rte.to(self.base_head.weight.dtype)).squeeze(-1).float()

    # ------------------------------------------------------------------ checkpoints

    def trainable_state(self) -> dict[str, torch.Tensor]:
        state = {f"head.{k}": v for k, v in self.head.state_dict().items()}
        if self.fusion is not None:
            state.update({f"fusion.{k}": v for k, v in self.fusion.state_dict().items()})
        return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        self.head.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("head.")})
        if self.fusion is not None:
            fusion = {k[7:]: v for k, v in state.items() if k.startswith("fusion.")}
            # Saved before init=matched existed: every such fusion was random or zero, i.e. calibrated.
            fusion.setdefault("calibrated", torch.tensor(True))
            self.fusion.load_state_dict(fusion)

    def save(self, directory: str | Path, base_rm: str, extra: Optional[dict] = None) -> None:
        """The fusion module and head as safetensors, with what is needed to rebuild them."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        # The original head travels too, so vanilla scores reproduce whatever the base path holds.
        base = {f"base_head.{k}": v.detach().cpu().contiguous().clone() for k, v in self.base_head.state_dict().items()}
        save_file({**self.trainable_state(), **base}, str(directory / _FILE))
        meta = {"base_rm": base_rm, "fusion": None, **(extra or {})}
        if self.fusion is not None:
            f = self.fusion
            meta["fusion"] = {"rm_dim": f.rm_dim, "policy_dim": f.policy_dim, "inner_dim": f.inner_dim,
                              "num_heads": f.num_heads}
        (directory / _META).write_text(json.dumps(meta, indent=2))


def build_feedback_rm(rm: RewardModel, policy_dim: Optional[int], inner_dim: int, num_heads: int, init: FusionInit,
                      backbone_dtype: Optional[torch.dtype] = None) -> FeedbackRewardModel:
    """R2M when ``policy_dim`` is given; the Iterative RM-head baseline when it is None."""
    fusion = None
    if policy_dim is not None:
        fusion = PolicyFeedbackFusion(rm.hidden_size, policy_dim, inner_dim, num_heads, init).to(rm.device)
    return FeedbackRewardModel(rm, fusion, backbone_dtype)


def load_feedback_rm(directory: str | Path, base_rm: Optional[str] = None, dtype: str = "float32",
                     trust_remote_code: bool = False) -> FeedbackRewardModel:
    """Load an R2M reward model saved by :meth:`FeedbackRewardModel.save` (for scoring with feedback)."""

    directory = Path(directory)
    meta = read_json(directory / _META)
    base = base_rm or meta["base_rm"]
    tok = load_tokenizer(base, trust_remote_code)
    rm = RewardModel(load_reward_model(base, dtype, trust_remote_code, tok.pad_token_id), tok)
    fusion = None
    if meta["fusion"] is not None:
        fusion = PolicyFeedbackFusion(**meta["fusion"])
    model = FeedbackRewardModel(rm, fusion)
    state = load_file(str(directory / _FILE))
    model.load_trainable_state(state)
    model.base_head.load_state_dict({k[10:]: v for k, v in state.items() if k.startswith("base_head.")})
    return model
