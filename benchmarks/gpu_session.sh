#!/usr/bin/env bash
# The GPU figures of #23 in one prepared run, for a session that is lent a GPU machine.
#
#   bash benchmarks/gpu_session.sh pack [DATA]   here: builds the ignored folder .device-kit/ (the
#                                                packages the device image lacks, Ray, and the first
#                                                refcoco-mini train images of DATA), under 64 MiB
#   bash benchmarks/gpu_session.sh run           there (device tool: carry [".device-kit"]): every
#                                                GPU row, each part within its own time limit (six
#                                                minutes in all at most); the figures land in
#                                                $OUT/gpu_session.txt (else ./gpu_session.txt)
#
# DATA defaults to ../shared/data/refcoco-mini. `run` also works on a CPU-only machine (the CUDA
# rows say they were not run), which is how it is tested before device time is spent on it.
set -euo pipefail
kit=.device-kit
images=${ZSRIS_KIT_IMAGES:-40}

pack() {
    local data=${1:-../shared/data/refcoco-mini} maker=../shared/gpu/make-device-site.sh
    [ -f "$maker" ] || { echo "gpu_session.sh pack: $maker is not here (it builds the packages' archive)" >&2; exit 1; }
    [ -d "$data/refcoco" ] || { echo "gpu_session.sh pack: no refcoco-mini at $data; pass its folder" >&2; exit 1; }
    grep -qx "/$kit/" .git/info/exclude 2>/dev/null || echo "/$kit/" >> .git/info/exclude
    rm -rf "$kit" && mkdir -p "$kit"
    bash "$maker" >/dev/null
    mv .device-site/site.tar.xz "$kit/site.tar.xz" && rm -rf .device-site
    # Ray for the actor rows: its wheel without the Java jar, the dashboard's web build and the
    # libraries zsris never imports (RLlib, Tune, Train, Serve, Data, LLM), binaries stripped
    local version work
    version=$(python3 -c "import ray; print(ray.__version__)")
    work=$(mktemp -d)
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux2014_x86_64 -d "$work" "ray==$version"
    for needed in jsonschema jsonschema-specifications referencing rpds-py; do  # what the image lacks of Ray's needs
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$work" \
            "$needed==$(python3 -c "import importlib.metadata as m; print(m.version('$needed'))")"
    done
    mkdir -p "$work/site" && for wheel in "$work"/*.whl; do python3 -m zipfile -e "$wheel" "$work/site"; done
    rm -rf "$work"/site/ray/{jars,dashboard/client/build,rllib,tune,train,serve,data,llm,tests}
    find "$work/site" -type f \( -name "*.so" -o -name raylet -o -name gcs_server \) -exec strip --strip-unneeded {} \;
    tar -C "$work/site" -cJf "$kit/ray.tar.xz" . && rm -rf "$work"
    # the first train images of DATA (those the benchmark reads) and its annotations
    mkdir -p "$kit/data/refcoco" "$kit/data/images/train2014"
    cp "$data"/refcoco/* "$kit/data/refcoco/"
    python3 - "$data" "$kit/data" "$images" <<'EOF'
import shutil, sys
from pathlib import Path
from zsris.datasets import ReferDataset
source, target, count = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
dataset = ReferDataset(source, "refcoco")
for image_id in dataset.refs_by_image("train", count):
    name = dataset.images[image_id].file_name
    shutil.copy(source / "images" / "train2014" / name, target / "images" / "train2014" / name)
EOF
    du -sh "$kit" && ls -l "$kit"
}

run() {
    local out=${OUT:-.} site=/tmp/zsris-site
    if python3 -c "import sys; sys.exit(sys.version_info[:2] != (3, 12))"; then  # the kit's Python (the device's)
        mkdir -p "$site"
        for archive in "$kit/site.tar.xz" "$kit/ray.tar.xz"; do
            if [ -f "$archive" ]; then tar -xJf "$archive" -C "$site"; fi
        done
        export PYTHONPATH="$site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
    else  # another Python (this machine's, for a trial run): its own packages
        export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
    fi
    export PYTHONUNBUFFERED=1
    local data=${ZSRIS_TEST_DATA:-$kit/data}
    [ -d "$data" ] || data=../shared/data/refcoco-mini
    local n=$((images < 24 ? images : 24)) log="$out/gpu_session.txt"
    {
        nvidia-smi -L 2>/dev/null || echo "no nvidia-smi here"
        python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
        # each part within its own limit, about six minutes in all (they take less on an H100)
        # 0 exactness, 3 visual step per backbone and precision with open_clip's floor, 3b-3d, 4 precision effect
        timeout 120 python3 benchmarks/engine_speed.py --data "$data" --only 0 3 4 --backbones ViT-B/32 ViT-L/14 \
            --pass-images 8 || echo "parts 0, 3 and 4 ended early ($?)"
        # 6 the floor, piece by piece (torch.compile builds take most of it)
        timeout 80 python3 benchmarks/engine_speed.py --data "$data" --only 6 \
            || echo "part 6 ended early ($?)"
        # 7 Ray actors sharing the device, fed by Ray preparation tasks
        timeout 80 python3 benchmarks/engine_speed.py --data "$data" --only 7 --ray-images "$n" \
            || echo "part 7 ended early ($?)"
        # 1 eval end to end, classical and FreeSOLO proposals
        timeout 90 python3 benchmarks/engine_speed.py --data "$data" --only 1 --images "$images" \
            --serial-images 6 --freesolo-images "$n" || echo "part 1 ended early ($?)"
    } 2>&1 | grep --line-buffered -v "RANDOM weights" | tee "$log"
}

case "${1:-}" in
    pack) shift; pack "$@" ;;
    run) run ;;
    *) echo "usage: bash benchmarks/gpu_session.sh pack [DATA] | run" >&2; exit 2 ;;
esac
