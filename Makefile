# Two commands: `make report` (run the notebooks into reports/ on one recipe) and `make test`.
# Both create .venv from requirements.txt when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: report smoke-report test venv clean-reports

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

# make report RECIPE=scannet_vits  (a shipped recipe name or a YAML path); SET="stage1.epochs=3 curation.tau=0.5"
RECIPE ?= embedded_cpu
SET ?=
report: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m edgevl_lib.run --recipe $(RECIPE) $(foreach s,$(SET),--set $(s))

smoke-report: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m edgevl_lib.run --smoke --recipe $(RECIPE) $(foreach s,$(SET),--set $(s))

# two pytest workers, a test file each: the notebook runs (the longest file) overlap the rest
test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -n 2 --dist loadfile

clean-reports:
	rm -rf reports/*/
