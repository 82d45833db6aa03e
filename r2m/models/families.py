"""Random models of a real family, built from config, with a locally trained tokenizer of that family.

The paper configs name hub models (Qwen2.5, Llama 3 / 3.1 and Skywork, Pythia). To run their exact
command path without downloading anything, :func:`save_family_model` writes a directory that
``from_pretrained`` loads like the real one: the family's architecture (``Qwen2``, ``Llama``,
``GPTNeoX``) at a chosen size and with the family's position limit, and a byte-level BPE tokenizer
trained here with the ``tokenizers`` library on a small corpus, carrying the family's special tokens,
BOS behaviour and chat template. Used by the dress rehearsals (tests/test_paper_rehearsal.py) and by
the GPU check (scripts/gpu_check.sh) at realistic sizes.

The chat templates are the chat part of each family's published template (the tool-calling branches
of Qwen2.5 and Llama 3.1 are left out; no r2m dataset has tools).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Optional

QWEN2_5_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) or "
    "(message.role == 'assistant') %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
"""Qwen2.5-Instruct (chat part)."""

LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim "
    "+ '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
"""Meta-Llama-3-8B-Instruct."""

LLAMA3_1_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if not date_string is defined %}{%- set date_string = '26 Jul 2024' %}{%- endif %}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set system_message = messages[0]['content']|trim %}{%- set messages = messages[1:] %}"
    "{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\\n' }}"
    "{{- 'Today Date: ' + date_string + '\\n\\n' }}"
    "{{- system_message }}{{- '<|eot_id|>' }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim "
    "+ '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
"""Llama 3.1 Instruct, as Skywork-Reward-V2-Llama-3.1-8B ships it (chat part)."""


class Family(str, Enum):
    QWEN2_5 = "qwen2.5"
    """Qwen2.5-*-Instruct: Qwen2 architecture, ChatML template, no BOS."""
    LLAMA3 = "llama3"
    """Meta-Llama-3-*-Instruct: Llama architecture, BOS added, header template."""
    LLAMA3_1 = "llama3.1"
    """Llama 3.1 (Skywork-Reward-V2-Llama-3.1-8B): the 3.1 template with its system header."""
    PYTHIA = "pythia"
    """Pythia (GPT-NeoX), no chat template (TL;DR prompts are plain text)."""


@dataclass(frozen=True)
class FamilySpec:
    bos: Optional[str]
    """BOS token the tokenizer prepends (None: none)."""
    eos: str
    """End of a reply (the instruct models' end-of-turn token)."""
    pad: Optional[str]
    """The tokenizer's pad token; None: it has none (Llama 3 and 3.1 ship without one)."""
    specials: tuple[str, ...]
    template: Optional[str]
    max_positions: int
    """The real models' position limit."""


SPECS: dict[Family, FamilySpec] = {
    Family.QWEN2_5: FamilySpec(None, "<|im_end|>", "<|endoftext|>", ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
                               QWEN2_5_TEMPLATE, 32768),
    # Llama 3's special tokens in their order (ids 128000..), the reserved ones included: no pad token.
    Family.LLAMA3: FamilySpec("<|begin_of_text|>", "<|eot_id|>", None,
                              ("<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                               "<|reserved_special_token_1|>", "<|reserved_special_token_2|>",
                               "<|reserved_special_token_3|>", "<|start_header_id|>", "<|end_header_id|>",
                               "<|reserved_special_token_4|>", "<|eot_id|>"), LLAMA3_TEMPLATE, 8192),
    Family.LLAMA3_1: FamilySpec("<|begin_of_text|>", "<|eot_id|>", None,
                                ("<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                                 "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>",
                                 "<|reserved_special_token_2|>", "<|start_header_id|>", "<|end_header_id|>",
                                 "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"), LLAMA3_1_TEMPLATE, 131072),
    Family.PYTHIA: FamilySpec(None, "<|endoftext|>", "[PAD]", ("<|endoftext|>", "[PAD]"), None, 2048),
}

SHIPPED_GENERATION: dict[Family, dict] = {
    Family.QWEN2_5: dict(do_sample=True, temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.05,
                         eos=("<|im_end|>", "<|endoftext|>")),
    Family.LLAMA3: dict(do_sample=True, temperature=0.6, top_p=0.9, max_length=4096,
                        eos=("<|end_of_text|>", "<|eot_id|>")),
    Family.LLAMA3_1: dict(do_sample=True, temperature=0.6, top_p=0.9,
                          eos=("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")),
    Family.PYTHIA: dict(eos=("<|endoftext|>",)),
}
"""The sampling fields of each family's ``generation_config.json`` as the instruct checkpoints ship it
(Qwen2.5-*-Instruct, Meta-Llama-3-*-Instruct, Llama 3.1 Instruct, Pythia); ``eos``: its eos tokens."""

_CORPUS = (
    "The quick brown fox jumps over the lazy dog. What is the capital of France? Paris is the capital. "
    "Write a short poem about the sea. SUBREDDIT: r/relationships TITLE: my friend POST: I am not sure what to do. "
    "TL;DR: friend is upset. Human: how do I bake bread? Assistant: Mix flour, water, salt and yeast. "
    "Question: why is the sky blue? Answer: Rayleigh scattering of sunlight. 0 1 2 3 4 5 6 7 8 9 + - = ? ! , . "
)


def train_tokenizer(family: Family, vocab_size: int = 400):
    """A byte-level BPE ``PreTrainedTokenizerFast`` with the family's special tokens, BOS rule and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    spec = SPECS[family]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(spec.specials), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([_CORPUS] * 4, trainer)
    if spec.bos is not None:
        bos_id = tok.token_to_id(spec.bos)
        tok.post_processor = processors.TemplateProcessing(single=f"{spec.bos} $A", pair=f"{spec.bos} $A $B",
                                                           special_tokens=[(spec.bos, bos_id)])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=spec.bos, eos_token=spec.eos,
                                   pad_token=spec.pad, model_max_length=spec.max_positions)
    if spec.template is not None:
        fast.chat_template = spec.template
    return fast


@dataclass(frozen=True)
class Size:
    """A model size; the defaults are tiny (a CPU rehearsal), the GPU check passes realistic ones."""

    hidden_size: int = 32
    num_layers: int = 1
    num_heads: int = 2
    num_kv_heads: int = 1
    intermediate_size: int = 64


def model_config(family: Family, tokenizer, size: Size = Size(), rm: bool = False):
    """The family's ``PretrainedConfig`` at ``size`` (a one-label classifier for an RM)."""
    from transformers import GPTNeoXConfig, LlamaConfig, Qwen2Config

    spec = SPECS[family]
    ids = dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
               bos_token_id=tokenizer.bos_token_id if spec.bos else tokenizer.eos_token_id)
    common = dict(vocab_size=len(tokenizer), hidden_size=size.hidden_size, num_hidden_layers=size.num_layers,
                  num_attention_heads=size.num_heads, intermediate_size=size.intermediate_size,
                  max_position_embeddings=spec.max_positions, tie_word_embeddings=False, **ids)
    if family == Family.PYTHIA:
        config = GPTNeoXConfig(**common, rotary_pct=0.25, use_parallel_residual=True)
    elif family == Family.QWEN2_5:
        config = Qwen2Config(**common, num_key_value_heads=size.num_kv_heads, rope_theta=1000000.0)
    else:
        config = LlamaConfig(**common, num_key_value_heads=size.num_kv_heads, rope_theta=500000.0)
    if rm:
        config.num_labels = 1
    return config


def generation_config(family: Family, tokenizer, extra: Optional[dict] = None):
    """The family's shipped ``GenerationConfig`` (:data:`SHIPPED_GENERATION`) with ``extra`` fields on top."""
    from transformers import GenerationConfig

    fields = {**SHIPPED_GENERATION[family], **(extra or {})}
    eos = [tokenizer.convert_tokens_to_ids(t) for t in fields.pop("eos")]
    bos = tokenizer.bos_token_id if SPECS[family].bos else eos[-1]
    return GenerationConfig(bos_token_id=bos, eos_token_id=eos if len(eos) > 1 else eos[0],
                            pad_token_id=tokenizer.pad_token_id, **fields)


def save_family_model(family: Family, out: str | Path, size: Size = Size(), rm: bool = False, seed: int = 0,
                      dtype=None, generation: Optional[dict] = None) -> Path:
    """A random model of ``family`` (``*ForCausalLM``, or ``*ForSequenceClassification`` with ``rm``) and its
    tokenizer, saved with ``save_pretrained`` into ``out``. A causal LM gets the family's shipped
    ``generation_config.json`` (non-neutral sampling fields: Qwen2.5's repetition penalty, top-k and top-p),
    with the fields of ``generation`` on top."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    tok = train_tokenizer(family)
    config = model_config(family, tok, size, rm)
    auto = AutoModelForSequenceClassification if rm else AutoModelForCausalLM
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = auto.from_config(config, dtype=dtype) if dtype is not None else auto.from_config(config)
    if not rm:
        model.generation_config = generation_config(family, tok, generation)
    out = Path(out)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out
