#!/usr/bin/env bash
# One prepared pass on a GPU box (the lent H100/H200): training throughput with AMP at 224 px, the demo end to
# end on the GPU, and the end-to-end tests with device=auto (so the CUDA/AMP/channels-last paths run).
# Wheels for packages the GPU image lacks are expected in .whl/: `bash benchmarks/gpu_wheels.sh` puts them there
# (the device call carries .whl; see docs/benchmarks.md).
set -uo pipefail
OUT=${OUT:-/tmp/ofgr-gpu-out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONPATH=${PYTHONPATH:-$PWD} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, timm, faiss; print('torch', torch.__version__, 'timm', timm.__version__, 'faiss', faiss.__version__, 'gpus(faiss)', faiss.get_num_gpus())" | tee -a "$OUT/gpu.txt"
echo "== bench_train (cuda, 224 px, bf16 AMP, batch 128)"
timeout 240 python3 benchmarks/bench_train.py --device cuda --size 224 --models resnet50,efficientnet_b0 \
  --steps 25 --coarse 4 --batch-pk 8,4 --workers 12 --data /tmp/synth224 2>&1 | tee "$OUT/bench_train_gpu.txt"
echo "== demo on the GPU"
timeout 200 python3 -m ofgr_core.cli run configs/demo.yaml --runs-dir /tmp/gpuruns --set device=cuda \
  --set data.num_workers=8 2>&1 | tee "$OUT/demo_gpu.txt"
echo "== end-to-end tests, device auto (cuda)"
timeout 150 python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/cli/test_run_e2e.py tests/cli/test_resume.py 2>&1 | tail -15 | tee "$OUT/tests_gpu.txt"
