# rlm_cap — the two front-door commands:
#   make demo   the whole stack on loopback, on the embedded SQLite default (KEEP=1: leave it running)
#   make test   installs what is missing (MariaDB, FreeRADIUS, the virtualenv) and runs every test
VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: test demo bench venv mariadb freeradius clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

venv: $(STAMP)

mariadb:
	sh .ci/ensure-mariadb

freeradius:
	sh .ci/ensure-freeradius

test: venv mariadb freeradius
	$(VENV)/bin/pytest $(PYTEST_ARGS)

demo: venv freeradius
	$(VENV)/bin/python -m cli.demo $(if $(KEEP),--keep)

# Not part of make test: about 5 minutes, written into BENCHMARKS.md.
bench: venv mariadb freeradius
	$(VENV)/bin/python -m bench.run

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis *.egg-info
