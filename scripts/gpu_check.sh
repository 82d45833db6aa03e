#!/usr/bin/env bash
# The prepared GPU check: about 5-8 minutes on one GPU. Not part of CI (`make test` never runs it).
#
#   bash scripts/gpu_check.sh [OUT.json]        # default: gpu_check.json (into $OUT/ when $OUT is set)
#
# Needs torch (a CUDA build), transformers, accelerate and peft preinstalled. It also needs these wheels, which it
# installs with pip when they are missing (bring them along on a machine without network access:
# `pip download -d wheels/ datasets pyarrow pyyaml tokenizers safetensors pytest matplotlib tensorboard tqdm` and set
# R2M_WHEELS=wheels/): datasets, pyarrow, pyyaml, tokenizers, safetensors, pytest, matplotlib, tensorboard, tqdm.
# Nothing is downloaded from the Hub: every model is built from config, every dataset written locally.
#
# Runs: tests/gpu; one paper-shaped R2M run (configs/paper/r2m_qwen2.5-3b_ultrafeedback_rloo.yaml, a 0.5B-class Qwen2
# policy and a 1B-class Llama RM built from config, bf16, 10 steps); the same run as vanilla RLOO for the
# R2M/vanilla step-time and CUDA-memory ratios. All results go to one JSON (scripts/gpu_check.py).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT_JSON=${1:-${OUT:+$OUT/}gpu_check.json}

missing=()
for mod in datasets pyarrow yaml tokenizers safetensors pytest matplotlib tensorboard tqdm; do
  $PY -c "import $mod" 2>/dev/null || missing+=("$mod")
done
if [ ${#missing[@]} -gt 0 ]; then
  pkgs=("${missing[@]/yaml/pyyaml}")
  echo "gpu_check: installing ${pkgs[*]}"
  if [ -n "${R2M_WHEELS:-}" ]; then
    $PY -m pip install --no-index --find-links "$R2M_WHEELS" "${pkgs[@]}"
  else
    $PY -m pip install "${pkgs[@]}"
  fi
fi
$PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA device')"
HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" \
  $PY scripts/gpu_check.py --out "$OUT_JSON"
