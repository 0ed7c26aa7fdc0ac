# MedFusion: set-up, demo, tests and benchmarks on a fresh machine.
#   make demo   -> set up, then fuse the bundled sample pairs into out/demo/
#   make test   -> set up, then run the whole test suite (what .ci/run calls)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup data demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,dask]'
	touch $@

setup: $(STAMP)

data:
	bash Resources/SampleData/fetch-itk-examples.sh
	bash Resources/SampleData/fetch-colin27.sh
	bash Testing/fetch-dicom3tools.sh

demo: setup data
	$(VENV)/bin/medfusion demo --out out/demo

test: setup data
	$(PY) -m pytest -q

bench: setup data
	for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) out .pytest_cache
