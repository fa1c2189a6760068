# The README's two commands: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
# Stage commands in dvc.yaml call `defectgen`, so the venv's bin comes first.
export PATH := $(abspath $(VENV))/bin:$(PATH)
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := true

.PHONY: setup browser demo test ui lint clean

setup: $(VENV)/.installed

# constraints.txt pins torch to the CPU wheel on our machines (see docs/architecture.md).
$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	touch $@

# The main job: the DVC pipeline on the embedded default dataset (ELPV).
demo: setup
	DEFECTGEN_PIPELINE_KEY=demo-$$(date +%Y%m%dT%H%M%S) dvc repro
	dvc metrics show

# The report test renders the page in headless Chromium (Debian's package). Installed
# here when missing and apt can (root); without it that one check is skipped, saying so.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium \
		>/dev/null 2>&1; } || echo "chromium not installed: the browser render test will skip"

test: setup browser
	$(PY) -m pytest

# The MLflow UI on the embedded store, on this machine only: http://127.0.0.1:5000
ui: setup
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(abspath mlflow.db) --host 127.0.0.1 --port 5000

lint: setup
	$(VENV)/bin/ruff check src tests components pipelines benchmarks
	$(VENV)/bin/ruff format --check src tests components pipelines benchmarks

clean:
	rm -rf $(VENV) data/ingested data/preprocessed data/masks data/base data/finetune data/sweep data/generated \
		data/gated data/train data/registry data/report data/.*.resume data/.features mlflow.db mlruns mlartifacts
