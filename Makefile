# Two commands set everything up: `make run` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test fuzz bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m tinyfaas_std

test: $(STAMP)
	@test -x /usr/bin/chromium || echo "chromium is not installed: the dashboard's browser tests will be skipped (apt-get install -y chromium)"
	$(PY) -m pytest -q

# e.g. make bench BENCH_ARGS='--quick --json out.json'
bench: $(STAMP)
	$(PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis

fuzz: $(STAMP)
	TINYFAAS_FUZZ_SCALE=$${TINYFAAS_FUZZ_SCALE:-100} $(PY) -m pytest -q -k "fuzz or random or roundtrip" tests/test_units.py tests/test_multipart.py tests/test_http11.py tests/test_archive.py tests/test_cron.py
