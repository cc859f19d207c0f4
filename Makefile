# tripwire: every set-up step lives here. `make demo` and `make test` work on a
# fresh machine with Python 3.11+; Java 17+ and Maven are installed if missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: setup demo test test-unit lint typecheck bench clean

$(STAMP): pyproject.toml
	@scripts/ensure-system-deps.sh
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	@# setuptools' notice that an install is editable is not news here
	PYTHONWARNINGS='ignore:Editable installation' $(BIN)/python -m pip install -q \
		--disable-pip-version-check -e '.[test,dev]'
	@rm -f $(VENV)/.installed-* && touch $@

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/tripwire demo

test: $(STAMP)
	@scripts/ensure-test-deps.sh
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

lint: $(STAMP) typecheck
	$(BIN)/ruff check .

# mypy cannot follow setuptools' editable import hook (a meta-path finder that
# maps tripwire.* to the design card's folders) and has no option to map a package
# name to a folder, so it checks a tree of links laid out the way the package is
# installed (tripwire.streams, ...), rebuilt on every run. An editable install in
# strict mode makes such a tree too, but only of the files there at install time.
typecheck: $(STAMP)
	@rm -rf .build/mypy && mkdir -p .build/mypy/tripwire
	@cp -rs $(CURDIR)/app/. .build/mypy/tripwire/
	@for d in state streams schemas controls features connectors; do cp -rs $(CURDIR)/$$d .build/mypy/tripwire/$$d; done
	@cp -rs $(CURDIR)/bench .build/mypy/bench
	cd .build/mypy && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml -p tripwire -p bench

bench: $(STAMP)
	$(BIN)/python -m bench $(or $(BENCH_ARGS),passthrough)

clean:
	rm -rf .build .pytest_cache .mypy_cache .ruff_cache
