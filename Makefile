# The two commands of the README. Each first runs tools/install.sh, which installs only what is
# missing (2 min 35 s on a fresh 2-core machine, about a minute of it the mmcv build; seconds afterwards).
PYTHON ?= python3
export PYTHON

.PHONY: install demo test
install:
	bash tools/install.sh

demo: install
	bash tools/demo.sh

test: install
	$(PYTHON) -m pytest -q tests
