# make test         : create .venv if needed, install the project, run the unit tests and the notebooks (nbval)
#                     in TEST_WORKERS (default 2) parallel pytest-xdist workers
# make notebooks    : every chapter executed as a test (pytest --nbval-lax notebooks) at the current budget and
#                     weights setting, TEST_WORKERS at a time; CI runs it at smoke with the shipped weights
# make book         : create .venv if needed, install, fetch the vendored JavaScript once (needs npm), execute
#                     every chapter (BOOK_WORKERS, default 2, at a time: book/execute_chapters.py) and build
#                     the HTML book (_build/html), which then works with no network;
#                     every page is rebuilt when the budget, the weights setting, the shipped weights or the
#                     package changed since the last build (book/build_stamp.py); with
#                     DIFFUSION_LESSONS_WEIGHTS=train it first trains every model the chapters load into the
#                     model cache (`diffusion-lessons pretrain --book`), so that no chapter trains in a cell
# make browser-test : open every page of the built book in headless Chromium (builds it first if missing;
#                     needs Debian's chromium and chromium-driver)
# make vendor       : fetch the pinned JavaScript the book serves itself into .vendor/ (book/vendor_assets.py)
# make bench        : create .venv if needed, install, run the benchmarks (training throughput against a
#                     tutorial loop, sampler error per NFE, UNet step memory; bench/RESULTS.md records them);
#                     on CUDA the same command runs the GPU rows. BENCH_ARGS passes options, e.g.
#                     BENCH_ARGS="--only book" times every chapter at the smoke budget, "--out FILE" saves the tables
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH  ?= torch==2.13.0
VENDOR := .vendor/MANIFEST.json
BENCH_ARGS ?=
# make test's pytest-xdist workers; each runs whole files (a notebook's cells stay in one kernel) on one thread
TEST_WORKERS ?= 2
PYTEST = $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --nbval-lax -p no:cacheprovider
# chapters make book executes at once (book/execute_chapters.py), each kernel on one thread
BOOK_WORKERS ?= 2

.PHONY: test notebooks book browser-test vendor bench clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH) -e '.[book,test]'
	touch $(STAMP)

test: $(STAMP)
	$(PYTEST)

notebooks: $(STAMP)
	$(PYTEST) notebooks

book: $(STAMP) $(VENDOR)
	@if [ "$${DIFFUSION_LESSONS_WEIGHTS:-}" = train ]; then \
	  echo "DIFFUSION_LESSONS_WEIGHTS=train: every model the chapters load is trained into the model cache first,"; \
	  echo "outside the notebooks, so that no honest training meets the per-cell timeout (cached models are reused)"; \
	  $(VENV)/bin/diffusion-lessons pretrain --book; fi
	@all=; $(PY) book/build_stamp.py check _build || { rc=$$?; [ $$rc -eq 1 ] || exit $$rc; all=--all; \
	  $(PY) book/build_stamp.py forget _build; }; \
	$(PY) book/execute_chapters.py _build --workers $(BOOK_WORKERS) || exit $$?; \
	echo "$(VENV)/bin/jupyter-book build . -W -n --keep-going $$all"; \
	$(VENV)/bin/jupyter-book build . -W -n --keep-going $$all
	$(PY) book/build_stamp.py write _build

# The browser test reads _build/html; it is deselected by `make test` (marker `browser`).
browser-test: $(STAMP)
	test -f _build/html/index.html || $(MAKE) book
	$(PY) -m pytest -m browser tests/test_browser.py -p no:cacheprovider

# Measurements, not tests: neither `make test` nor .ci/run calls it (diffusion_lessons/bench.py).
bench: $(STAMP)
	$(PY) -m diffusion_lessons.bench $(BENCH_ARGS)

vendor: $(VENDOR)

$(VENDOR): book/vendor_assets.py
	$(PYTHON) book/vendor_assets.py
	touch $@

clean:
	rm -rf _build .pytest_cache
