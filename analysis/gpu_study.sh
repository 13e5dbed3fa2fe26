#!/usr/bin/env bash
# The paper-scale study on one GPU machine (H100/H200; no network, no escnn there).
# From the repository root, with Fashion-MNIST carried in .data/:
#   mkdir -p .data && cp /usr/share/datasets/fashion-mnist/*.gz .data/
#   bash analysis/gpu_study.sh            # → analysis/study-gpu/ (runs, checks, compares, summary)
# 24 nets per regime and width (0.25, 0.5, 1), 10 epochs of full Fashion-MNIST, 8 gcnn calls at
# once. Resumable: a rerun skips finished nets and reports. Prepared, not yet run on a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-deps -e . >/dev/null
python3 -c "import rustworkx" 2>/dev/null || python3 -m pip install -q rustworkx
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 analysis/flip_study.py --preset gpu --jobs "${JOBS:-8}" --data-root .data \
    --out "${OUT:-analysis/study-gpu}"
