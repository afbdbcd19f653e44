# Set-up and everyday commands. Run as root on Debian 12: `make run` starts the daemon on its built-in
# defaults, `make test` runs the tests against the real kernel. Both install what they need first.
PYTHON    ?= /usr/bin/python3
VENV      ?= .venv
PREFIX    ?= /opt/nflogd
# System packages: the build (compiler, headers, libnetfilter_log), and the real tools the tests drive.
APT_BUILD := build-essential pkg-config python3-dev python3-venv libnetfilter-log-dev libmnl-dev
APT_TEST  := nftables iptables iproute2 util-linux procps prometheus curl openssl apache2-utils systemd valgrind strace
STAMP_DEPS := $(VENV)/.deps-installed
STAMP_BUILD := $(VENV)/.built
SOURCES := $(wildcard csrc/*.c csrc/*.h) setup.py pyproject.toml

.PHONY: all deps venv build run test test-unit check-c install clean

all: build

deps: $(STAMP_DEPS)
$(STAMP_DEPS):
	@missing=$$(for p in $(APT_BUILD) $(APT_TEST); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  if echo "$$missing" | grep -qw prometheus && [ -d /run/systemd/system ]; then \
	    systemctl disable --now prometheus >/dev/null 2>&1 || true; \
	  fi; \
	fi
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	touch $@

venv build: $(STAMP_BUILD)
$(STAMP_BUILD): $(STAMP_DEPS) $(SOURCES)
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

run: build
	$(VENV)/bin/nflogd $(ARGS)

test: build
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# The tests that need no root, kernel or systemd (tests/conftest.py says which): seconds, any user.
test-unit: build
	$(VENV)/bin/python -m pytest -m unit $(PYTEST_ARGS)

install: build
	./systemd/install.sh $(PREFIX)

clean:
	rm -rf $(VENV) build *.egg-info nflogd/*.so

# The differential test against the real nflogr (README "The Python API"): nflogr from PyPI reads
# records only on CPython 3.9 and 3.13, so a venv of one of those (pyenv's) holds nflogr and
# nflogd's extension built for it, cached in $(COMPAT_VENV) until the interpreter changes.
NFLOGR_VERSION := 0.2.12
COMPAT_PYTHONS := 3.13.0 3.9.18
COMPAT_VENV    ?= .venv-compat

.PHONY: test-compat
test-compat: $(STAMP_DEPS)
	@root=$$(pyenv root 2>/dev/null || echo "$$HOME/.pyenv"); py=""; \
	for v in $(COMPAT_PYTHONS); do \
	  if [ -x "$$root/versions/$$v/bin/python3" ]; then py="$$root/versions/$$v/bin/python3"; break; fi; \
	done; \
	if [ -z "$$py" ]; then \
	  echo "test-compat: FAILED: no CPython $(COMPAT_PYTHONS) under $$root/versions (nflogr $(NFLOGR_VERSION) reads records on no other); install one with pyenv" >&2; \
	  exit 1; \
	fi; \
	stamp="$(COMPAT_VENV)/.ready-$(NFLOGR_VERSION)-$$(echo $$py | tr / _)"; \
	if [ ! -f "$$stamp" ]; then \
	  rm -rf $(COMPAT_VENV) && "$$py" -m venv $(COMPAT_VENV) && \
	  $(COMPAT_VENV)/bin/pip install -q setuptools nflogr==$(NFLOGR_VERSION) && touch "$$stamp" || exit 1; \
	fi; \
	$(COMPAT_VENV)/bin/python setup.py -q build_ext --inplace >$(COMPAT_VENV)/build.log 2>&1 || \
	  { cat $(COMPAT_VENV)/build.log; exit 1; }; \
	PYTHONPATH=$(CURDIR) $(COMPAT_VENV)/bin/python tests/compat/run.py
