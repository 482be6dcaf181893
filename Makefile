# The two set-up commands:  make demo  (install if needed, short toy run of every script, figures)
#                           make test  (install test needs if missing, the 2-minute smoke run)
PYTHON ?= python3
.PHONY: install demo test test-all bench clean

install:
	$(PYTHON) -m pip install -r requirements.txt

# Installs only when something is missing, so a second `make demo` starts at once. Each script runs a
# short toy job (a few minutes in all on a laptop CPU); fid.py then scores the toy samples.
demo:
	@$(PYTHON) -c "import torch, numpy, matplotlib" 2>/dev/null || $(MAKE) install
	@echo "== $(PYTHON) gan.py"; $(PYTHON) gan.py --overwrite
	@echo "== $(PYTHON) gan.py --experiment js"; $(PYTHON) gan.py --experiment js
	@echo "== $(PYTHON) wgan_gp.py --dataset 8gaussians --steps 1000"; $(PYTHON) wgan_gp.py --dataset 8gaussians --steps 1000 --overwrite
	@echo "== $(PYTHON) cgan.py"; $(PYTHON) cgan.py --overwrite
	@echo "== $(PYTHON) cyclegan.py"; $(PYTHON) cyclegan.py --overwrite
	@echo "== $(PYTHON) ddpm.py --dataset 8gaussians --steps 3000"; $(PYTHON) ddpm.py --dataset 8gaussians --steps 3000 --overwrite
	@echo "== $(PYTHON) fid.py runs/gan-8gaussians/samples.npz 8gaussians"; $(PYTHON) fid.py runs/gan-8gaussians/samples.npz 8gaussians
	@echo; echo "Figures (samples_*.png, losses.png, js.png, forward/reverse_process.png, ...) are in:"; ls -d runs/*/

# The smoke run (about 1.5 minutes on 2 cores): every check against an independent reference, tiny
# runs of every option and data kind, bad inputs, one short learning check per script.
# Installs pytest, pytest-xdist and scipy (the oracles) when one is missing; two workers share the cores.
test:
	@$(PYTHON) -c "import torch, numpy, matplotlib, pytest, xdist, scipy" 2>/dev/null || $(PYTHON) -m pip install -r tests/requirements.txt
	$(PYTHON) -m pytest tests -m "not slow" -n 2

# make test + the slow tier: mode-coverage runs, experiment sweeps and real Fashion-MNIST
# (apt-get install dataset-fashion-mnist; without it those tests skip, and CI fails).
test-all:
	@$(PYTHON) -c "import torch, numpy, matplotlib, pytest, xdist, scipy" 2>/dev/null || $(PYTHON) -m pip install -r tests/requirements.txt
	$(PYTHON) -m pytest tests -n 2

# Quality and speed figures for the README; BENCH_QUICK=1 runs a reduced version.
bench:
	$(PYTHON) bench/bench.py

clean:
	rm -rf runs .pytest_cache tests/.pytest_cache __pycache__ tests/__pycache__
