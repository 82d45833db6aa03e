"""Host (CPU) memory per rank while an RL run starts: ``r2m bench memory``'s ``host`` entries.

What a rank holds on the host, stage by stage, as :func:`r2m.recipes.rl.build.build_run` loads. Each stage's models
go to the GPU when it ends (``accelerator.prepare``, ``.to(device)``), so the stages do not add up. Two kinds of
memory are counted apart:

- **file-backed**: a model loaded in its checkpoint's own dtype is not copied: transformers maps the safetensors file
  and the weights are views of it. Those pages are the page cache's: read on first touch (at the latest when the
  model moves to the GPU), shared by every rank of the node that maps the same file, and reclaimable. They count in a
  process's resident size (RSS) but cannot exhaust the host.
- **anonymous**: copies the process makes (a converted dtype, the trained policy's ``deepcopy``, its fp32 master
  weights). These are what exhaust a host, so the peaks are theirs.

The stages:

- ``policy``: the frozen reference (file-backed when ``policy.dtype`` is the checkpoint's, else an anonymous copy);
  beside it, on rank 0 (on every rank without FSDP2's ``fsdp_cpu_ram_efficient_loading``) the trained copy: a
  ``deepcopy`` in ``policy.dtype``, then upcast tensor by tensor to fp32 master weights under a 16-bit dtype
  (:func:`r2m.runtime.precision.fp32_master_weights`), so its peak is the upcast's worst moment (:func:`upcast_peak`).
  The other ranks build that copy on the meta device (:func:`r2m.runtime.distributed.policy_on_meta`). With
  ``policy.lora`` the base alone: the reference is the base with its adapters off.
- ``reward``: the reward model, whole, on every rank, in ``reward.dtype``; with R2M, the fusion
  (:class:`r2m.models.fusion.PolicyFeedbackFusion`, W_q, W_k, W_v, W_o) built in fp32 on the host of every rank
  before it moves to the GPU: (2·D_rm + 2·D_p)·inner_dim·4 bytes, 84-134 MB for the paper's models.

Loads this formula does not model are refused by name (:func:`unmodelled`): PPO's critic, an RM ensemble, a
monitor check RM, a reward backbone cast to another dtype.

A rank's host peak is its largest stage's anonymous bytes plus the process's own anonymous memory (Python, torch,
transformers: measured here, on CPU; shared-library pages are file-backed and not counted; a CUDA context adds its
own host memory, not counted). The formula is checked on CPU: the library's own loading calls
(:func:`~r2m.models.loading.build_policy_and_reference`, ``fp32_master_weights``,
:func:`~r2m.models.loading.load_reward_model`), each in a fresh process, on models of the families at their real
vocabularies and two widths, and on one model whose weights are mostly in its decoder layers (there the upcast's
order shows: freeing each bf16 tensor after its fp32 copy, against keeping them all), saved in bf16; a thread samples
the process's anonymous and file-backed resident memory (``/proc/self/status``) and the peaks' growth is compared
with the formula (:func:`check`). Linux only.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import NamedTuple, Optional

import torch

from r2m.config.enums import Algorithm
from r2m.config.models import PolicyConfig
from r2m.config.root import Config
from r2m.errors import ConfigError
from r2m.models.loading import build_policy_and_reference, load_reward_model
from r2m.runtime.precision import fp32_master_weights
from r2m.utils import torch_dtype
from r2m_bench import memory_phases as ph
from r2m_bench.child import in_child
from r2m_bench.families import Size, model_config

GB = 1e9

CHECK_WIDTHS = (128, 256)
"""Hidden sizes of the CPU check's models (two layers, the real vocabulary): 17-41 M parameters, large enough that
the allocator's noise (a few MB) is small beside them; the embedding holds most of them."""
LAYERED = (512, 8, 4096)
"""(width, layers, vocabulary) of the check's layer-heavy policy: 32 M parameters, 93% in the decoder layers, so that
an upcast that kept every bf16 original (6 bytes a weight) would measure about 60 MB more than the formula."""


SAMPLE_S = 0.002
"""How often the check samples ``/proc/self/status`` (s): the upcast of one real-vocabulary embedding takes longer."""


class Stage(NamedTuple):
    """Bytes one loading stage holds on the host."""

    anon: float
    """Anonymous memory at the stage's peak: the process's own copies."""
    file: float
    """File-backed: checkpoint pages mapped in place (page cache: shared by the node's ranks, reclaimable)."""


def tensor_sizes(arch: ph.Arch, rm: bool) -> list[int]:
    """Elements of each parameter tensor of ``arch`` at its full depth, in ``named_parameters`` order (built on the
    meta device: exact, no memory)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    tok = ph.tokenizer(arch.family)
    config = model_config(arch.family, tok, Size(arch.hidden, arch.layers, arch.heads, arch.kv_heads,
                                                 arch.intermediate), rm)
    config.vocab_size, config.tie_word_embeddings = arch.vocab, arch.tied
    auto = AutoModelForSequenceClassification if rm else AutoModelForCausalLM
    with torch.device("meta"):
        model = auto.from_config(config)
    return [p.numel() for p in model.parameters()]


def param_count(arch: ph.Arch, rm: bool) -> int:
    """Parameters of ``arch`` at its full depth."""
    return sum(tensor_sizes(arch, rm))


def _bytes(dtype: str) -> int:
    return torch.empty((), dtype=torch_dtype(dtype)).element_size()


def upcast_peak(sizes: list[int], dtype: str) -> float:
    """Anonymous bytes of the trained copy at its worst moment: the ``deepcopy`` in ``dtype`` (b bytes a weight),
    then, under a 16-bit dtype, each tensor i upcast to fp32 in turn, its b-byte original freed after its copy is made:
    max_i (b·P + (4 − b)·Σ_{j<i} n_j + 4·n_i). A 32-bit dtype: b·P (nothing is upcast)."""
    b = _bytes(dtype)
    total = b * sum(sizes)
    if b >= 4:
        return float(total)
    peak, done = float(total), 0
    for n in sizes:
        peak = max(peak, total + (4 - b) * done + 4 * n)
        done += n
    return peak


def fusion_params(rm_dim: int, policy_dim: int, inner_dim: int) -> int:
    """R2M's fusion: W_q (D_rm → inner), W_k and W_v (D_p → inner), W_o (inner → D_rm), no biases."""
    return (2 * rm_dim + 2 * policy_dim) * inner_dim


def unmodelled(cfg: Config) -> Optional[str]:
    """The first setting whose host loads :func:`stage_bytes` does not count, named, or None."""
    checks = ((cfg.rl.algorithm == Algorithm.PPO, "rl.algorithm=ppo (the critic: a third model, upcast on every "
               "rank)"),
              (bool(cfg.reward.ensemble), "reward.ensemble (one RM per member)"),
              (cfg.rl.monitor.check_rm is not None, "rl.monitor.check_rm (a second RM)"),
              (cfg.reward.r2m.backbone_dtype != "same", "reward.r2m.backbone_dtype (a converted copy of the RM)"))
    return next((why for hit, why in checks if hit), None)


def loaded(params: int, dtype: str, saved: Optional[str]) -> Stage:
    """A frozen model loaded in ``dtype`` from a checkpoint stored in ``saved``: mapped in place when they agree, else
    an anonymous converted copy (``saved`` None: not known, counted as converted)."""
    nbytes = float(params * _bytes(dtype))
    return Stage(0.0, nbytes) if dtype == saved else Stage(nbytes, 0.0)


def stage_bytes(policy: list[int], rm_params: int, cfg: Config, meta_policy: bool, policy_saved: Optional[str],
                rm_saved: Optional[str], fusion: int = 0) -> dict[str, Stage]:
    """What a rank holds on the host at each loading stage's peak (the formula in the module docstring).
    ``policy``: the policy's tensor sizes in ``named_parameters`` order; ``*_saved``: the checkpoints' dtypes;
    ``fusion``: R2M's fusion parameters (fp32)."""
    pc = cfg.policy
    ref = loaded(sum(policy), pc.dtype, policy_saved)
    trained = 0.0 if pc.lora.enabled or meta_policy else upcast_peak(policy, pc.dtype)
    out = {"policy": Stage(ref.anon + trained, ref.file)}
    if rm_params:
        rm = loaded(rm_params, cfg.reward.dtype, rm_saved)
        out["reward"] = Stage(rm.anon + 4.0 * fusion, rm.file)
    return out


def _rank(stages: dict[str, Stage], process_bytes: float) -> dict:
    return {"peak_gb": (max(s.anon for s in stages.values()) + process_bytes) / GB,
            "stages_gb": {k: s.anon / GB for k, s in stages.items()},
            "file_backed_gb": {k: s.file / GB for k, s in stages.items()}}


def host_result(cfg: Config, gpus: int, process_bytes: float) -> dict:
    """Per-rank host peak of ``cfg`` on ``gpus`` GPUs (FSDP2 with ``fsdp_cpu_ram_efficient_loading`` on several,
    as configs/accelerate/fsdp.yaml), GB of anonymous memory: rank 0, every other rank, the node; and the
    checkpoints' pages mapped in place (the node's page cache holds each file once)."""
    why = unmodelled(cfg)
    if why is not None:
        raise ConfigError(f"bench memory: the host formula does not count the loads of {why}")
    p_arch = ph.arch_of(cfg.policy.path, "policy.path")
    r_arch = ph.arch_of(cfg.reward.path, "reward.path") if cfg.reward.path else None
    sizes = tensor_sizes(p_arch, rm=False)
    rm = param_count(r_arch, rm=True) if r_arch else 0
    r_saved = r_arch.saved if r_arch else None
    fusion = fusion_params(r_arch.hidden, p_arch.hidden, cfg.reward.r2m.inner_dim) if (
        r_arch and cfg.reward.r2m.enabled) else 0
    rank0 = stage_bytes(sizes, rm, cfg, False, p_arch.saved, r_saved, fusion)
    out = {"policy_params": sum(sizes), "rm_params": rm, "fusion_params": fusion, "process_gb": process_bytes / GB,
           "checkpoint_dtype": {"policy": p_arch.saved, "reward": r_saved},
           "rank0": _rank(rank0, process_bytes)}
    if gpus > 1:
        out["other_ranks"] = _rank(stage_bytes(sizes, rm, cfg, True, p_arch.saved, r_saved, fusion), process_bytes)
    out["node_gb"] = out["rank0"]["peak_gb"] + (gpus - 1) * out.get("other_ranks", out["rank0"])["peak_gb"]
    out["node_page_cache_gb"] = sum(s.file for s in rank0.values()) / GB
    return out


# ---------------------------------------------------------------------------------------------
# The check on CPU
# ---------------------------------------------------------------------------------------------


def resident_kib() -> dict[str, int]:
    """This process's anonymous and file-backed resident memory now, KiB (``/proc/self/status``)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile"):
            out[key] = int(value.split()[0])
    return out


class _PeakSampler:
    """A thread that keeps the largest ``RssAnon`` and ``RssFile`` seen while it runs."""

    def __init__(self) -> None:
        import threading

        self.peak = resident_kib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            now = resident_kib()
            self.peak = {k: max(v, now[k]) for k, v in self.peak.items()}
            self._stop.wait(SAMPLE_S)

    def __enter__(self) -> "_PeakSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        now = resident_kib()
        self.peak = {k: max(v, now[k]) for k, v in self.peak.items()}


def _save(arch: ph.Arch, width: int, rm: bool, directory: Path, layers: int = 2,
          vocab: Optional[int] = None) -> list[int]:
    """A ``layers``-layer ``arch`` of hidden size ``width`` (its real vocabulary unless ``vocab``), saved in bf16; its
    tensor sizes."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    tok = ph.tokenizer(arch.family)
    heads = max(1, width // 64)
    config = model_config(arch.family, tok, Size(width, layers, heads, 1 if arch.kv_heads < arch.heads else heads,
                                                 4 * width), rm)
    config.vocab_size, config.tie_word_embeddings = vocab or arch.vocab, arch.tied
    auto = AutoModelForSequenceClassification if rm else AutoModelForCausalLM
    torch.manual_seed(0)
    model = auto.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(directory, safe_serialization=True)
    return [p.numel() for p in model.parameters()]


def _load_in_child(kind: str, path: str, meta_policy: bool) -> dict:
    """Runs in a fresh process: the library's loading of one stage; the growth of the peak anonymous and
    file-backed resident memory, bytes."""

    before = resident_kib()
    with _PeakSampler() as sampler:
        if kind == "policy":
            policy, ref = build_policy_and_reference(PolicyConfig(path=path, dtype="bfloat16"), path,
                                                     empty_policy=meta_policy)
            fp32_master_weights(policy, "policy")
        else:
            model = load_reward_model(path, "bfloat16")
            del model
    return {"process_bytes": 1024 * before["RssAnon"],
            "anon_bytes": 1024 * (sampler.peak["RssAnon"] - before["RssAnon"]),
            "file_bytes": 1024 * (sampler.peak["RssFile"] - before["RssFile"])}


def _case(width: int, label: str, kind: str, path: Path, meta: bool, params: int, stage: Stage, log) -> dict:
    got = in_child(True, _load_in_child, kind, str(path), meta)
    log(f"  host check, width {width}, {label}: anonymous {got['anon_bytes'] / 1e6:.0f} MB measured, "
        f"{stage.anon / 1e6:.0f} MB by the formula; file-backed {got['file_bytes'] / 1e6:.0f} MB touched, "
        f"{stage.file / 1e6:.0f} MB mapped")
    return {"width": width, "stage": label, "params": params, "measured_mb": got["anon_bytes"] / 1e6,
            "predicted_mb": stage.anon / 1e6, "file_touched_mb": got["file_bytes"] / 1e6,
            "file_mapped_mb": stage.file / 1e6, "error_mb": (got["anon_bytes"] - stage.anon) / 1e6,
            "process_bytes": got["process_bytes"]}


def check(arch_path: str, rm_path: str, *, widths: tuple[int, ...] = CHECK_WIDTHS, layered: bool = True,
          log=print) -> dict:
    """The formula against the measured growth of the peak anonymous memory (and the checkpoint pages touched, which
    are read on first touch), per width: rank 0's and another rank's policy stage and the reward stage (bf16
    checkpoints loaded in bf16; fp32 masters); with ``layered``, rank 0's policy stage of :data:`LAYERED`'s model,
    beside what an upcast that kept every bf16 original would hold (``naive_mb``)."""
    cfg = Config()
    cfg = dataclasses.replace(cfg, policy=dataclasses.replace(cfg.policy, dtype="bfloat16"),
                              reward=dataclasses.replace(cfg.reward, dtype="bfloat16"))
    bf16 = "bfloat16"
    out: dict = {"cases": []}
    with tempfile.TemporaryDirectory(prefix="r2m-host-") as tmp:
        for width in widths:
            policy_dir, rm_dir = Path(tmp) / f"policy-{width}", Path(tmp) / f"rm-{width}"
            policy = _save(ph.arch_of(arch_path, "policy"), width, False, policy_dir)
            rm = sum(_save(ph.arch_of(rm_path, "reward"), width, True, rm_dir))
            for label, kind, path, meta, params in (("policy, rank 0", "policy", policy_dir, False, sum(policy)),
                                                    ("policy, other ranks", "policy", policy_dir, True, sum(policy)),
                                                    ("reward", "reward", rm_dir, False, rm)):
                stage = stage_bytes(policy, rm, cfg, meta, bf16, bf16)[kind]
                out["cases"].append(_case(width, label, kind, path, meta, params, stage, log))
        if layered:
            width, layers, vocab = LAYERED
            path = Path(tmp) / "policy-layered"
            policy = _save(ph.arch_of(arch_path, "policy"), width, False, path, layers=layers, vocab=vocab)
            stage = stage_bytes(policy, 0, cfg, False, bf16, bf16)["policy"]
            case = _case(width, f"policy, rank 0, {layers} layers, vocabulary {vocab}", "policy", path, False,
                         sum(policy), stage, log)
            out["cases"].append({**case, "naive_mb": 6 * sum(policy) / 1e6})
    out["process_bytes"] = out["cases"][-1]["process_bytes"]
    out["max_error_mb"] = max(abs(c["error_mb"]) for c in out["cases"])
    return out


def process_bytes_of(check_result: Optional[dict]) -> float:
    """The process's own anonymous memory before loading (from the check; 0 without one)."""
    return float(check_result["process_bytes"]) if check_result else 0.0
