# Quick start:  make demo   (virtual environment + install + the offline pipeline)
#               make test   (virtual environment + install + the test suite; make test-quick: the quick subset)
#
# torch is installed FIRST and pinned: an open-ended torch requirement would otherwise pull a
# multi-GB CUDA build on CPU-only machines. On a GPU cluster install the CUDA build of the same
# version first (e.g. `make setup TORCH_SPEC="torch==2.13.0 --index-url <your CUDA wheel index>"`).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
CONFIG ?= config/config.yaml
CORES ?= all
RESULTS ?= results/demo
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup demo study study-converged study-full test test-quick report mlflow-ui clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/snakemake --cores $(CORES) --configfile $(CONFIG)

# The equal-compute study (README): ELECTRA vs MLM vs scratch on local Gutenberg books and GLUE, frozen probes,
# about 50 minutes on 2 CPU cores.
study: setup
	$(BIN)/snakemake --cores $(CORES) --configfile config/presets/cpu-study.yaml

# The study's fine-tuning to convergence (10 epochs, each model at its best learning rate; docs/study.md): after
# `make study`, copy its data, pretrain, export and linear_probe folders into results/cpu-study-converged (see the
# preset) and this runs the fine-tuning again, about 80 minutes.
study-converged: setup
	$(BIN)/snakemake --cores $(CORES) --configfile config/presets/cpu-study.yaml config/presets/cpu-study-converged.yaml

# CoLA and SST-2 on their whole training sets (3 epochs, each model at its rate; docs/study.md): after `make study`,
# copy its data, pretrain, export and linear_probe folders into results/cpu-study-full, about 90 minutes.
study-full: setup
	$(BIN)/snakemake --cores $(CORES) --configfile config/presets/cpu-study.yaml config/presets/cpu-study-full.yaml

# The quick tests in three steps: those that do not run Snakemake on two pytest workers (pytest-xdist), then those that
# run Snakemake in the checkout (marker `workflow`) alone, one at a time (they share its .snakemake folder; on two
# workers, even kept on one of them, a clean-clone CI run saw one of them fail now and then with Snakemake stopping
# before its first job), then the slow ones (whole DAG, multi-process DeepSpeed) one at a time: each already uses both
# cores, and several time what they watch.
test: setup
	$(BIN)/python -m pytest -q -m "not slow and not workflow" -n 2
	$(BIN)/python -m pytest -q -m "not slow and workflow"
	$(BIN)/python -m pytest -q -m slow --durations=30

# The tests not marked slow (leaves out the whole-DAG and multi-process runs): a first check before `make test`.
test-quick: setup
	$(BIN)/python -m pytest -q -m "not slow and not workflow" -n 2
	$(BIN)/python -m pytest -q -m "not slow and workflow"

report: setup
	$(BIN)/snakemake --cores 1 --configfile $(CONFIG) --report results/report.html

mlflow-ui: setup
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/$(RESULTS)/mlflow.db --host 127.0.0.1 --port 5000

clean:
	rm -rf results .snakemake
