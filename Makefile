# vgbench — the two commands are `make bench` and `make test`; both set up .venv first.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# Offline MNIST: ../shared/data/mnist.npz when present (else $VGBENCH_MNIST, the Keras cache, download).
MNIST_FILE := $(abspath $(wildcard ../shared/data/mnist.npz))
ifneq ($(MNIST_FILE),)
export VGBENCH_MNIST ?= $(MNIST_FILE)
endif
DATA_ARG := $(if $(VGBENCH_MNIST),--data $(VGBENCH_MNIST),)

JOBS ?= 2
OUT  ?= reports/latest
# The Keras backend (tensorflow or jax). `bench` runs on JAX, where the runs of one configuration
# train as one population (docs/populations.md); its measured times are in docs/performance.md.
# `ci-report` and `update-baseline` stay on TensorFlow, the backend of reports/baseline.
BENCH_BACKEND ?= jax
BACKEND ?= tensorflow

.PHONY: install bench test test-slow lint format lock perf ci-report update-baseline fashion-mnist clean

install: $(STAMP)

# Reinstall only when the declared or locked dependencies change.
$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[ray,test]'
	@touch $(STAMP)

# The default suite, then the claims' runs into the same directory (runs they share are done
# once), then one report.
bench: install
	$(BIN)/vgbench run --suite default --out $(OUT) --jobs $(JOBS) --backend $(BENCH_BACKEND) $(DATA_ARG)
	$(BIN)/vgbench run --suite claims --out $(OUT) --jobs $(JOBS) --backend $(BENCH_BACKEND) $(DATA_ARG)
	$(BIN)/vgbench report $(OUT)

# The fast tier (≤ 6 min on 2 cores); `test-slow` runs the rest (docs/testing.md).
test: install lint
	$(BIN)/python -m pytest

test-slow: install
	$(BIN)/python -m pytest -m slow

# Lint and format check (ruff, configured in pyproject.toml); `make format` applies the formatter.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Re-resolve the newest allowed versions of every dependency into requirements.lock.
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --disable-pip-version-check '.[ray,test]'
	.lock-venv/bin/python -m pip freeze --exclude-editable | grep -iv '^vgbench' > requirements.lock
	rm -rf .lock-venv build

# Instrumentation cost per backend (TensorFlow, JAX, and TensorFlow with oneDNN on), one process each.
perf: install
	$(BIN)/python -m vgbench.bench.perf --out reports $(DATA_ARG)

ci-report: install
	$(BIN)/vgbench run --suite ci --out reports/ci-current --jobs $(JOBS) --backend $(BACKEND) $(DATA_ARG)
	$(BIN)/vgbench compare reports/baseline reports/ci-current \
		--markdown reports/ci-current/compare.md --json reports/ci-current/compare.json \
		--junit reports/ci-current/compare.xml

# Deliberately refresh the committed baseline of the `ci` suite.
update-baseline: install
	rm -rf reports/baseline.new
	$(BIN)/vgbench run --suite ci --out reports/baseline.new --jobs $(JOBS) --backend $(BACKEND) $(DATA_ARG)
	rm -rf reports/baseline && mv reports/baseline.new reports/baseline

# Fashion-MNIST's original IDX files, from Debian (needs root and apt).
fashion-mnist:
	apt-get install -y dataset-fashion-mnist

clean:
	rm -rf $(VENV) reports/latest reports/ci-current .pytest_cache
