#!/usr/bin/env bash
# Regenerates the smoke-size figures shown in README.md into docs/figures/.
#
#   docs/make_figures.sh [SCRATCH_DIR]
#
# Runs each experiment's smoke variant on the synthetic data (CPU minutes
# each) into SCRATCH_DIR (default: a temporary directory) and copies the
# figures over.
set -euo pipefail
cd "$(dirname "$0")/.."
scratch="${1:-$(mktemp -d)}"
experiments=(lr_sweep activations gradients random_matrix divergence sgd_noise)
for name in "${experiments[@]}"; do
  [ -f "configs/$name.py" ] || continue
  echo "== $name"
  python -m bnjax.main --config="configs/$name.py:smoke" --workdir="$scratch/$name" 2>&1 | tail -n 1
  cp "$scratch/$name"/figures/*.png docs/figures/
done
echo "figures written to docs/figures/"
