#!/usr/bin/env bash
# docs/results.md, part 4: Jacobian singular values at initialization versus density.
# Run from the repository root: bash results/jacobian/run.sh
set -euo pipefail
MNIST=(--data-root ../shared/data/mnist-test --data-options test_only_split=true)
orthosparse inspect --preset mlp "${MNIST[@]}" --mask uniform \
    --init eoi,orthogonal,ai,sao,kaiming --sparsify-options sao:fallback=true \
    --densities 0.05 0.1 0.2 0.5 1 --examples 128 --threads 1 \
    --out results/jacobian/mlp-7x100-tanh > results/jacobian/mlp-7x100-tanh.log 2>&1
orthosparse inspect --preset mlp-1000 "${MNIST[@]}" --mask uniform \
    --init eoi,orthogonal,sao,kaiming --sparsify-options sao:fallback=true \
    --densities 0.05 0.125 0.25 0.5 1 --examples 64 --threads 1 \
    --out results/jacobian/mlp-1000-tanh > results/jacobian/mlp-1000-tanh.log 2>&1
