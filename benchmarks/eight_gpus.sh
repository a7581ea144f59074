#!/usr/bin/env bash
# Issue 10: the seven-stage pipeline, one stage per GPU, on an 8-GPU machine (nvidia-h200-x8),
# against replicated mode on the same 8 GPUs and the same songs; and the pipeline's hops over
# Ray Direct Transport (NCCL) against the object store. Files on disk to files on disk.
#
# Run from the repository root on the 8-GPU machine (device tool: kind "nvidia-h200-x8",
# carry [".device"] built by ../shared/tools/device-bundle with
# EXTRA_PKGS="pedalboard==0.9.26 cffi==2.1.1 pycparser==3.12 pretty_midi==0.2.11.post0 mido==1.3.3"):
#
#   bash benchmarks/eight_gpus.sh
#
# Prints, per run: songs/s, x real time, the per-stage breakdown (ms per song: decode, h2d,
# each stage, hop = transfer + queue wait, d2h, write, measure), scaling efficiency, and the
# ratio to pedalboard's comparable chain on all cores. With 8 GPUs and 7 stages the planner
# makes one 7-GPU pipeline; the eighth GPU gets a second (1-GPU) pipeline for overflow.
set -euo pipefail
if [ -f .device/bundle.tar.xz ] && ! python3 -c "import ray" 2>/dev/null; then
  mkdir -p /tmp/site && tar -xJf .device/bundle.tar.xz -C /tmp/site
  export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
fi
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
SONGS=${SONGS:-64} SECONDS_PER_SONG=${SECONDS_PER_SONG:-180} BATCH=${BATCH:-8}
common=(--device cuda --songs "$SONGS" --seconds "$SECONDS_PER_SONG" --batch "$BATCH" --cpus-per-worker 8)
# Object-store hops: pipeline on 7 and 8 GPUs vs replicated on 8.
python3 benchmarks/farm.py "${common[@]}" --gpus 7,8 --mode pipeline --transport object_store
python3 benchmarks/farm.py "${common[@]}" --gpus 8 --mode replicated --no-pedalboard
# GPU-to-GPU hops (Ray Direct Transport over NCCL).
python3 benchmarks/farm.py "${common[@]}" --gpus 7 --mode pipeline --transport nccl --no-pedalboard
