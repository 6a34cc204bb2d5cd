# Each target installs what it needs first. `make install` is idempotent and instant when
# .venv is current (a stamp file newer than pyproject.toml and constraints.txt).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP_QUIET := -q --disable-pip-version-check

.PHONY: install run test lint bench demo clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install $(PIP_QUIET) -c constraints.txt -e '.[dev]' 2>&1 | grep -v '^WARNING: Location' || true
	$(BIN)/python -c "import compressors, service, torch, torchvision, onnx2torch"
	touch $(STAMP)

run: install
	$(BIN)/python examples/digits_model.py build
	$(BIN)/modelpress inspect build/digits_mlp.onnx
	$(BIN)/modelpress compress build/digits_mlp.onnx --method svd --target-macs 0.25 --data digits \
		-o build/digits_mlp.svd.onnx --report build/report.json

lint: install
	$(BIN)/ruff check compressors service tests bench examples
	$(BIN)/ruff format --check compressors service tests bench examples
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -q

bench: install
	$(BIN)/python bench/factorize.py

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
