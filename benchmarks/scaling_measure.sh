#!/usr/bin/env bash
# Measure step time and scaling efficiency of ganscale on GPUs (docs/scaling.md says why).
# Run inside an allocation; prints one line per run: config, processes, img/s, efficiency.
#   bash benchmarks/scaling_measure.sh configs/dcgan.yaml "1 8"                   # one node
#   sbatch --nodes=8 --gpus-per-node=8 --wrap "bash benchmarks/scaling_measure.sh configs/acgan.yaml '64'"
# Weak scaling: batch_size per GPU fixed (the config's); efficiency(N) = img/s(N) / (N x img/s(1)).
# Steady state only: the first log.every steps (compile, NCCL setup, data warm-up) are dropped.
set -euo pipefail
CONFIG=${1:?config}; COUNTS=${2:-"1 8"}; STEPS=${STEPS:-300}; BACKEND=${BACKEND:-accelerate}
OUT=${OUT:-runs/scaling}; mkdir -p "$OUT"
base=""
for n in $COUNTS; do
  run="$OUT/$(basename "$CONFIG" .yaml)-$BACKEND-$n"
  rm -rf "$run"
  if [ -n "${SLURM_JOB_ID:-}" ] && [ "$n" -gt "${SLURM_GPUS_ON_NODE:-8}" ]; then
    GANSCALE_NPROC_PER_NODE=${SLURM_GPUS_ON_NODE:-8} bash launch/slurm/train.sbatch "$CONFIG" --out "$run" \
      --set backend="$BACKEND" --set train.max_steps="$STEPS" --set log.every=50 --set log.sample_every=0 \
      --set checkpoint.every=0 --set log.tracker=none --set log.progress=false
  else
    accelerate launch --multi_gpu --num_processes "$n" --mixed_precision no --dynamo_backend no -m ganscale train \
      "$CONFIG" --out "$run" --set backend="$BACKEND" --set train.max_steps="$STEPS" --set log.every=50 \
      --set log.sample_every=0 --set checkpoint.every=0 --set log.tracker=none --set log.progress=false
  fi
  ips=$(python - "$run/metrics.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"images_per_s"' in l]
rows = rows[1:] or rows  # drop the warm-up window
print(sum(r["images_per_s"] for r in rows) / len(rows))
PY
)
  [ -n "$base" ] || base=$ips
  eff=$(python -c "print(f'{$ips / ($n * $base):.3f}')")
  echo "$CONFIG backend=$BACKEND processes=$n images_per_s=$ips efficiency=$eff"
done
