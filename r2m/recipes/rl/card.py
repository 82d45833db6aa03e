"""The trained policy's model card (``huggingface_hub.ModelCard``, as TRL's ``generate_model_card``) and its upload
to the Hub (``run.push_to_hub``): base model, method with its citations, the training config, the final evaluation.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Optional

from r2m.config.root import Config
from r2m.config.parsing import to_dict
from r2m.errors import ModelError
from r2m.fileio import atomic_write_text
from r2m.models.r2m_hub import is_hub_repo

log = logging.getLogger("r2m")

CARD = "README.md"

# rl.algorithm -> (the method's name, its paper as BibTeX); every Algorithm has one (tests/recipes/test_outputs.py).
METHODS: dict[str, tuple[str, str]] = {
    "rloo": ("RLOO", """@inproceedings{ahmadian2024back,
    title     = {{Back to Basics: Revisiting REINFORCE-Style Optimization for Learning from Human Feedback in LLMs}},
    author    = {Arash Ahmadian and Chris Cremer and Matthias Gall{\\'e} and Marzieh Fadaee and Julia Kreutzer and
                 Olivier Pietquin and Ahmet {\\"U}st{\\"u}n and Sara Hooker},
    booktitle = {ACL},
    year      = 2024,
    eprint    = {arXiv:2402.14740}
}"""),
    "grpo": ("GRPO", """@article{shao2024deepseekmath,
    title   = {{DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language Models}},
    author  = {Zhihong Shao and Peiyi Wang and Qihao Zhu and Runxin Xu and Junxiao Song and Mingchuan Zhang and
               Y. K. Li and Y. Wu and Daya Guo},
    year    = 2024,
    eprint  = {arXiv:2402.03300}
}"""),
    "remax": ("ReMax", """@article{li2023remax,
    title  = {{ReMax: A Simple, Effective, and Efficient Reinforcement Learning Method for Aligning Large Language
              Models}},
    author = {Ziniu Li and Tian Xu and Yushun Zhang and Zhihang Lin and Yang Yu and Ruoyu Sun and Zhi-Quan Luo},
    year   = 2023,
    eprint = {arXiv:2310.10505}
}"""),
    "reinforce_pp": ("REINFORCE++", """@article{hu2025reinforce,
    title  = {{REINFORCE++: A Simple and Efficient Approach for Aligning Large Language Models}},
    author = {Jian Hu},
    year   = 2025,
    eprint = {arXiv:2501.03262}
}"""),
    "dr_grpo": ("Dr. GRPO", """@article{liu2025understanding,
    title  = {{Understanding R1-Zero-Like Training: A Critical Perspective}},
    author = {Zichen Liu and Changyu Chen and Wenjun Li and Penghui Qi and Tianyu Pang and Chao Du and Wee Sun Lee
              and Min Lin},
    year   = 2025,
    eprint = {arXiv:2503.20783}
}"""),
    "ppo": ("PPO", """@article{schulman2017proximal,
    title  = {{Proximal Policy Optimization Algorithms}},
    author = {John Schulman and Filip Wolski and Prafulla Dhariwal and Alec Radford and Oleg Klimov},
    year   = 2017,
    eprint = {arXiv:1707.06347}
}"""),
}
METHODS["reinforce_pp_baseline"] = ("REINFORCE++ (with the group baseline)", METHODS["reinforce_pp"][1])
R2M_CITATION = """@article{huang2026r2m,
    title  = {{Real-Time Aligned Reward Model beyond Semantics}},
    author = {Zixuan Huang and Xin Xia and Yuxi Ren and Jianbin Zheng and Xuefeng Xiao and Hongyan Xie and Li Huaqiu
              and Songshi Liang and Zhongxiang Dai and Fuzhen Zhuang and Jianxin Li and Yikun Ban and Deqing Wang}
}"""
# The config fields a reader of the card wants first (the whole resolved config is the run's config.yaml).
CARD_FIELDS = ("rl.algorithm", "rl.steps", "rl.prompts_per_step", "rl.k", "rl.lr", "rl.beta", "rl.clip_eps",
               "rl.epochs", "rl.max_new_tokens", "rl.temperature", "reward.source", "reward.path", "reward.r2m.enabled",
               "reward.r2m.omega_floor", "policy.lora.enabled", "data.prompts", "run.seed")


def _flat(d: Mapping, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, Mapping) else {f"{prefix}{k}": v})
    return out


def _versions() -> str:
    import importlib.metadata as md

    names = ("r2m", "transformers", "torch", "accelerate", "peft", "datasets", "tokenizers")
    lines = []
    for n in names:
        try:
            lines.append(f"- {n}: {md.version(n)}")
        except md.PackageNotFoundError:
            continue
    return "\n".join(lines)


def policy_card(cfg: Config, base_model: str, final_eval: Mapping[str, float], repo_id: Optional[str] = None):
    """The policy's ``huggingface_hub.ModelCard``: Hub metadata (base model when it is a Hub id, tags), the method
    with its citations, the main config fields and the final evaluation."""
    from huggingface_hub import ModelCard, ModelCardData

    algo = getattr(cfg.rl.algorithm, "value", cfg.rl.algorithm)
    method, citation = METHODS[algo]
    r2m = cfg.reward.source == "model" and cfg.reward.r2m.enabled
    hub_base = base_model if is_hub_repo(base_model) else None
    data = ModelCardData(base_model=hub_base, library_name="transformers", model_name=repo_id or cfg.run.name,
                         tags=["r2m", "rlhf", algo, *(["r2m-reward-model"] if r2m else [])])
    trained = f"{method} and R2M (a reward model that reads the policy's hidden states)" if r2m else method
    base_line = f"[{hub_base}](https://huggingface.co/{hub_base})" if hub_base else f"a local model (`{base_model}`)"
    flat = _flat(to_dict(cfg))
    config = "\n".join(f"| `{k}` | `{flat[k]}` |" for k in CARD_FIELDS if k in flat)
    metrics = "\n".join(f"| `{k}` | {v:.4g} |" for k, v in sorted(final_eval.items())
                        if isinstance(v, float) and k.startswith(("eval/", "rm_acc/")))
    cites = "\n\n".join([R2M_CITATION] * r2m + [citation])
    load = repo_id or "<this directory>"
    content = f"""---
{data.to_yaml()}
---

# {repo_id or cfg.run.name}

A fine-tune of {base_line}, trained by r2m with {trained}.

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{load}")
tokenizer = AutoTokenizer.from_pretrained("{load}")
```

## Training

| field | value |
|---|---|
{config}

The run's whole resolved configuration is its `config.yaml`.

## Final evaluation

| metric | value |
|---|---|
{metrics or "| (none) | |"}

## Framework versions

{_versions()}

## Citations

```bibtex
{cites}
```
"""
    return ModelCard(content)


def write_card(directory: Path, card) -> Path:
    """``README.md`` in ``directory``, written atomically (the checkpoint's manifest does not list it)."""
    path = Path(directory) / CARD
    atomic_write_text(path, str(card))
    return path


def push_policy(directory: Path, cfg: Config) -> str:
    """Upload ``directory`` (the final policy and its card) to ``run.hub_model_id`` (default: ``run.name`` under the
    token's user), created if needed. R2M's own reward model (``r2m/``) stays local: its base RM is a local path,
    which means nothing on the Hub (``FeedbackRewardModel.push_to_hub`` uploads it with its base)."""
    from huggingface_hub import HfApi

    repo_id = cfg.run.hub_model_id or cfg.run.name
    api = HfApi()
    try:
        repo = api.create_repo(repo_id, private=cfg.run.hub_private_repo, exist_ok=True, repo_type="model")
        repo_id = getattr(repo, "repo_id", repo_id)
        api.upload_folder(repo_id=repo_id, folder_path=str(directory), repo_type="model",
                          commit_message=f"r2m: {cfg.run.name}, {cfg.rl.steps} steps of {cfg.rl.algorithm.value}",
                          ignore_patterns=["r2m/*", "r2m/**"])
    except Exception as e:  # hub, network and auth errors: the model is saved; say where, and how to upload it
        raise ModelError(f"run.push_to_hub: uploading {directory} to {repo_id} failed ({type(e).__name__}: {e}); the "
                         f"model is saved there: upload it later with `huggingface-cli upload {repo_id} {directory}`"
                         ) from e
    if (Path(directory) / "r2m").is_dir():
        log.info("pushed the policy to %s; R2M's reward model stays in %s (FeedbackRewardModel.push_to_hub uploads "
                 "it with its base RM)", repo_id, Path(directory) / "r2m")
    return repo_id
