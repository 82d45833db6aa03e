"""RL prompts from a stream (an IterableDataset, or data.streaming): taken as needed, no length asked; an epoch is
one pass over the stream, the next pass opens it again; a resumed run continues where the stream was."""

from __future__ import annotations

import gc

import pytest

from r2m.errors import DataError
from r2m.recipes.rl.setup import StreamSampler

WORDS = ["<bos> 1 2 =>", "<bos> 3 4 =>", "<bos> 5 6 =>", "<bos> 7 8 =>", "<bos> 9 0 =>"]


@pytest.fixture(scope="module")
def tok():
    from r2m.world.tokenizer import build_tokenizer

    return build_tokenizer("policy")


def _passes(prompts, opened):
    def open_epoch(epoch):
        opened.append(epoch)
        return iter(prompts)

    return open_epoch


def test_epochs_are_passes_over_the_stream(tok) -> None:
    opened: list[int] = []
    s = StreamSampler(_passes(WORDS, opened), tok, max_tokens=64, overlong="truncate")
    texts, ids = s.take(3)
    assert texts == WORDS[:3] and ids[0] == tok(WORDS[0])["input_ids"]
    assert s.take(3)[0] == [WORDS[3], WORDS[4], WORDS[0]]  # the second pass begins
    assert (s.position, s.epoch, s.offset, opened) == (6, 1, 1, [0, 1])
    assert s.counts() == {"data/prompts_truncated": 0, "data/prompts_skipped": 0, "prompts/epoch": 1}


def test_a_resumed_stream_continues_where_it_was(tok) -> None:
    whole = StreamSampler(_passes(WORDS, []), tok, 64, "truncate")
    whole.take(4)
    state = whole.state_dict()
    after = whole.take(4)[0]
    resumed = StreamSampler(_passes(WORDS, []), tok, 64, "truncate")
    resumed.load_state_dict(state)
    assert resumed.take(4)[0] == after == [WORDS[4], *WORDS[:3]]
    with pytest.raises(DataError, match="written with a prompt set, and the prompts are now a stream"):
        resumed.load_state_dict({"position": 4})


def test_over_long_prompts_of_a_stream_are_counted(tok) -> None:
    s = StreamSampler(_passes(WORDS, []), tok, max_tokens=3, overlong="skip")  # every prompt has 4 tokens
    with pytest.raises(DataError, match="every prompt of a pass over the stream is longer than "
                                        "data.max_prompt_tokens=3"):
        s.take(2)
    s = StreamSampler(_passes(WORDS, []), tok, max_tokens=3, overlong="truncate")
    s.take(2)
    assert s.counts()["data/prompts_truncated"] == 2
    with pytest.raises(DataError, match="the prompt stream gave no prompt in a whole pass"):
        StreamSampler(_passes([], []), tok, 64, "truncate").take(1)


def _stream(prompts):
    from datasets import IterableDataset

    def gen():
        yield from ({"prompt": p} for p in prompts)

    return IterableDataset.from_generator(gen)


def _train(policy, files, out, steps: int, prompts, seen: list, resume: bool = False):
    import r2m

    gc.collect()  # an earlier trainer, and its dataset, are gone: this one takes the same source name (resumable)

    def reward(prompts, completions, **kwargs):
        seen.append(list(dict.fromkeys(prompts)) if len(prompts) == 8 else None)  # K=2 x 4 prompts: a step
        return [0.7 * len(c) for c in completions]

    args = r2m.RLArguments(output_dir=str(out), max_steps=steps, num_generations=2, report_to="none",
                        overrides={"rl.prompts_per_step": 4, "rl.eval_every": 100, "run.progress": False,
                                   "eval.samples_per_prompt": 1, "run.resume": "auto" if resume else "never",
                                   "data.max_prompt_tokens": 32, "rl.max_new_tokens": 10})  # a stream is checked at this bound
    trainer = r2m.RLTrainer(str(policy), reward, args=args, train_dataset=_stream(prompts),
                            eval_dataset=str(files.eval_prompts))
    trainer.train()
    return trainer.result  # r2m's RLResult (train() returns TRL's TrainOutput)


def test_an_iterable_dataset_streams_through_the_trainer(world_artifacts, tmp_path) -> None:
    """Six prompts, four per step: step 2 ends the first pass and begins the second; a run of two steps, resumed
    for a third, takes the same prompts as the run of three."""
    import json

    policy, _, files = world_artifacts
    prompts = [json.loads(line)["prompt"] for line in files.prompts.read_text().splitlines()[:6]]
    seen: list = []
    result = _train(policy, files, tmp_path / "whole", 3, prompts, seen)
    steps = [s for s in seen if s is not None]
    assert steps == [prompts[:4], prompts[4:] + prompts[:2], prompts[2:6]]
    last = result.history[-1]
    assert (last["prompts/seen"], last["prompts/epoch"]) == (12, 1)

    part: list = []
    _train(policy, files, tmp_path / "part", 2, prompts, part)
    _train(policy, files, tmp_path / "part", 3, prompts, part, resume=True)
    assert [s for s in part if s is not None] == steps
