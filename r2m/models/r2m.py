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
import os
import shutil
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

import torch
from torch import nn

from r2m.config.enums import FusionInit
from r2m.errors import ModelError
from r2m.fileio import atomic_write_text
from r2m.core.losses import within_group_spread
from r2m.models.feedback import text_feedback
from r2m.models.forward import eval_mode
from r2m.models.fusion import PolicyFeedbackFusion, omega
from r2m.models.loading import load_reward_model, load_tokenizer, save_model
from r2m.models.r2m_hub import (BASE_DIR, CARD, FORMAT, R2M_FORMAT, base_fields, check_format, hub_id_of,
                                 included_fields, is_hub_repo, model_card, resolve_base)
from r2m.models.reward import DEFAULT_BATCH_SIZE, RewardModel
from r2m.runtime.checkpoint import MANIFEST, verify, write_manifest
from r2m.runtime.safeio import load_safetensors as load_file, read_json

_FILE = "r2m.safetensors"
_META = "r2m.json"
_INFO_KEYS = ("omega_floor", "total_steps")  # r2m.json fields that score() reads back


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
        self.base_rm: Optional[str] = getattr(rm.model, "name_or_path", None) or None
        """Where the base RM was loaded from (a path or hub id): save_pretrained's default ``base_rm``."""
        self.info: dict = {}
        """``omega_floor`` and ``total_steps`` from ``r2m.json``, when saved: :meth:`score`'s defaults for ω(t)."""

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
    def embed_texts(self, prompts: Sequence[str], responses: Sequence[str],
                    batch_size: int = DEFAULT_BATCH_SIZE) -> torch.Tensor:
        """H_last of each (prompt, response), (B, D_m) float32, from the RM's own tokenizer (``batch_size`` rows per
        forward: :meth:`RewardModel.embed_texts`)."""
        return self.rm.embed_texts(prompts, responses, batch_size).float()

    def score_embeddings(self, rte: torch.Tensor, policy_hidden: Optional[torch.Tensor],
                         policy_mask: Optional[torch.Tensor], w: float) -> torch.Tensor:
        """r_φ(x, y, h) = φ((1 - ω) Ĥ + ω H_last), shape (B,). Without fusion: φ(H_last)."""
        if self.fusion is None or policy_hidden is None:
            return self.head(rte).squeeze(-1).float()
        dev = self.head.weight.device
        h_hat = self.fusion(rte, policy_hidden.to(dev), policy_mask.to(dev))  # (B, D_m)
        h_fin = (1.0 - w) * h_hat + w * rte.to(h_hat.dtype)  # (B, D_m)   Eq. 4
        return self.head(h_fin.float()).squeeze(-1)

    @torch.no_grad()
    def score_rows(self, rte: torch.Tensor, policy_hidden: Optional[torch.Tensor], policy_mask: Optional[torch.Tensor],
                   w: float, batch_size: int = 0) -> torch.Tensor:
        """:meth:`score_embeddings` without gradients, ``batch_size`` rows at a time (all at once when 0): each chunk's
        h goes to the fusion's device (and to float32) alone."""
        if policy_hidden is None:
            return self.score_embeddings(rte, None, None, w)
        return torch.cat([self.score_embeddings(rte[s], policy_hidden[s], policy_mask[s], w)
                          for s in row_slices(rte.shape[0], batch_size)])

    @torch.no_grad()
    def score_parts(self, rte: torch.Tensor, policy_hidden: torch.Tensor, policy_mask: torch.Tensor,
                    w: float, batch_size: int = 0) -> ScoreParts:
        """The two terms of the score that vary within a group (the head's bias is shared), ``batch_size`` rows at a
        time (all at once when 0)."""
        dev = self.head.weight.device
        weight = self.head.weight.float().view(-1)  # (D_m,) the linear head's w
        fusion = torch.cat([self.fusion(rte[s].to(dev), policy_hidden[s].to(dev), policy_mask[s].to(dev)).float()
                            for s in row_slices(rte.shape[0], batch_size)])  # (B, D_m) Ĥ
        return ScoreParts((1.0 - w) * (fusion @ weight), w * (rte.to(dev).float() @ weight))

    @torch.no_grad()
    def calibrate(self, rte: torch.Tensor, policy_hidden: torch.Tensor, policy_mask: torch.Tensor,
                  k: int, batch_size: int = 0) -> Optional[float]:
        """init=matched: rescale W_o once so that φ(Ĥ) has φ(H_last)'s within-group spread on this batch.

        Returns the factor applied, or None when there is nothing to do (already calibrated, or no fusion).
        """
        if self.fusion is None or bool(self.fusion.calibrated):
            return None
        parts = self.score_parts(rte, policy_hidden, policy_mask, 0.0, batch_size)  # ω = 0: fusion = w·Ĥ
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
            self.fusion.load_state_dict({k[7:]: v for k, v in state.items() if k.startswith("fusion.")})

    def save(self, directory: str | Path, base_rm: str, extra: Optional[dict] = None) -> None:
        """The RL run's checkpoint save: :meth:`save_pretrained` with the run's base RM."""
        self.save_pretrained(directory, base_rm=base_rm, extra=extra)

    def _head_key(self) -> str:
        """The state-dict prefix of the score head inside the HF model (``score`` for Llama-style RMs)."""
        return next(n for n, m in self.rm.model.named_modules() if m is self.rm.head)

    def _save_base(self, directory: Path) -> None:
        """The base RM as it was before R2M (its original head), with its tokenizer, under ``directory``."""

        state = self.rm.model.state_dict()
        key = self._head_key()
        state.update({f"{key}.{k}": v for k, v in self.base_head.state_dict().items()})
        save_model(self.rm.model, self.rm.tokenizer, directory, {k: v.detach().cpu().contiguous() for k, v in state.items()})

    def save_pretrained(self, directory: str | Path, base_rm: Optional[str | Path] = None, *,
                        include_base: bool = False, extra: Optional[dict] = None,
                        repo_id: Optional[str] = None, subfolder: Optional[str] = None) -> Path:
        """Fusion and head as ``r2m.safetensors``, ``r2m.json``, a model card (``README.md``) and a manifest.

        ``base_rm`` (default: where this model's base RM was loaded from) is recorded as a Hub id, or as a
        local directory's absolute path and its path relative to ``directory``
        (:func:`r2m.models.r2m_hub.base_fields`); ``include_base=True`` stores the base RM (with its original
        head) inside ``directory/base`` instead, so the directory stands alone. ``extra`` adds fields to
        ``r2m.json`` (e.g. ``omega_floor``, ``total_steps``, read back by :meth:`score`). ``repo_id`` and
        ``subfolder`` only go into the card's loading snippet. Each file is written through a temporary
        name; ``manifest.json`` (sizes and SHA-256 of these files, written last) lets a load detect a
        damaged or half-written copy.
        """
        directory = Path(directory)
        base_rm = base_rm if base_rm is not None else self.base_rm
        if base_rm is None and not include_base:
            raise ModelError("save_pretrained: base_rm is unknown (the base RM was not loaded from a path); pass "
                             "base_rm= (a path or hub id) or include_base=True")
        fields = included_fields() if include_base else base_fields(base_rm, directory)
        meta = {"format": FORMAT, **R2M_FORMAT.stamp(), **fields, "fusion": None, **self.info,
                **(extra or {})}
        if self.fusion is not None:
            f = self.fusion
            meta["fusion"] = {"rm_dim": f.rm_dim, "policy_dim": f.policy_dim, "inner_dim": f.inner_dim,
                              "num_heads": f.num_heads}
        directory.mkdir(parents=True, exist_ok=True)
        if include_base:
            self._save_base(directory / BASE_DIR)
        elif (directory / _META).is_file() and (directory / BASE_DIR / MANIFEST).is_file():
            shutil.rmtree(directory / BASE_DIR)  # an earlier save's stored base, which r2m.json no longer names
        # The original head travels too, so vanilla scores reproduce whatever the base path holds.
        base = {f"base_head.{k}": v.detach().cpu().contiguous().clone() for k, v in self.base_head.state_dict().items()}
        _save_tensors({**self.trainable_state(), **base}, directory / _FILE)
        atomic_write_text(directory / _META, json.dumps(meta, indent=2))
        atomic_write_text(directory / CARD, model_card(meta, repo_id, subfolder))
        write_manifest(directory, [_FILE, _META, CARD])
        return directory

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, base_rm: Optional[str] = None, dtype: str = "float32",
                        trust_remote_code: bool = False, revision: Optional[str] = None,
                        token: Optional[str] = None, subfolder: Optional[str] = None) -> "FeedbackRewardModel":
        """Load a directory written by :meth:`save_pretrained` (or :meth:`save`), or a hub repository of one.

        ``subfolder``: the R2M's folder inside the directory or repository (``r2m`` in a TRL trainer's
        output, :class:`r2m.integrations.trl.R2MCallback`). The base RM is the one ``r2m.json`` names
        (:func:`r2m.models.r2m_hub.resolve_base`), unless ``base_rm`` overrides it.
        """
        if is_hub_repo(name_or_path):
            directory = _download(str(name_or_path), revision, token, subfolder)
        else:
            directory = Path(name_or_path)
        directory = directory / subfolder if subfolder else directory
        if not (directory / _META).is_file():
            raise ModelError(f"{directory}: no {_META}; expected a directory written by FeedbackRewardModel.save_pretrained")
        if (directory / MANIFEST).is_file() and (problem := verify(directory)) is not None:
            raise ModelError(f"{directory}: {problem}; the R2M files are damaged or were not completely written")
        meta = read_json(directory / _META)
        check_format(meta, directory)
        base = str(base_rm) if base_rm is not None else resolve_base(meta, directory)
        tok = load_tokenizer(base, trust_remote_code)
        rm = RewardModel(load_reward_model(base, dtype, trust_remote_code, tok.pad_token_id), tok)
        fusion = PolicyFeedbackFusion(**meta["fusion"]) if meta.get("fusion") is not None else None
        model = cls(rm, fusion)
        state = load_file(str(directory / _FILE))
        model.load_trainable_state(state)
        model.base_head.load_state_dict({k[10:]: v for k, v in state.items() if k.startswith("base_head.")})
        model.base_rm = base
        model.info = {k: meta[k] for k in _INFO_KEYS if k in meta}
        return model

    def push_to_hub(self, repo_id: str, base_rm: Optional[str] = None, *, include_base: bool = False,
                    private: Optional[bool] = None, token: Optional[str] = None,
                    commit_message: str = "Upload R2M reward model", api=None):
        """:meth:`save_pretrained` into a temporary directory, uploaded to ``repo_id`` (created if needed).

        The base RM must load from the Hub (a hub id: ``base_rm=``, where it was loaded from, or a Hub
        cache snapshot) or travel with the upload (``include_base=True``): a local path alone would mean
        nothing there. ``api``: a ``huggingface_hub.HfApi`` (default ``HfApi(token=token)``). Returns
        ``upload_folder``'s result.
        """
        import tempfile

        base = base_rm if base_rm is not None else self.base_rm
        hub = hub_id_of(base)
        if not include_base and hub is None:
            raise ModelError(f"push_to_hub({repo_id!r}): the base RM {str(base)!r} is a local path, which "
                             "would mean nothing on the Hub; push it first and pass base_rm='org/name', "
                             "or pass include_base=True to upload it with the fusion and head")
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp, None if include_base else hub, include_base=include_base, repo_id=repo_id)
            if api is None:
                from huggingface_hub import HfApi

                api = HfApi(token=token)
            api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            return api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message,
                                     repo_type="model")

    # ------------------------------------------------------------------ scoring texts

    def omega_at(self, step: Optional[float], total_steps: Optional[int], omega_floor: Optional[float]) -> float:
        """ω(t) for :meth:`score`: Ω (the end of training) when ``step`` is None."""

        floor = omega_floor if omega_floor is not None else self.info.get("omega_floor")
        if floor is None:
            raise ModelError("score: omega_floor is unknown (r2m.json has none); pass omega_floor=")
        if step is None:
            return float(floor)
        total = total_steps if total_steps is not None else self.info.get("total_steps")
        if total is None:
            raise ModelError(f"score: step={step} needs total_steps (r2m.json has none); pass total_steps=")
        return omega(step, int(total), float(floor))

    @torch.no_grad()
    def score(self, prompts: Sequence[str], responses: Sequence[str], policy: Optional[nn.Module] = None,
              policy_tokenizer=None, step: Optional[float] = None, total_steps: Optional[int] = None,
              omega_floor: Optional[float] = None, batch_size: int = 64) -> torch.Tensor:
        """r_φ(x, y, h) of each (prompt, response), (B,) float32 on the CPU, in one call.

        H_last comes from the RM's own tokenizer; h from ``policy`` over the same texts tokenised by
        ``policy_tokenizer`` (:func:`r2m.models.feedback.text_feedback`, the rollout's h up to rounding). ω(t) is
        ω(step) of ``total_steps`` (default: ``r2m.json``'s), or Ω without ``step``. Without fusion (the
        RM-head baseline) the policy is not needed.
        """

        if len(prompts) != len(responses):
            raise ValueError(f"score: {len(prompts)} prompts but {len(responses)} responses")
        if self.fusion is not None and (policy is None or policy_tokenizer is None):
            raise ModelError("score: this R2M reward model reads the policy's hidden states; pass policy= and "
                             "policy_tokenizer= (the policy it was trained with)")
        w = self.omega_at(step, total_steps, omega_floor) if self.fusion is not None else 1.0
        out = []
        with eval_mode(policy):
            for i in range(0, len(prompts), batch_size):
                p, r = list(prompts[i: i + batch_size]), list(responses[i: i + batch_size])
                rte = self.embed_texts(p, r, batch_size)  # (b, D_m)
                if self.fusion is None:
                    out.append(self.score_embeddings(rte, None, None, w).cpu())
                    continue
                device = next(policy.parameters()).device
                h = text_feedback(policy, policy_tokenizer, p, r, device)  # (b, S-1, D_p) on the policy's tokens
                out.append(self.score_embeddings(rte, h.hidden, h.mask, w).cpu())
        return torch.cat(out).float()


def row_slices(n: int, size: int) -> list[slice]:
    """Slices of ``size`` rows covering ``n`` rows (one slice of all of them when ``size`` is 0)."""
    size = size or n or 1
    return [slice(i, i + size) for i in range(0, n, size)]


def _download(repo_id: str, revision: Optional[str], token: Optional[str], subfolder: Optional[str] = None) -> Path:
    """A hub repository's snapshot, or only its ``subfolder`` (the cache first; ``HF_HUB_OFFLINE=1`` reads only the
    cache)."""
    from huggingface_hub import snapshot_download

    kw = {"allow_patterns": [f"{subfolder}/**"]} if subfolder else {}
    try:
        return Path(snapshot_download(repo_id, revision=revision, token=token, **kw))
    except Exception as e:  # noqa: BLE001  (offline, missing, private, invalid id: all named here)
        raise ModelError(f"{repo_id}: not a local directory, and no Hub snapshot of it could be read "
                         f"({type(e).__name__}: {e})") from None


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """``safetensors``' ``save_file`` through a temporary name: a reader never sees half a file."""
    from safetensors.torch import save_file

    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    save_file(tensors, str(tmp))
    os.replace(tmp, path)


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
    return FeedbackRewardModel.from_pretrained(directory, base_rm, dtype, trust_remote_code)
