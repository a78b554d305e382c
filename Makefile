# The two commands of the README. Each first runs tools/install.sh, which installs only what is
# missing (3 min 12 s on a fresh 2-core machine, 97 s of it the mmcv build; seconds afterwards).
PYTHON ?= python3
export PYTHON

.PHONY: install demo test
install:
	bash tools/install.sh

demo: install
	bash tools/demo.sh

test: install
	$(PYTHON) -m pytest -q tests
