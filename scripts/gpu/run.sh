#!/usr/bin/env bash
# The GPU run: every GPU check of issue 24 in one command, from the binaries that
# scripts/gpu/build.sh put in .gpu/ (no Rust toolchain needed), under one time budget, with one
# summary at the end.
#
#   scripts/gpu/run.sh [--device cuda|cpu] [--quick] [--budget SECONDS] [--out DIR]
#
# On the lent machine (the device tool's `run`, carrying .gpu):
#   bash scripts/gpu/run.sh --out $OUT            (budget 540 s: inside the 600 s of one call)
# Dry run here, on the CPU, smaller shapes:
#   scripts/gpu/run.sh --device cpu --quick --out /tmp/gpu-dry
#
# Steps, in order of what matters most when time runs out (a step that does not fit in what is
# left of the budget is reported as skipped): nvidia-smi; `detclip check` (every core op
# against the CPU reference); `detclip train --recipe shapes`, 50 steps, in f32, f16 and bf16
# with and without f32 master weights (loss falls, no NaN); detclip-core's test suite on the
# device; DCN forward and forward+backward against torchvision's op and a dense conv; GLIP-T
# inference (80 classes, LVIS chunked) and a training step, with the same architecture in
# PyTorch; RegionSpot's regions per second against PyTorch; detclip-models' and
# detclip-train's test suites on the device. Each step's wall time, peak GPU memory and peak
# RSS are recorded (scripts/gpu/step.py).
#
# Writes into --out: summary.md (the table, the loss curves' figures, the benchmark ratios),
# run.log (everything printed), results.tar.gz (the results files in the format of
# detclip-bench/results/, each training run's log.jsonl, steps.jsonl).
set -uo pipefail
cd "$(dirname "$(dirname "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")")")"
ROOT=$PWD
HERE=$ROOT/scripts/gpu

DEVICE=cuda
QUICK=0
BUDGET=540
OUTDIR=${OUT:-$ROOT/gpu-run}
while [[ $# -gt 0 ]]; do
    case $1 in
        --device) DEVICE=$2; shift 2 ;;
        --quick) QUICK=1; shift ;;
        --budget) BUDGET=$2; shift 2 ;;
        --out) OUTDIR=$2; shift 2 ;;
        *) echo "usage: scripts/gpu/run.sh [--device cuda|cpu] [--quick] [--budget SECONDS] [--out DIR]" >&2; exit 2 ;;
    esac
done
START=$(date +%s)
mkdir -p "$OUTDIR"
OUTDIR=$(readlink -f "$OUTDIR")
WORK=$(mktemp -d /tmp/detclip-gpu.XXXXXX)
RUN=$WORK/run
mkdir -p "$RUN/results" "$RUN/logs"
STEPS=$RUN/steps.jsonl
: >"$STEPS"
exec > >(tee -a "$OUTDIR/run.log") 2>&1
echo "detclip GPU run: device $DEVICE, quick $QUICK, budget ${BUDGET}s, $(date -u +%FT%TZ), $(uname -n)"

die() { echo "run.sh: $*" >&2; exit 1; }

# ------------------------------------------------------------------ the kit
KIT=$ROOT/.gpu
[[ -f $KIT/kit.tar.xz && -f $KIT/BUILD ]] || die "no kit in $KIT: run scripts/gpu/build.sh here first and carry .gpu"
cat "$KIT/BUILD"
python3 -c "import tarfile, sys; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" "$KIT/kit.tar.xz" "$WORK" ||
    die "cannot unpack $KIT/kit.tar.xz"
BIN=$WORK/bin
chmod +x "$BIN"/*
# The test suites and the benchmarks find their fixtures and reference scripts under the
# folder they were built in (env!("CARGO_MANIFEST_DIR")): point that path at this checkout.
BUILD_ROOT=$(sed -n 's/^root=//p' "$KIT/BUILD")
if [[ $BUILD_ROOT != "$ROOT" ]]; then
    if [[ -e $BUILD_ROOT ]]; then
        [[ $(readlink -f "$BUILD_ROOT") == "$ROOT" ]] || die "the kit was built in $BUILD_ROOT, which exists here and is not this checkout"
    else
        mkdir -p "$(dirname "$BUILD_ROOT")" && ln -s "$ROOT" "$BUILD_ROOT" || die "cannot link $BUILD_ROOT to $ROOT"
        echo "linked $BUILD_ROOT -> $ROOT"
    fi
fi
if [[ -f $KIT/shared-data/README.md ]]; then
    export DETCLIP_SHARED_DATA=$KIT/shared-data
elif [[ -f $ROOT/../shared/data/README.md ]]; then
    export DETCLIP_SHARED_DATA=$ROOT/../shared/data
fi
echo "shared data: ${DETCLIP_SHARED_DATA:-absent (tests that read it say SKIPPED)}"
if compgen -G "$KIT/wheels/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" "$KIT"/wheels/*.whl &&
        export PYTHONPATH=$WORK/site${PYTHONPATH:+:$PYTHONPATH}
fi
[[ -f $KIT/glip_swint.py ]] && export GLIP_SWINT=$KIT/glip_swint.py

# ------------------------------------------------------------------ CUDA's run-time pieces
if [[ $DEVICE == cuda* ]]; then
    command -v nvidia-smi >/dev/null || die "--device $DEVICE but no nvidia-smi: no NVIDIA driver here"
    built=$(sed -n 's/^cuda=//p' "$KIT/BUILD")
    driver=$(nvidia-smi | sed -n 's/.*CUDA Version: *\([0-9]*\)\.\([0-9]*\).*/\1 \2/p' | head -n1)
    if [[ -n $driver ]]; then
        read -r dmaj dmin <<<"$driver"
        want=$((dmaj * 1000 + dmin * 10))
        ((built <= want)) || die "the kit uses CUDA API $built, newer than this driver's CUDA $dmaj.$dmin: rebuild with scripts/gpu/build.sh --cuda $want"
    fi
    # NVRTC compiles CubeCL's kernels at run time and needs CUDA's headers (CUDA_PATH/include)
    # and libnvrtc of the kit's CUDA major version.
    nvpy=$(python3 -c "import nvidia, os; print(os.path.dirname(list(nvidia.__path__)[0]))" 2>/dev/null || true)
    if [[ -z ${CUDA_PATH:-} ]]; then
        for c in /usr/local/cuda /opt/cuda; do
            [[ -f $c/include/cuda_fp16.h ]] && { export CUDA_PATH=$c; break; }
        done
    fi
    if [[ -z ${CUDA_PATH:-} && -n $nvpy ]]; then
        inc=$(find "$nvpy/nvidia" -name cuda_fp16.h -path '*include*' 2>/dev/null | head -n1)
        if [[ -n $inc ]]; then
            mkdir -p "$WORK/cuda"
            ln -s "$(dirname "$inc")" "$WORK/cuda/include"
            export CUDA_PATH=$WORK/cuda
        fi
    fi
    [[ -n ${CUDA_PATH:-} ]] || die "CUDA's headers not found (no /usr/local/cuda/include/cuda_fp16.h, none in PyTorch's nvidia wheels): set CUDA_PATH"
    libs=""
    for d in "$CUDA_PATH/lib64" "$CUDA_PATH/lib"; do [[ -d $d ]] && libs=$libs:$d; done
    if [[ -n $nvpy ]]; then
        while read -r f; do libs=$libs:$(dirname "$f"); done < <(find "$nvpy/nvidia" -name 'libnvrtc.so*' 2>/dev/null | sort -u)
    fi
    export LD_LIBRARY_PATH=${libs#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    echo "CUDA_PATH=$CUDA_PATH LD_LIBRARY_PATH=$LD_LIBRARY_PATH (kit: CUDA API $built)"
fi

# ------------------------------------------------------------------ steps
left() { echo $((BUDGET - ($(date +%s) - START))); }
# step NAME TIMEOUT CMD...: runs CMD under min(TIMEOUT, what is left less 20 s for the summary).
step() {
    local name=$1 limit=$2
    shift 2
    local l
    l=$(($(left) - 20))
    if ((l < 15)); then
        echo "{\"name\": \"$name\", \"skipped\": true}" >>"$STEPS"
        echo "<== $name: skipped (budget spent)"
        return 0
    fi
    ((limit < l)) || limit=$l
    python3 "$HERE/step.py" "$STEPS" "$RUN/logs/$name.log" "$name" "$limit" -- "$@"
}
in_dir() { local d=$1; shift; (cd "$d" && "$@"); }

if [[ $DEVICE == cuda* ]]; then
    step nvidia-smi 20 nvidia-smi
fi
step check 120 "$BIN/detclip" check --device "$DEVICE"

# Training: the demo's detector, 50 steps, each precision.
CFG=$ROOT/detclip-train/configs/shapes-gpu-50.json
if [[ $DEVICE == cuda* ]]; then
    PRECISIONS=("f32" "f16" "f16 --no-master-weights" "bf16" "bf16 --no-master-weights")
else
    PRECISIONS=("f32")
fi
for p in "${PRECISIONS[@]}"; do
    read -r prec flag <<<"$p"
    name=train-$prec${flag:+-no-master}
    step "$name" 120 "$BIN/detclip" train --recipe shapes --config "$CFG" --device "$DEVICE" \
        --precision "$prec" $flag --out "$RUN/$name"
done

step test-core 120 env DETCLIP_BACKEND="$DEVICE" bash -c "cd '$ROOT/detclip-core' && exec '$BIN/detclip-core-suite'"

if ((QUICK)); then
    DCN=(--shapes plain --reps 1 --skip-burn)
    GLIP=(--height 256 --width 384 --lvis-chunks 1 --train-size 256 384)
    GLIP_PT=(--height 256 --width 384 --reps 1)
    RS=(--boxes 10 --reps 1)
else
    DCN=(--shapes all --reps 5)
    GLIP=(--warmup --reps 3 --lvis-chunks 4)
    GLIP_PT=(--reps 3)
    RS=(--boxes 100 --reps 3)
fi
step bench-dcn 120 "$BIN/detclip-bench" dcn --device "$DEVICE" "${DCN[@]}" --out "$RUN/results/dcn.md"
step bench-glip 150 "$BIN/detclip-bench" glip --device "$DEVICE" "${GLIP[@]}" --out "$RUN/results/glip.md"
if [[ -n ${GLIP_SWINT:-} ]]; then
    step bench-glip-pytorch 90 python3 "$ROOT/detclip-bench/reference/pytorch_glip.py" \
        --device "${DEVICE%%:*}" "${GLIP_PT[@]}" --out "$RUN/results/glip_pytorch.md"
fi
# SAM ViT-B at 1024² on the fly takes about a minute a pass on two CPU cores (dry run).
RS_LIMIT=120
[[ $DEVICE == cpu ]] && RS_LIMIT=300
step bench-regionspot "$RS_LIMIT" "$BIN/detclip-bench" regionspot --device "$DEVICE" "${RS[@]}" --out "$RUN/results/regionspot.md"

step test-models 180 env DETCLIP_BACKEND="$DEVICE" bash -c "cd '$ROOT/detclip-models' && exec '$BIN/detclip-models-suite'"
step test-train 180 env DETCLIP_BACKEND="$DEVICE" bash -c "cd '$ROOT/detclip-train' && exec '$BIN/detclip-train-suite'"

# ------------------------------------------------------------------ summary
python3 "$HERE/summary.py" "$RUN" "$DEVICE" "$(sed -n 's/^commit=//p' "$KIT/BUILD")" >"$OUTDIR/summary.md"
cat "$OUTDIR/summary.md"
tar -C "$RUN" -czf "$OUTDIR/results.tar.gz" results logs steps.jsonl $(cd "$RUN" && ls -d train-*/log.jsonl 2>/dev/null)
echo "total $(($(date +%s) - START)) s; written: $OUTDIR/summary.md, run.log, results.tar.gz"
grep -q '"rc": [1-9]\|"timed_out": true' "$STEPS" && exit 1
exit 0
