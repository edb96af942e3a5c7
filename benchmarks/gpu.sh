#!/usr/bin/env bash
# The README's Performance benches on one GPU, in one short run (about 8 minutes on an H100-class
# GPU): mdx in bfloat16 beside PyTorch with autocast bfloat16 and channels-last, the 3D U-Net beside
# MONAI's BasicUNet the same way, and predict on a folder of films. Output: one log per bench in
# ${OUT:-runs/gpu_bench}. Needs jax with CUDA (pip install -e '.[cuda,bench]') and torch with CUDA.
#   bash benchmarks/gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-runs/gpu_bench}"
mkdir -p "$out"
py="${PYTHON:-python}"
{ nvidia-smi -L; "$py" -c "import jax; print('jax', jax.__version__, jax.devices())"
  "$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
} 2>&1 | tee "$out/devices.log"

torch_flag=--torch
"$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null \
  || { echo "gpu.sh: torch without CUDA here: mdx alone" | tee -a "$out/devices.log"; torch_flag=--notorch; }
monai_flag=--monai
"$py" -c "import monai" 2>/dev/null || monai_flag=--nomonai

run() {  # name, timeout s, command...
  local name="$1" limit="$2"; shift 2
  echo "== $name: $*" | tee "$out/$name.log"
  timeout "$limit" "$@" 2>&1 | grep -v -E "^(W|I)[0-9]{4} " | tee -a "$out/$name.log"
}

# DenseNet-121 at the three sizes, batch 64 (a GPU's batch), bf16 vs autocast bf16 channels-last
run densenet 240 "$py" benchmarks/classifiers.py --models=densenet121 --resolutions=64,128,224 \
  --batch=64 --dtype=bfloat16 --steps=5 --repeats=5 "$torch_flag"
# the same at float32: what bf16 buys on each side
run densenet_f32 120 "$py" benchmarks/classifiers.py --models=densenet121 --resolutions=224 \
  --batch=64 --dtype=float32 --steps=5 --repeats=5 --notorch
# 3D U-Net, 128^3 patches, batch 2, batch norm
run unet3d 150 "$py" benchmarks/unet3d.py --patch=128,128,128 --batch=2 --base_width=32 \
  --dtype=bfloat16 --steps=5 --repeats=5 --variants=mdx "$monai_flag"
# predict: 256 synthetic 1024 px films end to end
run predict 120 "$py" benchmarks/predict.py --count=256 --repeats=2 --dtype=bfloat16
echo "gpu.sh: logs in $out"
