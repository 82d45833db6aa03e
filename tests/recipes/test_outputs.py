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
    import r2m.recipes.rl.run

    user = _user_setup(world_artifacts, tmp_path)
    before = _files(tmp_path)
    run = tmp_path / "runs" / "mine"
    seen: list[set[Path]] = []
    step = r2m.recipes.rl.run.train_step

    def snapshot(s, t):
        seen.append(_files(tmp_path) - before)  # mid-run: the lock and the run's files as they are
        return step(s, t)

    monkeypatch.setattr(r2m.recipes.rl.run, "train_step", snapshot)
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


# ---------------------------------------------------------------------------------------------
# Checkpoints, plots, samples, model card, Hub
# ---------------------------------------------------------------------------------------------


def test_an_extended_run_resumes_at_its_last_step(tiny, world_artifacts, caplog) -> None:
    """The last step always gets a checkpoint (rl.save_every=0 saves none before it): raising rl.steps and resuming
    continues at step 2, not from scratch."""
    from r2m.runtime.checkpoint import list_checkpoints
    from r2m.runtime.runlog import read_metrics

    root = Path(tiny[-1].split("=", 1)[1])
    args = ["rl", *tiny, "run.name=extended", "rl.save_every=0"]
    assert main([*args, "rl.steps=2"]) == 0
    assert [p.name for p in list_checkpoints(root / "extended" / "checkpoints")] == ["step-000002"]
    with caplog.at_level("INFO", logger="r2m"):
        assert main([*args, "rl.steps=3", "--resume"]) == 0
    assert "at step 2" in caplog.text and "resumed from" in caplog.text
    assert [r["step"] for r in read_metrics(root / "extended" / "metrics.jsonl")] == [0, 1, 2, 3]
    assert [p.name for p in list_checkpoints(root / "extended" / "checkpoints")] == ["step-000002", "step-000003"]


def _not_world_prompts(src: Path, out: Path) -> Path:
    """The world's prompts without their '=>': no longer world prompts, so the run has no gold reward."""
    rows = [json.loads(line) for line in src.read_text().splitlines() if line.strip()]
    out.write_text("".join(json.dumps({"prompt": r["prompt"].replace(" =>", "")}) + "\n" for r in rows))
    return out


@pytest.fixture(scope="module")
def users_run(tiny, world_artifacts, tmp_path_factory):
    """`r2m rl` (R2M) on a user's models and prompts that are not the world's (no gold reward), logging to
    tensorboard, pushed to a mocked Hub."""
    import huggingface_hub

    tmp = tmp_path_factory.mktemp("users_run")
    user = _user_setup(world_artifacts, tmp)
    prompts = _not_world_prompts(user["prompts"], tmp / "my-prompts.jsonl")
    evalp = _not_world_prompts(user["eval_prompts"], tmp / "my-eval.jsonl")
    pushed: dict = {}

    class FakeApi:
        def create_repo(self, repo_id, private=None, exist_ok=False, repo_type=None):
            pushed["repo"] = (repo_id, private)
            return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

        def upload_folder(self, repo_id, folder_path, repo_type=None, commit_message=None, ignore_patterns=None):
            pushed["files"] = sorted(str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*")
                                     if p.is_file() and not any(p.match(g) for g in ignore_patterns or []))
            pushed["ignored"] = list(ignore_patterns or [])

    mp = pytest.MonkeyPatch()
    mp.setattr(huggingface_hub, "HfApi", FakeApi)
    try:
        args = ["rl", *tiny, f"run.root={tmp / 'runs'}", "run.name=mine", f"policy.path={user['policy']}",
                f"reward.path={user['rm']}", f"data.prompts={prompts}", f"data.eval_prompts={evalp}",
                f"data.pref_eval={user['pref_eval']}", "reward.r2m.enabled=true", "run.log_with=[tensorboard]",
                "run.push_to_hub=true", "run.hub_model_id=me/my-policy", "run.hub_private_repo=true"]
        assert main(args) == 0
    finally:
        mp.undo()
    return tmp / "runs" / "mine", user, pushed


def test_plots_appear_without_the_gold_reward(users_run) -> None:
    run, _, _ = users_run
    names = {p.name for p in (run / "plots").iterdir()}
    assert {"rewards.png", "kl.png", "length.png", "policy_loss.png", "r2m_loss.png"} <= names, names
    assert "gold_vs_proxy.png" not in names  # no gold reward without the world's prompts
    assert all((run / "plots" / n).stat().st_size > 5_000 for n in names)


def test_each_evaluation_keeps_its_samples(users_run) -> None:
    """samples/step_NNNNNN.jsonl per evaluation (steps 0, 1, 2 with rl.eval_every=1): prompt, completion, the run's
    reward and the vanilla RM's; the same rows reach tensorboard as a text table."""
    run, user, _ = users_run
    files = sorted(p.name for p in (run / "samples").iterdir())
    assert files == ["step_000000.jsonl", "step_000001.jsonl", "step_000002.jsonl"]
    rows = [json.loads(line) for line in (run / "samples" / "step_000002.jsonl").read_text().splitlines()]
    evalp = [json.loads(line)["prompt"] for line in (user["eval_prompts"]).read_text().splitlines()]
    assert len(rows) == len(evalp)  # eval.samples_per_prompt=1
    assert {"step", "prompt", "completion", "reward", "reward_vanilla", "length"} <= set(rows[0])
    assert "gold" not in rows[0]
    assert all(r["step"] == 2 and isinstance(r["reward"], float) for r in rows)
    from r2m.runtime.runlog import read_metrics

    last_eval = [r for r in read_metrics(run / "metrics.jsonl") if r["step"] == 2][0]
    assert abs(sum(r["reward"] for r in rows) / len(rows) - last_eval["eval/proxy"]) < 1e-5

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = [p for p in run.rglob("events.out.tfevents.*")]
    acc = EventAccumulator(str(events[0].parent), size_guidance={"tensors": 0})
    acc.Reload()
    tags = [t for t in acc.Tags()["tensors"] if t.startswith("completions")]
    assert tags, acc.Tags()
    texts = [e.tensor_proto.string_val[0].decode() for e in acc.Tensors(tags[0])]
    assert len(texts) == 3 and "| step | prompt | completion | reward |" in texts[-1]
    assert rows[0]["completion"].replace("|", "\\|").replace("\n", "<br>") in texts[-1]


def test_the_policy_gets_a_model_card_and_is_pushed(users_run) -> None:
    from huggingface_hub import ModelCard

    run, user, pushed = users_run
    card = ModelCard.load(run / "checkpoints" / "final" / "README.md")
    assert card.data.base_model is None  # a local base: no Hub metadata that would point nowhere
    assert {"r2m", "rlhf", "rloo", "r2m-reward-model"} <= set(card.data.tags)
    assert "trained by r2m with RLOO and R2M" in card.text
    assert "Real-Time Aligned Reward Model beyond Semantics" in card.text
    assert "arXiv:2402.14740" in card.text and "| `rl.steps` | `2` |" in card.text and str(user["policy"]) in card.text
    assert "`eval/proxy`" in card.text
    assert pushed["repo"] == ("me/my-policy", True)
    assert "README.md" in pushed["files"] and "model.safetensors" in pushed["files"]
    assert not any(f.startswith("r2m/") for f in pushed["files"])  # R2M's RM stays local (its base is a path)


def test_a_hub_base_model_is_the_cards_base_model(tiny_cfg) -> None:
    from r2m.config.parsing import replace_path
    from r2m.recipes.rl.card import policy_card

    cfg = replace_path(tiny_cfg, rl__algorithm="grpo")
    card = policy_card(cfg, "Qwen/Qwen2.5-0.5B-Instruct", {"eval/proxy": 0.7})
    assert card.data.base_model == "Qwen/Qwen2.5-0.5B-Instruct" and "grpo" in card.data.tags
    assert "arXiv:2402.03300" in card.text and "R2M" not in card.text.split("## Citations")[1]


def test_every_algorithm_has_its_citation() -> None:
    from r2m.config.enums import Algorithm
    from r2m.recipes.rl.card import METHODS

    assert set(METHODS) == {a.value for a in Algorithm}
    assert all("eprint" in bib for _, bib in METHODS.values())


def test_a_failed_push_says_where_the_model_is(tiny_cfg, tmp_path, monkeypatch) -> None:
    import huggingface_hub

    from r2m.config.parsing import replace_path
    from r2m.errors import ModelError
    from r2m.recipes.rl.card import push_policy

    class Offline:
        def create_repo(self, *a, **k):
            raise huggingface_hub.errors.OfflineModeIsEnabled("offline")

    monkeypatch.setattr(huggingface_hub, "HfApi", Offline)
    cfg = replace_path(tiny_cfg, run__push_to_hub=True)
    with pytest.raises(ModelError, match=rf"run.push_to_hub: uploading {tmp_path} to default failed "
                                         r"\(OfflineModeIsEnabled: offline\); the model is saved there"):
        push_policy(tmp_path, cfg)


# ---------------------------------------------------------------------------------------------
# Trackers (report_to)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tracker", ["wandb", "mlflow"])
def test_a_tracker_that_is_not_installed_is_an_error(tiny, world_artifacts, capsys, tracker) -> None:
    import importlib.util

    if importlib.util.find_spec(tracker) is not None:
        pytest.skip(f"{tracker} is installed here")
    root = Path(tiny[-1].split("=", 1)[1])
    assert main(["rl", *tiny, f"run.name=no-{tracker}", f"run.log_with=[tensorboard,{tracker}]"]) == 2
    err = capsys.readouterr().err
    assert f"run.log_with (report_to): {tracker} requested but not installed; pip install {tracker}" in err, err
    assert not (root / f"no-{tracker}").exists()


def test_report_to_takes_transformers_values(tmp_path) -> None:
    """transformers' report_to values: a list, one name, "all" (every installed tracker), "none"."""
    from r2m.config.parsing import load_config
    from r2m.runtime.runlog import resolve_trackers

    assert resolve_trackers(load_config(None, ["run.log_with=none"]).run.log_with) == []
    assert resolve_trackers(load_config(None, ["run.log_with=all"]).run.log_with) == ["all"]
    assert resolve_trackers(load_config(None, ["run.log_with=tensorboard"]).run.log_with) == ["tensorboard"]
    for name in ("trackio", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "swanlab"):
        assert load_config(None, [f"run.log_with=[{name}]"]).run.log_with == (name,)
    from r2m.errors import ConfigError

    with pytest.raises(ConfigError, match="run.log_with: expected 'none' alone"):
        load_config(None, ["run.log_with=[none,tensorboard]"])


def test_a_table_reaches_each_kind_of_tracker(caplog) -> None:
    from r2m.runtime.runlog import log_table

    calls = []

    class Wandb:
        name = "wandb"

        def log_table(self, table_name, columns, data, step):
            calls.append(("table", table_name, columns, data, step))

    class Board:
        name = "tensorboard"

        def log(self, values, step):
            calls.append(("text", values, step))

    class Other:
        name = "aim"

    rows = [{"step": 3, "prompt": "a|b", "completion": "x\ny", "reward": 0.7}]
    with caplog.at_level("INFO", logger="r2m"):
        log_table([Wandb(), Board(), Other()], "completions", rows, 3)
    columns = ["step", "prompt", "completion", "reward"]
    assert calls[0] == ("table", "completions", columns, [[3, "a|b", "x\ny", 0.7]], 3)
    assert calls[1][1]["completions"].splitlines()[-1] == "| 3 | a\\|b | x<br>y | 0.7 |"
    assert "tracker aim logs no tables: the completions are in the run's samples/*.jsonl" in caplog.text
