"""nflogd.config: defaults, the example file, a full valid file, and one test per kind of bad input.

Every error test checks the exact FILE:LINE: location and a fragment of the message, since the
point of ConfigError is telling the operator which line to fix. No root or kernel needed.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
import textwrap
from pathlib import Path

import pytest

from nflogd.config import (
    BUILTIN_SOURCE,
    DEFAULT_CONFIG_PATH,
    DEFAULT_LABELS,
    LABEL_NAMES,
    ActionRule,
    Config,
    ConfigError,
    GroupConfig,
    classify,
    default_config,
    load_config,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "nflogd.yaml"


def write(tmp_path: Path, text: str, name: str = "nflogd.yaml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def load(tmp_path: Path, text: str) -> Config:
    return load_config(write(tmp_path, text))


def error(tmp_path: Path, text: str, line: int, fragment: str) -> str:
    """Load ``text``, expect a ConfigError at ``line`` containing ``fragment``; return str(e)."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert re.match(rf"{re.escape(path)}:{line}:\d+: ", message), message
    assert fragment in message, message
    assert "\n" not in message
    assert info.value.path == path and info.value.line == line
    return message


# --- defaults and valid files --------------------------------------------------------------

def test_default_config_matches_spec() -> None:
    c = default_config()
    assert c.source == BUILTIN_SOURCE == "<built-in defaults>"
    assert (c.listen_host, c.listen_port, c.listen) == ("", 10040, ":10040")
    assert c.metrics_path == "/metrics"
    assert c.log_level == "info"
    assert c.max_series == 10000
    assert c.labels == DEFAULT_LABELS == ("group", "prefix", "indev", "outdev", "uid")
    assert [(r.pattern.pattern, r.action) for r in c.actions] == [
        ("drop|deny|block", "drop"), ("reject", "reject"), ("accept|allow|pass", "accept")]
    assert all(r.pattern.flags & re.IGNORECASE for r in c.actions)
    assert c.groups == (GroupConfig(group=0, qthresh=10000, timeout=1.0, nlbuf=131072,
                                    copy_range=128, rcvbuf=8388608, rcvbuf_max=67108864,
                                    labels=()),)
    assert c.web_config_file is None
    assert DEFAULT_CONFIG_PATH == "/etc/nflogd/nflogd.yaml"
    assert LABEL_NAMES == ("group", "prefix", "action", "indev", "outdev", "physindev",
                           "physoutdev", "uid", "gid", "family", "proto", "hook", "mark",
                           "saddr", "daddr", "sport", "dport", "icmp_type", "tcp_flags",
                           "src_net", "dst_net", "ct_state")


def test_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        default_config().max_series = 1  # type: ignore[misc]


def test_example_file_equals_builtin_defaults() -> None:
    config = load_config(str(EXAMPLE))
    assert config == dataclasses.replace(default_config(), source=str(EXAMPLE))


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n", "---\n", "~\n"])
def test_empty_file_means_defaults(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    assert load_config(path) == dataclasses.replace(default_config(), source=path)


def test_full_valid_file(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        listen: "[::1]:9999"
        metrics_path: /nflog/metrics
        log_level: DEBUG
        max_series: 500
        labels: [group, action, prefix, family, proto, hook, mark, gid]
        actions:
          - match: '^fw-(drop|reject)'
            action: blocked
          - {match: "", action: logged}
        groups:
          - &common
            group: 5
            qthresh: 1
            timeout: 0.05
            nlbuf: 4096
            copy_range: 0
            rcvbuf: 4096
            rcvbuf_max: 4096
            labels: {zone: dmz, rack: 012, weight: 1.5}
          - <<: *common
            group: 65535
            timeout: 1e-2
            labels: {}
          - group: 0x10
            timeout: 2
        web_config_file: tls/web.yml
        """)
    c = load_config(path)
    assert (c.listen_host, c.listen_port, c.listen) == ("::1", 9999, "[::1]:9999")
    assert c.metrics_path == "/nflog/metrics"
    assert c.log_level == "debug"
    assert c.max_series == 500
    assert c.labels == ("group", "action", "prefix", "family", "proto", "hook", "mark", "gid")
    assert [(r.pattern.pattern, r.action) for r in c.actions] == [
        ("^fw-(drop|reject)", "blocked"), ("", "logged")]
    assert c.groups[0] == GroupConfig(group=5, qthresh=1, timeout=0.05, nlbuf=4096,
                                      copy_range=0, rcvbuf=4096, rcvbuf_max=4096,
                                      labels=(("zone", "dmz"), ("rack", "012"),
                                              ("weight", "1.5")))
    # The merged entry inherits everything it does not override.
    assert c.groups[1] == dataclasses.replace(c.groups[0], group=65535, timeout=0.01, labels=())
    assert c.groups[2] == GroupConfig(group=16, timeout=2.0)
    assert isinstance(c.groups[2].timeout, float)
    assert c.group(65535) is c.groups[1]
    with pytest.raises(KeyError):
        c.group(1)
    assert c.web_config_file == str(tmp_path / "tls" / "web.yml")
    assert c.source == path


def test_absolute_web_config_file_kept(tmp_path: Path) -> None:
    assert load(tmp_path, "web_config_file: /etc/nflogd/web.yml\n").web_config_file \
        == "/etc/nflogd/web.yml"


@pytest.mark.parametrize("listen,host,port", [
    (":10040", "", 10040),
    ("0.0.0.0:1", "0.0.0.0", 1),
    ("127.0.0.1:65535", "127.0.0.1", 65535),
    ("[::]:80", "::", 80),
    ("[fe80::1%eth0]:80", "fe80::1%eth0", 80),
    ("localhost:9754", "localhost", 9754),
    ("metrics-1.example.org.:9754", "metrics-1.example.org.", 9754),
])
def test_listen_valid(tmp_path: Path, listen: str, host: str, port: int) -> None:
    c = load(tmp_path, f'listen: "{listen}"\n')
    assert (c.listen_host, c.listen_port) == (host, port)


def test_classify() -> None:
    rules = default_config().actions
    assert classify("FW-DROP in", rules) == "drop"
    assert classify("nft reject: ", rules) == "reject"
    assert classify("Allowed ssh", rules) == "accept"
    assert classify("", rules) == "other"
    assert classify("log only", rules) == "other"
    assert classify("deny-then-accept", rules) == "drop"  # first matching rule wins
    assert classify("anything", ()) == "other"
    assert classify("x", [ActionRule(re.compile("X", re.IGNORECASE), "ex")]) == "ex"


# --- reading the file ----------------------------------------------------------------------

def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: cannot read: No such file or directory"
    assert info.value.line is None


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path))
    assert str(info.value) == f"{tmp_path}: cannot read: Is a directory"


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "nflogd.yaml"
    path.write_bytes(b"log_level: info\n# caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert str(info.value) == f"{path}:2:6: not valid UTF-8 (byte 0xe9)"


def test_unprintable_character(tmp_path: Path) -> None:
    error(tmp_path, "log_level: info\nmetrics_path: /a\x07b\n", 2, "unacceptable character #x0007")


def test_config_error_is_one_line_and_picklable() -> None:
    e = ConfigError("/x.yaml", 3, 4, "first\nsecond")
    assert str(e) == "/x.yaml:3:4: first second"
    copy = pickle.loads(pickle.dumps(e))
    assert (str(copy), copy.path, copy.line, copy.column) == (str(e), "/x.yaml", 3, 4)


# --- malformed YAML ------------------------------------------------------------------------

def test_malformed_yaml(tmp_path: Path) -> None:
    error(tmp_path, """\
        listen: ":1"
        log_level: info
          metrics_path: /x
        """, 3, "invalid YAML: mapping values are not allowed here")


def test_malformed_yaml_unclosed_flow(tmp_path: Path) -> None:
    # The problem is found on the next line; the context names where the list started.
    message = error(tmp_path, "labels: [group, prefix\nlog_level: info\n", 2,
                    "invalid YAML: while parsing a flow sequence (line 1)")
    assert "expected ',' or ']'" in message


def test_several_documents(tmp_path: Path) -> None:
    error(tmp_path, "log_level: info\n---\nlog_level: debug\n", 2,
          "expected a single document")


def test_top_level_not_a_mapping(tmp_path: Path) -> None:
    error(tmp_path, "\n- listen: ':1'\n", 2, "the top level must be a mapping")
    error(tmp_path, "listen\n", 1, "got a string ('listen')")


def test_duplicate_top_level_key(tmp_path: Path) -> None:
    error(tmp_path, """\
        max_series: 10
        log_level: info
        max_series: 20
        """, 3, "max_series: duplicate key (first given at line 1)")


def test_duplicate_key_in_group(tmp_path: Path) -> None:
    error(tmp_path, """\
        groups:
          - group: 1
            rcvbuf: 8192
            rcvbuf: 16384
        """, 4, "groups[0].rcvbuf: duplicate key (first given at line 3)")


def test_duplicate_key_in_flow_mapping(tmp_path: Path) -> None:
    error(tmp_path, "actions:\n  - {match: a, action: x, action: y}\n", 2,
          "actions[0].action: duplicate key")


def test_recursive_merge_key(tmp_path: Path) -> None:
    error(tmp_path, "groups:\n  - &g\n    <<: *g\n    group: 1\n", 2,
          "an alias refers to a value that contains it")


# --- unknown keys --------------------------------------------------------------------------

def test_unknown_top_level_key_suggests(tmp_path: Path) -> None:
    error(tmp_path, "log_level: info\nlsten: ':1'\n", 2,
          "unknown key 'lsten' (did you mean 'listen'?)")


def test_unknown_key_without_close_match_lists_known(tmp_path: Path) -> None:
    error(tmp_path, "zzz: 1\n", 1, "unknown key 'zzz' (known: listen, metrics_path,")


def test_unknown_group_key_suggests(tmp_path: Path) -> None:
    error(tmp_path, """\
        groups:
          - group: 1
          - group: 2
            qtresh: 5
        """, 4, "groups[1]: unknown key 'qtresh' (did you mean 'qthresh'?)")


def test_unknown_action_key_suggests(tmp_path: Path) -> None:
    error(tmp_path, "actions:\n  - match: x\n    acton: y\n", 3,
          "actions[0]: unknown key 'acton' (did you mean 'action'?)")


def test_non_scalar_key(tmp_path: Path) -> None:
    error(tmp_path, "? [a, b]\n: 1\n", 1, "keys must be plain names")


# --- wrong types ---------------------------------------------------------------------------

def test_bool_is_not_an_int(tmp_path: Path) -> None:
    error(tmp_path, "groups:\n  - group: 1\n    qthresh: true\n", 3,
          "groups[0].qthresh: expected an integer, got a boolean ('true')")


def test_float_is_not_an_int(tmp_path: Path) -> None:
    error(tmp_path, "max_series: 10.5\n", 1, "max_series: expected an integer, got a float")


def test_string_is_not_an_int(tmp_path: Path) -> None:
    error(tmp_path, 'groups:\n  - group: "1"\n', 2,
          "groups[0].group: expected an integer, got a string ('1')")


def test_bool_is_not_a_number(tmp_path: Path) -> None:
    error(tmp_path, "groups:\n  - group: 1\n    timeout: no\n", 3,
          "groups[0].timeout: expected a number, got a boolean")


def test_quoted_number_is_not_a_number(tmp_path: Path) -> None:
    error(tmp_path, "groups:\n  - group: 1\n    timeout: '1.0'\n", 3,
          "groups[0].timeout: expected a number, got a string")


def test_unquoted_listen_read_as_number(tmp_path: Path) -> None:
    # YAML 1.1 reads 10:40 as the sexagesimal integer 640.
    error(tmp_path, "listen: 10:40\n", 1, "listen: expected a string, got an integer ('10:40'); "
          "put it in quotes")


def test_list_instead_of_string(tmp_path: Path) -> None:
    error(tmp_path, "log_level: [info]\n", 1, "log_level: expected a string, got a list")


def test_null_instead_of_list(tmp_path: Path) -> None:
    error(tmp_path, "max_series: 5\nactions:\n", 2,
          "actions: expected a list, got null (write [] for none")


def test_mapping_instead_of_list(tmp_path: Path) -> None:
    error(tmp_path, "groups:\n  group: 1\n", 2, "groups: expected a list, got a mapping")


def test_group_entry_not_a_mapping(tmp_path: Path) -> None:
    error(tmp_path, "groups:\n  - 1\n", 2, "groups[0]: expected a mapping (key: value), "
          "got an integer ('1')")


def test_bad_explicit_tag(tmp_path: Path) -> None:
    error(tmp_path, "max_series: !!int lots\n", 1, "max_series: cannot read 'lots' as an integer")


# --- ranges --------------------------------------------------------------------------------

def test_group_out_of_range(tmp_path: Path) -> None:
    error(tmp_path, """\
        groups:
          - group: 1
          - group: 70000
        """, 3, "groups[1].group: 70000 is out of range 0-65535")


def test_negative_group(tmp_path: Path) -> None:
    error(tmp_path, "groups:\n  - group: -1\n", 2, "groups[0].group: -1 is out of range 0-65535")


@pytest.mark.parametrize("key,value,fragment", [
    ("qthresh", "0", "0 is out of range 1-4294967295"),
    ("qthresh", "4294967296", "4294967296 is out of range 1-4294967295"),
    ("timeout", "655.36", "655.36 is out of range 0-655.35"),
    ("timeout", "-0.5", "-0.5 is out of range 0-655.35"),
    ("timeout", ".nan", ".nan is out of range 0-655.35"),
    ("nlbuf", "4095", "4095 is out of range 4096-131072"),
    ("nlbuf", "131073", "131073 is out of range 4096-131072"),
    ("copy_range", "65532", "65532 is out of range 0-65531"),
    ("copy_range", "-1", "-1 is out of range 0-65531"),
    ("rcvbuf", "100", "100 is out of range 4096-1073741823"),
    ("rcvbuf_max", "1073741824", "1073741824 is out of range 4096-1073741823"),
])
def test_group_setting_out_of_range(tmp_path: Path, key: str, value: str, fragment: str) -> None:
    error(tmp_path, f"groups:\n  - group: 1\n    {key}: {value}\n", 3,
          f"groups[0].{key}: {fragment}")


def test_max_series_below_one(tmp_path: Path) -> None:
    error(tmp_path, "max_series: 0\n", 1, "max_series: 0 is too small, it must be at least 1")


def test_rcvbuf_max_below_rcvbuf(tmp_path: Path) -> None:
    error(tmp_path, """\
        groups:
          - group: 1
            rcvbuf: 1048576
            rcvbuf_max: 65536
        """, 4, "groups[0].rcvbuf_max: rcvbuf_max (65536) must be at least rcvbuf (1048576)")


def test_rcvbuf_above_default_rcvbuf_max(tmp_path: Path) -> None:
    # rcvbuf_max keeps its default here, so the line to fix is rcvbuf's.
    error(tmp_path, "groups:\n  - group: 1\n    rcvbuf: 134217728\n", 3,
          "groups[0].rcvbuf: rcvbuf_max (67108864) must be at least rcvbuf (134217728)")


# --- groups --------------------------------------------------------------------------------

def test_group_listed_twice_names_both_lines(tmp_path: Path) -> None:
    error(tmp_path, """\
        groups:
          - group: 3
          - group: 4
          - group: 3
        """, 4, "groups[2].group: group 3 is listed twice, also as groups[0] at line 2")


def test_groups_empty(tmp_path: Path) -> None:
    error(tmp_path, "log_level: info\ngroups: []\n", 2, "groups: must list at least one group")


def test_group_number_missing(tmp_path: Path) -> None:
    error(tmp_path, "groups:\n  - group: 1\n  - qthresh: 5\n", 3,
          "groups[1]: missing required key 'group'")


# --- labels --------------------------------------------------------------------------------

def test_unknown_label(tmp_path: Path) -> None:
    message = error(tmp_path, "labels:\n  - group\n  - indv\n", 3,
                    "labels[1]: unknown label 'indv'; did you mean 'indev'? offered: group, prefix,")
    assert ", ".join(LABEL_NAMES) in message


def test_duplicate_label(tmp_path: Path) -> None:
    error(tmp_path, "labels:\n  - uid\n  - group\n  - uid\n", 4,
          "labels[2]: label 'uid' is listed twice (first at line 2)")


def test_empty_label_list_allowed(tmp_path: Path) -> None:
    assert load(tmp_path, "labels: []\n").labels == ()


@pytest.mark.parametrize("name", ["1zone", "zone-a", "__zone", "zöne"])
def test_constant_label_name_invalid(tmp_path: Path, name: str) -> None:
    error(tmp_path, f"groups:\n  - group: 1\n    labels:\n      {name}: x\n", 4,
          f"groups[0].labels.{name}: '{name}' is not a valid Prometheus label name")


def test_constant_label_clashes_with_record_label(tmp_path: Path) -> None:
    error(tmp_path, "groups:\n  - group: 1\n    labels: {zone: a, prefix: b}\n", 3,
          "groups[0].labels.prefix: 'prefix' clashes with the record label")


def test_constant_label_bool_value(tmp_path: Path) -> None:
    error(tmp_path, "groups:\n  - group: 1\n    labels:\n      internal: yes\n", 4,
          "groups[0].labels.internal: expected a string, got a boolean ('yes'); put it in quotes")


def test_constant_label_empty_value(tmp_path: Path) -> None:
    error(tmp_path, "groups:\n  - group: 1\n    labels:\n      zone: ''\n", 4,
          "groups[0].labels.zone: empty value")


# --- actions -------------------------------------------------------------------------------

def test_invalid_regex(tmp_path: Path) -> None:
    error(tmp_path, """\
        actions:
          - match: drop
            action: drop
          - match: "rej(ect"
            action: reject
        """, 4, "actions[1].match: invalid regular expression 'rej(ect': missing ), "
                "unterminated subpattern at position 3")


def test_ambiguous_regex_is_refused_with_its_place(tmp_path: Path) -> None:
    """Python warns of "[a||b]" (a set union in a later version): refused with its place, not
    two lines of nflogd's source on stderr."""
    error(tmp_path, 'actions:\n  - {match: "[a||b]", action: drop}\n', 2,
          "actions[0].match: ambiguous regular expression '[a||b]': Possible set union at "
          "position 2 (escape the character to mean it literally)")


def test_action_missing_key(tmp_path: Path) -> None:
    error(tmp_path, "actions:\n  - match: drop\n", 2, "actions[0]: missing required key 'action'")


def test_action_empty_name(tmp_path: Path) -> None:
    error(tmp_path, "actions:\n  - {match: drop, action: ''}\n", 2,
          "actions[0].action: must not be empty")


def test_empty_action_list_allowed(tmp_path: Path) -> None:
    c = load(tmp_path, "actions: []\n")
    assert c.actions == () and classify("drop", c.actions) == "other"


# --- listen, metrics_path, log_level, web_config_file ----------------------------------------

@pytest.mark.parametrize("listen,fragment", [
    ("10040", "'10040' has no port"),
    ("[::1]", "'[::1]' has no port"),
    (":0", "port '0' is not a number 1-65535"),
    (":65536", "port '65536' is not a number 1-65535"),
    (":http", "port 'http' is not a number 1-65535"),
    ("127.0.0.1:", "port '' is not a number 1-65535"),
    (":+80", "port '+80' is not a number"),
    ("::1:80", "IPv6 addresses must be in brackets"),
    ("[::1:80", "is not a host"),
    ("[1.2.3.4]:80", "[1.2.3.4] is not an IPv6 address"),
    ("256.1.1.1:80", "'256.1.1.1' is not an IPv4 address"),
    ("bad_host:80", "'bad_host' is not a valid host name"),
    ("-bad:80", "'-bad' is not a valid host name"),
    ("a b:80", "'a b' is not a valid host name"),
])
def test_listen_invalid(tmp_path: Path, listen: str, fragment: str) -> None:
    message = error(tmp_path, f'log_level: info\nlisten: "{listen}"\n', 2, fragment)
    assert ": listen: " in message


@pytest.mark.parametrize("path,fragment", [
    ("metrics", "must start with '/'"),
    ("/", "'/' is the landing page"),
    ("/a b", "must not contain spaces"),
    ("/metrics?x=1", "'?'"),
])
def test_metrics_path_invalid(tmp_path: Path, path: str, fragment: str) -> None:
    message = error(tmp_path, f'metrics_path: "{path}"\n', 1, fragment)
    assert ": metrics_path: " in message


def test_log_level_invalid(tmp_path: Path) -> None:
    error(tmp_path, "log_level: verbose\n", 1,
          "log_level: 'verbose' is not one of debug, info, warning, error")


def test_web_config_file_empty(tmp_path: Path) -> None:
    error(tmp_path, "web_config_file: ''\n", 1, "web_config_file: must not be empty")


def test_error_column(tmp_path: Path) -> None:
    path = write(tmp_path, "groups: [{group: 1}, {group: 1}]\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}:1:30: groups[1].group: group 1 is listed twice")
    assert info.value.column == 30


def test_relative_config_path_in_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The path is reported as given, so the operator sees what they typed.
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "max_series: -5\n", "rel.yaml")
    with pytest.raises(ConfigError) as info:
        load_config("rel.yaml")
    assert str(info.value).startswith("rel.yaml:1:13: max_series:")
    assert os.path.isabs(load_config(write(tmp_path, "web_config_file: w.yml\n")).web_config_file)


def test_series_ttl_takes_seconds_or_a_duration(tmp_path: Path) -> None:
    assert load(tmp_path, "").series_ttl == 900  # 15 minutes by default
    for text, seconds in (("0", 0), ("90", 90), ("90s", 90), ("15m", 900), ("1h30m", 5400),
                          ("2d", 172800), ("'10m'", 600)):
        assert load(tmp_path, f"series_ttl: {text}\n").series_ttl == seconds, text
    error(tmp_path, "\nseries_ttl: 15 minutes\n", 2,
          "series_ttl: expected seconds or a duration such as 15m, 1h or 90s, got a string")
    error(tmp_path, "series_ttl: ''\n", 1, "series_ttl: expected seconds or a duration")
    error(tmp_path, "series_ttl: 1.5\n", 1, "series_ttl: expected seconds or a duration")
    error(tmp_path, "series_ttl: true\n", 1, "series_ttl: expected seconds or a duration")
    error(tmp_path, "series_ttl: -1\n", 1, "series_ttl: -1 is out of range 0-2147483647")
    error(tmp_path, "series_ttl: 99999d\n", 1, "series_ttl: 99999d is out of range 0-2147483647")
    error(tmp_path, "series_ttl: 5m1h\n", 1, "series_ttl: expected seconds or a duration")
