#!/usr/bin/env bash
# One device check of ganscale on a CUDA machine, sized to fit 7 minutes on one H100/H200;
# the last line printed is ONE JSON summary (also written to OUT/summary.json).
#
#   bash benchmarks/gpu_check.sh                      # on the GPU machine, from anywhere
#   bash benchmarks/gpu_check.sh --wheels /path/wheels  # first install missing packages from there
#   bash benchmarks/gpu_check.sh --dry-run            # the same steps at tiny sizes (CPU is fine)
#
# Steps (benchmarks/gpu_check.py has the details): the gpu-marked tests; a short `ganscale
# train` of configs/dcgan.yaml, acgan.yaml and wgan-gp.yaml in bf16 and in fp16; `ganscale
# bench` of the 64 px DCGAN at batch 256 as fp32, bf16 + channels_last and bf16 +
# channels_last + compile, each beside the plain fp32 loop in the same process (img/s, ratio,
# MFU, peak memory); one pass of the real streaming loader with workers (`ganscale data bench`)
# and the data-wait fraction of the step it feeds; a DeepSpeed run when DeepSpeed is installed.
#
# It runs with what it finds: a missing optional package (wandb, deepspeed, matplotlib) turns
# that part off (W&B disabled, DeepSpeed skipped); a missing required one (webdataset,
# braceexpand, pillow, numpy, filelock) skips the steps that need it, saying so; `--wheels DIR`
# installs what is missing from DIR with `pip install --no-index --find-links DIR` (no network).
# Options: --out DIR (default runs/gpu-check), --budget-s S (default 400: steps that would start
# later are skipped), --only tests,train,bench,loader,deepspeed.
# Python: $GANSCALE_PYTHON, else .venv/bin/python, else python3 (the repo need not be installed).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${GANSCALE_PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
exec "$PY" benchmarks/gpu_check.py "$@"
