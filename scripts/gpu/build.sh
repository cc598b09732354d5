#!/usr/bin/env bash
# Builds, here, everything the GPU run (scripts/gpu/run.sh) needs, into the ignored folder
# .gpu/ that the device tool carries:
#
#   .gpu/kit.tar.xz     detclip, detclip-bench and the test suites of detclip-core,
#                       detclip-models and detclip-train, built with `--features cuda` (the CPU
#                       backend stays in: `check` compares against it) in the `gpu` profile
#                       (release, stripped), xz-compressed
#   .gpu/BUILD          the build's root, CUDA version, commit and sizes (run.sh reads it)
#   .gpu/shared-data/   ../shared/data (the real COCO images, the LVIS sample), when it fits
#   .gpu/wheels/        segment-anything (PyTorch RegionSpot reference; not on the device)
#   .gpu/glip_swint.py  GLIP's swint.py for the PyTorch GLIP-T reference, when --glip is given
#
#   scripts/gpu/build.sh [--cuda 13000|12080|...] [--glip GLIP_CHECKOUT] [--no-data]
#
# --cuda is cudarc's CUDA API version (CUDARC_CUDA_VERSION, major·1000 + minor·10): it must
# not be newer than the driver's CUDA (nvidia-smi's "CUDA Version"), and NVRTC of the same
# major version must be on the device (run.sh looks in CUDA_PATH, /usr/local/cuda and
# PyTorch's nvidia-* wheels). The lent H100/H200 machines have driver 580 (CUDA 13.0),
# nvcc 13.0 and torch 2.11+cu130: the default, 13000, is for them.
#
# Everything carried (the repository's tracked files, .gpu/) must stay under the device
# tool's 64 MiB; the script prints the sizes and fails above it.
set -euo pipefail
cd "$(dirname "$(dirname "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")")")"
ROOT=$PWD

CUDA=13000
GLIP=""
DATA=1
while [[ $# -gt 0 ]]; do
    case $1 in
        --cuda) CUDA=$2; shift 2 ;;
        --glip) GLIP=$2; shift 2 ;;
        --no-data) DATA=0; shift ;;
        *) echo "usage: scripts/gpu/build.sh [--cuda 13000|12080|…] [--glip GLIP_CHECKOUT] [--no-data]" >&2; exit 2 ;;
    esac
done
[[ $CUDA =~ ^1[1-3]0[0-9]0$ ]] || { echo "--cuda $CUDA: expected e.g. 13000 (13.0) or 12080 (12.8)" >&2; exit 2; }
grep -qxF '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >>.git/info/exclude

LIMIT=$((64 * 1024 * 1024))
KIT=.gpu
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$KIT" "$STAGE/bin"

# One cargo invocation for the binaries and the test suites (`suite`, each crate's one test
# binary; the libraries' unit tests run in CI on the CPU): the same package selection and
# features, so Burn and CubeCL are compiled once.
export CUDARC_CUDA_VERSION=$CUDA
SEL=(--workspace --features cuda --profile gpu --bins --test suite -j2)
t=$(date +%s)
echo "cargo build ${SEL[*]} (CUDARC_CUDA_VERSION=$CUDA)"
cargo build "${SEL[@]}"
json=$STAGE/build.json
cargo build "${SEL[@]}" --message-format=json >"$json" 2>/dev/null
echo "build: $(($(date +%s) - t)) s"

# name executable: bins by their name, test suites as <package>-suite.
exes() {
    grep '"reason":"compiler-artifact"' "$json" | grep '"executable":"/' | while read -r line; do
        local pkg kind name exe
        pkg=$(grep -o '"package_id":"[^"]*"' <<<"$line" | sed -E 's/.*\/([a-z0-9-]+)#.*/\1/')
        kind=$(grep -o '"kind":\["[a-z-]*"\]' <<<"$line" | head -n1 | cut -d'"' -f4)
        name=$(grep -o '"kind":\["[a-z-]*"\],"crate_types":\["[a-z-]*"\],"name":"[^"]*"' <<<"$line" | sed -E 's/.*"name":"([^"]*)"/\1/')
        exe=$(grep -o '"executable":"[^"]*"' <<<"$line" | cut -d'"' -f4)
        case $kind in
            bin) echo "$name $exe" ;;
            test) echo "$pkg-$name $exe" ;;
            *) ;; # unit-test harnesses of the libraries: their tests run in CI on the CPU
        esac
    done
}
while read -r name exe; do
    cp "$exe" "$STAGE/bin/$name"
    strip "$STAGE/bin/$name" 2>/dev/null || true
done < <(exes)
for want in detclip detclip-bench detclip-core-suite detclip-models-suite detclip-train-suite; do
    [[ -x $STAGE/bin/$want ]] || { echo "missing executable $want (built: $(ls "$STAGE/bin"))" >&2; exit 1; }
done
echo "binaries (stripped):"
ls -l "$STAGE/bin" | awk 'NR > 1 {printf "  %-24s %6.1f MiB\n", $9, $5 / 1048576}'
# One xz stream with a dictionary as large as the binaries: they share most of their code
# (Burn, CubeCL, the models), which a smaller dictionary or xz's threaded blocks would not see
# (380 MiB of binaries: 60 MiB with xz -6, 36 MiB so; about 5 minutes on one core).
tar -C "$STAGE" -cf - bin | xz -T1 --lzma2=preset=9e,dict=384MiB >"$KIT/kit.tar.xz.tmp"
mv "$KIT/kit.tar.xz.tmp" "$KIT/kit.tar.xz"

# The PyTorch references' extra inputs.
rm -rf "$KIT/wheels" && mkdir -p "$KIT/wheels"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux2014_x86_64 -d "$KIT/wheels" segment-anything==1.0 ||
    echo "warning: could not download segment-anything: the RegionSpot PyTorch reference will be skipped" >&2
if [[ -n $GLIP ]]; then
    f=maskrcnn_benchmark/modeling/backbone/swint.py
    if [[ -f $GLIP/$f ]]; then cp "$GLIP/$f" "$KIT/glip_swint.py"; else git -C "$GLIP" show "HEAD:$f" >"$KIT/glip_swint.py"; fi
fi

# Total bytes of the paths given that exist.
sizeof() {
    local p total=0
    for p in "$@"; do [[ -e $p ]] && total=$((total + $(du -sb "$p" | cut -f1))); done
    echo "$total"
}
# Bytes of the NUL-separated files on stdin (xargs may split them over several du calls).
bytes_of() { xargs -0 -r du -cb 2>/dev/null | awk -F'\t' '$2 == "total" {s += $1} END {print s + 0}'; }
tracked=$(git ls-files -z | bytes_of)
untracked=$(git ls-files -z --others --exclude-standard | bytes_of)
kit=$(sizeof "$KIT/kit.tar.xz" "$KIT/wheels" "$KIT"/glip_swint.py)
rm -rf "$KIT/shared-data"
if [[ $DATA -eq 1 && -f ../shared/data/README.md ]]; then
    data=$(sizeof ../shared/data)
    if ((tracked + untracked + kit + data < LIMIT - 2 * 1024 * 1024)); then
        cp -r ../shared/data "$KIT/shared-data"
        chmod -R u+w "$KIT/shared-data"
        kit=$((kit + data))
    else
        echo "../shared/data ($((data / 1048576)) MiB) does not fit: tests that read it will say SKIPPED"
    fi
fi
total=$((tracked + untracked + kit))
{
    echo "root=$ROOT"
    echo "cuda=$CUDA"
    echo "commit=$(git rev-parse HEAD)$(git diff --quiet HEAD -- . ':!.gpu' || echo -dirty)"
    echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "rustc=$(rustc --version)"
    echo "carried_bytes=$total"
} >"$KIT/BUILD"
printf 'carried: tracked %.1f MiB + untracked %.1f MiB + .gpu %.1f MiB = %.1f MiB (limit 64 MiB)\n' \
    "$(bc -l <<<"$tracked / 1048576")" "$(bc -l <<<"$untracked / 1048576")" \
    "$(bc -l <<<"$kit / 1048576")" "$(bc -l <<<"$total / 1048576")"
((total <= LIMIT)) || { echo "over the device tool's 64 MiB: leave out the data (--no-data)" >&2; exit 1; }
echo "ready: run   scripts/gpu/run.sh   on the device (carry .gpu)"
