# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Both create .venv when it is missing. FAISS=gpu installs faiss-gpu instead of faiss-cpu (never both).
PYTHON ?= python3
VENV ?= .venv
FAISS ?= cpu
BIN := $(VENV)/bin
STAMP := $(VENV)/.ofgr-installed

.PHONY: demo test lint typecheck install tui bench clean-runs clip-standin

$(STAMP): pyproject.toml
	@# keep an existing torch: if the base interpreter already has one, the venv sees it
	@if [ ! -x $(BIN)/python ]; then \
	  if $(PYTHON) -c 'import torch' >/dev/null 2>&1; then \
	    echo "using the torch already installed for $(PYTHON)"; \
	    $(PYTHON) -m venv --system-site-packages $(VENV); \
	  else $(PYTHON) -m venv $(VENV); fi; \
	fi
	$(BIN)/python -m pip install -q -e '.[$(FAISS),dev]'
	@touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/ofgr demo

# rebuild the demo's CLIP stand-in artifact (ofgr_core/models/clip/artifact/) from its recipe: the captioned
# corpus, then LiT pretraining on it (CPU minutes); `ofgr demo` only unpacks the shipped artifact
clip-standin: $(STAMP)
	$(BIN)/ofgr clip standin --rebuild

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy  # settings: pyproject.toml [tool.mypy]

tui: $(STAMP)
	$(BIN)/ofgr-tui

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_eval.py --n 50000
