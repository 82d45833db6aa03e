"""r2m.runtime.checkpoint: step directories, the newest checkpoint that verifies, pruning, the state round trip
and the refusal of another config's checkpoint or of another format version's."""

from __future__ import annotations

import json
import random

import pytest
import torch

from r2m.errors import ConfigError, FormatVersionError
from r2m.runtime.checkpoint import (latest_checkpoint, list_checkpoints, prune, read_state, rng_state,
                                    set_rng_state, step_dir, verify, write_state)


def _save(root, step: int, fp: dict) -> None:
    d = step_dir(root, step)
    d.mkdir(parents=True)
    (d / "weights.bin").write_bytes(b"w" * (step + 1))
    write_state(d, {"step": step, "x": torch.tensor([0.7, step])}, step, fp)


def test_step_dirs_sort_by_step_and_the_newest_verifying_one_wins(tmp_path) -> None:
    fp = {"rl.beta": 0.02}
    for s in (2, 10, 7):
        _save(tmp_path, s, fp)
    assert step_dir(tmp_path, 7).name == "step-000007"
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000002", "step-000007", "step-000010"]
    assert latest_checkpoint(tmp_path) == step_dir(tmp_path, 10)
    (step_dir(tmp_path, 10) / "weights.bin").write_bytes(b"truncated")  # damaged: the manifest disagrees
    assert verify(step_dir(tmp_path, 10)) is not None
    assert latest_checkpoint(tmp_path) == step_dir(tmp_path, 7)


def test_prune_keeps_the_newest_and_removes_debris(tmp_path) -> None:
    for s in (1, 2, 3):
        _save(tmp_path, s, {})
    (tmp_path / ".tmp-step-000004").mkdir()
    prune(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000002", "step-000003"]
    prune(tmp_path, keep=0)  # 0 keeps all
    assert len(list_checkpoints(tmp_path)) == 2


def test_state_round_trip_and_another_config_is_refused(tmp_path) -> None:
    _save(tmp_path, 3, {"rl.beta": 0.02, "rl.k": 4})
    state = read_state(step_dir(tmp_path, 3), {"rl.beta": 0.02, "rl.k": 4})
    assert state["step"] == 3 and torch.equal(state["x"], torch.tensor([0.7, 3.0]))
    with pytest.raises(ConfigError, match=r"rl\.beta \(checkpoint 0\.02, now 0\.5\)"):
        read_state(step_dir(tmp_path, 3), {"rl.beta": 0.5, "rl.k": 4})
    with pytest.raises(ConfigError, match="rl.steps: expected at least the checkpoint's step 3"):
        read_state(step_dir(tmp_path, 3), {"rl.beta": 0.02, "rl.k": 4}, free={"rl.steps": 2})


@pytest.mark.parametrize("version", [None, 0, 2])
def test_a_checkpoint_of_another_format_version_is_refused_by_name(tmp_path, version) -> None:
    """meta.json carries format_version 1; one without it (an older r2m's, whose config could hold fields that
    are resume-free now) or of another version is refused, naming the file, both versions and what to do."""
    _save(tmp_path, 3, {"rl.beta": 0.02})
    meta_path = step_dir(tmp_path, 3) / "meta.json"
    meta = json.loads(meta_path.read_text())
    assert meta["format_version"] == 1
    if version is None:
        del meta["format_version"]
        meta["config"]["run.name"] = "old"  # a field that is resume-free now: not silently filtered out
    else:
        meta["format_version"] = version
    meta_path.write_text(json.dumps(meta))
    has = "no format version" if version is None else f"format version {version}"
    with pytest.raises(FormatVersionError, match=rf"meta\.json: this training checkpoint has {has}.*; this r2m reads "
                                                 r"version 1: .*start a new run"):
        read_state(step_dir(tmp_path, 3), {"rl.beta": 0.02})


def test_rng_state_round_trip() -> None:
    state = rng_state()
    a = (random.random(), torch.rand(3))
    set_rng_state(state)
    b = (random.random(), torch.rand(3))
    assert a[0] == b[0] and torch.equal(a[1], b[1])
