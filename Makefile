# The two commands of the README:
#   make run   set up .venv, migrate the embedded SQLite database, serve on 127.0.0.1:8000
#   make test  set up .venv with test tools, start real PostgreSQL+pgvector and Redis,
#              run the whole suite, stop the servers (also on failure)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# every first-party plugin is installed, so SPACIO_GENERATOR=openai make run just works
PLUGINS := $(wildcard plugins/*/setup.cfg)
RUN_PLUGINS := $(patsubst %/,%,$(dir $(PLUGINS)))
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: run test venv test-venv migrate clean
.DEFAULT_GOAL := run

$(BIN)/python:
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Spacio needs Python 3.11 or newer"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# stamps: reinstall only when packaging metadata changed
$(VENV)/.installed: $(BIN)/python setup.cfg pyproject.toml $(PLUGINS)
	$(BIN)/pip install --quiet --disable-pip-version-check -e . $(foreach p,$(RUN_PLUGINS),-e $(p))
	@touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]' $(foreach p,$(RUN_PLUGINS),-e $(p))
	@touch $@

venv: $(VENV)/.installed
test-venv: $(VENV)/.installed-test

migrate: venv
	$(BIN)/flask --app wsgi db upgrade

run: migrate
	exec $(BIN)/gunicorn -c gunicorn.conf.py --bind $(HOST):$(PORT) wsgi:app

test: test-venv
	bash tests/services.sh run -- $(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis *.egg-info
