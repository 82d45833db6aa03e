"""Load policies, reward models and tokenizers through the Hugging Face Auto classes.

A user's hub model and the world's own models take the same path: ``from_pretrained`` on a
directory written by ``save_pretrained``. Only safetensors weights are loaded, and custom model
code runs only when ``trust_remote_code`` is asked for.
"""

from __future__ import annotations

import copy
import logging
import re
from pathlib import Path
from typing import Optional

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from r2m.config.models import ArchConfig, PolicyConfig
from r2m.errors import ModelError
from r2m.runtime.safeio import named_load_errors
from r2m.fileio import atomic_dir
from r2m.utils import torch_dtype
from r2m.models.lora import apply_lora, enable_gradient_checkpointing, is_adapter_dir, load_adapter, load_merged
from r2m.runtime.checkpoint import write_manifest

log = logging.getLogger("r2m")


PAD_NAMES = ("<|finetune_right_pad_id|>", "<|pad|>", "<pad>", "[PAD]", "<|padding|>")
"""Pad tokens some vocabularies carry without naming them as the pad token (Llama 3.1 has the first)."""
_RESERVED = re.compile(r"<\|reserved_special_token_(\d+)\|>")
_announced: set[tuple[str, str]] = set()


def load_tokenizer(path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """``AutoTokenizer.from_pretrained(path)``, given a pad token when it has none (:func:`ensure_pad_token`)."""
    with named_load_errors(path, "tokenizer"):  # undecodable tokenizer files: named by file, line, column
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    return ensure_pad_token(tok, path)


def _spare_pad_token(tok: PreTrainedTokenizerBase) -> Optional[str]:
    """A token of ``tok``'s vocabulary that no text uses: a pad-named one, else the lowest reserved special token
    (Llama 3's ``<|reserved_special_token_N|>``); never a token of the chat template or an eos/bos/unk."""
    vocab = tok.get_vocab()
    taken = {tok.eos_token, tok.bos_token, tok.unk_token}
    template = tok.chat_template if isinstance(tok.chat_template, str) else ""

    def spare(name: str) -> bool:
        return name in vocab and vocab[name] < len(tok) and name not in taken and name not in template

    reserved = sorted((int(m.group(1)), name) for name in vocab if (m := _RESERVED.fullmatch(name)))
    return next((name for name in (*PAD_NAMES, *(name for _, name in reserved)) if spare(name)), None)


def ensure_pad_token(tok: PreTrainedTokenizerBase, path: str) -> PreTrainedTokenizerBase:
    """Give a tokenizer without a pad token one, from its own vocabulary (no new token, so no embedding grows):
    a spare pad or reserved special token where it has one, else its eos token (as TRL and OpenRLHF do).

    r2m marks padding with attention and action masks built from lengths, never by comparing ids with the
    pad id, so an eos used as padding never hides the real eos that ends a response. Logged once per path.
    """
    if tok.pad_token_id is not None:
        return tok
    name = _spare_pad_token(tok)
    if name is None and tok.eos_token is None:
        raise ModelError(f"tokenizer at {path}: has neither a pad token nor an eos token to pad with; set "
                         "tokenizer.pad_token and save it with save_pretrained")
    how = "a spare token of its vocabulary" if name is not None else "its eos token, as TRL and OpenRLHF do"
    tok.pad_token = name if name is not None else tok.eos_token
    if (path, tok.pad_token) not in _announced:
        _announced.add((path, tok.pad_token))
        log.info("tokenizer at %s has no pad token: padding with %r (id %d), %s; masks, not token ids, mark the "
                 "padding", path, tok.pad_token, tok.pad_token_id, how)
    return tok


def load_policy(path: str, dtype: str = "float32", trust_remote_code: bool = False,
                allow_unsafe_weights: bool = False) -> PreTrainedModel:
    """An ``AutoModelForCausalLM``; a LoRA adapter directory loads as its base with the adapter merged in."""
    if is_adapter_dir(path):
        return load_merged(path, lambda base: load_policy(base, dtype, trust_remote_code, allow_unsafe_weights),
                           allow_unsafe_weights)
    with named_load_errors(path, "policy"):
        return AutoModelForCausalLM.from_pretrained(
            path, dtype=torch_dtype(dtype), trust_remote_code=trust_remote_code,
            use_safetensors=None if allow_unsafe_weights else True,
        )


def load_reward_model(path: str, dtype: str = "float32", trust_remote_code: bool = False,
                      pad_token_id: int | None = None, allow_unsafe_weights: bool = False) -> PreTrainedModel:
    """An ``AutoModelForSequenceClassification`` with exactly one label (a scalar reward).

    ``path`` may also hold a causal LM (an SFT checkpoint): the backbone loads and a fresh score
    head is added, which is how the world's RM starts. A LoRA adapter directory (``r2m rm`` with
    ``reward.lora``) loads as its base with the adapter and the trained score head merged in.
    """
    from transformers import AutoConfig

    if is_adapter_dir(path):
        return load_merged(path, lambda base: load_reward_model(base, dtype, trust_remote_code, pad_token_id,
                                                                allow_unsafe_weights), allow_unsafe_weights)
    with named_load_errors(path, "reward model"):
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    is_classifier = any(a.endswith("ForSequenceClassification") for a in (config.architectures or []))
    if is_classifier and config.num_labels != 1:
        raise ModelError(f"reward model at {path}: num_labels={config.num_labels}, expected 1 (a scalar reward)")
    # transformers warns that the score head is newly initialised; that is the intent here.
    logging.getLogger("transformers.modeling_utils").setLevel(logging.ERROR)
    with named_load_errors(path, "reward model"):
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=1, dtype=torch_dtype(dtype), trust_remote_code=trust_remote_code,
            use_safetensors=None if allow_unsafe_weights else True,
        )
    if model.config.num_labels != 1:
        raise ModelError(f"reward model at {path}: num_labels={model.config.num_labels}, expected 1 (a scalar reward)")
    if pad_token_id is not None:
        model.config.pad_token_id = pad_token_id
    return model


def build_policy_and_reference(policy_cfg: PolicyConfig, path: str, resume_dir: Optional[Path] = None,
                               allow_unsafe_weights: bool = False, resume_dtype: Optional[str] = None,
                               base: Optional[PreTrainedModel] = None,
                               ) -> tuple[PreTrainedModel, Optional[PreTrainedModel]]:
    """RL's trainable policy and its frozen reference, loaded from ``path`` (the policy of ``resume_dir`` when
    resuming, read in ``resume_dtype``: the dtype it was trained in, default ``policy.dtype``).

    With ``policy.lora.enabled`` the policy is a ``peft`` model over the base of ``path`` (its adapter from
    ``resume_dir``) and the reference is ``None``: it is that model with the adapters off
    (:class:`r2m.models.lora.AdapterFreeReference`), built once the policy is placed. Otherwise the reference
    is a full copy. ``policy.gradient_checkpointing`` is applied to the policy. ``base``: the model of ``path``,
    already loaded (the object API's): it is the one trained, in place (a resume loads the checkpoint's weights
    into it), and the reference is a copy of it as passed (resuming: ``path``'s weights).
    """
    pc = policy_cfg
    given = base is not None
    base = base if given else load_policy(path, pc.dtype, pc.trust_remote_code, allow_unsafe_weights)
    if pc.lora.enabled:
        ref = None
        policy = (apply_lora(base, pc.lora, "causal", base_path=path) if resume_dir is None
                  else load_adapter(base, resume_dir, trainable=True))
    elif given:  # a resumed run's reference is path's (the object may hold trained weights by now)
        ref = copy.deepcopy(base) if resume_dir is None else load_policy(path, pc.dtype, pc.trust_remote_code,
                                                                         allow_unsafe_weights)
        policy = base
        if resume_dir is not None:
            policy.load_state_dict(load_policy(str(resume_dir), resume_dtype or pc.dtype, pc.trust_remote_code).state_dict())
    else:
        ref, policy = base, copy.deepcopy(base)
        if resume_dir is not None:
            policy = load_policy(str(resume_dir), resume_dtype or pc.dtype, pc.trust_remote_code)
    if pc.gradient_checkpointing:
        enable_gradient_checkpointing(policy)
    # Train mode from the start, as after every update: a resumed run's first rollout then computes what the
    # uninterrupted run's did (it matters with dropout, e.g. LoRA's). Generation switches to eval mode itself.
    return policy.train(), ref


def build_world_lm(arch: ArchConfig, tokenizer: PreTrainedTokenizerBase, seed: int) -> LlamaForCausalLM:
    """A small random ``LlamaForCausalLM`` built from a config (the world's policy or RM backbone)."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=arch.hidden_size,
        intermediate_size=arch.intermediate_size,
        num_hidden_layers=arch.num_layers,
        num_attention_heads=arch.num_heads,
        num_key_value_heads=arch.num_heads,
        max_position_embeddings=arch.max_positions,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


def save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None, directory: str | Path,
               state_dict: Optional[dict] = None) -> Path:
    """``save_pretrained`` (safetensors) into ``directory``, atomically, with a manifest
    (:func:`r2m.runtime.checkpoint.write_manifest`); ``state_dict`` overrides the module's own (a sharded model's
    gathered full state)."""
    with atomic_dir(directory) as tmp:
        if state_dict is None:
            model.save_pretrained(tmp, safe_serialization=True)
        else:
            model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_manifest(tmp)  # sizes and checksums, last: a later resume can tell a damaged copy
    return Path(directory)
