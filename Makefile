# The README's two commands: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
# Stage commands in dvc.yaml call `defectgen`, so the venv's bin comes first.
export PATH := $(abspath $(VENV))/bin:$(PATH)
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := true

.PHONY: setup browser demo test ui lint clean lock tools-lock

setup: $(VENV)/.installed $(VENV)/.torchvision-hook

# Installs come from requirements.lock alone (every package, exact versions, sha256
# hashes; `make lock` writes it), installed by uv (pinned and hash-checked in
# tools.lock), which refuses anything unpinned or unhashed; parallel downloads make a
# fresh install about a minute instead of pip's 3. torch is the CPU wheel: found on our
# machines' wheel folder, elsewhere on PyTorch's CPU index.
TORCH_CPU_WHEELS := /opt/wheels
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
TORCH_SOURCE := $(if $(wildcard $(TORCH_CPU_WHEELS)/torch-*+cpu-*.whl),--find-links $(TORCH_CPU_WHEELS),--extra-index-url $(TORCH_CPU_INDEX) --index-strategy unsafe-best-match)
UV_VERSION := 0.13.9
UV := build/uv/bin/uv

$(UV): tools.lock
	python3 -m venv build/uv
	build/uv/bin/pip install -q --require-hashes -r tools.lock
	touch $@

# --compile-bytecode: every process would otherwise compile the ~4,000 modules it imports
# (torch, mlflow, ...) again where PYTHONDONTWRITEBYTECODE is set: 20 s per stage here.
$(VENV)/.installed: requirements.lock pyproject.toml $(UV)
	python3 -m venv $(VENV)
	$(UV) pip install -q --compile-bytecode --python $(PY) $(TORCH_SOURCE) \
		--require-hashes -r requirements.lock
	$(UV) pip install -q --python $(PY) --no-deps --no-build-isolation -e .
	$(PY) -m compileall -q src
	touch $@

# A user's `import torchvision` in this venv: PyPI's torchvision is a CUDA build whose ops
# do not load beside the CPU torch wheel; the .pth runs defectgen's shim just before the
# first torchvision import in any script (src/defectgen/_torchvision_compat.py).
$(VENV)/.torchvision-hook: $(VENV)/.installed
	echo "import defectgen._torchvision_compat as c; c.install_import_hook()" \
		> "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/defectgen-torchvision.pth"
	touch $@

# Regenerate the lock from pyproject.toml (+ the build backend, + constraints.txt's torch
# pin) with the pinned uv, keeping every existing pin that still fits (to move them all,
# delete requirements.lock first). Only on purpose: bump a range, `make lock`, run
# `make demo` and `make test`, commit the lock with the change (README: Upgrading
# dependencies). After changing UV_VERSION, `make tools-lock` rewrites tools.lock.
tools-lock:
	python3 -m venv build/uv-bootstrap
	build/uv-bootstrap/bin/pip install -q uv==$(UV_VERSION)
	{ echo "# uv, which installs requirements.lock: one version, every platform's hash (make tools-lock)."; \
	  echo "uv==$(UV_VERSION)" | build/uv-bootstrap/bin/uv pip compile - --generate-hashes --no-header --quiet; \
	} > tools.lock
	rm -rf build/uv-bootstrap

lock: $(UV)
	cp requirements.lock requirements.lock.tmp  # uv keeps the pins it can (no silent upgrades)
	python3 -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")' \
	| $(UV) pip compile pyproject.toml - --extra dev -c constraints.txt \
		--python-version 3.11 --python-platform x86_64-manylinux_2_28 $(TORCH_SOURCE) \
		--generate-hashes --no-header --quiet -o requirements.lock.tmp
	{ echo "# The lock: every package defectgen installs, exact versions and hashes."; \
	  echo "# Written by \`make lock\` (uv $(UV_VERSION)) from pyproject.toml, its build-system and"; \
	  echo "# constraints.txt. Do not edit; README 'Upgrading dependencies' says how to refresh."; \
	  cat requirements.lock.tmp; } > requirements.lock && rm requirements.lock.tmp

# The main job: the DVC pipeline on the embedded default dataset (ELPV).
demo: setup
	DEFECTGEN_PIPELINE_KEY=demo-$$(date +%Y%m%dT%H%M%S) dvc repro
	defectgen summary

# The report test renders the page in headless Chromium (Debian's package). Installed
# here when missing and apt can (root); without it that one check is skipped, saying so.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium \
		>/dev/null 2>&1; } || echo "chromium not installed: the browser render test will skip"

# Two workers, one per core (tests/conftest.py gives each one thread); a test file stays
# on one worker, so its module fixtures are built once, and files go out in conftest's
# order (longest first). `TEST_WORKERS=0` runs serially.
TEST_WORKERS ?= 2
test: setup browser
	$(PY) -m pytest $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)

# The MLflow UI on the embedded store, on this machine only: http://127.0.0.1:5000
ui: setup
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(abspath mlflow.db) --host 127.0.0.1 --port 5000

lint: setup
	$(VENV)/bin/ruff check src tests components pipelines benchmarks
	$(VENV)/bin/ruff format --check src tests components pipelines benchmarks

clean:
	rm -rf $(VENV) mlflow.db mlruns mlartifacts
	find data -mindepth 1 -maxdepth 1 ! -name raw ! -name .gitignore -exec rm -rf {} +  # the stages' outputs
