#!/usr/bin/env bash
# Issue 20, part 5, in one call on a lent GPU box: the four GPU figures, each step under its own timeout so that
# the whole fits the device tool's 600 s limit for one command (~545 s at worst), every output in $OUT.
#
#   1. ViT-B/32 fp16 extraction from JPEG files against the encoder alone      (bench_extract.py, photographs)
#   2. the head fit on cached features against the CNN, fit + evaluate         (bench_clip_vs_cnn.py, demo world)
#   3. exact and IVF-Flat evaluation on faiss-gpu at 1M x 512, leave-one-out   (bench_scale_eval.py --million)
#   4. training throughput: the real loop against compute alone (the ceiling)  (bench_train.py, 224 px, AMP)
#
# A step that fails (a package the image lacks, a timeout) is reported and the next one runs: one missing
# package costs one figure, not the call. The lent machines' image lacks some of ofgr_core's packages:
# `bash benchmarks/gpu_wheels.sh` here puts their wheels in .whl/ (~40 MB), which the call carries and this script
# installs into /tmp/site. Step 3 needs faiss with GPU support, which that image cannot have (gpu_wheels.sh says
# why): where faiss sees no GPU the step is skipped and said so.
#
#   bash benchmarks/gpu_wheels.sh                         # here, once (PyPI reachable)
#   bash benchmarks/gpu_part5.sh                          # on the GPU box, from the repository root, .whl carried
#   OFGR_PART5_SMALL=1 bash benchmarks/gpu_part5.sh       # tiny sizes on the CPU: checks the script itself
set -uo pipefail
OUT=${OUT:-/tmp/ofgr-part5}
mkdir -p "$OUT"
SMALL=${OFGR_PART5_SMALL:-0}
PY=${PYTHON:-python3}
if [ "$SMALL" != 1 ] && ls .whl/*.whl >/dev/null 2>&1; then  # the image's Python 3.12 (gpu_wheels.sh)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONPATH=${PYTHONPATH:-$PWD} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
failed=()
skipped=()

step() {  # step NAME SECONDS COMMAND...: runs it under a timeout, its output to the screen and $OUT/NAME.txt
  local name=$1 limit=$2
  shift 2
  echo "== $name ($(date +%T), at most ${limit} s): $*"
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.txt"
  local rc=${PIPESTATUS[0]}
  if [ "$rc" -ne 0 ]; then
    echo "== $name FAILED (exit $rc$([ "$rc" -eq 124 ] && echo ': timed out'))" | tee -a "$OUT/$name.txt"
    failed+=("$name")
  fi
}

if [ "$SMALL" = 1 ]; then
  DEV=cpu
  EXTRACT=(--model ofgr-tiny-clip --size 64 --n 256 --batch-size 64 --workers 2 --precision auto --repeats 1)
  HEAD=(--warm-repeats 1 --set train.epochs=1)
  EVAL=(--memmap --n 20000 --dim 128 --nprobe 8 --sample 2000 --exact-queries 500 --full-exact --device auto)
  TRAIN=(--device cpu --size 64 --models ofgr_tinycnn --steps 2 --coarse 2 --batch-pk 2,2 --workers 0)
else
  DEV=cuda
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
  EXTRACT=(--model ViT-B-32 --size 224 --n 4096 --batch-size 256 --workers 12 --precision fp16 --repeats 3)
  HEAD=(--warm-repeats 2)
  # nprobe 64, not the CPU table's 256: a GPU scans each probed list per query (no list-wise products), and
  # at 256 probes that is ~130 TB of list reads for 1M queries; --full-exact: the GPU's exact all-vs-all, measured
  EVAL=(--million --nprobe 64 --full-exact --device gpu --dir /tmp/ofgr-part5-1m)
  TRAIN=(--device cuda --size 224 --models resnet50,efficientnet_b0 --steps 15 --coarse 4 --batch-pk 8,4
         --workers 12 --data /tmp/ofgr-part5-synth224)
fi
"$PY" - <<'PYEOF' 2>&1 | tee -a "$OUT/versions.txt"
import importlib, os, platform
print(platform.python_version(), os.cpu_count(), "CPUs")
for name in ("torch", "torchvision", "timm", "open_clip", "faiss", "numpy"):
    try:
        m = importlib.import_module(name)
        extra = f", {m.get_num_gpus()} GPUs" if name == "faiss" and hasattr(m, "get_num_gpus") else ""
        extra += f", cuda {m.version.cuda}, available {m.cuda.is_available()}" if name == "torch" else ""
        print(f"{name} {getattr(m, '__version__', '?')}{extra}")
    except Exception as e:  # noqa: BLE001 - report and go on
        print(f"{name}: MISSING ({type(e).__name__}: {e})")
PYEOF

step extract 110 "$PY" benchmarks/bench_extract.py --device "$DEV" --content photo "${EXTRACT[@]}"
# the demo's CLIP runs read the stand-in from data/clip-lit; the demo world is synthesised by the first run
[ -f data/clip-lit/open_clip_config.json ] || "$PY" -m ofgr_core.cli clip standin >"$OUT/standin.txt" 2>&1
step head 130 "$PY" benchmarks/bench_clip_vs_cnn.py --set "device=$DEV" --out "$OUT/head.json" "${HEAD[@]}"
if [ "$SMALL" = 1 ] || "$PY" -c "import faiss, sys; sys.exit(faiss.get_num_gpus() == 0)" 2>/dev/null; then
  step eval 200 "$PY" benchmarks/bench_scale_eval.py "${EVAL[@]}"
else  # see gpu_wheels.sh: faiss's GPU wheels need CUDA 12's cuBLAS, which the image lacks and cannot be carried
  echo "== eval skipped: faiss here has no GPU (faiss-cpu, or no faiss); no faiss-gpu figure" | tee "$OUT/eval.txt"
  skipped=(eval)
fi
step train 90 "$PY" benchmarks/bench_train.py "${TRAIN[@]}"
echo "== done $(date +%T); failed steps: ${failed[*]:-none}; skipped: ${skipped[*]:-none}" | tee "$OUT/summary.txt"
[ ${#failed[@]} -eq 0 ]
