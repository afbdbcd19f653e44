#!/bin/sh
# Install nflogd as a systemd service: `make install` (or `systemd/install.sh [PREFIX]`, as root), then
# `systemctl enable --now nflogd`. Safe to run again: it upgrades the package and the unit, and never
# touches an existing /etc/nflogd/nflogd.yaml (the operator's edits win).
#
#   PREFIX/venv                        virtualenv on Debian's /usr/bin/python3 holding nflogd (default /opt/nflogd)
#   /etc/systemd/system/nflogd.service the unit, its paths pointed at PREFIX
#   /etc/nflogd/nflogd.yaml            from config/nflogd.yaml, only when absent
set -eu

PREFIX=${1:-/opt/nflogd}
PREFIX=${PREFIX%/}
PYTHON=/usr/bin/python3
REPO=$(cd "$(dirname "$0")/.." && pwd)
UNIT_DIR=/etc/systemd/system
CONF_DIR=/etc/nflogd

case $PREFIX in
    /*) ;;
    *) echo "install.sh: PREFIX must be an absolute path, not '$PREFIX'" >&2; exit 2 ;;
esac
if [ "$(id -u)" != 0 ]; then
    echo "install.sh: run as root (it writes $PREFIX, $UNIT_DIR and $CONF_DIR)" >&2
    exit 1
fi
if [ ! -f "$REPO/config/nflogd.yaml" ]; then
    echo "install.sh: $REPO/config/nflogd.yaml is missing" >&2
    exit 1
fi

# The service runs as a DynamicUser, a fresh uid with no groups: everything it executes or reads must
# be world-readable, whatever root's umask is.
umask 022

# The package: non-editable (an editable install would point into this checkout, often under /root,
# which the service's uid cannot read). A venv made by another interpreter is rebuilt, not reused.
if [ ! -x "$PREFIX/venv/bin/python" ] ||
   [ "$(readlink -f "$PREFIX/venv/bin/python")" != "$(readlink -f "$PYTHON")" ]; then
    mkdir -p "$PREFIX"
    "$PYTHON" -m venv --clear "$PREFIX/venv"
fi
# pip always rebuilds and reinstalls a local directory, so a rerun picks up newer sources even when
# the version number did not change; dependencies already satisfied are left alone.
"$PREFIX/venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-cache-dir --use-pep517 "$REPO"
"$PREFIX/venv/bin/nflogd" --version >/dev/null

# The unit, with its /opt/nflogd paths pointed at PREFIX; written whole, then renamed into place.
mkdir -p "$UNIT_DIR"
sed "s|/opt/nflogd/|$PREFIX/|g" "$REPO/systemd/nflogd.service" > "$UNIT_DIR/.nflogd.service.tmp"
chmod 0644 "$UNIT_DIR/.nflogd.service.tmp"
mv -f "$UNIT_DIR/.nflogd.service.tmp" "$UNIT_DIR/nflogd.service"

# The config: only when absent, never over an edited one.
mkdir -p "$CONF_DIR"
chmod 0755 "$CONF_DIR"
if [ ! -e "$CONF_DIR/nflogd.yaml" ]; then
    install -m 0644 "$REPO/config/nflogd.yaml" "$CONF_DIR/nflogd.yaml"
    echo "installed $CONF_DIR/nflogd.yaml"
else
    echo "kept the existing $CONF_DIR/nflogd.yaml"
fi
"$PREFIX/venv/bin/nflogd" --config "$CONF_DIR/nflogd.yaml" --check-config ||
    echo "install.sh: warning: $CONF_DIR/nflogd.yaml does not validate; fix it before starting nflogd" >&2

# Tell a running systemd (sd_booted(3)'s test) about the new unit; in a chroot or container there is none.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
fi
echo "nflogd installed in $PREFIX. Start it with: systemctl enable --now nflogd"
