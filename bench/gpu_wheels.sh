#!/usr/bin/env bash
# The Python wheels a GPU host's image lacks, downloaded for a host without internet:
#
#   bench/gpu_wheels.sh DIR            # ml-collections: all bench/gpu.sh needs (synthetic data)
#   bench/gpu_wheels.sh DIR --cifar    # also TFDS, array-record and what they need beyond the
#                                      # image, to read a prepared CIFAR-10
#
# Run it where pip reaches PyPI. It fetches wheels for the host's Python 3.12 on x86-64, each
# without its dependencies (the image has them: JAX, Flax, Optax, Orbax, absl, PyYAML, NumPy).
# On the host, from the repository root (bench/GPU.md):
#
#   python3 -m pip install --no-index --no-deps --target SITE DIR/*.whl && export PYTHONPATH=SITE
set -euo pipefail
if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
  echo "bench/gpu_wheels.sh: give the folder for the wheels: bench/gpu_wheels.sh DIR [--cifar]." >&2
  exit 2
fi
dir=$1
python="${PYTHON:-python3}"
packages=(ml-collections)
sources=()  # pure Python, published as source only: built into a wheel here
if [ "${2:-}" = "--cifar" ]; then
  packages+=(tensorflow-datasets array-record dm-tree immutabledict simple-parsing
             docstring-parser tensorflow-metadata googleapis-common-protos termcolor toml
             importlib-resources)
  sources+=(promise)
fi
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
  platforms+=(--platform "$p")
done
"$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp "${platforms[@]}" --dest "$dir" "${packages[@]}"
if [ ${#sources[@]} -gt 0 ]; then
  "$python" -m pip wheel --quiet --no-deps --wheel-dir "$dir" "${sources[@]}"
fi
ls "$dir"
