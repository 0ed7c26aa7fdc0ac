# MedFusion: set-up, demo, tests and benchmarks on a fresh machine.
#   make demo   -> set up, then fuse the bundled sample pairs into out/demo/
#   make test   -> set up, then run the whole test suite (what .ci/run calls), then the tests
#                  that need no torch again with the package versions 3D Slicer 5.10 bundles
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
EXTRAS := test,dask
# Oldest supported Slicer (5.10): its numpy/scipy/pydicom (Testing/slicer-5.10-pins.txt), no torch.
OLD       := .venv-slicer510
OLD_PY    := $(OLD)/bin/python
OLD_STAMP := $(OLD)/.installed
OLD_PINS  := Testing/slicer-5.10-pins.txt

.PHONY: setup data demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	touch $@

# The package's dependencies and the same extras from pyproject.toml, less torch, at Slicer 5.10's pins.
$(OLD_STAMP): pyproject.toml $(OLD_PINS) $(STAMP)
	$(PYTHON) -m venv $(OLD)
	$(PY) -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
	  reqs = p["dependencies"] + [r for e in "$(EXTRAS)".split(",") for r in p["optional-dependencies"][e]]; \
	  print("\n".join(r for r in reqs if not r.startswith("torch")))' > $(OLD)/requirements.txt
	$(OLD_PY) -m pip install -q --no-compile -c $(OLD_PINS) -r $(OLD)/requirements.txt
	$(OLD_PY) -m pip install -q --no-deps -e .
	touch $@

setup: $(STAMP)

data:
	bash Resources/SampleData/fetch-itk-examples.sh
	bash Resources/SampleData/fetch-colin27.sh
	bash Testing/fetch-dicom3tools.sh

demo: setup data
	$(VENV)/bin/medfusion demo --out out/demo

test: setup data $(OLD_STAMP)
	$(PY) -m pytest -q
	$(OLD_PY) -m pytest -q -m "not requires_torch and not requires_gpu and not slow"

bench: setup data
	for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) $(OLD) out .pytest_cache
