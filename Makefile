# make test  : create .venv if needed, install the project, run the unit tests and the notebooks (nbval)
# make book  : create .venv if needed, install, execute every chapter and build the HTML book (_build/html)
# make bench : run the benchmarks and print their tables
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH  ?= torch==2.13.0

.PHONY: test book bench clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH) -e '.[book,test]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest --nbval-lax -p no:cacheprovider

book: $(STAMP)
	$(VENV)/bin/jupyter-book build . -W -n --keep-going

bench: $(STAMP)
	$(PY) -m diffusion_lessons.cli bench

clean:
	rm -rf _build .pytest_cache
