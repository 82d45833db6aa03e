"""Every bad input of the reliability issue gets a clear error before training, and leaves no run dir.

Each case's message is also checked against the table in docs/ERRORS.md, so the docs stay true.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from r2m.cli import main

DOCS = Path(__file__).resolve().parents[1] / "docs" / "ERRORS.md"


def _write(path: Path, lines: list[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def _saved_rm_with_labels(tmp_path: Path, num_labels: int) -> str:
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from r2m.world.tokenizer import build_tokenizer

    tok = build_tokenizer("rm")
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, num_labels=num_labels,
                      pad_token_id=tok.pad_token_id)
    out = tmp_path / f"rm{num_labels}"
    LlamaForSequenceClassification(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def _narrow_rm(tmp_path: Path) -> str:
    """An RM whose tokenizer knows only some digits: it cannot read the world policy's text."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForSequenceClassification, PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<unk>": 1, "<bos>": 2, "<eos>": 3, "=>": 4, "1": 5, "2": 6}
    t = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=t, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>",
                                  bos_token="<bos>")
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, num_labels=1, pad_token_id=0)
    out = tmp_path / "narrow"
    LlamaForSequenceClassification(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def _damaged_copy(tmp_path: Path, world_artifacts, name: str, file: str, damage) -> str:
    """A copy of the world policy with one of its files damaged by ``damage(bytes) -> bytes``."""
    import shutil

    out = tmp_path / name
    shutil.copytree(world_artifacts[0], out)
    (out / file).write_bytes(damage((out / file).read_bytes()))
    return str(out)


def _case_args(case: str, tmp_path: Path, world_artifacts, world_data_args) -> list[str]:
    """Overrides that make the `r2m rl` run hit one bad input."""
    prompts = lambda lines: f"data.prompts={_write(tmp_path / 'p.jsonl', lines)}"  # noqa: E731
    world_prompts = world_data_args("prompts", "eval_prompts")  # a user's model: data named
    if case == "malformed_json":
        return [prompts(['{"prompt": "<bos> 1 2 =>"}', '{"prompt": '])]
    if case == "missing_field":
        return [prompts(['{"text": "<bos> 1 2 =>"}'])]
    if case == "wrong_type":
        return [prompts(['{"prompt": 12}'])]
    if case == "empty_prompt":
        return [prompts(['{"prompt": ""}'])]
    if case == "empty_response":
        row = '{"prompt": "<bos> 1 =>", "response": ""}'
        return [f"data.sft={_write(tmp_path / 's.jsonl', [row])}"]
    if case == "chosen_equals_rejected":
        row = '{"prompt": "<bos> 1 =>", "chosen": "1 <eos>", "rejected": "1 <eos>"}'
        return [f"data.pref_train={_write(tmp_path / 'pr.jsonl', [row])}"]
    if case == "all_prompts_too_long":
        return ["data.max_prompt_tokens=2", "data.overlong=skip"]
    if case == "rm_num_labels":
        return [f"reward.path={_saved_rm_with_labels(tmp_path, 3)}", *world_prompts]
    if case == "unpairable_rm":
        return [f"reward.path={_narrow_rm(tmp_path)}", *world_prompts]
    if case == "unknown_key":
        return ["rl.alpha=0.3"]
    if case == "alpha_out_of_range":
        return ["reward.r2m.alpha=1.5"]
    if case == "omega_out_of_range":
        return ["reward.r2m.omega_floor=-0.1"]
    if case == "k_below_2_for_rloo":
        return ["rl.k=1"]
    if case == "fp16_on_cpu":
        return ["run.device=cpu", "run.mixed_precision=fp16"]
    if case == "lora_rank_0":
        return ["policy.lora.r=0"]
    if case == "invalid_utf8":
        (tmp_path / "p.jsonl").write_bytes(b'{"prompt": "<bos> 1 =>"}\n{"prompt": "<bos> 1\xff =>"}\n')
        return [f"data.prompts={tmp_path / 'p.jsonl'}"]
    if case == "yaml_invalid_utf8":
        (tmp_path / "bad.yaml").write_bytes(b"rl:\n  steps: \xff2\n")
        return ["-c", str(tmp_path / "bad.yaml")]
    if case == "truncated_weights":
        path = _damaged_copy(tmp_path, world_artifacts, "trunc", "model.safetensors", lambda b: b[: len(b) // 2])
        return [f"policy.path={path}", *world_prompts, f"reward.path={world_artifacts[1]}"]
    if case == "undecodable_tokenizer":
        path = _damaged_copy(tmp_path, world_artifacts, "badtok", "tokenizer.json", lambda b: b"\xff" + b)
        return [f"policy.path={path}", *world_prompts, f"reward.path={world_artifacts[1]}"]
    raise AssertionError(case)


CASES = {
    "malformed_json": "p.jsonl:2: malformed JSON",
    "missing_field": "p.jsonl:1: missing field 'prompt'",
    "wrong_type": "p.jsonl:1: field 'prompt' must be a string, got int",
    "empty_prompt": "p.jsonl:1: field 'prompt' is empty",
    "empty_response": "s.jsonl:1: field 'response' is empty",
    "chosen_equals_rejected": "pr.jsonl:1: 'chosen' is identical to 'rejected'",
    "all_prompts_too_long": "every prompt is longer than data.max_prompt_tokens=2 and data.overlong=skip",
    "rm_num_labels": "num_labels=3, expected 1 (a scalar reward)",
    "unpairable_rm": "cannot read the text of policy",
    "unknown_key": "rl.alpha: unknown key",
    "alpha_out_of_range": "reward.r2m.alpha: expected in [0, 1], got 1.5",
    "omega_out_of_range": "reward.r2m.omega_floor: expected in [0, 1], got -0.1",
    "k_below_2_for_rloo": "rl.k: expected >= 2 for rloo, got 1",
    "fp16_on_cpu": "run.mixed_precision: expected no, bf16 or auto with run.device=cpu (fp16 autocast needs CUDA)",
    "lora_rank_0": "policy.lora.r: expected >= 1, got 0",
    "invalid_utf8": "p.jsonl:2: not valid UTF-8 (byte 0xff at column 20)",
    "yaml_invalid_utf8": "bad.yaml:2: not valid UTF-8 (byte 0xff at column 10)",
    "truncated_weights": "model.safetensors: not a readable safetensors file (Error while deserializing header: "
                         "incomplete metadata, file not fully covered); the file is damaged or truncated",
    "undecodable_tokenizer": "tokenizer.json:1: not valid UTF-8 (byte 0xff at column 1)",
}
# Stages that read a given file: the SFT and preference files are read by `r2m sft` / `r2m rm`.
COMMAND = {"empty_response": "sft", "chosen_equals_rejected": "rm"}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_refused_before_training(case, tiny, world_artifacts, world_data_args, tmp_path,
                                              capsys) -> None:
    root = tmp_path / "runs"
    # The world's cached artifacts live under the shared root; runs of this test go to their own root
    # only where the case does not need the world (config errors), else to a fresh run name.
    shared = Path(tiny[-1].split("=", 1)[1])
    name = f"bad-{case}"
    args = [COMMAND.get(case, "rl"), *tiny, f"run.name={name}", *_case_args(case, tmp_path, world_artifacts,
                                                                                   world_data_args)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert CASES[case] in err, err
    assert err.startswith("r2m: error: ") and err.count("\n") == 1  # one clear line, no traceback
    assert not (shared / name).exists() and not root.exists(), "a refused run must leave no run directory"
    assert CASES[case] in DOCS.read_text(), f"docs/ERRORS.md lacks the message of {case}"


def test_overlong_prompts_are_counted(tiny, world_artifacts) -> None:
    from r2m.runtime.runlog import read_metrics

    shared = Path(tiny[-1].split("=", 1)[1])
    assert main(["rl", *tiny, "run.name=overlong", "data.max_prompt_tokens=6", "rl.steps=1"]) == 0
    row = next(r for r in read_metrics(shared / "overlong" / "metrics.jsonl") if r["step"] == 1)
    assert row["data/prompts_truncated"] > 0 and row["data/prompts_skipped"] == 0
    assert main(["rl", *tiny, "run.name=overlong-skip", "data.max_prompt_tokens=6", "data.overlong=skip",
                 "rl.steps=1"]) == 0
    row = next(r for r in read_metrics(shared / "overlong-skip" / "metrics.jsonl") if r["step"] == 1)
    assert row["data/prompts_skipped"] > 0 and row["data/prompts_truncated"] == 0


def test_bom_and_crlf_jsonl_is_read_as_plain(tmp_path) -> None:
    """A JSONL as Windows editors save it (UTF-8 BOM, CRLF line ends) gives the rows of the plain file."""
    from r2m.data.jsonl import read_preferences, read_prompts
    from r2m.data.datasets import load_prompts

    rows = ['{"prompt": "<bos> 1 2 =>"}', '{"prompt": "<bos> 3 \u00e9 =>"}']
    plain = _write(tmp_path / "plain.jsonl", rows)
    windows = tmp_path / "windows.jsonl"
    windows.write_bytes(b"\xef\xbb\xbf" + "".join(r + "\r\n" for r in rows).encode("utf-8"))
    assert read_prompts(windows) == read_prompts(plain) == ["<bos> 1 2 =>", "<bos> 3 \u00e9 =>"]
    assert [r["prompt"] for r in load_prompts(str(windows))] == read_prompts(plain)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_bytes(b"\xef\xbb\xbf" + b'{"prompt": "p", "chosen": "a", "rejected": "b"}\r\n')
    assert read_preferences(pairs)[0]["rejected"] == "b"  # no stray CR in the last field


def test_undecodable_bytes_in_other_readers_are_named(tmp_path) -> None:
    """Hub-format JSONL through `datasets`, parquet, metrics.jsonl, safetensors: each names the file."""
    from r2m.data.datasets import load_preferences
    from r2m.errors import R2MError
    from r2m.runtime.runlog import read_metrics
    from r2m.runtime.safeio import load_safetensors

    hh = tmp_path / "hh.jsonl"
    hh.write_bytes(b'{"chosen": "\\n\\nHuman: a\\n\\nAssistant: b", "rejected": "\xfe"}\n')
    with pytest.raises(R2MError, match=r"hh.jsonl:1: not valid UTF-8 \(byte 0xfe at column 57\)"):
        load_preferences(str(hh), "hh_rlhf")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 not really")
    with pytest.raises(R2MError, match=r"bad.parquet: cannot load with datasets.load_dataset"):
        load_preferences(str(bad), "hh_rlhf")
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_bytes(b'{"step": 0}\n{"step": 1, "x": \xff}\n{"step": 2}\n')
    with pytest.raises(R2MError, match=r"metrics.jsonl:2: not valid UTF-8 \(byte 0xff at column 18\)"):
        read_metrics(metrics)
    metrics.write_bytes(b'{"step": 0}\n{"step": 1, "x": 0.')  # a row torn by a crash: left out, logged
    assert read_metrics(metrics) == [{"step": 0}]
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_bytes(b'{"base_model_name_or_path": "\xc3("}')
    from r2m.models.lora import adapter_base

    with pytest.raises(R2MError, match=r"adapter_config.json:1: not valid UTF-8 \(byte 0xc3 at column 30\)"):
        adapter_base(adapter)
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":")
    with pytest.raises(R2MError, match=r"w.safetensors: not a readable safetensors file"):
        load_safetensors(weights)
