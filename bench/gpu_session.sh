#!/usr/bin/env bash
# One device session's measurements, for a lent GPU machine that has torch but not
# clipvec's other dependencies. Carried beside the repo (git-ignored):
#   .whl/   open_clip_torch, ftfy, wcwidth wheels for the machine's Python
#           (pip download --no-deps --only-binary=:all: --python-version 3.12 ...)
#   .lance/lance.tar.xz   site-packages' lance/ and lance_namespace*/ (xz, ~50 MB)
#   .gpu/   ../shared/images/photos as photos/, and ../shared/tools/make_corpus.py
# bench/prepare_carry.sh builds all three here (about 2 minutes).
# usage: bash bench/gpu_session.sh OUT_DIR [N_IMAGES] [gpu_check.py options...]
set -euo pipefail
out=${1:?output folder}; n=${2:-16384}; shift $(( $# >= 2 ? 2 : 1 ))
export PYTHONUNBUFFERED=1
mkdir -p /tmp/site "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
tar -C /tmp/site -xJf .lance/lance.tar.xz
export PYTHONPATH=/tmp/site:$PWD
python3 .gpu/make_corpus.py .gpu/photos /tmp/corpus "$n" 0
timeout 120 python3 bench/gpu_profile.py --corpus /tmp/corpus --out "$out/gpu_profile.json" \
    2>&1 | head -12 || true
python3 bench/gpu_check.py --corpus /tmp/corpus --out "$out/gpu_check.json" "$@" 2>&1 \
    | grep -v '^ \|^{\|^}' | tee "$out/log.txt"
