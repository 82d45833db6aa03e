"""A tokenizer without a pad token (Llama 3 and 3.1 ship without one) gets one at load: a spare token of its own
vocabulary where there is one, else its eos; padding is then marked by masks everywhere, so an eos used as the pad
never hides the real eos that ends a response (generation, RM scoring, SFT labels, R2M's h)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from r2m.models.families import Family, train_tokenizer
from r2m.models.loading import load_tokenizer


def _saved(tok, path: Path) -> str:
    tok.save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("family,pad", [(Family.LLAMA3, "<|reserved_special_token_0|>"),
                                        (Family.LLAMA3_1, "<|finetune_right_pad_id|>"),
                                        (Family.QWEN2_5, "<|endoftext|>"), (Family.PYTHIA, "[PAD]")])
def test_each_family_pads_with_a_token_of_its_own_vocabulary(family, pad, tmp_path, caplog) -> None:
    raw = train_tokenizer(family)
    assert (raw.pad_token is None) == (family in (Family.LLAMA3, Family.LLAMA3_1))  # as the real ones ship
    path = _saved(raw, tmp_path / family.value)
    with caplog.at_level(logging.INFO, logger="r2m"):
        tok, again = load_tokenizer(path), load_tokenizer(path)
    assert tok.pad_token == again.pad_token == pad and len(tok) == len(raw)  # no token added, no embedding grows
    assert tok.pad_token_id not in (tok.eos_token_id, tok.bos_token_id)
    told = [r.getMessage() for r in caplog.records if "has no pad token" in r.getMessage()]
    assert len(told) == (1 if raw.pad_token is None else 0), told  # logged once per tokenizer
    if told:
        assert repr(pad) in told[0] and path in told[0]


def test_the_world_tokenizer_without_its_pad_setting_finds_its_pad_word(tmp_path) -> None:
    from r2m.world.tokenizer import build_tokenizer

    path = tmp_path / "nopad"
    build_tokenizer("policy").save_pretrained(path)
    cfg = json.loads((path / "tokenizer_config.json").read_text())
    cfg.pop("pad_token", None)
    (path / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert load_tokenizer(str(path)).pad_token == "<pad>"


@pytest.fixture()
def eos_padded(tmp_path):
    """A word-level tokenizer with no pad token and no spare token: it pads with its eos."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<bos>": 1, "<eos>": 2, "a": 3, "b": 4, "c": 5}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    raw = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>")
    tok = load_tokenizer(_saved(raw, tmp_path / "eos-pad"))
    assert tok.pad_token_id == tok.eos_token_id == 2
    return tok


def test_an_eos_pad_never_hides_the_real_eos(eos_padded) -> None:
    from r2m.experience.sampling import assemble_generation, concat_generations
    from r2m.models.forward import left_pad
    from r2m.updates.sft import tokenize_sft

    tok, eos = eos_padded, eos_padded.eos_token_id
    ids, mask = left_pad([[1, 3], [1, 4, 5]], tok.pad_token_id)  # (2, 3): row 0 padded with the eos id
    assert mask.tolist() == [[0, 1, 1], [1, 1, 1]]
    # generate's output: [prompt | response], the finished row padded with pad = eos after its real eos
    out = torch.cat([ids, torch.tensor([[4, eos, eos, eos], [3, 5, 4, eos]])], dim=1)
    gen = assemble_generation(out, mask, eos, tok.pad_token_id)
    assert gen.action_mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]  # the real eos is an action, the pads not
    both = concat_generations([gen, gen._replace(sequences=gen.sequences[:1], attention_mask=gen.attention_mask[:1],
                                                 action_mask=gen.action_mask[:1])], tok.pad_token_id)
    assert both.action_mask[:, :2].sum().item() == 6 and both.attention_mask[0, 3:5].tolist() == [1, 1]
    (sft_ids, labels), = tokenize_sft(tok, [{"prompt": "<bos> a", "response": "b <eos>"}], max_length=16)
    assert sft_ids[-1] == eos and labels[-1] == eos  # SFT learns the eos


def test_the_reward_model_reads_the_real_eos_when_the_pad_is_eos(eos_padded) -> None:
    """r2m's reward token is the last attended token (the eos), in a batch right-padded with eos ids as alone."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from r2m.models.reward import RewardModel

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=6, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=2, num_labels=1, pad_token_id=eos_padded.pad_token_id)
    rm = RewardModel(LlamaForSequenceClassification(cfg).eval(), eos_padded)
    enc = rm.tokenize(["<bos> a", "<bos> a"], ["b <eos>", "b c c a b <eos>"])
    assert enc["attention_mask"][0].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    assert enc["input_ids"][0, 3].item() == eos_padded.eos_token_id
    with torch.no_grad():
        batched = rm(enc["input_ids"], enc["attention_mask"])
        alone = rm(enc["input_ids"][:1, :4], enc["attention_mask"][:1, :4])
        without_eos = rm(enc["input_ids"][:1, :3], enc["attention_mask"][:1, :3])
    torch.testing.assert_close(batched[:1], alone)
    assert not torch.allclose(alone, without_eos)  # the eos itself is what the RM reads
