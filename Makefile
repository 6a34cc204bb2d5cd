# Each target installs what it needs first. `make install` is idempotent and instant when
# .venv is current (a stamp file newer than the files that pin the environment).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/python -m pip --disable-pip-version-check -q
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install run test lint unit bench demo openapi clean browser screenshots

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt clients/python/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -c constraints.txt -e '.[dev]' 2>&1 | grep -v '^WARNING: Location' || true
	$(PIP) install -c constraints.txt -e clients/python 2>&1 | grep -v '^WARNING: Location' || true
	$(BIN)/python -c "import compressors, service, modelpress_client, torch, torchvision, onnx2torch"
	touch $(STAMP)

run: install
	$(BIN)/modelpress serve --host $(HOST) --port $(PORT)

lint: install
	$(BIN)/ruff check compressors service clients tests bench examples
	$(BIN)/ruff format --check compressors service clients tests bench examples
	$(BIN)/mypy
	cd clients/python && ../../$(BIN)/mypy
	$(BIN)/lint-imports

# tests/ui drives Debian's chromium with Playwright; installed here when missing (never a
# browser build of Playwright's own). Without it the browser test skips, and fails under CI=true.
browser:
	@test -x /usr/bin/chromium || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq chromium >/dev/null) || echo "could not install chromium (apt-get as root)"

test: lint browser
	$(BIN)/python tests/services.py
	$(BIN)/pytest -q

bench: install
	$(PIP) install -c constraints.txt -e '.[bench]' 2>&1 | grep -v '^WARNING: Location' || true
	$(BIN)/python bench/factorize.py
	$(BIN)/python bench/train_overhead.py
	$(BIN)/python bench/review.py
	$(BIN)/python bench/peers.py
	$(BIN)/python bench/service.py
	$(BIN)/python bench/zoo.py

demo: install
	$(BIN)/python -m examples.demo $(DEMO_ARGS)

# the README's pictures of the dashboard, taken by the browser test
screenshots: install browser
	MODELPRESS_UI_SCREENSHOTS=docs/ui $(BIN)/pytest -q -p no:logging tests/ui/test_browser.py

openapi: install
	$(BIN)/python -m service.openapi_export

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
