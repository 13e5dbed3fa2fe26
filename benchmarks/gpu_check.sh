#!/usr/bin/env bash
# The prepared GPU check of issue 14, sized for one device call (a 15-minute device budget,
# machine start included): the bf16 / channels-last tests on CUDA, then bench_isotypic.py's
# GPU rows and a short compiled `gcnn train`, most important first, each stage under its own time limit. Every stage writes
# into $OUT as it goes (the benchmark rewrites its JSON after each row), so a stage stopped at
# its limit keeps what it measured, and a failed stage does not stop the next.
#
# From a session lent a GPU (the device tool runs this in a copy of the working tree; the
# machine has torch but no network and no escnn, so the package runs from the tree):
#
#     run(command="COMMIT=<git rev-parse HEAD> bash benchmarks/gpu_check.sh", timeout_s=560)
#
# Anywhere else: `OUT=/tmp/gpu_check bash benchmarks/gpu_check.sh`. BUDGET_S (default 520)
# bounds the whole script. A dry run of the same stages on the CPU, tiny (the GPU numerics:
# bf16 autocast, channels-last), before spending device time on it:
#
#     DEVICE=cpu BATCHES=4 ROUNDS=1 BUDGET_S=1500 OUT=/tmp/gpu_dry bash benchmarks/gpu_check.sh
#
# Results: $OUT/gpu_check.log, $OUT/isotypic_gpu_*.json and $OUT/train_log.jsonl (a short
# `gcnn train --compile` of vgg11_flip on the shipped samples); commit them under
# benchmarks/results/ with the device, versions and command (benchmarks/README.md).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
deadline=$((SECONDS + ${BUDGET_S:-520}))
DEVICE=${DEVICE:-cuda}
read -r -a batches <<<"${BATCHES:-512 2048}"

# run_stage NAME CAP_S CMD...: CMD under min(CAP_S, time left); its status in the log
run_stage() {
    local name=$1 cap=$2 left=$((deadline - SECONDS))
    shift 2
    ((left < cap)) && cap=$left
    if ((cap < 20)); then
        echo "== $name: skipped, ${left}s left"
        return
    fi
    echo "== $name (limit ${cap}s): $*"
    local start=$SECONDS
    timeout "$cap" "$@"
    echo "== $name: exit $? after $((SECONDS - start))s"
}

# (an array, not a function: `timeout` runs programs only)
bench=(python3 benchmarks/bench_isotypic.py --device "$DEVICE" --gpu-numerics
    --rounds "${ROUNDS:-5}" --warmup 3)

{
    echo "commit ${COMMIT:-unknown}; $(date -u +%FT%TZ)"
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    python3 -c "import torch; print('torch', torch.__version__, torch.cuda.is_available())"
    run_stage "CUDA tests" 120 python3 -m pytest -q -p no:cacheprovider tests/nn/test_autocast.py
    run_stage "eager, VGG11 width 1 and ResNet50" 180 \
        "${bench[@]}" --archs vgg11 resnet50 --widths 1 --batch-sizes "${batches[@]}" \
        --modes eager --out "$OUT/isotypic_gpu_eager.json"
    # gcnn train's GPU configuration (bf16 autocast, channels-last, compiled) on the shipped
    # Fashion-MNIST samples: it trains, checkpoints and evaluates; its log comes back
    run_stage "gcnn train --compile, vgg11_flip, shipped samples" 120 \
        python3 -c 'import sys; from gcnn.cli import main; sys.exit(main())' train \
        --arch vgg11_flip --data fashion-mnist-samples --epochs 3 --batch-size 64 --compile \
        --device "$DEVICE" --no-progress --overwrite --out "$OUT/train"
    for log in "$OUT"/train/*/seed0/log.jsonl; do
        [[ -f $log ]] && mv "$log" "$OUT/train_log.jsonl"
    done
    rm -rf "$OUT/train" # checkpoints stay behind: $OUT brings back 8 files at most
    run_stage "eager, VGG11 widths 0.25 and 0.5" 90 \
        "${bench[@]}" --archs vgg11 --widths 0.25 0.5 --batch-sizes "${batches[@]}" \
        --modes eager --out "$OUT/isotypic_gpu_eager_small.json"
    run_stage "compiled, VGG11 width 1, batch ${batches[0]}" 150 \
        "${bench[@]}" --archs vgg11 --widths 1 --batch-sizes "${batches[0]}" --modes compile \
        --variants plain flip flip_regular --out "$OUT/isotypic_gpu_compile_vgg11.json"
    run_stage "compiled, ResNet50, batch ${batches[0]}" 240 \
        "${bench[@]}" --archs resnet50 --batch-sizes "${batches[0]}" --modes compile \
        --variants plain flip flip_regular --out "$OUT/isotypic_gpu_compile_resnet50.json"
    echo "== done after ${SECONDS}s"
} 2>&1 | tee "$OUT/gpu_check.log"
