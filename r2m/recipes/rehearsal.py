"""Paper-config rehearsals: Hub-layout dataset fixtures and the overrides that point a paper config at them.

A rehearsal runs a ``configs/paper/*.yaml`` command exactly as written, except for model paths (random models
of the same families, :mod:`r2m.models.families`), data paths (Parquet files in each dataset's Hub layout:
the same columns, split names and file names, with the dataset card's ``configs`` where the Hub has one,
written by the functions below) and sizes. Used by tests/test_paper_rehearsal.py (tiny models, CPU) and by
scripts/gpu_check.py (realistic sizes, one GPU).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from r2m.models.families import Family

ROOT = Path(__file__).resolve().parents[2]
PAPER_DIR = ROOT / "configs" / "paper"

# ---------------------------------------------------------------------------------------------
# Datasets in their Hub layout
# ---------------------------------------------------------------------------------------------

TOPICS = ["the sea", "bread", "the moon", "a cat", "rain", "music", "a garden", "winter", "trains", "tea",
          "a river", "the sun"]


def _parquet(rows: list[dict], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def _card(root: Path, splits: list[str]) -> None:
    """The dataset card's ``configs`` block, as the Hub repo has it (split names are not train/test only)."""
    lines = ["---", "configs:", "- config_name: default", "  data_files:"]
    for s in splits:
        lines += [f"  - split: {s}", f"    path: data/{s}-*"]
    (root / "README.md").write_text("\n".join([*lines, "---", ""]))


def ultrafeedback(root: Path) -> Path:
    """HuggingFaceH4/ultrafeedback_binarized: six splits, chosen/rejected/messages as chat message lists."""
    splits = {"train_prefs": 120, "test_prefs": 6, "train_sft": 2, "test_sft": 2, "train_gen": 2, "test_gen": 2}
    for split, n in splits.items():
        rows = []
        for i in range(n):
            topic = TOPICS[i % len(TOPICS)]
            prompt = f"Write one line about {topic} {i}."
            chosen = [{"content": prompt, "role": "user"},
                      {"content": f"Here is a line about {topic}.", "role": "assistant"}]
            rejected = [{"content": prompt, "role": "user"}, {"content": "No.", "role": "assistant"}]
            rows.append({"prompt": prompt, "prompt_id": f"{split}-{i:04d}", "chosen": chosen, "rejected": rejected,
                         "messages": chosen, "score_chosen": 8.5, "score_rejected": 3.0})
        _parquet(rows, root / "data" / f"{split}-00000-of-00001.parquet")
    _card(root, list(splits))
    return root


def _post(i: int) -> str:
    topic = TOPICS[i % len(TOPICS)]
    return f"SUBREDDIT: r/AskReddit\n\nTITLE: about {topic}\n\nPOST: I keep thinking about it.\n\nTL;DR:"


def tldr(root: Path) -> Path:
    """trl-lib/tldr: prompt/completion, splits train/validation/test (data/<split>-00000-of-00001.parquet)."""
    for split, n in {"train": 12, "validation": 2, "test": 6}.items():
        _parquet([{"prompt": _post(i), "completion": f" thinking about {TOPICS[i % len(TOPICS)]}"} for i in range(n)],
                 root / "data" / f"{split}-00000-of-00001.parquet")
    return root


def tldr_preference(root: Path) -> Path:
    """trl-lib/tldr-preference: prompt/chosen/rejected strings, splits train/validation."""
    for split, n in {"train": 4, "validation": 6}.items():
        _parquet([{"prompt": _post(i), "chosen": f" thinking about {TOPICS[i % len(TOPICS)]}", "rejected": " no"}
                  for i in range(n)], root / "data" / f"{split}-00000-of-00001.parquet")
    return root


def hh_rlhf(root: Path) -> Path:
    """Anthropic/hh-rlhf: chosen/rejected transcripts in per-subset folders, train/test files in each."""
    for subset, offset in (("helpful-base", 0), ("harmless-base", 100)):
        for split, n in {"train": 120, "test": 8}.items():
            rows = []
            for i in range(n):
                topic = TOPICS[(i + offset) % len(TOPICS)]
                head = f"\n\nHuman: tell me about {topic} {i}\n\nAssistant:"
                rows.append({"chosen": f"{head} It is nice.", "rejected": f"{head} Go away."})
            _parquet(rows, root / subset / f"{split}.parquet")
    return root


# ---------------------------------------------------------------------------------------------
# What each config gets
# ---------------------------------------------------------------------------------------------

R2M_SIZES = ["rl.steps=2", "rl.prompts_per_step=4", "rl.k=2", "rl.max_new_tokens=6", "rl.minibatches=2",
             "rl.micro_batch_size=2", "rl.rollout_batch_size=4", "rl.rollout_chunks=2", "rl.eval_every=1",
             "rl.save_every=1", "data.max_prompt_tokens=200", "reward.r2m.inner_dim=16", "eval.batch_size=4"]
SER_SIZES = ["ser.max_loops=1", "ser.rl.steps=2", "ser.min_status1=1", "rm.batch_size=8", "rm.epochs=1",
             "rl.prompts_per_step=4", "rl.minibatches=2", "rl.rollout_batch_size=4", "rl.max_new_tokens=6",
             "rl.eval_every=1", "rl.save_every=1", "data.max_prompt_tokens=200", "eval.batch_size=4"]


class Plan:
    """The overrides of one paper config and the command it runs.

    ``models`` maps Family.QWEN2_5 / LLAMA3 / PYTHIA to policy directories and "skywork" / "pythia_rm" to reward
    models; ``data`` maps "ultrafeedback", "tldr", "tldr_preference" and "hh_rlhf" to dataset directories.
    """

    def __init__(self, config: Path, models: dict, data: dict, root: Path, sizes: Optional[list[str]] = None):
        name = config.stem
        self.command = "ser" if name.startswith("ser_") else "rl"
        self.name = name
        paths = {"run.root": root, "run.name": name}
        if name.startswith("r2m_qwen"):
            paths |= {"policy.path": models[Family.QWEN2_5], "reward.path": models["skywork"]}
        elif name.startswith("r2m_llama3"):
            paths |= {"policy.path": models[Family.LLAMA3], "reward.path": models["skywork"]}
        elif name.startswith("r2m_pythia"):
            paths |= {"policy.path": models[Family.PYTHIA], "reward.path": models["pythia_rm"]}
        else:
            paths |= {"policy.path": models[Family.LLAMA3], "rm.init_from": models[Family.LLAMA3]}
        if "ultrafeedback" in name:
            uf = data["ultrafeedback"]
            paths |= {f"data.{f}": uf for f in ("prompts", "eval_prompts", "sft", "pref_train", "pref_eval",
                                               "pref_policy")}
        elif "tldr" in name:
            paths |= {"data.prompts": data["tldr"], "data.eval_prompts": data["tldr"], "data.sft": data["tldr"],
                      "data.pref_eval": data["tldr_preference"]}
        else:
            hh = data["hh_rlhf"]
            paths |= {f"data.{f}": hh for f in ("prompts", "eval_prompts", "sft", "pref_train", "pref_eval",
                                               "pref_policy")}
        if sizes is None:
            sizes = SER_SIZES if self.command == "ser" else R2M_SIZES
        self.overrides = [f"{k}={v}" for k, v in paths.items()] + sizes
        self.run_dir = root / name

    def argv(self, *extra: str) -> list[str]:
        return [self.command, "-c", str(PAPER_DIR / f"{self.name}.yaml"), *self.overrides, *extra]


def write_datasets(root: Path) -> dict:
    """Every dataset the paper configs read, in its Hub layout under ``root``."""
    return {"ultrafeedback": str(ultrafeedback(root / "ultrafeedback_binarized")), "tldr": str(tldr(root / "tldr")),
            "tldr_preference": str(tldr_preference(root / "tldr-preference")),
            "hh_rlhf": str(hh_rlhf(root / "hh-rlhf"))}
