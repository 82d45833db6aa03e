"""FeedbackRewardModel as a Hugging Face citizen: save_pretrained / from_pretrained / push_to_hub / score."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from r2m.config.models import ArchConfig
from r2m.config.enums import FusionInit
from r2m.errors import FormatVersionError, ModelError
from r2m.models.fusion import omega
from r2m.models.loading import build_world_lm, load_reward_model, load_tokenizer, save_model
from r2m.models.r2m import FeedbackRewardModel, build_feedback_rm, load_feedback_rm
from r2m.models.r2m_hub import resolve_base
from r2m.models.reward import RewardModel
from r2m.models.feedback import text_feedback
from r2m.world.tokenizer import build_tokenizer
from r2m.world.task import format_prompt

PROMPTS = [format_prompt(d) for d in ([3, 1, 2], [3, 1, 2], [9, 0, 4, 4], [9, 0, 4, 4])]
RESPONSES = ["1 2 3 <eos>", "3 2 1 <eos>", "0 4 4 9 <eos>", "9 <eos>"]
D_P, D_M = 32, 24


def _build_rm_dir(root: Path) -> Path:
    tok = build_tokenizer("rm")
    lm = build_world_lm(ArchConfig(hidden_size=D_M, num_layers=1, num_heads=2, intermediate_size=48), tok, seed=1)
    return save_model(lm, tok, root / "rm")


@pytest.fixture(scope="module")
def policy():
    tok = build_tokenizer("policy")
    lm = build_world_lm(ArchConfig(hidden_size=D_P, num_layers=1, num_heads=2, intermediate_size=64), tok, 0)
    return lm.eval(), tok


def _r2m(rm_dir: Path, init: FusionInit = FusionInit.RANDOM) -> FeedbackRewardModel:
    tok = load_tokenizer(str(rm_dir))
    torch.manual_seed(7)  # the new score head and the fusion
    rm = RewardModel(load_reward_model(str(rm_dir), pad_token_id=tok.pad_token_id), tok)
    model = build_feedback_rm(rm, D_P, 16, 2, init)
    with torch.no_grad():  # a trained head: different from the base RM's, so a mix-up shows
        model.head.weight.mul_(0.7).add_(0.1)
    return model


def test_a_moved_directory_loads_and_scores_the_same(tmp_path, policy) -> None:
    pol, ptok = policy
    root = tmp_path / "a"
    rm_dir = _build_rm_dir(root)
    model = _r2m(rm_dir)
    before = model.score(PROMPTS, RESPONSES, policy=pol, policy_tokenizer=ptok, step=3, total_steps=10,
                         omega_floor=0.6)
    model.save_pretrained(root / "run" / "checkpoints" / "final" / "r2m", extra={"omega_floor": 0.6,
                                                                                  "total_steps": 10})
    meta = json.loads((root / "run" / "checkpoints" / "final" / "r2m" / "r2m.json").read_text())
    assert meta["base_rm_kind"] == "local" and meta["base_rm"] == str(rm_dir.resolve())
    assert meta["base_rm_relative"] == "../../../../rm"
    # the run directory moved with its RM: the relative path finds the moved RM
    shutil.move(str(root), str(tmp_path / "b"))
    loaded = FeedbackRewardModel.from_pretrained(tmp_path / "b" / "run" / "checkpoints" / "final" / "r2m")
    assert loaded.base_rm == str((tmp_path / "b" / "rm").resolve())
    after = loaded.score(PROMPTS, RESPONSES, policy=pol, policy_tokenizer=ptok, step=3)  # T and Ω from r2m.json
    torch.testing.assert_close(after, before)
    # the thin wrappers the RL run uses read the same files
    again = load_feedback_rm(tmp_path / "b" / "run" / "checkpoints" / "final" / "r2m")
    torch.testing.assert_close(again.score(PROMPTS, RESPONSES, policy=pol, policy_tokenizer=ptok, step=3), before)
    torch.testing.assert_close(loaded.vanilla_score(loaded.embed_texts(PROMPTS, RESPONSES)),
                               model.vanilla_score(model.embed_texts(PROMPTS, RESPONSES)))


def test_an_r2m_moved_without_its_base_loads_it_by_absolute_path(tmp_path, policy) -> None:
    pol, ptok = policy
    rm_dir = _build_rm_dir(tmp_path / "models")
    model = _r2m(rm_dir)
    model.save_pretrained(tmp_path / "out" / "r2m", extra={"omega_floor": 0.6})
    shutil.move(str(tmp_path / "out"), str(tmp_path / "elsewhere" / "deeper"))
    loaded = FeedbackRewardModel.from_pretrained(tmp_path / "elsewhere" / "deeper" / "r2m")
    assert loaded.base_rm == str(rm_dir.resolve())
    kw = dict(policy=pol, policy_tokenizer=ptok)
    torch.testing.assert_close(loaded.score(PROMPTS, RESPONSES, **kw), model.score(PROMPTS, RESPONSES, omega_floor=0.6,
                                                                                    **kw))


def test_a_damaged_file_is_named(tmp_path) -> None:
    model = _r2m(_build_rm_dir(tmp_path))
    model.save_pretrained(tmp_path / "r2m")
    manifest = json.loads((tmp_path / "r2m" / "manifest.json").read_text())["files"]
    assert sorted(manifest) == ["README.md", "r2m.json", "r2m.safetensors"]
    data = bytearray((tmp_path / "r2m" / "r2m.safetensors").read_bytes())
    data[-1] ^= 0xFF  # one flipped byte in a weight
    (tmp_path / "r2m" / "r2m.safetensors").write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"r2m: r2m\.safetensors does not match its checksum"):
        FeedbackRewardModel.from_pretrained(tmp_path / "r2m")


def test_a_hub_cache_snapshot_base_is_named_by_its_hub_id(tmp_path) -> None:
    snapshot = tmp_path / "hub" / "models--me--rm-tiny" / "snapshots" / "0123abc"
    model = _r2m(_build_rm_dir(snapshot.parent))
    shutil.move(str(snapshot.parent / "rm"), str(snapshot))
    model.base_rm = str(snapshot)
    model.save_pretrained(tmp_path / "r2m")
    meta = json.loads((tmp_path / "r2m" / "r2m.json").read_text())
    assert (meta["base_rm_kind"], meta["base_rm_hub_id"]) == ("local", "me/rm-tiny")
    assert "base_model: me/rm-tiny" in (tmp_path / "r2m" / "README.md").read_text()
    shutil.rmtree(tmp_path / "hub")  # the cache cleared: the hub id is what is left to load from
    assert resolve_base(meta, tmp_path / "r2m") == "me/rm-tiny"


def test_score_is_the_fusion_score_of_text_feedback(tmp_path, policy) -> None:
    pol, ptok = policy
    model = _r2m(_build_rm_dir(tmp_path))
    rte = model.embed_texts(PROMPTS, RESPONSES)
    h = text_feedback(pol, ptok, PROMPTS, RESPONSES, torch.device("cpu"))
    for step, w in [(4, omega(4, 10, 0.6)), (None, 0.6)]:
        want = model.score_embeddings(rte, h.hidden, h.mask, w)
        got = model.score(PROMPTS, RESPONSES, policy=pol, policy_tokenizer=ptok, step=step, total_steps=10,
                          omega_floor=0.6, batch_size=3)  # ragged chunks: 3 + 1
        torch.testing.assert_close(got, want)
    with pytest.raises(ModelError, match="pass policy= and policy_tokenizer="):
        model.score(PROMPTS, RESPONSES, omega_floor=0.6)
    with pytest.raises(ModelError, match="needs total_steps"):
        model.score(PROMPTS, RESPONSES, policy=pol, policy_tokenizer=ptok, step=2, omega_floor=0.6)


def test_the_calibrated_flag_round_trips(tmp_path, policy) -> None:
    pol, ptok = policy
    rm_dir = _build_rm_dir(tmp_path)
    model = _r2m(rm_dir, FusionInit.MATCHED)
    model.save_pretrained(tmp_path / "raw")
    assert not bool(FeedbackRewardModel.from_pretrained(tmp_path / "raw").fusion.calibrated)  # still to calibrate
    h = text_feedback(pol, ptok, PROMPTS, RESPONSES, torch.device("cpu"))
    assert model.calibrate(model.embed_texts(PROMPTS, RESPONSES), h.hidden, h.mask, 2) is not None
    model.save_pretrained(tmp_path / "done")
    loaded = FeedbackRewardModel.from_pretrained(tmp_path / "done")
    assert bool(loaded.fusion.calibrated)
    assert torch.equal(loaded.fusion.w_o.weight, model.fusion.w_o.weight)


@pytest.mark.parametrize("old", ["format 1", "format 2", "no calibrated flag"])
def test_a_directory_of_another_format_version_is_refused_by_name(tmp_path, old) -> None:
    """r2m.json carries format_version 3; an earlier one (format 1: no version, the base as given; format 2: a base
    relative to the directory) is refused naming the file, both versions and what to do, never read another way.
    A state without the fusion's calibrated flag (written before it existed, so before format 3) does not load."""
    rm_dir = _build_rm_dir(tmp_path)
    model = _r2m(rm_dir)
    model.save_pretrained(tmp_path / "r2m")
    meta = json.loads((tmp_path / "r2m" / "r2m.json").read_text())
    assert (meta["format"], meta["format_version"]) == ("r2m.feedback_rm", 3)
    if old == "no calibrated flag":
        state = {k: v for k, v in model.trainable_state().items() if k != "fusion.calibrated"}
        with pytest.raises(RuntimeError, match="calibrated"):
            _r2m(rm_dir).load_trainable_state(state)
        return
    legacy = ({"base_rm": str(rm_dir), "fusion": meta["fusion"]} if old == "format 1"
              else {"format": "r2m.feedback_rm", "format_version": 2, "base_rm": "../rm", "base_rm_kind": "relative",
                    "fusion": meta["fusion"]})
    (tmp_path / "r2m" / "r2m.json").write_text(json.dumps(legacy))
    (tmp_path / "r2m" / "manifest.json").unlink()
    has = "no format version" if old == "format 1" else "format version 2"
    with pytest.raises(FormatVersionError, match=rf"r2m\.json: this R2M reward model directory has {has}.*; this r2m "
                                                 r"reads version 3: train it again"):
        FeedbackRewardModel.from_pretrained(tmp_path / "r2m")
    (tmp_path / "r2m" / "r2m.json").write_text(json.dumps({**meta, "format": "something.else"}))
    with pytest.raises(ModelError, match=r"r2m\.json: format='something\.else', expected 'r2m\.feedback_rm'"):
        FeedbackRewardModel.from_pretrained(tmp_path / "r2m")


def test_a_missing_base_is_named(tmp_path) -> None:
    rm_dir = _build_rm_dir(tmp_path / "a")
    _r2m(rm_dir).save_pretrained(tmp_path / "a" / "r2m")
    shutil.move(str(tmp_path / "a" / "r2m"), str(tmp_path / "r2m"))  # moved without its base RM ...
    shutil.move(str(rm_dir), str(tmp_path / "rm-moved"))  # ... which moved too
    with pytest.raises(ModelError, match=r"r2m\.json: no base RM at \S+/rm or \S+/a/rm; .* or pass base_rm="):
        FeedbackRewardModel.from_pretrained(tmp_path / "r2m")
    # ... and base_rm= points it at the base RM
    assert FeedbackRewardModel.from_pretrained(tmp_path / "r2m", base_rm=str(tmp_path / "rm-moved")).fusion is not None
    with pytest.raises(ModelError, match="no Hub snapshot"):  # HF_HUB_OFFLINE=1: nothing is fetched
        FeedbackRewardModel.from_pretrained("nobody/no-such-r2m-model")


class FakeHfApi:
    """Records what push_to_hub sends; keeps a copy of the uploaded folder (a stand-in for the Hub)."""

    def __init__(self, store: Path):
        self.store, self.calls = store, []

    def create_repo(self, repo_id, **kw):
        self.calls.append(("create_repo", repo_id, kw))

    def upload_folder(self, repo_id, folder_path, **kw):
        self.calls.append(("upload_folder", repo_id, kw))
        shutil.copytree(folder_path, self.store / repo_id)
        return f"https://huggingface.co/{repo_id}/commit/0"


def test_push_to_hub(tmp_path, policy, monkeypatch) -> None:
    pol, ptok = policy
    model = _r2m(_build_rm_dir(tmp_path))
    api = FakeHfApi(tmp_path / "hub")
    with pytest.raises(ModelError, match="is a local path, which would mean nothing on the Hub"):
        model.push_to_hub("me/r2m-tiny", api=api)
    assert api.calls == []
    # base RM by hub id: only the fusion, head, config and card go up
    model.push_to_hub("me/r2m-small", base_rm="me/rm-tiny", private=True, api=api)
    up = tmp_path / "hub" / "me" / "r2m-small"
    assert sorted(p.name for p in up.iterdir()) == ["README.md", "manifest.json", "r2m.json", "r2m.safetensors"]
    meta = json.loads((up / "r2m.json").read_text())
    assert (meta["base_rm"], meta["base_rm_kind"]) == ("me/rm-tiny", "hub_id")
    card = (up / "README.md").read_text()
    assert "base_model: me/rm-tiny" in card and 'from_pretrained("me/r2m-small")' in card
    assert api.calls[0] == ("create_repo", "me/r2m-small", {"private": True, "exist_ok": True, "repo_type": "model"})
    # the base travels with the upload: a "download" (snapshot_download, mocked) of it loads and scores the same
    model.push_to_hub("me/r2m-tiny", include_base=True, api=api)
    assert (tmp_path / "hub" / "me" / "r2m-tiny" / "base" / "model.safetensors").is_file()
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kw: str(tmp_path / "hub" / repo_id))
    loaded = FeedbackRewardModel.from_pretrained("me/r2m-tiny")
    kw = dict(policy=pol, policy_tokenizer=ptok, omega_floor=0.6)
    torch.testing.assert_close(loaded.score(PROMPTS, RESPONSES, **kw), model.score(PROMPTS, RESPONSES, **kw))
    rte = model.embed_texts(PROMPTS, RESPONSES)  # the stored base has the original head, not the trained one
    torch.testing.assert_close(loaded.vanilla_score(rte), model.vanilla_score(rte))
    base = tmp_path / "hub" / "me" / "r2m-tiny" / "base"
    tok = load_tokenizer(str(base))
    plain = RewardModel(load_reward_model(str(base), pad_token_id=tok.pad_token_id), tok)
    torch.testing.assert_close(plain.score_texts(PROMPTS, RESPONSES), model.vanilla_score(rte))


def test_the_rm_head_baseline_saves_loads_and_scores_without_a_policy(tmp_path) -> None:
    rm_dir = _build_rm_dir(tmp_path)
    tok = load_tokenizer(str(rm_dir))
    model = build_feedback_rm(RewardModel(load_reward_model(str(rm_dir), pad_token_id=tok.pad_token_id), tok),
                              None, 16, 2, FusionInit.RANDOM)
    with torch.no_grad():
        model.head.weight.mul_(0.7)
    model.save_pretrained(tmp_path / "head")
    assert "Iterative RM-head baseline" in (tmp_path / "head" / "README.md").read_text()
    loaded = FeedbackRewardModel.from_pretrained(tmp_path / "head")
    assert loaded.fusion is None
    want = model.head(model.embed_texts(PROMPTS, RESPONSES)).squeeze(-1)
    torch.testing.assert_close(loaded.score(PROMPTS, RESPONSES), want)
