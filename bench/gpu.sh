#!/usr/bin/env bash
# One prepared run on a CUDA machine (an H200 when lent): the figures for bench/README.md "GPU".
#
#   bash bench/gpu.sh            (from the repository root; writes $OUT or ./gpu-bench/ logs)
#
# 1. bench/pipelines.py --device cuda on a synthetic 300-slice CT and a 2k² radiograph, exact and fast
#    modes, with a batch of 8 radiographs (run_batch); one warm-up run per pipeline is not timed.
# 2. the bundle comparison (--against-bundle) on the same 300-slice CT: the published inference.json
#    run through MONAI's ConfigParser with the same weights file, its seconds beside ours.
# Needs: the analysis extras installed (torch 2.13.0 with CUDA, MONAI, pytorch-ignite) and the bundle
# configs at $DICOM_NODE_REFERENCE/monai-bundles (default ../shared/reference). Targets on an H200:
# radiograph < 0.2 s, nodules < 5 s, vertebrae < 5 s (README "GPU"). Total well under 10 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-bench}"
mkdir -p "$out"
py="${PYTHON:-.venv/bin/python}"
export DICOM_NODE_REFERENCE="${DICOM_NODE_REFERENCE:-../shared/reference}"
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  "$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
} 2>&1 | tee "$out/gpu-env.txt"
"$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device visible to torch')"
timeout 420 "$py" bench/pipelines.py --device cuda --slices 300 --mode exact,fast --batch 8 \
  --against-bundle 2>&1 | grep -v -i "warn" | tee "$out/pipelines-cuda.txt"
