"""What a run on a user's models leaves on disk: everything inside its run directory (locks included), a
checkpoint at the last step (so an extended run resumes there), plots, evaluation samples, a model card."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from r2m.cli import main
from r2m.runtime.runlock import HOLDER_NAME, LOCK_NAME


def _user_setup(world_artifacts, tmp_path: Path) -> dict[str, Path]:
    """The world's models and files copied outside the world cache: a user's, as far as r2m can tell."""
    policy, rm, files = world_artifacts
    out = {"policy": Path(shutil.copytree(policy, tmp_path / "my-policy")),
           "rm": Path(shutil.copytree(rm, tmp_path / "my-rm"))}
    for name in ("prompts", "eval_prompts", "pref_eval", "pref_policy", "pref_train"):
        out[name] = Path(shutil.copy(getattr(files, name), tmp_path / f"{name}.jsonl"))
    return out


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def _outside(paths: set[Path], run: Path) -> list[str]:
    return sorted(str(p) for p in paths if p != run and run not in p.parents and p not in run.parents)


def test_a_run_on_users_models_writes_only_inside_its_run_dir(tiny, world_artifacts, tmp_path, monkeypatch) -> None:
    """During and after `r2m rl` on a user's policy and RM (with the Pretrained-RM baseline, which trains an RM
    of its own), every file created under the working folder is inside the run directory."""
    from r2m.recipes.rl.run import RLRun

    user = _user_setup(world_artifacts, tmp_path)
    before = _files(tmp_path)
    run = tmp_path / "runs" / "mine"
    seen: list[set[Path]] = []
    step = RLRun.step

    def snapshot(self, t):
        seen.append(_files(tmp_path) - before)  # mid-run: the lock and the run's files as they are
        return step(self, t)

    monkeypatch.setattr(RLRun, "step", snapshot)
    args = ["rl", *tiny, f"run.root={tmp_path / 'runs'}", "run.name=mine", f"policy.path={user['policy']}",
            f"reward.path={user['rm']}", f"data.prompts={user['prompts']}", f"data.eval_prompts={user['eval_prompts']}",
            f"data.pref_eval={user['pref_eval']}", f"data.pref_policy={user['pref_policy']}",
            "reward.baseline=pretrained_rm", "rl.steps=1"]
    assert main(args) == 0
    assert seen and all(_outside(s, run) == [] for s in seen), [_outside(s, run) for s in seen]
    assert _outside(_files(tmp_path) - before, run) == []
    assert (run / LOCK_NAME).exists() and not (run / HOLDER_NAME).exists()  # released
    assert any(p.name.startswith("rm-pretrained-") for p in run.iterdir())


def test_ser_leaves_no_lock_of_its_inner_runs(tiny, world_artifacts, tmp_path) -> None:
    """SER's per-loop RM runs sit inside its run directory and are covered by its lock: after a normal exit no
    holder file is left anywhere, and no lock file but the run's own."""
    user = _user_setup(world_artifacts, tmp_path)
    before = _files(tmp_path)
    run = tmp_path / "runs" / "ser-mine"
    args = ["ser", *tiny, f"run.root={tmp_path / 'runs'}", "run.name=ser-mine", f"rm.init_from={user['rm']}",
            f"data.pref_train={user['pref_train']}", f"data.pref_eval={user['pref_eval']}", "ser.max_loops=1",
            "ser.ppo=false"]
    assert main(args) == 0
    created = _files(tmp_path) - before
    assert _outside(created, run) == []
    locks = sorted(str(p.relative_to(run)) for p in created if p.name in (LOCK_NAME, HOLDER_NAME)
                   or p.name.endswith(".lock"))
    assert locks == [LOCK_NAME], locks


def test_a_refused_run_leaves_no_directory(tmp_path) -> None:
    """The lock lives in the run directory, yet a run refused before writing (bad input) leaves none behind."""
    from r2m.runtime import runlock

    run = tmp_path / "root" / "name"
    with runlock.holding(run):
        assert (run / HOLDER_NAME).exists()
        assert json.loads((run / HOLDER_NAME).read_text())["pid"] > 0
    assert not (tmp_path / "root").exists()


def test_a_directory_inside_a_held_one_takes_no_lock_of_its_own(tmp_path) -> None:
    from r2m.runtime import runlock

    run = tmp_path / "run"
    with runlock.holding(run):
        (run / "config.yaml").write_text("x")
        assert runlock.acquire(run / "loop-1" / "rm") is False  # covered by the run's hold
        assert not (run / "loop-1").exists()
    assert not runlock.is_held(run / "loop-1" / "rm")
    assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME, "config.yaml"]


@pytest.mark.parametrize("holder", [True, False])
def test_a_live_holder_is_refused(tmp_path, holder) -> None:
    """A second process is refused at once; the holder is named when its file is readable."""
    import subprocess
    import sys

    run = tmp_path / "run"
    code = ("import sys, time; from pathlib import Path; from r2m.runtime import runlock; d = Path(sys.argv[1]); "
            "runlock.acquire(d); print('held', flush=True); time.sleep(30)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        from r2m.runtime import runlock

        if not holder:
            (run / HOLDER_NAME).unlink()
        who = f"PID {proc.pid} on host" if holder else "another process"
        with pytest.raises(runlock.RunLockedError, match=f"is in use by {who}"):
            runlock.acquire(run)
    finally:
        proc.kill()
        proc.wait()
