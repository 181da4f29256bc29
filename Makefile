# Two commands do all the set-up on a fresh machine with Python 3.11+:
#   make demo   installs into .venv, generates demo images, runs the whole pipeline, says where the results are
#   make test   installs into .venv (with test extras) and runs the whole test suite
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test install ui

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/cv-dataops demo

ui: $(STAMP)
	$(VENV)/bin/cv-dataops ui

# Label Studio (its own environment: scripts/install-label-studio.sh) installs in the background while the tests
# run; its round-trip test runs last, waits for the install, and fails if the install failed.
test: $(STAMP)
	scripts/install-system-packages.sh
	status="$$(mktemp -d)/label-studio-install"; \
	( scripts/install-label-studio.sh >"$$status.log" 2>&1; echo $$? >"$$status.part"; mv "$$status.part" "$$status" ) & \
	LABEL_STUDIO_INSTALL_STATUS_FILE="$$status" $(VENV)/bin/python -m pytest -n 2; code=$$?; wait; exit $$code
