"""Where an R2M reward model's base RM lives, and its model card.

An R2M directory (``save_pretrained``) holds only what R2M trains (fusion module and head, in
safetensors) beside ``r2m.json``, which names the frozen base RM so that the directory keeps loading
after it is moved, copied or downloaded (``base_rm_kind``):

- ``local``: a local directory, stored both as an absolute path (``base_rm``; a move of the R2M
  directory alone keeps it) and relative to the R2M directory (``base_rm_relative``; a move of both
  together keeps it, a run directory holding its RM for instance). Loading tries the relative path
  first, then the absolute one, then ``base_rm_hub_id`` when the directory is a Hub cache snapshot
  (``…/models--org--name/snapshots/<rev>``); an error names every place tried;
- ``hub_id``: a Hugging Face Hub repository id (``org/name``), loaded through ``from_pretrained``;
- ``included``: ``include_base=True`` stored the base RM inside the R2M directory, as ``base/``.

``r2m.json`` carries ``format`` and ``format_version`` (:data:`R2M_FORMAT`); a directory of another version is
refused by name (:func:`check_format`).
"""

from __future__ import annotations

import enum
import os
from pathlib import Path
from typing import Optional

from r2m.errors import ModelError
from r2m.fileio import FORMAT_KEY, ArtifactFormat

FORMAT = "r2m.feedback_rm"
R2M_FORMAT = ArtifactFormat("R2M reward model directory", 3, "train it again with this r2m, or load it with the r2m "
                            "release that wrote it")
"""``r2m.json``'s ``format_version``: its fields, ``base_rm_kind`` among them, and what ``r2m.safetensors`` holds."""
CARD = "README.md"
BASE_DIR = "base"
"""Where ``include_base=True`` stores the base RM, inside the R2M directory."""


class BaseKind(str, enum.Enum):
    LOCAL = "local"
    """A local directory: its absolute path, and ``base_rm_relative`` to the R2M directory."""
    HUB_ID = "hub_id"
    """A Hugging Face Hub repository id."""
    INCLUDED = "included"
    """Stored inside the R2M directory (``base/``)."""


def snapshot_hub_id(path: Path) -> Optional[str]:
    """The repository id of a Hub cache snapshot directory (``…/models--org--name/snapshots/<rev>``), else None."""
    parts = Path(path).parts
    for i in range(len(parts) - 1):
        if parts[i].startswith("models--") and parts[i + 1] == "snapshots":
            return parts[i][len("models--"):].replace("--", "/")
    return None


def hub_id_of(base_rm: Optional[str | Path]) -> Optional[str]:
    """The Hub id ``base_rm`` loads from anywhere: itself when it is no local path, or a cache snapshot's id."""
    if base_rm is None:
        return None
    local = Path(base_rm).expanduser()
    if local.exists():
        return snapshot_hub_id(local.resolve())
    return str(base_rm)


def base_fields(base_rm: str | Path, directory: Path) -> dict:
    """``r2m.json``'s fields naming ``base_rm`` for an R2M saved into ``directory``."""
    local = Path(base_rm).expanduser()
    if local.exists():
        absolute = local.resolve()
        fields = {"base_rm": str(absolute), "base_rm_kind": BaseKind.LOCAL.value,
                  "base_rm_relative": Path(os.path.relpath(absolute, Path(directory).resolve())).as_posix()}
        hub = snapshot_hub_id(absolute)
        return {**fields, "base_rm_hub_id": hub} if hub else fields
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(str(base_rm))
    except HFValidationError as e:
        raise ModelError(f"base_rm {str(base_rm)!r}: neither an existing local directory nor a Hub repository id "
                         f"({e})") from None
    return {"base_rm": str(base_rm), "base_rm_kind": BaseKind.HUB_ID.value}


def included_fields() -> dict:
    return {"base_rm": BASE_DIR, "base_rm_kind": BaseKind.INCLUDED.value}


def check_format(meta: dict, directory: Path) -> None:
    """Refuse an ``r2m.json`` that is not an R2M reward model's, or of another format version (:data:`R2M_FORMAT`)."""
    where = directory / "r2m.json"
    if meta.get("format", FORMAT) != FORMAT:
        raise ModelError(f"{where}: format={meta.get('format')!r}, expected {FORMAT!r} (a directory written by "
                         "FeedbackRewardModel.save_pretrained)")
    R2M_FORMAT.check(meta.get(FORMAT_KEY), where)


def base_kind(meta: dict, directory: Path) -> BaseKind:
    try:
        return BaseKind(meta.get("base_rm_kind"))
    except ValueError:
        raise ModelError(f"{directory / 'r2m.json'}: base_rm_kind={meta.get('base_rm_kind')!r}, expected one of "
                         f"{[k.value for k in BaseKind]}") from None


def resolve_base(meta: dict, directory: Path) -> str:
    """The path or hub id to load the base RM of ``directory`` from (its ``r2m.json`` is ``meta``)."""
    if "base_rm" not in meta:
        raise ModelError(f"{directory / 'r2m.json'}: missing field 'base_rm' (the base reward model's path or hub id)")
    ref, kind = str(meta["base_rm"]), base_kind(meta, directory)
    if kind == BaseKind.HUB_ID:
        return ref
    if kind == BaseKind.LOCAL:
        local = [directory / meta["base_rm_relative"], Path(ref)]
    else:  # included: inside the directory
        local = [directory / ref]
    for path in local:
        if path.exists():
            return str(path.resolve())
    if meta.get("base_rm_hub_id"):
        return str(meta["base_rm_hub_id"])
    tried = " or ".join(str(p.resolve()) for p in local)
    raise ModelError(f"{directory / 'r2m.json'}: no base RM at {tried}; move the R2M directory together with its "
                     "base RM, or pass base_rm= (a path or hub id)")


def is_hub_repo(name_or_path: str | Path) -> bool:
    """True when ``name_or_path`` is no local directory (so it is read as a hub id)."""
    return not Path(name_or_path).expanduser().exists()


def _base_line(meta: dict) -> tuple[str, Optional[str]]:
    """How the card names the base RM, and its Hub id when it has one."""
    kind, base = BaseKind(meta["base_rm_kind"]), meta["base_rm"]
    hub = base if kind == BaseKind.HUB_ID else meta.get("base_rm_hub_id")
    if kind == BaseKind.INCLUDED:
        line = f"stored in this repository, under `{base}/`"
    elif hub:
        line = f"[`{hub}`](https://huggingface.co/{hub})"
    else:
        line = f"the local directory `{base}` (pass `base_rm=` where it is not)"
    return line, hub


def model_card(meta: dict, repo_id: Optional[str] = None, subfolder: Optional[str] = None) -> str:
    """A model card (README.md with Hub metadata) for an R2M reward model."""
    fusion = meta.get("fusion")
    base_line, hub = _base_line(meta)
    header = ["---", "library_name: r2m", "tags:", "- reward-model", "- rlhf", "- r2m"]
    if hub:
        header.append(f"base_model: {hub}")
    header.append("---")
    if fusion is None:
        what = "the Iterative RM-head baseline: the base RM's score head, retrained by GREBT (no fusion)"
    else:
        what = (f"the fusion module (cross-attention, D_m={fusion['rm_dim']}, D_p={fusion['policy_dim']}, "
                f"d={fusion['inner_dim']}, {fusion['num_heads']} head(s)) and the score head")
    load = f'"{repo_id or "<this directory>"}"' + (f', subfolder="{subfolder}"' if subfolder else "")
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
from r2m import FeedbackRewardModel

rm = FeedbackRewardModel.from_pretrained({load})
scores = rm.score(prompts, responses, policy=policy, policy_tokenizer=policy_tokenizer)  # (B,) float32
```

The policy must be the one R2M was trained with (its hidden width is D_p); h is taken from its
last layer over the prompt and response, tokenised by the policy's own tokenizer.
"""
