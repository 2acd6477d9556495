#!/usr/bin/env bash
# docs/results.md part 7 (issue 19): Jacobian singular values at init of the paper's 1000-layer
# tanh MLP (width 128, gain 1.0247, bias std 0.00448) with N:M masks at density N/M: N:M EOI
# against N:M masked orthogonal and N:M Kaiming (tanh gain). Run from the repository root.
set -euo pipefail
for nm in 2:4 1:4 1:8; do
  n=${nm%:*}; m=${nm#*:}
  d=$(python3 -c "print($n/$m)")
  orthosparse inspect --preset mlp-1000 --data-root ../shared/data/mnist-test \
    --data-options test_only_split=true --mask nm --density "$d" \
    --sparsify-options "nm=$nm" sparse-kaiming:nonlinearity=tanh \
    --init eoi,orthogonal,sparse-kaiming --examples 32 --seed 1 \
    --out "results/nm-mlp-1000/${n}of${m}" > "results/nm-mlp-1000/${n}of${m}.txt" 2>&1
done
