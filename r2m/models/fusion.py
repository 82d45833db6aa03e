"""R2M's policy-feedback fusion (R2M paper Section 4.1, Eq. 3-4).

The reward token embedding H_last (D_m) of the RM queries the policy's last-layer hidden states h
(S, D_p) through a sequence-to-token cross-attention:

    q = H_last W_q,  k = h W_k,  v = h W_v,  Ĥ = softmax(q kᵀ / √d) v W_o           (Eq. 3)

with W_q: D_m->d, W_k, W_v: D_p->d, W_o: d->D_m (computed without forming k or v: see forward), and is mixed with H_last by a weight that decays
with the training step t out of T, floored at Omega:

    H_fin = (1 - ω(t)) Ĥ + ω(t) H_last,   ω(t) = max(½ cos(π t / T) + ½, Ω)         (Eq. 4)
"""

from __future__ import annotations

import math

import torch
from torch import nn

from r2m.config.enums import FusionInit


def omega(t: float, total_steps: int, floor: float) -> float:
    """ω(t) = max(½·cos(π·t/T) + ½, Ω): 1 at t=0, ½ at T/2, Ω at (and, clamped, after) T."""
    if total_steps <= 0:
        raise ValueError(f"total_steps: expected > 0, got {total_steps}")
    frac = min(max(t / total_steps, 0.0), 1.0)
    return max(0.5 * math.cos(math.pi * frac) + 0.5, floor)


class PolicyFeedbackFusion(nn.Module):
    """Sequence-to-token cross-attention from the RM's reward token to the policy's hidden states."""

    def __init__(self, rm_dim: int, policy_dim: int, inner_dim: int, num_heads: int = 1,
                 init: FusionInit | str = FusionInit.RANDOM):
        super().__init__()
        if inner_dim % num_heads:
            raise ValueError(f"inner_dim={inner_dim} must be divisible by num_heads={num_heads}")
        try:
            init = FusionInit(init)
        except ValueError:
            raise ValueError(f"init: expected one of {[i.value for i in FusionInit]}, got {init!r}") from None
        self.rm_dim, self.policy_dim, self.inner_dim, self.num_heads = rm_dim, policy_dim, inner_dim, num_heads
        self.head_dim = inner_dim // num_heads
        self.w_q = nn.Linear(rm_dim, inner_dim, bias=False)
        self.w_k = nn.Linear(policy_dim, inner_dim, bias=False)
        self.w_v = nn.Linear(policy_dim, inner_dim, bias=False)
        self.w_o = nn.Linear(inner_dim, rm_dim, bias=False)
        if init == FusionInit.ZERO:
            # Ĥ = 0 at the start, so H_fin = ω(t) H_last: with ω(0) = 1 the RM is exactly the vanilla RM.
            nn.init.zeros_(self.w_o.weight)
        # False until W_o has been rescaled on a first batch (init=matched); a buffer, so that it is saved
        # with the weights and a resumed or reloaded model is never rescaled twice.
        self.register_buffer("calibrated", torch.tensor(init != FusionInit.MATCHED))

    @torch.no_grad()
    def rescale_output(self, factor: float) -> None:
        """Multiply W_o by ``factor`` (Ĥ is linear in W_o, so Ĥ scales by it) and mark the fusion calibrated."""
        self.w_o.weight.mul_(factor)
        self.calibrated.fill_(True)

    def forward(self, rte: torch.Tensor, policy_hidden: torch.Tensor, policy_mask: torch.Tensor) -> torch.Tensor:
        """Ĥ from rte (B, D_m), policy_hidden (B, S, D_p) and policy_mask (B, S) -> (B, D_m).

        Eq. 3 without forming k = h W_k or v = h W_v (each (B, S, d)): per head, q_h k_hᵀ = h (q_h W_k,h)ᵀ and
        attn v_h = (attn h) W_v,hᵀ, so the only (B, S, ·) tensor is h itself (in the fusion's dtype), and the
        products cost B·S·D_p per head instead of B·S·D_p·d.
        """
        B, S, _ = policy_hidden.shape
        H, dh = self.num_heads, self.head_dim
        dtype = self.w_q.weight.dtype
        q = self.w_q(rte.to(dtype)).view(B, H, dh)  # (B, H, dh)
        w_k = self.w_k.weight.view(H, dh, self.policy_dim)  # (H, dh, D_p): W_k,h
        w_v = self.w_v.weight.view(H, dh, self.policy_dim)  # (H, dh, D_p): W_v,h
        h = policy_hidden.to(dtype)  # (B, S, D_p)
        qk = torch.einsum("bhe,hep->bhp", q, w_k)  # (B, H, D_p) = q_h W_k,h
        scores = torch.einsum("bsp,bhp->bhs", h, qk) / math.sqrt(dh)  # (B, H, S) = q_h k_hᵀ / √dh
        valid = policy_mask.bool().view(B, 1, S)
        scores = scores.masked_fill(~valid, torch.finfo(scores.dtype).min)
        attn = torch.softmax(scores, dim=-1)  # (B, H, S)
        # A row with no valid position would attend uniformly to padding: give it zero feedback instead.
        attn = attn * valid.any(-1, keepdim=True)
        ctx = torch.einsum("bhs,bsp->bhp", attn, h)  # (B, H, D_p) = attn h
        out = torch.einsum("bhp,hep->bhe", ctx, w_v).reshape(B, H * dh)  # (B, d) = attn v_h, heads concatenated
        return self.w_o(out)  # (B, D_m)
