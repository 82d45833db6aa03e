"""r2m.updates.supervised: step counts, shuffled batches (every item once per pass), right padding, LR schedules."""

from __future__ import annotations

import pytest
import torch

from r2m.config.enums import LRSchedule
from r2m.updates.supervised import batch_indices, make_lr_scheduler, num_steps, right_pad


def test_num_steps() -> None:
    assert num_steps(10, 4, 1.0, 0) == 3  # ceil(10 / 4)
    assert num_steps(10, 4, 2.5, 0) == 7  # ceil(25 / 4)
    assert num_steps(10, 4, 2.5, 5) == 5  # capped
    assert num_steps(1, 64, 0.01, 0) == 1  # at least one


def test_batches_cover_each_pass_and_are_seeded() -> None:
    batches = list(batch_indices(6, 3, 4, seed=0))
    assert sorted(torch.cat(batches[:2]).tolist()) == list(range(6))
    assert sorted(torch.cat(batches[2:]).tolist()) == list(range(6))
    assert all(torch.equal(a, b) for a, b in zip(batches, batch_indices(6, 3, 4, seed=0)))


def test_right_pad() -> None:
    out = right_pad([[5, 6, 7], [8]], pad_id=0)
    assert out.tolist() == [[5, 6, 7], [8, 0, 0]] and out.dtype == torch.long
    assert right_pad([[1], [2, 3]], pad_id=0, fill=-100).tolist() == [[1, -100], [2, 3]]


def test_lr_schedules() -> None:
    def lrs(schedule, warmup, total=10):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.7)
        sched = make_lr_scheduler(opt, schedule, warmup, total)
        out = []
        for _ in range(total):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            if sched is not None:
                sched.step()
        return out

    const = lrs(LRSchedule.CONSTANT, 0)
    assert all(abs(x - 0.7) < 1e-12 for x in const)
    warm = lrs(LRSchedule.CONSTANT, 4)
    assert warm[0] < warm[1] < warm[3] and abs(warm[-1] - 0.7) < 1e-12
    lin = lrs(LRSchedule.LINEAR, 0)
    assert abs(lin[0] - 0.7) < 1e-12 and all(a > b for a, b in zip(lin, lin[1:]))  # linear decay, no warm-up
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.7)
    assert make_lr_scheduler(opt, LRSchedule.CONSTANT, 0, 10) is None  # the rate is never touched


# ---------------------------------------------------------------------------------------------
# A failed checkpoint write: named on one process, raised on every rank at once under several
# ---------------------------------------------------------------------------------------------


def _tiny_loop(tmp_path, steps: int = 4):
    """supervised_loop on a 3 -> 1 linear model, one process, a checkpoint every 2 steps."""
    from accelerate import Accelerator

    from r2m.updates.supervised import LossOutput, supervised_loop

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    x = torch.randn(8, 3)
    acc = Accelerator(cpu=True)
    model, optimizer = acc.prepare(model, optimizer)

    def loss_fn(idx):
        return LossOutput(model(x[idx]).pow(2).mean(), {})

    return supervised_loop(model, optimizer, scheduler, acc, n_items=8, batch_size=4, steps=steps, seed=0,
                           loss_fn=loss_fn, prefix="sft", log_every=1, max_grad_norm=1.0, run=None,
                           fingerprint={"t": 1}, keep_checkpoints=0, checkpoint_dir=tmp_path / "ckpt", save_every=2,
                           show_progress=False)


def test_a_loop_checkpoint_write_that_runs_out_of_space_is_named(tmp_path, monkeypatch) -> None:
    """One process: the second save's writer fails with ENOSPC after a partial file; a CheckpointWriteError names the
    path and the space, the partial write is removed and the first checkpoint stays."""
    import errno

    import safetensors.torch

    from r2m.errors import CheckpointWriteError
    from r2m.runtime.checkpoint import list_checkpoints, verify

    real, calls = safetensors.torch.save_file, []

    def full_disk(tensors, filename, *a, **k):
        calls.append(filename)
        if len(calls) == 2:
            open(filename, "wb").write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        real(tensors, filename, *a, **k)

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with pytest.raises(CheckpointWriteError) as err:
        _tiny_loop(tmp_path, steps=6)
    ckpts = tmp_path / "ckpt"
    assert str(err.value).startswith(f"{ckpts / 'step-000004'}: the checkpoint could not be written (ENOSPC: No space")
    assert "step-000002, stays the resume point" in str(err.value)
    assert [p.name for p in list_checkpoints(ckpts)] == ["step-000002"] and verify(ckpts / "step-000002") is None
    assert [p.name for p in ckpts.iterdir()] == ["step-000002"]  # no partial directory left


class _Agreeing:
    """A Dist of ``num_processes`` ranks whose ``all`` sees this rank's flag and the other ranks' ``others``."""

    def __init__(self, rank: int, others: list[bool]):
        self.rank, self.num_processes, self.enabled = rank, len(others) + 1, True
        self.others, self.flags = others, []

    def all(self, flag: bool) -> bool:
        self.flags.append(flag)
        return flag and all(self.others)


class _Acc:
    def __init__(self, main: bool):
        self.is_main_process, self.waited = main, 0

    def unwrap_model(self, model):
        return model

    def wait_for_everyone(self) -> None:
        self.waited += 1  # under several processes this would block until the timeout if a rank had raised


def test_a_failed_loop_checkpoint_write_raises_on_every_rank_at_once(tmp_path, monkeypatch) -> None:
    """Rank 0's write fails (ENOSPC): rank 0 raises its named error, and rank 1, which wrote nothing, learns it from
    the agreement and raises too, before any barrier (where it would otherwise wait for a rank that is gone)."""
    import errno

    from r2m.errors import CheckpointWriteError
    from r2m.updates import supervised

    def full_disk(path, *a):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(supervised, "_save_loop_checkpoint", full_disk)
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    args = (tmp_path, model, optimizer, None, 4, {}, 0, None)

    rank0, dist0 = _Acc(main=True), _Agreeing(0, others=[True])
    with pytest.raises(CheckpointWriteError, match=r"step-000004: the checkpoint could not be written \(ENOSPC"):
        supervised._checkpoint(rank0, dist0, *args)
    assert dist0.flags == [False] and rank0.waited == 0

    rank1, dist1 = _Acc(main=False), _Agreeing(1, others=[False])  # rank 0 failed
    with pytest.raises(CheckpointWriteError, match=r"step-000004: another process could not write its part"):
        supervised._checkpoint(rank1, dist1, *args)
    assert dist1.flags == [True] and rank1.waited == 0


def test_a_written_loop_checkpoint_is_agreed_then_awaited(tmp_path) -> None:
    """Every rank's write succeeded: the ranks agree, then meet at the barrier; rank 0 wrote the checkpoint."""
    from r2m.runtime.checkpoint import verify
    from r2m.updates import supervised

    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    for rank in (0, 1):
        acc, dist = _Acc(main=rank == 0), _Agreeing(rank, others=[True])
        supervised._checkpoint(acc, dist, tmp_path, model, optimizer, scheduler, 2, {}, 0, None)
        assert dist.flags == [True] and acc.waited == 1
    assert verify(tmp_path / "step-000002") is None
