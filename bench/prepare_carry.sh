#!/usr/bin/env bash
# Builds, on this machine, the git-ignored folders bench/gpu_session.sh needs on a lent
# GPU machine (Python 3.12 there, torch and torchvision preinstalled, no internet):
#   .whl/                 open_clip_torch, ftfy, wcwidth wheels for Python 3.12
#   .lance/lance.tar.xz   this machine's lance/ and lance_namespace*/ packages (~50 MB)
#   .gpu/                 ../shared/images/photos as photos/, and make_corpus.py
# then: run(command="bash bench/gpu_session.sh $OUT 16384", carry=[".whl", ".gpu", ".lance"])
# .gitignore keeps all three out of git.
set -euo pipefail
cd "$(dirname "$0")/.."
shared=../shared
rm -rf .whl .gpu .lance && mkdir -p .whl .gpu .lance
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform any \
    -d .whl "open_clip_torch==$(python3 -c 'import open_clip; print(open_clip.__version__)')" \
    ftfy wcwidth
site=$(python3 -c 'import lance, os; print(os.path.dirname(os.path.dirname(lance.__file__)))')
(cd "$site" && tar -cJf - lance lance_namespace*) > .lance/lance.tar.xz
cp -r "$shared/images/photos" .gpu/photos
cp "$shared/tools/make_corpus.py" .gpu/
du -sh .whl .gpu .lance
