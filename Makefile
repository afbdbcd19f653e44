# Set-up and everyday commands. Run as root on Debian 12: `make run` starts the daemon on its built-in
# defaults, `make test` runs the tests against the real kernel. Both install what they need first.
PYTHON    ?= /usr/bin/python3
VENV      ?= .venv
PREFIX    ?= /opt/nflogd
# System packages: the build (compiler, headers, libnetfilter_log), and the real tools the tests drive.
APT_BUILD := build-essential pkg-config python3-dev python3-venv libnetfilter-log-dev libmnl-dev
APT_TEST  := nftables iptables iproute2 util-linux procps prometheus curl openssl apache2-utils systemd valgrind strace
# The Debian package: its build (`make deb`), lintian, and the Debian libraries it runs on (its test
# installs it; with these present apt needs no download for that).
APT_DEB   := debhelper dh-python help2man pybuild-plugin-pyproject python3-all-dev python3-setuptools lintian \
             python3-prometheus-client python3-yaml python3-sdnotify python3-bcrypt python3-h11 libnetfilter-log1
STAMP_DEPS := $(VENV)/.deps-installed
STAMP_DEB_DEPS := build/.deb-deps-installed
STAMP_BUILD := $(VENV)/.built
SOURCES := $(wildcard csrc/*.c csrc/*.h) setup.py pyproject.toml

DEB_OUT     ?= .
# The tests `make test` runs: all but the package's own (make test-deb) and the other Pythons'.
TEST_IGNORE := --ignore=tests/test_deb.py

.PHONY: all deps venv build run test test-unit lint test-deb test-pythons deb check-c install clean

all: build

# apt-get install of those of $(1) not installed yet.
define apt_install
	@missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends $$missing; \
	  if echo "$$missing" | grep -qw prometheus && [ -d /run/systemd/system ]; then \
	    systemctl disable --now prometheus >/dev/null 2>&1 || true; \
	  fi; \
	fi
endef

deps: $(STAMP_DEPS)
$(STAMP_DEPS):
	$(call apt_install,$(APT_BUILD) $(APT_TEST))
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	touch $@

venv build: $(STAMP_BUILD)
$(STAMP_BUILD): $(STAMP_DEPS) $(SOURCES)
	$(VENV)/bin/pip install -q -e '.[test,lint]'
	touch $@

run: build
	$(VENV)/bin/nflogd $(ARGS)

test: build lint
	$(VENV)/bin/python -m pytest $(TEST_IGNORE) $(PYTEST_ARGS)

# mypy (strict on nflogd/, settings in pyproject.toml) and ruff, both clean.
lint: build
	$(VENV)/bin/ruff check nflogd tests bench setup.py
	$(VENV)/bin/mypy

# Builds the .deb, installs it into a namespace-booted systemd, runs, scrapes, upgrades, purges it.
test-deb: build $(STAMP_DEB_DEPS)
	$(VENV)/bin/python -m pytest tests/test_deb.py $(PYTEST_ARGS)

# The extension built and the tests that need no systemd run under each pyenv CPython 3.9-3.13.
test-pythons: build
	./scripts/test-pythons $(PYTHONS)

# nflogd_<version>_<arch>.deb with Debian's tooling (debhelper, dh-python/pybuild), from a copy of
# the working tree (build/deb/src), then checked by lintian: no errors.
$(STAMP_DEB_DEPS):
	$(call apt_install,$(APT_BUILD) $(APT_DEB))
	mkdir -p build && touch $@

deb: $(STAMP_DEB_DEPS)
	rm -rf build/deb && mkdir -p build/deb/src
	tar -c --exclude-vcs --exclude-vcs-ignores --exclude=./build --exclude=./$(VENV) \
	    --exclude=./debian/nflogd.service . | tar -x -C build/deb/src
	# Debian's own tools and interpreter only (not a pyenv or venv python earlier in PATH).
	cd build/deb/src && env PATH=/usr/sbin:/usr/bin:/sbin:/bin DEB_BUILD_OPTIONS=noautodbgsym \
	    dpkg-buildpackage -b -us -uc --no-sign
	mkdir -p $(DEB_OUT)
	cp build/deb/nflogd_*.deb $(DEB_OUT)/
	lintian --fail-on error $(DEB_OUT)/$$(cd build/deb && echo nflogd_*.deb)
	@echo "built $(DEB_OUT)/$$(cd build/deb && echo nflogd_*.deb)"

# The tests that need no root, kernel or systemd (tests/conftest.py says which): seconds, any user.
test-unit: build
	$(VENV)/bin/python -m pytest -m unit $(PYTEST_ARGS)

install: build
	./systemd/install.sh $(PREFIX)

clean:
	rm -rf $(VENV) build *.egg-info nflogd/*.so nflogd_*.deb

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
