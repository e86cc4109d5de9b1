# ZoomDet: the two commands are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: venv demo test doctor clean

# torch and torchvision are installed in one pip call from the same index so
# their builds match (a CPU-only torch wheel offered through this machine's
# find-links does not load torchvision's compiled nms/roi_align); `zoomdet
# doctor` then proves the ops load.
# constraints.txt pins every package to the versions the README's numbers were measured with.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt torch torchvision
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	$(BIN)/zoomdet doctor
	touch $(STAMP)

venv: $(STAMP)

doctor: venv
	$(BIN)/zoomdet doctor

# The main job: `zoomdet quickstart` (synthetic data -> embedded detector -> rollout cache -> R-net ->
# DQN agent -> evaluation against coarse, fine, sahi, greedy and oracle -> report, plot, episodes),
# everything under runs/quickstart; rerunning reuses the finished stages.
demo: venv
	$(BIN)/zoomdet quickstart

# pytest exits 5 when it collects no test; that is not a failure of the suite.
test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS) || { rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; exit 0; fi; exit $$rc; }

clean:
	rm -rf $(VENV) runs/quickstart
