"""The nflogd command line as a user runs it: --check-config, --version, python -m nflogd.

Each kind of bad input must give exit code 2 and exactly one line on stderr naming FILE:LINE, so
`nflogd --check-config` (and systemd's ExecReload, which runs it) tells the operator what to fix.
No root or kernel needed: --check-config starts nothing.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import NFLOGD

import nflogd

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "nflogd.yaml"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([NFLOGD, *args], capture_output=True, text=True, timeout=30)


# (id, file text, line the error must name, fragment of the message)
BAD = [
    ("malformed-yaml", """\
        listen: ":10040"
        groups: [{group: 1}
        max_series: 5
        """, 3, "invalid YAML"),
    ("unknown-key", """\
        groups:
          - group: 1
            qtresh: 5
        """, 3, "unknown key 'qtresh'"),
    ("unknown-top-key", """\
        max_serie: 5
        """, 1, "unknown key 'max_serie'"),
    ("wrong-type", """\
        max_series: 100
        groups:
          - group: 1
            timeout: soon
        """, 4, "expected a number"),
    ("wrong-type-list", """\
        labels: group
        """, 1, "expected a list"),
    ("group-out-of-range", """\
        groups:
          - group: 1
          - group: 65536
        """, 3, "out of range 0-65535"),
    ("group-negative", """\
        groups:
          - group: -1
        """, 2, "out of range"),
    ("group-listed-twice", """\
        groups:
          - group: 4
          - group: 5
          - group: 4
        """, 4, "listed twice"),
    ("unknown-label", """\
        labels:
          - group
          - prefx
        """, 3, "prefx"),
    ("invalid-regex", """\
        labels: [group, action]
        actions:
          - {match: "drop", action: drop}
          - {match: "rej(ect", action: reject}
        """, 4, "rej(ect"),
]


@pytest.mark.parametrize("text,line,fragment", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_check_config_bad_input_exits_2_with_one_located_line(tmp_path: Path, text: str, line: int,
                                                              fragment: str) -> None:
    path = tmp_path / "nflogd.yaml"
    path.write_text(textwrap.dedent(text))
    proc = run("--config", str(path), "--check-config")
    assert proc.returncode == 2, proc
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"nflogd: {path}:{line}:"), lines[0]
    assert fragment in lines[0], lines[0]
    assert proc.stdout == ""


def test_check_config_missing_file_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    proc = run("--config", str(path), "--check-config")
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"nflogd: {path}: cannot read: No such file or directory"]


@pytest.mark.parametrize("text", [EXAMPLE.read_text(), "", "# only a comment\n",
                                  "groups:\n  - group: 3\n  - {group: 4, timeout: 0.05}\n"],
                         ids=["example", "empty", "comment-only", "two-groups"])
def test_check_config_good_file_exits_0(tmp_path: Path, text: str) -> None:
    path = tmp_path / "nflogd.yaml"
    path.write_text(text)
    proc = run("--config", str(path), "--check-config")
    assert (proc.returncode, proc.stderr) == (0, ""), proc
    assert proc.stdout.strip() == f"nflogd: {path}: configuration is valid"


def test_version() -> None:
    proc = run("--version")
    assert (proc.returncode, proc.stdout.strip()) == (0, f"nflogd {nflogd.__version__}"), proc


def test_python_m_nflogd_version() -> None:
    proc = subprocess.run([sys.executable, "-m", "nflogd", "--version"], capture_output=True,
                          text=True, timeout=30)
    assert (proc.returncode, proc.stdout.strip()) == (0, f"nflogd {nflogd.__version__}"), proc


def test_bad_arguments_exit_2() -> None:
    proc = run("--no-such-option")
    assert proc.returncode == 2
    assert "usage: nflogd" in proc.stderr
    proc = run("--log-level", "loud")
    assert proc.returncode == 2


def test_help_documents_exit_codes() -> None:
    proc = run("--help")
    assert proc.returncode == 0
    assert "--check-config" in proc.stdout and "Exit codes" in proc.stdout
