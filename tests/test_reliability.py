"""Resume after a crash, determinism, numeric guards, graceful stop."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from r2m.cli import main
from r2m.config.parsing import load_config
from r2m.errors import ConfigError
from r2m.runtime.runlog import read_metrics

DOCS = Path(__file__).resolve().parents[1] / "docs" / "ERRORS.md"


def _documented(*fragments: str) -> None:
    """What a test saw r2m say is in docs/ERRORS.md, so that the table stays true."""
    text = DOCS.read_text()
    for fragment in fragments:
        assert fragment in text, f"docs/ERRORS.md lacks {fragment!r}"


# Wall-clock timings and the prompt counter aside, two runs of the same config must agree exactly.
VOLATILE = ("time/",)


def _stable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in rows]


def _rl(tiny, name: str, *extra: str) -> list[str]:
    return ["rl", *tiny, f"run.name={name}", *extra]


@pytest.mark.slow
def test_same_seed_gives_bit_identical_metrics(tiny, world_artifacts) -> None:
    root = Path(tiny[-1].split("=", 1)[1])
    extra = ["rl.steps=4", "reward.r2m.enabled=true", "rl.algorithm=grpo"]
    assert main(_rl(tiny, "det-a", *extra)) == 0
    assert main(_rl(tiny, "det-b", *extra)) == 0
    a, b = (_stable(read_metrics(root / n / "metrics.jsonl")) for n in ("det-a", "det-b"))
    assert a == b
    assert main(_rl(tiny, "det-c", *extra, "run.seed=1")) == 0
    assert _stable(read_metrics(root / "det-c" / "metrics.jsonl")) != a


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, f"the run ended before {path} appeared:\n{proc.stdout.read()}"
        assert time.time() - t0 < timeout, f"{path} did not appear in {timeout}s"
        time.sleep(0.02)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["sigkill", "sigterm"])
def test_killed_run_resumes_to_the_same_metrics(tiny, world_artifacts, how) -> None:
    """A run killed mid-way and resumed gives, step for step, the metrics of the uninterrupted run."""
    root = Path(tiny[-1].split("=", 1)[1])
    extra = ["rl.steps=24", "rl.save_every=4", "run.keep_checkpoints=2", "reward.r2m.enabled=true"]
    assert main(_rl(tiny, f"whole-{how}", *extra)) == 0
    whole = _stable(read_metrics(root / f"whole-{how}" / "metrics.jsonl"))

    name = f"killed-{how}"
    cmd = [sys.executable, "-m", "r2m", *_rl(tiny, name, *extra)]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for(root / name / "checkpoints" / "step-000008", proc)
    proc.send_signal(signal.SIGKILL if how == "sigkill" else signal.SIGTERM)
    proc.wait(timeout=120)
    rows = read_metrics(root / name / "metrics.jsonl")
    assert rows[-1]["step"] < 24, "the run was not interrupted mid-way"
    if how == "sigterm":
        assert proc.returncode == 130
    else:
        assert proc.returncode == -signal.SIGKILL
    ckpts = sorted(p.name for p in (root / name / "checkpoints").iterdir() if p.name.startswith("step-"))
    assert len(ckpts) <= 2  # keep_checkpoints

    assert main(_rl(tiny, name, *extra, "--resume")) == 0
    resumed = _stable(read_metrics(root / name / "metrics.jsonl"))
    assert [r["step"] for r in resumed] == list(range(25))
    assert resumed == whole


def test_resume_refuses_another_config(tiny, world_artifacts) -> None:
    root = Path(tiny[-1].split("=", 1)[1])
    assert main(_rl(tiny, "refuse", "rl.steps=2", "rl.save_every=1")) == 0
    with pytest.raises(ConfigError, match=r"another config: rl.beta \(checkpoint 0.02, now 0.5\)"):
        from r2m.recipes.rl.run import run_rl

        run_rl(load_config(None, [*tiny, "run.name=refuse", "rl.steps=2", "rl.beta=0.5", "run.resume=auto"]))
    # The CLI prints it as a one-line error.
    assert main(_rl(tiny, "refuse", "rl.steps=2", "rl.beta=0.5", "--resume")) == 2
    assert (root / "refuse" / "checkpoints" / "step-000001").exists()


def test_partial_checkpoint_is_never_loaded(tiny, world_artifacts) -> None:
    from r2m.runtime.checkpoint import latest_checkpoint

    root = Path(tiny[-1].split("=", 1)[1])
    assert main(_rl(tiny, "partial", "rl.steps=2", "rl.save_every=1")) == 0
    ckpts = root / "partial" / "checkpoints"
    (ckpts / ".tmp-step-000009-123").mkdir()  # a crash mid-write
    broken = ckpts / "step-000007"
    broken.mkdir()  # a directory without its state: not complete
    assert latest_checkpoint(ckpts).name == "step-000002"  # the last step always gets a checkpoint


def _nan_reward(rl, bad_steps: set[int]):
    """Wrap the run's reward function so that the given (1-based) steps return NaN rewards."""
    inner = rl.maker.reward_fn
    counter = {"calls": 0}

    def reward(query):
        counter["calls"] += 1
        out = inner(query)
        if counter["calls"] in bad_steps:
            return out._replace(scores=torch.full_like(out.scores, float("nan")))
        return out

    reward.needs_policy_hidden = inner.needs_policy_hidden
    reward.reward_model = inner.reward_model
    rl.maker.reward_fn = reward


def test_nan_reward_skips_the_step_and_logs_stats(tiny, world_artifacts) -> None:
    from r2m.recipes.rl.build import build_run
    from r2m.recipes.rl.step import train_step

    rl = build_run(load_config(None, [*tiny, "run.name=nan-skip", "rl.steps=3"]))
    _nan_reward(rl, {2})
    policy = rl.models.policy
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    m1 = train_step(rl, 1)
    after1 = {k: v.clone() for k, v in policy.state_dict().items()}
    m2 = train_step(rl, 2)
    assert "loss/policy" in m1 and m2["guard/skipped_step"] == 1.0
    assert m2["guard/scores_nan"] == 8 and math.isnan(m2["guard/scores_min"]) and m2["guard/bad_steps"] == 1
    assert all(torch.equal(after1[k], v) for k, v in policy.state_dict().items())  # no update on step 2
    assert any(not torch.equal(before[k], v) for k, v in after1.items())
    m3 = train_step(rl, 3)
    assert "loss/policy" in m3 and rl.progress.bad_steps == 0  # the count resets after a good step


def test_consecutive_nan_steps_stop_with_a_checkpoint(tiny, world_artifacts, capsys) -> None:
    from r2m.errors import NumericError
    from r2m.recipes.rl.build import build_run
    from r2m.recipes.rl.step import train_step

    root = Path(tiny[-1].split("=", 1)[1])
    rl = build_run(load_config(None, [*tiny, "run.name=nan-stop", "rl.steps=6", "run.max_bad_steps=2"]))
    _nan_reward(rl, {2, 3})
    train_step(rl, 1)
    train_step(rl, 2)
    with pytest.raises(NumericError, match=r"2 consecutive steps with NaN/inf .* step 3; stopped with a checkpoint"):
        train_step(rl, 3)
    assert (root / "nan-stop" / "checkpoints" / "step-000003" / "state.pt").exists()


def _supervised_trainer(stage: str, tiny, world_artifacts, root: Path, *extra: str):
    """train(out, name, resume) for SFT or RM training of the tiny world under ``root``."""
    from r2m.config.parsing import load_config
    from r2m.recipes.pipeline import ensure_world_rm_backbone, run_rm, run_sft

    cfg = load_config(None, [*tiny, f"run.root={root}", f"{stage}.max_steps=8", f"{stage}.log_every=2", *extra])
    files = world_artifacts[2]

    def train(out: Path, name: str, resume: bool):
        if stage == "sft":
            return run_sft(cfg, None, "policy", str(files.sft), out, name, resume=resume)
        init = str(ensure_world_rm_backbone(load_config(None, tiny)))
        return run_rm(cfg, init, str(files.pref_train), str(files.pref_eval), out, name, resume=resume)

    return train


@pytest.mark.parametrize("stage", ["sft", "rm"])
@pytest.mark.parametrize("damaged", [False, True])
def test_sft_and_rm_resume_exactly(stage, damaged, tiny, world_artifacts, tmp_path, caplog) -> None:
    """Resuming SFT/RM from a mid-run checkpoint ends on the same weights as the uninterrupted run; with the
    newest checkpoint damaged, from the one before it."""
    from safetensors.torch import load_file

    train = _supervised_trainer(stage, tiny, world_artifacts, tmp_path, f"{stage}.save_every={2 if damaged else 4}")
    train(tmp_path / "whole" / "model", "whole", resume=False)
    train(tmp_path / "cut" / "model", "cut", resume=False)
    ckpts = tmp_path / "cut" / "checkpoints"
    assert (ckpts / "step-000004" / "model.safetensors").exists()
    # Pretend the run died after its step-4 checkpoint (or step 6, now damaged): nothing later survives.
    import shutil

    shutil.rmtree(tmp_path / "cut" / "model")
    if damaged:
        _truncate(ckpts / "step-000006" / "model.safetensors")
    rows_before = read_metrics(tmp_path / "cut" / "metrics.jsonl")
    with caplog.at_level("WARNING", logger="r2m"):
        train(tmp_path / "cut" / "model", "cut", resume=True)
    assert ("step-000006 is damaged (model.safetensors has" in caplog.text) == damaged
    a = load_file(str(tmp_path / "whole" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows_after = read_metrics(tmp_path / "cut" / "metrics.jsonl")
    assert [r["step"] for r in rows_after] == [r["step"] for r in rows_before]  # steps 5.. recomputed, not doubled
    assert _stable(rows_after) == _stable(read_metrics(tmp_path / "whole" / "metrics.jsonl"))


# ---------------------------------------------------------------------------------------------
# One run per directory
# ---------------------------------------------------------------------------------------------


def test_second_run_in_a_busy_directory_is_refused_naming_the_holder(tiny, world_artifacts, capsys, caplog) -> None:
    """A second `r2m rl` of the same run.name is refused at once (PID and host named); the lock of a killed
    run is detected as stale and taken over; a finished run releases it."""
    import socket

    from r2m.runtime.runlock import holder_path, lock_path

    root = Path(tiny[-1].split("=", 1)[1])
    name = "busy"
    cmd = [sys.executable, "-m", "r2m", *_rl(tiny, name, "rl.steps=400")]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(root / name / "metrics.jsonl", proc)
        assert main(_rl(tiny, name, "rl.steps=1")) == 2
        err = capsys.readouterr().err
        assert f"run directory {root / name} is in use by PID {proc.pid} on host {socket.gethostname()}" in err, err
        assert err.startswith("r2m: error: ") and err.count("\n") == 1
        assert proc.poll() is None  # the holder runs on, its metrics untouched by the refused run
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=120)
    assert holder_path(root / name).exists()  # SIGKILL leaves the files; the flock died with the process
    assert lock_path(root / name).parent == root / name  # the lock lives inside the run directory
    with caplog.at_level("WARNING", logger="r2m"):
        assert main(_rl(tiny, name, "rl.steps=1")) == 0
    assert f"took over the stale lock of PID {proc.pid}" in caplog.text
    _documented("is in use by PID", "wait for it to finish, or use another run.name (lock file",
                "took over the stale lock of PID", "(that process has ended)")
    assert not holder_path(root / name).exists()  # released at the end of the run
    assert not (root / f".{name}.lock").exists()  # nothing beside the run directory


def test_lock_without_flock_detects_a_dead_holder(tmp_path, monkeypatch) -> None:
    """Where the file system has no flock, the lock file itself is the lock: a live holder refuses, a holder
    PID that no longer runs on this host is stale."""
    import json
    import socket

    from r2m.runtime import runlock

    def no_flock(fd, op):
        raise OSError(__import__("errno").ENOLCK, "no locks available")

    monkeypatch.setattr("fcntl.flock", no_flock)
    run = tmp_path / "run"
    run.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    holder = {"pid": int(dead.stdout), "host": socket.gethostname(), "since": time.time()}
    runlock.lock_path(run).write_text("")  # the soft lock: the file's existence
    runlock.holder_path(run).write_text(json.dumps(holder))
    runlock.acquire(run)  # the dead holder's files are removed and replaced
    assert json.loads(runlock.holder_path(run).read_text())["pid"] == os.getpid()
    runlock.release(run)
    assert not runlock.holder_path(run).exists() and not runlock.lock_path(run).exists()
    runlock.lock_path(run).write_text("")
    runlock.holder_path(run).write_text(json.dumps({**holder, "pid": os.getppid()}))  # a live one
    with pytest.raises(runlock.RunLockedError, match=rf"in use by PID {os.getppid()} on host"):
        runlock.acquire(run)


# ---------------------------------------------------------------------------------------------
# Damaged checkpoints, extended and moved runs
# ---------------------------------------------------------------------------------------------


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_damaged_newest_checkpoint_resumes_from_the_newest_that_verifies(tiny, world_artifacts, caplog) -> None:
    from r2m.runtime.checkpoint import latest_checkpoint, verify

    root = Path(tiny[-1].split("=", 1)[1])
    extra = ["rl.steps=4", "rl.save_every=1", "run.keep_checkpoints=0", "reward.r2m.enabled=true"]
    assert main(_rl(tiny, "damaged", *extra)) == 0
    whole = _stable(read_metrics(root / "damaged" / "metrics.jsonl"))
    ckpts = root / "damaged" / "checkpoints"
    _truncate(ckpts / "step-000004" / "state.pt")  # the newest: the last step always gets a checkpoint
    assert "state.pt has" in verify(ckpts / "step-000004")
    with caplog.at_level("WARNING", logger="r2m"):
        assert latest_checkpoint(ckpts).name == "step-000003"
        assert main(_rl(tiny, "damaged", *extra, "--resume")) == 0
    assert f"checkpoint {ckpts / 'step-000004'} is damaged (state.pt has" in caplog.text
    assert "the manifest says" in caplog.text and "skipping it for an older one" in caplog.text
    _documented("is damaged (state.pt has", "the manifest says", "skipping it for an older one")
    assert _stable(read_metrics(root / "damaged" / "metrics.jsonl")) == whole
    assert verify(ckpts / "step-000004") is None  # written again, whole


def test_resume_may_train_longer_and_change_how_often_it_saves(tiny, world_artifacts, caplog) -> None:
    """rl.steps, rl.eval_every, rl.save_every may change on resume (logged); the steps taken stay as they were."""
    root = Path(tiny[-1].split("=", 1)[1])
    assert main(_rl(tiny, "longer-whole", "rl.steps=4", "rl.save_every=1")) == 0
    assert main(_rl(tiny, "longer", "rl.steps=2", "rl.save_every=1")) == 0
    with caplog.at_level("WARNING", logger="r2m"):
        assert main(_rl(tiny, "longer", "rl.steps=4", "rl.save_every=2", "--resume")) == 0
    assert "rl.steps changed from 2 to 4" in caplog.text and "rl.save_every changed from 1 to 2" in caplog.text
    assert "(allowed: it does not change the steps already taken)" in caplog.text
    _documented("rl.steps changed from", "(allowed: it does not change the steps already taken)")
    rows = _stable(read_metrics(root / "longer" / "metrics.jsonl"))
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]
    assert rows == _stable(read_metrics(root / "longer-whole" / "metrics.jsonl"))
    with pytest.raises(ConfigError, match=r"rl.steps: expected at least the checkpoint's step 4 to resume .*, got 1"):
        from r2m.recipes.rl.run import run_rl

        run_rl(load_config(None, [*tiny, "run.name=longer", "rl.steps=1", "rl.save_every=2", "run.resume=auto"]))
    _documented("rl.steps: expected at least the checkpoint's step")


def test_moved_run_directory_resumes(tiny, world_artifacts, caplog) -> None:
    import shutil

    root = Path(tiny[-1].split("=", 1)[1])
    assert main(_rl(tiny, "before-move", "rl.steps=3", "rl.save_every=1")) == 0
    whole = _stable(read_metrics(root / "before-move" / "metrics.jsonl"))
    shutil.move(root / "before-move", root / "after-move")
    shutil.rmtree(root / "after-move" / "checkpoints" / "step-000003")  # so that a step remains to be taken
    with caplog.at_level("INFO", logger="r2m"):
        assert main(_rl(tiny, "after-move", "rl.steps=3", "rl.save_every=1", "--resume")) == 0
    assert "run.name changed from 'before-move' to 'after-move'" in caplog.text
    _documented("run.name changed from 'old' to 'new'")
    assert f"resumed from {root / 'after-move' / 'checkpoints' / 'step-000002'}" in caplog.text
    assert _stable(read_metrics(root / "after-move" / "metrics.jsonl")) == whole


# ---------------------------------------------------------------------------------------------
# Fault injection: SIGKILL inside the checkpoint save
# ---------------------------------------------------------------------------------------------

FAULT_RUN = ["rl.steps=5", "rl.save_every=2", "run.keep_checkpoints=0", "reward.r2m.enabled=true"]


@pytest.fixture(scope="module")
def uninterrupted(tiny, world_artifacts) -> list[dict]:
    root = Path(tiny[-1].split("=", 1)[1])
    assert main(_rl(tiny, "fault-whole", *FAULT_RUN)) == 0
    return _stable(read_metrics(root / "fault-whole" / "metrics.jsonl"))


# The second save (step 4) dies: after the weights, before state.pt; after state.pt, before meta.json;
# before the manifest; with every file written, before the rename.
@pytest.mark.parametrize("point", ["checkpoint.before_state@2", "checkpoint.before_meta@2",
                                   "checkpoint.before_manifest@2", "atomic_dir.before_rename:step-000004"])
def test_sigkill_inside_a_checkpoint_save_resumes_exactly(point, tiny, world_artifacts, uninterrupted) -> None:
    from r2m.runtime.checkpoint import list_checkpoints, verify
    from r2m.fileio import FAULT_ENV

    root = Path(tiny[-1].split("=", 1)[1])
    name = "fault-" + "".join(c if c.isalnum() else "-" for c in point)
    cmd = [sys.executable, "-m", "r2m", *_rl(tiny, name, *FAULT_RUN)]
    proc = subprocess.run(cmd, env={**_env(), FAULT_ENV: point}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    ckpts = root / name / "checkpoints"
    assert [p.name for p in list_checkpoints(ckpts)] == ["step-000002"]  # the half-written one is not listed
    assert any(p.name.startswith(".tmp-step-000004") for p in ckpts.iterdir())
    assert verify(ckpts / "step-000002") is None
    assert read_metrics(root / name / "metrics.jsonl")[-1]["step"] == 4

    assert main(_rl(tiny, name, *FAULT_RUN, "--resume")) == 0
    assert _stable(read_metrics(root / name / "metrics.jsonl")) == uninterrupted
    assert not any(p.name.startswith(".tmp-") for p in ckpts.iterdir())  # the debris is cleared
    assert all(verify(p) is None for p in list_checkpoints(ckpts))


def test_ser_resume_retrains_a_damaged_newest_loop(tiny, world_artifacts, caplog) -> None:
    from safetensors.torch import load_file

    root = Path(tiny[-1].split("=", 1)[1])
    loose = ["ser.tau_high=0.5", "ser.tau_low=0.5", "ser.tau_delta=0.001", "ser.delta=0.0", "ser.min_status1=1"]
    args = ["ser", *tiny, *loose, "run.name=ser-damaged", "ser.max_loops=2", "ser.ppo=false"]
    assert main(args) == 0
    weights = root / "ser-damaged" / "loop-2" / "checkpoints" / "final" / "model.safetensors"
    before = {k: v.clone() for k, v in load_file(str(weights)).items()}  # load_file maps the file: copy first
    _truncate(weights)
    with caplog.at_level("WARNING", logger="r2m"):
        assert main([*args, "--resume"]) == 0
    assert "SER: loop 2's RM loop-2/checkpoints/final is damaged (model.safetensors has" in caplog.text
    after = load_file(str(weights))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert [r["step"] for r in read_metrics(root / "ser-damaged" / "metrics.jsonl")] == [0, 1, 2]


def test_a_cache_being_built_by_another_process_is_waited_for(tmp_path) -> None:
    """Two runs on a fresh run.root: the second waits for the first's world model instead of building it too."""
    from r2m.recipes.pipeline import _must_build

    cache = tmp_path / "world" / "policy-abc"
    # The builder, as _must_build leaves it: the entry's cache.json first, then the lock while it builds.
    code = ("import sys, time; from pathlib import Path; from r2m.runtime import runlock; "
            "from r2m.recipes.pipeline import CACHE_FILE, WORLD_CACHE_FORMAT; d = Path(sys.argv[1]); "
            "WORLD_CACHE_FORMAT.write(d / CACHE_FILE); runlock.acquire(d); print('held', flush=True); "
            "time.sleep(1.5); (d / 'model').mkdir(parents=True); runlock.release(d)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(cache)], env=_env(), stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    assert _must_build(cache / "model", "the world's SFT policy") is False  # built by the other process meanwhile
    assert proc.wait(timeout=60) == 0


def test_damaged_results_and_state_files_are_named(tmp_path, caplog) -> None:
    """A bench result.json left damaged is computed again (logged); an unreadable state.pt is named."""
    from r2m.runtime.checkpoint import load_state_file, verify, write_manifest
    from r2m.errors import CheckpointError
    from r2m.fileio import read_json_or_none

    done = tmp_path / "bench-smoke-rloo-s0" / "result.json"
    done.parent.mkdir()
    done.write_text('{"eval/gold": 0.7')
    with caplog.at_level("WARNING", logger="r2m"):
        assert read_json_or_none(done) is None
    assert f"{done} is damaged (JSONDecodeError" in caplog.text and "computing it again" in caplog.text
    done.write_text('{"eval/gold": 0.7}')
    assert read_json_or_none(done) == {"eval/gold": 0.7}
    (tmp_path / "state.pt").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(CheckpointError, match=r"state.pt: cannot be read \(.*\); the checkpoint is damaged"):
        load_state_file(tmp_path / "state.pt")
    ckpt = tmp_path / "step-000001"
    ckpt.mkdir()
    (ckpt / "a.bin").write_bytes(b"0123")
    write_manifest(ckpt)
    assert verify(ckpt) is None
    (ckpt / "a.bin").write_bytes(b"0124")  # same size, other bytes
    assert verify(ckpt) == "a.bin does not match its checksum"
    (ckpt / "a.bin").unlink()
    assert verify(ckpt) == "a.bin is missing"
    _documented("is damaged (JSONDecodeError: …); computing it again",
                "cannot be read (…); the checkpoint is damaged")


def test_sigkill_between_the_renames_of_a_resave_resumes_exactly(tiny, world_artifacts, uninterrupted) -> None:
    """Re-saving a step whose checkpoint exists (after a resume past a damaged one) swaps two directories: a
    SIGKILL between the two renames leaves neither under the step's name, and the older checkpoint is used."""
    from r2m.runtime.checkpoint import list_checkpoints, verify
    from r2m.fileio import FAULT_ENV

    root = Path(tiny[-1].split("=", 1)[1])
    name = "fault-between-renames"
    assert main(_rl(tiny, name, *FAULT_RUN)) == 0
    ckpts = root / name / "checkpoints"
    _truncate(ckpts / "step-000005" / "state.pt")  # the last step's: resumed from step 4, step 5 is saved again
    cmd = [sys.executable, "-m", "r2m", *_rl(tiny, name, *FAULT_RUN, "--resume")]
    env = {**_env(), FAULT_ENV: "atomic_dir.between_renames:step-000005"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert [p.name for p in list_checkpoints(ckpts)] == ["step-000002", "step-000004"]
    assert any(p.name.startswith(".old-step-000005") for p in ckpts.iterdir())

    assert main(_rl(tiny, name, *FAULT_RUN, "--resume")) == 0
    assert _stable(read_metrics(root / name / "metrics.jsonl")) == uninterrupted
    assert [p.name for p in list_checkpoints(ckpts)] == ["step-000002", "step-000004", "step-000005"]
    assert all(verify(p) is None for p in list_checkpoints(ckpts))
    assert not any(p.name.startswith((".tmp-", ".old-")) for p in ckpts.iterdir())


def test_the_lock_is_released_when_a_run_fails(tiny, world_artifacts, monkeypatch) -> None:
    """A run that fails mid-way (its run directory written, never closed) lets go of it on the way out."""
    from r2m.errors import DataError
    from r2m.runtime.runlock import holder_path, is_held
    import r2m.recipes.rl.run

    def fail(s, step):
        raise DataError("a failure at step 1")

    monkeypatch.setattr(r2m.recipes.rl.run, "train_step", fail)
    root = Path(tiny[-1].split("=", 1)[1])
    assert main(_rl(tiny, "fails", "rl.steps=3")) == 2
    assert (root / "fails" / "metrics.jsonl").exists()  # the run had started
    assert not is_held(root / "fails") and not holder_path(root / "fails").exists()
