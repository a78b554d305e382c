# The two commands of the README. Each first runs tools/install.sh, which installs only what is
# missing (11 min on a fresh 2-core machine, most of it the mmcv build; seconds afterwards).
PYTHON ?= python3
export PYTHON

.PHONY: install demo test
install:
	bash tools/install.sh

demo: install
	bash tools/demo.sh

test: install
	$(PYTHON) -m pytest -q tests
