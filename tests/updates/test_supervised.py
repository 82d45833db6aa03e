"""r2m.updates.supervised: step counts, shuffled batches (every item once per pass), right padding, LR schedules."""

from __future__ import annotations

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
