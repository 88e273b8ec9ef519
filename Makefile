# mupath: `make demo` and `make test` work on a fresh machine (see README).
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.stamp-install
FASHION := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: demo demo-vit test test-fast fashion-data chromium bench-speed bench-roots clean

# Reuse an existing .venv unless pyproject.toml changed since it was installed.
$(STAMP): pyproject.toml
	@$(PY) -c 'import sys; assert sys.version_info >= (3, 11), "mupath needs Python >= 3.11"'
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $(STAMP)

# Fashion-MNIST ships in a Debian package; install it when we can (root), else say how.
fashion-data:
	@if [ ! -f $(FASHION) ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null; \
	  else \
	    echo "fashion_mnist needs the Debian package: run 'sudo apt-get install dataset-fashion-mnist'"; exit 1; \
	  fi; \
	fi

# `make demo` grows runs/demo from the pretrained EfficientNet-Lite0 (the budgeted search, 440 s for 4 tasks;
# ARGS=--fixed-schedule for the former demo); `make demo-vit` from a random-init ViT.
demo: $(STAMP) fashion-data
	$(VENV)/bin/mupath demo runs/demo $(ARGS)

demo-vit: $(STAMP) fashion-data
	$(VENV)/bin/mupath demo runs/demo-vit --root vit $(ARGS)

# The page's browser test drives Debian's Chromium (Playwright never downloads one); install it when we can.
chromium:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; \
	  else \
	    echo "the page's browser test needs Chromium: run 'sudo apt-get install chromium'"; exit 1; \
	  fi; \
	fi

test: $(STAMP)
	-@$(MAKE) --no-print-directory fashion-data
	-@$(MAKE) --no-print-directory chromium
	$(VENV)/bin/python -m pytest -q

test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m "not slow"

# The behaviour digest on this machine (tests/digest.py); `make digest REF=<commit>` checks a refactor: the working
# tree against REF, bit for bit, here (digests from different machines never compare: float bits differ by CPU).
.PHONY: digest
digest: $(STAMP)
	$(VENV)/bin/python tests/digest.py $(if $(REF),--against $(REF))

# ruff (lint and import order) and mypy on the package; settings in pyproject.toml.
.PHONY: lint docs-settings
lint: $(STAMP)
	$(VENV)/bin/ruff check mupath && $(VENV)/bin/mypy mupath

# Regenerate the settings table of docs/settings.md from EvolveSettings (tests/test_settings.py checks it).
docs-settings: $(STAMP)
	$(VENV)/bin/python -c 'from mupath.search.settings import main; main(["--write", "docs/settings.md"])'

# Reliability: SIGKILL `mupath evolve` at random moments and crash points, resume, verify (docs/reliability.md).
.PHONY: bench-crash
bench-crash: $(STAMP)
	$(VENV)/bin/python benchmarks/crash.py --trials $(or $(TRIALS),30)

clean:
	rm -rf runs .pytest_cache

# Quality evidence (docs/benchmarks.md, section "quality"); `make bench-quality ARGS=--quick` for a smoke run.
.PHONY: bench-quality
bench-quality: $(STAMP) fashion-data
	$(VENV)/bin/python benchmarks/quality.py $(ARGS)

# The same stream from the pretrained EfficientNet-Lite0, all methods over 3 seeds (section "quality-efficientnet",
# ~80 min on 2 cores, resumes when cut short); `ARGS=--quick` for a smoke run.
.PHONY: bench-quality-efficientnet
bench-quality-efficientnet: $(STAMP) fashion-data
	$(VENV)/bin/python benchmarks/quality.py --root efficientnet --seeds 0,1,2 $(ARGS)

# What blocks the pretrained-root targets: two evolved variants side by side (one core each), then the section
.PHONY: bench-blockers
bench-blockers: $(STAMP) fashion-data
	$(VENV)/bin/python -m benchmarks.blockers --variant adapters-only --seeds 0,1,2 & \
	$(VENV)/bin/python -m benchmarks.blockers --variant bound-lifted --seeds 0; wait
	$(VENV)/bin/python -m benchmarks.blockers

# What sharing a trained body costs on the quality stream (section "transfer"); needs bench-quality's run.
.PHONY: bench-transfer
bench-transfer: $(STAMP) fashion-data
	$(VENV)/bin/python benchmarks/transfer.py $(ARGS)

# Speed ratios (docs/benchmarks.md, section "speed"); `make bench-speed ARGS=--quick` for a smoke run.
.PHONY: bench-speed bench-scale
bench-speed: $(STAMP)
	$(VENV)/bin/python benchmarks/speed.py $(ARGS)

# One system over the 69-task stream (docs/benchmarks.md, section "scale"); resumable.
bench-scale: $(STAMP) fashion-data
	$(VENV)/bin/python benchmarks/scale.py $(ARGS)

# What a new kind of input shift costs: cheap adaptations vs a cloned block (section "shift").
.PHONY: bench-shift
bench-shift: $(STAMP) fashion-data
	$(VENV)/bin/python benchmarks/shift.py $(ARGS)

# One task of a finished scale run re-evolved under other seeds (section "redraw-TASK"); needs runs/scale.
.PHONY: bench-redraw
bench-redraw: $(STAMP) fashion-data
	$(VENV)/bin/python benchmarks/redraw.py $(ARGS)

# Pretrained vs random-init roots on the demo stream (docs/benchmarks.md, section "roots"); resumable.
bench-roots: $(STAMP) fashion-data
	$(VENV)/bin/python benchmarks/roots.py $(ARGS)

# Exported ONNX in onnxruntime vs System.predict, one task and two, batch 1 and 64 (section "export").
.PHONY: bench-export
bench-export: $(STAMP)
	$(VENV)/bin/python benchmarks/export.py $(ARGS)

# HTTP serving: cross-task batching vs one model per task, HTTP overhead, hot add under load (section "serve").
.PHONY: bench-serve
bench-serve: $(STAMP)
	$(VENV)/bin/python benchmarks/serve.py $(ARGS)

# The README's screenshot of the page, taken by the browser test (tests/test_page.py, a store of three tasks).
.PHONY: page-screenshot
page-screenshot: $(STAMP) chromium
	MUPATH_PAGE_SCREENSHOT=docs/img/page.png $(VENV)/bin/python -m pytest -q tests/test_page.py -k redraws
