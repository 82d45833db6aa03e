"""SER in the ``blind`` world (issue 14, item 4): SER's reward models read the world's masked prompt view,
as the world RM and the RL reward do (r2m/world/view.py)."""

from __future__ import annotations

import torch

from r2m.config.parsing import load_config
from r2m.recipes.ser_rm import build_trainable_rm, load_rm as _load_rm, save_trainable_rm
from r2m.world.view import MaskedPromptView, mask_prompt

PROMPT = "<bos> 3 1 2 7 =>"


def _ids(rm, prompt: str) -> torch.Tensor:
    return rm.tokenize([prompt], [" 1 2 3 7"])["input_ids"]


def test_ser_rms_read_the_masked_prompt_in_blind(tiny, world_artifacts, tmp_path) -> None:
    init = str(world_artifacts[1])
    blind = load_config(None, [*tiny, "world.rm_prompt_digits=2"])
    plain = load_config(None, tiny)
    trainable = build_trainable_rm(blind, init)
    assert isinstance(trainable.rm.prompt_view, MaskedPromptView) and trainable.rm.prompt_view.keep == 2
    reference = build_trainable_rm(plain, init).rm
    assert reference.prompt_view is None  # other worlds: the prompt as given (unchanged behaviour)
    # The blind RM's tokens of the full prompt are the plain RM's tokens of the masked prompt, not of the full one.
    masked = mask_prompt(PROMPT, 2)
    assert torch.equal(_ids(trainable.rm, PROMPT), _ids(reference, masked))
    assert not torch.equal(_ids(trainable.rm, PROMPT), _ids(reference, PROMPT))
    # The saved loop RM and an RM reloaded from disk (a resumed SER run) keep the view.
    saved = save_trainable_rm(trainable, tmp_path / "rm")
    assert torch.equal(_ids(saved, PROMPT), _ids(reference, masked))
    assert torch.equal(_ids(_load_rm(blind, tmp_path / "rm"), PROMPT), _ids(reference, masked))
    assert _load_rm(plain, tmp_path / "rm").prompt_view is None
