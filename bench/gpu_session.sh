#!/usr/bin/env bash
# Calls on a lent GPU box (no network, no Inception weights, at most 10 min each): the 64 px quality run
# (train ours + the diffusers baseline, then sample every row) and the kernel benchmark.
#   bash bench/gpu_session.sh quality   # ~8 min on an H200 with the defaults (MINUTES=2)
#   bash bench/gpu_session.sh kernels   # ~3 min
# Scoring happens back on the CPU machine, which has the pinned Inception weights:
#
#   here:   python bench/pack_split.py --data ../shared/data/utkface --resolution 64 --out .gpudata/utk64.zip
#           pip download --no-deps diffusers==0.42.1 -d .whl    # the box has torch/triton/numpy, not diffusers
#   box:    bash bench/gpu_session.sh quality; ... kernels      # carry .gpudata and .whl; results in $OUT
#   here:   python bench/quality.py --preset faces64 --data ../shared/data/utkface --score <fetched $OUT>
#
# Knobs (environment): MINUTES (training per model), BATCH, N (samples per row), DDPM_N (samples for
# the baseline's 1000-step DDPM row: 0.5 images/s on an H200), QUALITY_S / KERNELS_S
# (time caps), QUALITY_EXTRA (more bench/quality.py flags, e.g. for a CPU dry run).
set -u
what=${1:-all}
OUT=${OUT:-/tmp/gpu_session_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export PYTHONPATH=$PWD
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=$PWD:/tmp/site
fi
log="$OUT/quality.log"
{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>&1
    python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
} >"$log" 2>&1

work=/tmp/q64
if [[ $what == all || $what == quality ]]; then
    # --holdout 0: the packed zip already leaves the held-out split out (its names end in .webp, so their
    # hashes differ; a non-zero hold-out here would drop another 5% of the training images).
    # shellcheck disable=SC2086
    timeout "${QUALITY_S:-560}" python3 bench/quality.py --data .gpudata/utk64.zip --holdout 0 \
        --preset faces64 --minutes "${MINUTES:-2}" --batch-size "${BATCH:-128}" --no-checkpointing \
        --n "${N:-256}" --ddpm-n "${DDPM_N:-64}" --samplers euler,heun,dpmpp2m --nfe 10,20,50 --ddim-steps 10,20,50 \
        --eval-batch 256 --samples-out --quiet --out "$work" ${QUALITY_EXTRA:-} >>"$log" 2>&1
    echo "quality rc=$?" >>"$log"
    cp "$work"/samples_64px_*.npz "$work"/train_64px.json "$OUT"/ 2>>"$log"  # 5 npz + json + 2 logs: 8 files
    tail -n 40 "$log"
fi

# Kernel tables one by one, each capped, so a slow torch.compile cannot eat the others' time.
if [[ $what == all || $what == kernels ]]; then
    for part in kernels:50 sample:40 train:100; do
        timeout "${KERNELS_S:-${part#*:}}" python3 bench/kernels.py --no-cpu-study --only "${part%:*}" \
            >>"$OUT/kernels.txt" 2>&1
        echo "kernels --only ${part%:*} rc=$?" >>"$OUT/kernels.txt"
    done
    cat "$OUT/kernels.txt"
fi
