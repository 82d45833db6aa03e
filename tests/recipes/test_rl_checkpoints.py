"""r2m.recipes.rl.checkpoints: the backend and process count state.pt records, a resume under another backend
refused by name, and a rank whose RNG file is missing warned about."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from r2m.config.parsing import load_config
from r2m.recipes.rl.checkpoints import read_resume_state, restore_rank_rng, training_state
from r2m.runtime.checkpoint import fingerprint, free_fields, rank_rng_file, rng_state, step_dir, write_state


def _parts() -> SimpleNamespace:
    """The parts training_state reads, without models: a sampler, a KL controller, an optimiser, counters."""
    optimizer = torch.optim.AdamW(torch.nn.Linear(2, 1).parameters(), lr=0.7)
    sampler = SimpleNamespace(position=3, state_dict=lambda: {"position": 3})
    return SimpleNamespace(sampler=sampler, kl_ctl=SimpleNamespace(state_dict=lambda: {"beta": 0.05}),
                           progress=SimpleNamespace(bad_steps=0, kl_stop=None), optimizer=optimizer, moments=None,
                           critic_optimizer=None, lr_scheduler=None, grebt=None)


def test_the_state_names_the_backend_and_process_count_it_was_written_under() -> None:
    replicated = training_state(_parts(), 4)
    assert replicated["backend"] == "replicated" and replicated["num_processes"] == 1 and "optimizer" in replicated
    fsdp = training_state(_parts(), 4, "fsdp", 2)
    assert fsdp["backend"] == "fsdp" and fsdp["num_processes"] == 2 and "optimizer" not in fsdp  # in its shards


def test_resuming_an_fsdp_checkpoint_without_fsdp_is_refused_naming_both(tmp_path) -> None:
    """An FSDP checkpoint's state on disk, resumed by one process (replicated): the config matches, the backend not."""
    from r2m.errors import ConfigError

    cfg = load_config()
    directory = step_dir(tmp_path, 4)
    directory.mkdir()
    write_state(directory, training_state(_parts(), 4, "fsdp", 2), 4, fingerprint(cfg), free_fields(cfg))
    with pytest.raises(ConfigError) as err:
        read_resume_state(directory, cfg, None)
    assert str(err.value).startswith(f"{directory}: this checkpoint was written under fsdp and this run trains under "
                                     "replicated")


def test_a_replicated_checkpoint_resumes_replicated(tmp_path) -> None:
    cfg = load_config()
    directory = step_dir(tmp_path, 4)
    directory.mkdir()
    write_state(directory, training_state(_parts(), 4), 4, fingerprint(cfg), free_fields(cfg))
    assert read_resume_state(directory, cfg, None)["step"] == 4


def test_a_rank_without_its_rng_file_takes_rank_0s_with_a_warning(tmp_path, caplog) -> None:
    torch.manual_seed(7)
    state = {"rng": rng_state()}  # rank 0's
    expected = torch.rand(3)
    torch.manual_seed(123)
    with caplog.at_level("WARNING", logger="r2m"):
        restore_rank_rng(tmp_path, state, 1)
    assert torch.equal(torch.rand(3), expected)
    assert f"rank 1: the checkpoint {tmp_path} holds no RNG state of this rank" in caplog.text
    assert "its sampling stream from here on equals rank 0's" in caplog.text


def test_a_rank_with_its_rng_file_takes_its_own_silently(tmp_path, caplog) -> None:
    torch.manual_seed(7)
    state = {"rng": rng_state()}
    torch.manual_seed(11)
    own = rank_rng_file(tmp_path, 1)
    own.parent.mkdir()
    torch.save({"rng": rng_state()}, own)
    expected = torch.rand(3)
    torch.manual_seed(123)
    with caplog.at_level("WARNING", logger="r2m"):
        restore_rank_rng(tmp_path, state, 1)
        restore_rank_rng(tmp_path / "one-process", state, 0)  # a one-process checkpoint: rank 0's, no warning
    assert caplog.text == ""
    torch.manual_seed(123)
    restore_rank_rng(tmp_path, state, 1)
    assert torch.equal(torch.rand(3), expected)
