# BrainSynth: `make run` starts the app on the bundled demo model, `make test` runs the tests.
# Both create ./.venv and install everything on first use.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of PyTorch by default; GPU users: make TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu124"
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: run test lint format bench clean bundle bundle-smoke bundle-startup lock dist sif

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e ".[dev,train,demo,video,preprocess]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/brainsynth

test: $(STAMP)
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_sampling.py

# -- packaging (packaging/README.md) ----------------------------------------------------------
BUNDLE_STAMP := $(VENV)/.bundle-installed
$(BUNDLE_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e ".[bundle]"
	touch $(BUNDLE_STAMP)

# The desktop bundle: dist/brainsynth/ (brainsynth, brainsynth-cli, _internal/). Takes minutes.
bundle: $(BUNDLE_STAMP)
	$(BIN)/pyinstaller --noconfirm --log-level WARN --distpath dist --workpath build/pyinstaller \
	    packaging/desktop/brainsynth.spec
	du -sh dist/brainsynth

# The frozen app and CLI, headless, with the bundled demo model (or a tiny checkpoint it makes).
bundle-smoke: $(STAMP)
	QT_QPA_PLATFORM=offscreen $(BIN)/python packaging/desktop/smoke.py

# Start-up to first window, frozen / venv (median of RUNS runs each).
RUNS ?= 7
bundle-startup: $(STAMP)
	$(BIN)/python packaging/desktop/measure_startup.py --runs $(RUNS)

# The hash-pinned lock of the runtime dependencies (Linux x86_64, CPython 3.11, torch from
# packaging/lock-constraints.txt), and the same resolution without torch and its CUDA wheels.
LOCK_PLATFORM ?= x86_64-manylinux_2_28
LOCK := packaging/requirements-lock.txt
lock: $(STAMP)
	$(BIN)/pip install --quiet "uv>=0.5"
	$(BIN)/uv pip compile pyproject.toml --quiet --python-version 3.11 --python-platform $(LOCK_PLATFORM) \
	    --constraint packaging/lock-constraints.txt --generate-hashes --no-strip-markers \
	    --custom-compile-command "make lock" --output-file $(LOCK)
	$(BIN)/uv pip compile $(LOCK) --quiet --python-version 3.11 --python-platform $(LOCK_PLATFORM) \
	    --generate-hashes --no-strip-markers --custom-compile-command "make lock" \
	    $$(sed -n 's/^\(torch\|triton\|nvidia-[a-z0-9-]*\|cuda-[a-z0-9-]*\)==.*/--no-emit-package \1/p' $(LOCK)) \
	    --output-file packaging/requirements-lock-notorch.txt

# sdist and wheel into dist/
dist: $(STAMP)
	rm -f dist/brainsynth-*.tar.gz dist/brainsynth-*.whl
	$(BIN)/python -m build --outdir dist .

# The Apptainer image for clusters (needs apptainer and network access; not possible in CI here).
sif: $(STAMP)
	rm -rf build/apptainer
	$(BIN)/python -m build --outdir build/apptainer .   # sdist, then the wheel from it
	rm build/apptainer/brainsynth-*.tar.gz
	cp $(LOCK) packaging/requirements-lock-notorch.txt build/apptainer/
	apptainer build brainsynth.sif packaging/apptainer/brainsynth.def

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
