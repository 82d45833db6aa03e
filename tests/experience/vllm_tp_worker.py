"""One rank of test_generation.py::test_process_layout_under_torchrun (``torchrun --nproc_per_node 2``, gloo, CPU):
builds the vLLM generator against the fake with rl.vllm.tensor_parallel_size 1 and then 2, samples this rank's
prompts (rank 0: 3 rows, rank 1: 2 rows) and writes what its engine saw to OUT/rank<r>.json."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import fake_vllm
import torch
import torch.distributed as dist

from r2m.config.models import ArchConfig
from r2m.config.parsing import load_config
from r2m.experience.generation import build_generator
from r2m.models.loading import build_world_lm
from r2m.world.task import format_prompt
from r2m.world.tokenizer import build_tokenizer

DIGITS = ([3, 1, 2], [9, 0, 4, 4], [5, 5, 1], [7, 2, 8, 1, 0], [6, 3])


def layout(tp: int, policy, tok, rank: int, world: int) -> dict:
    llm_cls = fake_vllm.install(None)
    acc = SimpleNamespace(process_index=rank, num_processes=world, local_process_index=rank, unwrap_model=lambda m: m)
    cfg = load_config(None, ["rl.generator=vllm", "run.seed=7", f"rl.vllm.tensor_parallel_size={tp}"])
    g = build_generator(cfg, "/models/policy", policy, tok, torch.device("cpu"), acc)
    mine = DIGITS[:3] if rank == 0 else DIGITS[3:]
    prompts = [tok(format_prompt(d))["input_ids"] for d in mine]
    gen = g.generate(prompts, temperature=1.0, max_new_tokens=4)
    responses = [row[m.bool()].tolist() for row, m in zip(gen.sequences[:, gen.prompt_len:], gen.action_mask)]
    llm = llm_cls.instances[0]
    params = llm.params[0]
    offset = 0 if rank == 0 or tp == 1 else 3  # this rank's rows' place in its engine's call
    return {"engines": len(llm_cls.instances), "kwargs": {k: v for k, v in llm.kwargs.items() if k != "model"},
            "local_prompts": prompts, "engine_rows": llm.prompts, "responses": responses,
            "expected_own": [fake_vllm.fake_tokens(p, i, params) for i, p in enumerate(prompts)],
            "expected_in_group": [fake_vllm.fake_tokens(p, offset + i, params) for i, p in enumerate(prompts)]}


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    tok = build_tokenizer("policy")
    policy = build_world_lm(ArchConfig(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32), tok, 0)
    result = {"tp1": layout(1, policy, tok, rank, world), "tp2": layout(2, policy, tok, rank, world),
              "env": {k: os.environ[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}}
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
