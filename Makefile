# The course's commands. Each sets up .venv from the pinned requirements first.
#   make test   — unit tests + every chapter under nbval (CPU: Triton interpreter)
#   make book   — the website in _build/html (executes every chapter, warnings are errors)
#   make check-site — after make book: every page of _build/html in headless Chromium
#                 (formulas typeset, figures, folded solutions, links; tools/check_site.py)
#   make lab    — JupyterLab on the chapters
#   make sync   — refresh the generated cells of the chapters, strip outputs
#   make student — the student edition (solutions removed) in student/
#   make wheels — wheels for a GPU machine without network (tools/gpu_check.py installs them)

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
JOBS   ?= 2
# MathJax for the website, served from its own _static/mathjax/ (no CDN): the npm
# package pinned in tools/mathjax/package-lock.json, its es5/ folder staged in
# tools/mathjax/static/ (_config.yml: html_static_path, mathjax_path).
MATHJAX       := tools/mathjax
MATHJAX_STAMP := $(MATHJAX)/static/mathjax/tex-mml-chtml.js
CHECK_SITE_FLAGS ?=

# Jupyter kernels started by nbval and the book must find the venv's python.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup test book check-site lab sync check student wheels clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

test: $(STAMP)
	$(BIN)/python tools/notebooks.py check
	$(BIN)/python -m pytest -n $(JOBS) --dist loadfile --nbval-lax --nbval-current-env \
		--nbval-cell-timeout=900 tests chapters instructor

book: $(STAMP) $(MATHJAX_STAMP)
	$(BIN)/jupyter-book build . --warningiserror --nitpick --keep-going

$(MATHJAX_STAMP): $(MATHJAX)/package.json $(MATHJAX)/package-lock.json
	@command -v npm >/dev/null || { echo "make book needs npm (Debian: apt-get install -y npm) for MathJax"; exit 1; }
	cd $(MATHJAX) && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	rm -rf $(MATHJAX)/static
	mkdir -p $(MATHJAX)/static
	cp -R $(MATHJAX)/node_modules/mathjax/es5 $(MATHJAX)/static/mathjax
	touch $@

# Checks the built site in headless Chromium (Debian's chromium); run it after make book.
check-site: $(STAMP)
	$(BIN)/python tools/check_site.py _build/html $(CHECK_SITE_FLAGS)

lab: $(STAMP)
	$(BIN)/jupyter lab chapters

sync: $(STAMP)
	$(BIN)/python tools/notebooks.py sync

check: $(STAMP)
	$(BIN)/python tools/notebooks.py check

student: $(STAMP)
	$(BIN)/python tools/notebooks.py student --out student

# Python 3.12 wheels of the notebook runners, for the GPU machine's image (no network there).
wheels:
	$(PYTHON) -m pip download -q -d wheels --python-version 3.12 --only-binary=:all: \
		--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
		nbval nbclient ipykernel ipywidgets nbformat $$(grep '^numpy==' requirements.txt)

clean:
	rm -rf _build student .pytest_cache $(MATHJAX)/node_modules $(MATHJAX)/static
