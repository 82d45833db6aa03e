"""Where an R2M reward model's base RM lives, and its model card.

An R2M directory (``save_pretrained``) holds only what R2M trains (fusion module and head, in
safetensors) beside ``r2m.json``. The frozen base RM is named there in one of two ways, never as an
absolute local path, so that the directory keeps working after it is moved or downloaded:

- ``relative``: a path relative to the R2M directory (a run's ``checkpoints/final/r2m`` names the run's
  RM this way; ``include_base=True`` stores the base inside the directory, as ``base``);
- ``hub_id``: a Hugging Face Hub repository id (``org/name``), loaded through ``from_pretrained``.

Files saved before this scheme name the base RM as given (often an absolute path): they still load.
"""

from __future__ import annotations

import enum
import os
from pathlib import Path
from typing import NamedTuple, Optional

from r2m.errors import ModelError

FORMAT = "r2m.feedback_rm"
FORMAT_VERSION = 2
CARD = "README.md"


class BaseKind(str, enum.Enum):
    RELATIVE = "relative"
    """A path relative to the R2M directory."""
    HUB_ID = "hub_id"
    """A Hugging Face Hub repository id."""
    LEGACY = "legacy"
    """Saved before ``base_rm_kind`` existed: the path or id exactly as it was given."""


class BaseRef(NamedTuple):
    ref: str
    """What ``r2m.json`` stores under ``base_rm``."""
    kind: BaseKind


def base_ref(base_rm: str | Path, directory: Path) -> BaseRef:
    """How ``directory/r2m.json`` should name ``base_rm``: relative when it is a local path, else a hub id."""
    local = Path(base_rm).expanduser()
    if local.exists():
        rel = os.path.relpath(local.resolve(), Path(directory).resolve())
        return BaseRef(Path(rel).as_posix(), BaseKind.RELATIVE)
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(str(base_rm))
    except HFValidationError as e:
        raise ModelError(f"base_rm {str(base_rm)!r}: neither an existing local directory nor a Hub repository id "
                         f"({e})") from None
    return BaseRef(str(base_rm), BaseKind.HUB_ID)


def resolve_base(meta: dict, directory: Path) -> str:
    """The path or hub id to load the base RM of ``directory`` from (its ``r2m.json`` is ``meta``)."""
    if "base_rm" not in meta:
        raise ModelError(f"{directory / 'r2m.json'}: missing field 'base_rm' (the base reward model's path or hub id)")
    ref = str(meta["base_rm"])
    try:
        kind = BaseKind(meta.get("base_rm_kind", BaseKind.LEGACY.value))
    except ValueError:
        raise ModelError(f"{directory / 'r2m.json'}: base_rm_kind={meta['base_rm_kind']!r}, expected one of "
                         f"{[k.value for k in BaseKind]}") from None
    if kind != BaseKind.RELATIVE:
        return ref
    path = (directory / ref).resolve()
    if not path.exists():
        raise ModelError(f"{directory / 'r2m.json'}: base_rm {ref!r} (relative to {directory}) is {path}, which does "
                         "not exist; move the R2M directory together with its base RM, or pass base_rm=")
    return str(path)


def is_hub_repo(name_or_path: str | Path) -> bool:
    """True when ``name_or_path`` is no local directory (so it is read as a hub id)."""
    return not Path(name_or_path).expanduser().exists()


def model_card(meta: dict, repo_id: Optional[str] = None) -> str:
    """A model card (README.md with Hub metadata) for an R2M reward model."""
    fusion = meta.get("fusion")
    kind = BaseKind(meta.get("base_rm_kind", BaseKind.LEGACY.value))
    base = meta["base_rm"]
    base_line = (f"[`{base}`](https://huggingface.co/{base})" if kind == BaseKind.HUB_ID
                 else f"`{base}` (a path relative to this directory)")
    header = ["---", "library_name: r2m", "tags:", "- reward-model", "- rlhf", "- r2m"]
    if kind == BaseKind.HUB_ID:
        header.append(f"base_model: {base}")
    header.append("---")
    if fusion is None:
        what = "the Iterative RM-head baseline: the base RM's score head, retrained by GREBT (no fusion)"
    else:
        what = (f"the fusion module (cross-attention, D_m={fusion['rm_dim']}, D_p={fusion['policy_dim']}, "
                f"d={fusion['inner_dim']}, {fusion['num_heads']} head(s)) and the score head")
    load = repo_id or "<this directory>"
    omega = ""
    if "omega_floor" in meta:
        omega = f"\nω(t) = max(½cos(πt/T) + ½, Ω) with Ω = {meta['omega_floor']}"
        if "total_steps" in meta:
            omega += f" and T = {meta['total_steps']} (the policy's training steps)"
        omega += "; without `step`, `score` uses ω = Ω (the end of training).\n"
    return "\n".join(header) + f"""

# R2M reward model

A reward model r_φ(x, y, h) that reads the policy's hidden states h through a fusion module
(R2M: real-time aligned reward models). This repository holds {what}, in `r2m.safetensors`, and
`r2m.json`. The frozen base reward model is {base_line}.
{omega}
## Use

```python
from r2m.models import FeedbackRewardModel

rm = FeedbackRewardModel.from_pretrained("{load}")
scores = rm.score(prompts, responses, policy=policy, policy_tokenizer=policy_tokenizer)  # (B,) float32
```

The policy must be the one R2M was trained with (its hidden width is D_p); h is taken from its
last layer over the prompt and response, tokenised by the policy's own tokenizer.
"""
