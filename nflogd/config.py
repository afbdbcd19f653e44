"""YAML configuration: load and validate nflogd.yaml, report errors as FILE:LINE:COL: message.

The file is read by yamlreader (located nodes, bounded nesting and aliases, one error shape);
this module is the schema. Working on nodes also lets us reject duplicate mapping keys, which
yaml.safe_load silently collapses (the last one wins), hiding typos such as two `rcvbuf:` lines.

The built-in defaults live in the dataclass field defaults below; config/nflogd.yaml spells out
the same values and a test keeps the two equal.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from . import labels as _labels
from .yamlreader import TAG as _TAG
from .yamlreader import ConfigError, NodeReader, compose_file, type_name
from .yamlreader import describe as _describe

__all__ = [
    "BUILTIN_SOURCE",
    "DEFAULT_ACTIONS",
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_LABELS",
    "LABEL_NAMES",
    "LOG_LEVELS",
    "ActionRule",
    "Config",
    "ConfigError",
    "GroupConfig",
    "NamedNetwork",
    "check_metrics_path",
    "classify",
    "default_config",
    "format_listen",
    "load_config",
    "parse_listen",
]

DEFAULT_CONFIG_PATH = "/etc/nflogd/nflogd.yaml"
BUILTIN_SOURCE = "<built-in defaults>"

# Record labels offered for nflog_packets_total / nflog_bytes_total: nflogd/labels.py's table.
LABEL_NAMES: tuple[str, ...] = _labels.LABEL_NAMES
DEFAULT_LABELS: tuple[str, ...] = ("group", "prefix", "indev", "outdev", "uid")
LOG_LEVELS: tuple[str, ...] = ("debug", "info", "warning", "error")

# Value ranges. The kernel limits come from nfnetlink_log: qthresh is a u32, the flush timer is
# in 1/100 s in a u16 (655.35 s), the netlink buffer is capped at 128 KiB, and copy_range is
# clamped to 0xffff minus the nfattr header. The kernel keeps twice the receive buffer asked for,
# capped at a C int, hence 2**30-1 (nflog.open() refuses more, as nflogr does).
_GROUP_RANGE = (0, 65535)
_QTHRESH_RANGE = (1, 2**32 - 1)
_TIMEOUT_RANGE = (0, 655.35)
_NLBUF_RANGE = (4096, 131072)
_COPY_RANGE_RANGE = (0, 65531)
_RCVBUF_RANGE = (4096, 2**30 - 1)

_DURATION_RE = re.compile(r"(?:([0-9]{1,9})d)?(?:([0-9]{1,9})h)?(?:([0-9]{1,9})m)?(?:([0-9]{1,9})s)?")
_DURATION_MAX = 2**31 - 1

_TOP_KEYS = ("listen", "metrics_path", "log_level", "max_series", "series_ttl", "labels", "actions",
             "groups", "web_config_file", "address_mask", "networks")
_GROUP_KEYS = ("group", "qthresh", "timeout", "nlbuf", "copy_range", "rcvbuf", "rcvbuf_max",
               "labels")
_ACTION_KEYS = ("match", "action")
_NETWORK_KEYS = ("name", "cidr")
_MASK_KEYS = ("ipv4", "ipv6")

_PROM_LABEL_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
# RFC 1123 host names: dot-separated labels of letters, digits and inner hyphens.
_HOSTNAME_RE = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")
# YAML 1.2 floats such as 1e-2, which PyYAML (YAML 1.1) resolves to strings.
_YAML12_FLOAT_RE = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")

@dataclass(frozen=True)
class GroupConfig:
    """One NFLOG group to bind, with its kernel and socket settings and constant labels."""

    group: int
    qthresh: int = 10000
    timeout: float = 1.0
    nlbuf: int = 131072
    copy_range: int = 128
    rcvbuf: int = 8388608
    rcvbuf_max: int = 67108864
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ActionRule:
    """Prefix pattern (compiled with re.IGNORECASE, applied with search) and its action name."""

    pattern: re.Pattern[str]
    action: str


DEFAULT_ACTIONS: tuple[ActionRule, ...] = (
    ActionRule(re.compile("drop|deny|block", re.IGNORECASE), "drop"),
    ActionRule(re.compile("reject", re.IGNORECASE), "reject"),
    ActionRule(re.compile("accept|allow|pass", re.IGNORECASE), "accept"),
)


@dataclass(frozen=True)
class NamedNetwork:
    """One `networks:` entry: the src_net/dst_net label value of addresses inside its prefixes."""

    name: str
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


@dataclass(frozen=True)
class Config:
    """The validated configuration. Field defaults are the built-in defaults.

    ``listen_addresses`` are (host, port) pairs, at least one; a host "" is all addresses, an IPv6
    address is stored without brackets. ``listen_host``/``listen_port`` are the first pair.
    ``web_config_file`` is absolute when it was given relative to a config file.
    ``source`` is the file the config was read from, or BUILTIN_SOURCE.
    """

    listen_addresses: tuple[tuple[str, int], ...] = (("", 10040),)
    metrics_path: str = "/metrics"
    log_level: str = "info"
    max_series: int = 10000
    # Seconds without a record before a label set's series ends (0: never). 15 minutes: 3 times
    # Prometheus's 5-minute lookback and longer than the usual rate()/increase() windows, so a
    # pause of a few scrapes does not end a series, while a budget filled by a scan is back within
    # a quarter of an hour even when nothing displaces it.
    series_ttl: int = 900
    labels: tuple[str, ...] = DEFAULT_LABELS
    actions: tuple[ActionRule, ...] = DEFAULT_ACTIONS
    groups: tuple[GroupConfig, ...] = (GroupConfig(group=0),)
    web_config_file: str | None = None
    source: str = BUILTIN_SOURCE
    address_mask: tuple[int, int] = (32, 128)  # prefix lengths of saddr/daddr (IPv4, IPv6)
    networks: tuple[NamedNetwork, ...] = ()

    @property
    def key_spec(self) -> _labels.KeySpec:
        """What the aggregators key on for these labels (see labels.key_spec)."""
        pairs = ((n.name, str(net)) for n in self.networks for net in n.networks)
        return _labels.key_spec(self.labels, self.address_mask, pairs)

    @property
    def listen_host(self) -> str:
        return self.listen_addresses[0][0]

    @property
    def listen_port(self) -> int:
        return self.listen_addresses[0][1]

    @property
    def listen(self) -> str:
        """The listen addresses as "host:port" again, IPv6 in brackets (for log messages)."""
        return ", ".join(format_listen(host, port) for host, port in self.listen_addresses)

    def group(self, n: int) -> GroupConfig:
        """Return the settings of NFLOG group ``n``; KeyError if it is not configured."""
        for g in self.groups:
            if g.group == n:
                return g
        raise KeyError(n)


def default_config() -> Config:
    """The built-in defaults, used when no config file is given and the default path is absent."""
    return Config()


_LISTEN_USAGE = 'use "host:port", e.g. ":10040" (all addresses), "127.0.0.1:10040", "[::1]:10040"'


def parse_listen(text: str) -> tuple[str, int]:
    """Parse one "host:port" listen address; ValueError says what is wrong (for config and flags)."""
    host, sep, port = text.rpartition(":")
    if not sep or text.endswith("]"):  # "[::1]" has colons but no port
        raise ValueError(f"{text!r} has no port; {_LISTEN_USAGE}")
    if not re.fullmatch(r"[0-9]{1,5}", port) or not 1 <= int(port) <= 65535:
        raise ValueError(f"port {port!r} is not a number 1-65535; {_LISTEN_USAGE}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"[{host}] is not an IPv6 address") from None
    elif ":" in host or "[" in host or "]" in host:
        raise ValueError(f"{host!r} is not a host; IPv6 addresses must be in brackets; "
                         f"{_LISTEN_USAGE}")
    elif re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv4 address") from None
    elif host and not (len(host) <= 253 and _HOSTNAME_RE.fullmatch(host)):
        raise ValueError(f"{host!r} is not a valid host name; {_LISTEN_USAGE}")
    return host, int(port)


def check_metrics_path(text: str) -> str:
    """``text`` if it can serve the metrics (config and --web.telemetry-path); else ValueError."""
    if not text.startswith("/"):
        raise ValueError(f"{text!r} must start with '/'")
    if text == "/":
        raise ValueError("'/' is the landing page; use a path such as '/metrics'")
    # A URL path never contains these, so such a path could never be scraped.
    if re.search(r"[\s?#]|[\x00-\x1f\x7f]", text):
        raise ValueError(f"{text!r} must not contain spaces, control characters, '?' or '#'")
    return text


def format_listen(host: str, port: int) -> str:
    """(host, port) as "host:port", IPv6 in brackets: how a listen address is written."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def classify(prefix: str, rules: Iterable[ActionRule]) -> str:
    """Return the action of the first rule whose pattern is found in ``prefix``, else "other"."""
    for rule in rules:
        if rule.pattern.search(prefix):
            return rule.action
    return "other"


def load_config(path: str) -> Config:
    """Read and validate the YAML config at ``path``; raise ConfigError on any problem.

    An empty file (or one holding only comments) gives the built-in defaults.
    """
    root, loader = compose_file(path)
    try:
        return _Reader(path, loader).config(root)
    finally:
        loader.dispose()


class _Reader(NodeReader):
    """Walks the composed node tree, building Config pieces or raising a located ConfigError."""

    def __init__(self, path: str, loader: yaml.SafeLoader) -> None:
        super().__init__(path)
        self.loader = loader  # only used to construct scalars the way yaml.safe_load would

    # --- generic typed accessors ---------------------------------------------------------

    def construct(self, node: ScalarNode, where: str) -> Any:
        try:
            return self.loader.construct_object(node)
        except (ValueError, OverflowError, yaml.YAMLError):  # e.g. `!!int abc`
            raise self.error(node, f"{where}: cannot read {node.value!r} as "
                                   f"{type_name(node.tag)}") from None

    def sequence(self, node: Node, where: str) -> list[Node]:
        if not isinstance(node, SequenceNode):
            hint = " (write [] for none, or leave the key out for the default)" \
                if node.tag == _TAG + "null" else ""
            raise self.error(node, f"{where}: expected a list, got {_describe(node)}{hint}")
        return list(node.value)

    def string(self, node: Node, where: str) -> str:
        if isinstance(node, ScalarNode) and node.tag == _TAG + "str":
            return str(self.construct(node, where))
        hint = "; put it in quotes" if isinstance(node, ScalarNode) and node.value else ""
        raise self.error(node, f"{where}: expected a string, got {_describe(node)}{hint}")

    def integer(self, node: Node, where: str, lo: int, hi: int | None) -> int:
        # bool is a subclass of int in Python, but `true` is never a sensible buffer size.
        if not (isinstance(node, ScalarNode) and node.tag == _TAG + "int"):
            raise self.error(node, f"{where}: expected an integer, got {_describe(node)}")
        value = self.construct(node, where)
        self.check_range(node, where, value, lo, hi)
        return int(value)

    def number(self, node: Node, where: str, lo: float, hi: float) -> float:
        value: Any = None
        if isinstance(node, ScalarNode):
            if node.tag in (_TAG + "int", _TAG + "float"):
                value = self.construct(node, where)
            elif node.tag == _TAG + "str" and node.style is None \
                    and _YAML12_FLOAT_RE.fullmatch(node.value):
                value = float(node.value)  # unquoted 1e-2: a number to anyone but YAML 1.1
        if value is None:
            raise self.error(node, f"{where}: expected a number, got {_describe(node)}")
        self.check_range(node, where, value, lo, hi)
        return float(value)

    def duration(self, node: Node, where: str) -> int:
        """Whole seconds: an integer, or Prometheus-style units such as "90s", "15m", "1h30m"."""
        if isinstance(node, ScalarNode) and node.tag == _TAG + "int":
            return self.integer(node, where, 0, _DURATION_MAX)
        if isinstance(node, ScalarNode) and node.tag == _TAG + "str" \
                and _DURATION_RE.fullmatch(node.value) and node.value:
            m = _DURATION_RE.fullmatch(node.value)
            assert m is not None
            value = sum(int(n or 0) * unit for n, unit in zip(m.groups(), (86400, 3600, 60, 1)))
            self.check_range(node, where, value, 0, _DURATION_MAX)
            return value
        raise self.error(node, f"{where}: expected seconds or a duration such as 15m, 1h or 90s, "
                               f"got {_describe(node)}")

    def check_range(self, node: Node, where: str, value: Any, lo: Any, hi: Any) -> None:
        # Written as "not (lo <= value <= hi)" so that .nan fails too.
        if hi is None:
            if not lo <= value:
                raise self.error(node, f"{where}: {node.value} is too small, "
                                       f"it must be at least {lo}")
        elif not lo <= value <= hi:
            raise self.error(node, f"{where}: {node.value} is out of range {lo}-{hi}")

    # --- the config schema ---------------------------------------------------------------

    def config(self, root: Node | None) -> Config:
        if root is None or (isinstance(root, ScalarNode) and root.tag == _TAG + "null"):
            return Config(source=self.path)  # empty file: all defaults
        if not isinstance(root, MappingNode):
            raise self.error(root, "the top level must be a mapping of settings (key: value), "
                                   f"got {_describe(root)}")
        keys = self.mapping(root, "", _TOP_KEYS)
        kw: dict[str, Any] = {"source": self.path}
        if "listen" in keys:
            kw["listen_addresses"] = self.listen(keys["listen"][1])
        if "metrics_path" in keys:
            kw["metrics_path"] = self.metrics_path(keys["metrics_path"][1])
        if "log_level" in keys:
            kw["log_level"] = self.log_level(keys["log_level"][1])
        if "max_series" in keys:
            kw["max_series"] = self.integer(keys["max_series"][1], "max_series", 1, None)
        if "series_ttl" in keys:
            kw["series_ttl"] = self.duration(keys["series_ttl"][1], "series_ttl")
        if "labels" in keys:
            kw["labels"] = self.labels(keys["labels"][1])
        if "actions" in keys:
            kw["actions"] = self.actions(keys["actions"][1])
        if "groups" in keys:
            kw["groups"] = self.groups(keys["groups"][1])
        if "web_config_file" in keys:
            kw["web_config_file"] = self.web_config_file(keys["web_config_file"][1])
        if "address_mask" in keys:
            kw["address_mask"] = self.address_mask(keys["address_mask"][1])
        if "networks" in keys:
            kw["networks"] = self.networks(keys["networks"][1])
        config = Config(**kw)
        self.check_labels_fit(config, keys)
        return config

    def listen(self, node: Node) -> tuple[tuple[str, int], ...]:
        """One "host:port" string, or a list of them (the endpoint listens on each)."""
        if isinstance(node, SequenceNode):
            items = [(item, f"listen[{i}]") for i, item in enumerate(self.sequence(node, "listen"))]
            if not items:
                raise self.error(node, "listen: must list at least one address")
        else:
            items = [(node, "listen")]
        seen: dict[tuple[str, int], Node] = {}
        for item, where in items:
            try:
                address = parse_listen(self.string(item, where))
            except ValueError as e:
                raise self.error(item, f"{where}: {e}") from None
            if address in seen:
                raise self.error(item, f"{where}: {format_listen(*address)} is listed twice "
                                       f"(first at line {seen[address].start_mark.line + 1})")
            seen[address] = item
        return tuple(seen)

    def metrics_path(self, node: Node) -> str:
        text = self.string(node, "metrics_path")
        try:
            return check_metrics_path(text)
        except ValueError as e:
            raise self.error(node, f"metrics_path: {e}") from None

    def log_level(self, node: Node) -> str:
        text = self.string(node, "log_level")
        if text.lower() not in LOG_LEVELS:
            raise self.error(node, f"log_level: {text!r} is not one of {', '.join(LOG_LEVELS)}")
        return text.lower()

    def labels(self, node: Node) -> tuple[str, ...]:
        seen: dict[str, Node] = {}
        for i, item in enumerate(self.sequence(node, "labels")):
            where = f"labels[{i}]"
            name = self.string(item, where)
            if name not in LABEL_NAMES:
                close = difflib.get_close_matches(name, LABEL_NAMES, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise self.error(item, f"{where}: unknown label {name!r}; {hint}"
                                       f"offered: {', '.join(LABEL_NAMES)}")
            if name in seen:
                raise self.error(item, f"{where}: label {name!r} is listed twice "
                                       f"(first at line {seen[name].start_mark.line + 1})")
            seen[name] = item
        return tuple(seen)

    def actions(self, node: Node) -> tuple[ActionRule, ...]:
        rules = []
        for i, item in enumerate(self.sequence(node, "actions")):
            where = f"actions[{i}]"
            keys = self.mapping(item, where, _ACTION_KEYS)
            for required in _ACTION_KEYS:
                if required not in keys:
                    raise self.error(item, f"{where}: missing required key {required!r}")
            match_node = keys["match"][1]
            text = self.string(match_node, f"{where}.match")
            shown = text if len(text) <= 80 else text[:77] + "..."
            try:
                # Python warns (FutureWarning) of a pattern whose meaning a later version will
                # change, such as "[a||b]": refused here with its place, not printed to stderr
                # as two lines of nflogd's source, and never a silent change on upgrade.
                with warnings.catch_warnings():
                    warnings.simplefilter("error")
                    pattern = re.compile(text, re.IGNORECASE)
            except Warning as e:
                raise self.error(match_node, f"{where}.match: ambiguous regular expression "
                                             f"{shown!r}: {e} (escape the character to mean "
                                             "it literally)") from None
            except (re.error, OverflowError, RecursionError, ValueError) as e:
                # OverflowError: a repeat count beyond C's range, `a{99999999999}`.
                raise self.error(match_node, f"{where}.match: invalid regular expression "
                                             f"{shown!r}: {e}") from None
            action = self.string(keys["action"][1], f"{where}.action")
            if not action:
                raise self.error(keys["action"][1], f"{where}.action: must not be empty")
            rules.append(ActionRule(pattern, action))
        return tuple(rules)

    def groups(self, node: Node) -> tuple[GroupConfig, ...]:
        items = self.sequence(node, "groups")
        if not items:
            raise self.error(node, "groups: must list at least one group")
        groups: list[GroupConfig] = []
        first: dict[int, tuple[int, Node]] = {}  # group number -> (index, node) of its entry
        for i, item in enumerate(items):
            where = f"groups[{i}]"
            group, group_node = self.group(item, where)
            if group.group in first:
                j, other = first[group.group]
                raise self.error(group_node, f"{where}.group: group {group.group} is listed "
                                             f"twice, also as groups[{j}] at line "
                                             f"{other.start_mark.line + 1}")
            first[group.group] = (i, group_node)
            groups.append(group)
        return tuple(groups)

    def group(self, node: Node, where: str) -> tuple[GroupConfig, Node]:
        """Return one group entry and the node of its `group:` value (for duplicate errors)."""
        keys = self.mapping(node, where, _GROUP_KEYS)
        if "group" not in keys:
            raise self.error(node, f"{where}: missing required key 'group' (the NFLOG group "
                                   f"number {_GROUP_RANGE[0]}-{_GROUP_RANGE[1]})")
        kw: dict[str, Any] = {}
        int_ranges = {"group": _GROUP_RANGE, "qthresh": _QTHRESH_RANGE, "nlbuf": _NLBUF_RANGE,
                      "copy_range": _COPY_RANGE_RANGE, "rcvbuf": _RCVBUF_RANGE,
                      "rcvbuf_max": _RCVBUF_RANGE}
        for key, (lo, hi) in int_ranges.items():
            if key in keys:
                kw[key] = self.integer(keys[key][1], f"{where}.{key}", lo, hi)
        if "timeout" in keys:
            kw["timeout"] = self.number(keys["timeout"][1], f"{where}.timeout", *_TIMEOUT_RANGE)
        if "labels" in keys:
            kw["labels"] = self.constant_labels(keys["labels"][1], f"{where}.labels")
        group = GroupConfig(**kw)
        if group.rcvbuf_max < group.rcvbuf:
            # Point at whichever of the two was written; the other is its default.
            key = "rcvbuf_max" if "rcvbuf_max" in keys else "rcvbuf"
            raise self.error(keys[key][1], f"{where}.{key}: rcvbuf_max ({group.rcvbuf_max}) "
                                           f"must be at least rcvbuf ({group.rcvbuf})")
        return group, keys["group"][1]

    def constant_labels(self, node: Node, where: str) -> tuple[tuple[str, str], ...]:
        labels = []
        for name, (key, value) in self.mapping(node, where, None).items():
            lwhere = f"{where}.{name}"
            if not _PROM_LABEL_RE.fullmatch(name) or name.startswith("__"):
                raise self.error(key, f"{lwhere}: {name!r} is not a valid Prometheus label name "
                                      "(letters, digits and '_', not starting with a digit "
                                      "or '__')")
            if name in LABEL_NAMES:
                raise self.error(key, f"{lwhere}: {name!r} clashes with the record label of "
                                      f"that name; record labels: {', '.join(LABEL_NAMES)}")
            # Numbers are fine as label values and kept as written (rack: 012 stays "012");
            # booleans and null are not, since `yes` turning into "True" would surprise.
            if isinstance(value, ScalarNode) and value.tag in (_TAG + "int", _TAG + "float"):
                text = value.value
            else:
                text = self.string(value, lwhere)
            if not text:
                raise self.error(value, f"{lwhere}: empty value (Prometheus treats an empty "
                                        "label as absent)")
            labels.append((name, text))
        return tuple(labels)

    def address_mask(self, node: Node) -> tuple[int, int]:
        keys = self.mapping(node, "address_mask", _MASK_KEYS)
        v4 = self.integer(keys["ipv4"][1], "address_mask.ipv4", 0, 32) if "ipv4" in keys else 32
        v6 = self.integer(keys["ipv6"][1], "address_mask.ipv6", 0, 128) if "ipv6" in keys else 128
        return v4, v6

    def networks(self, node: Node) -> tuple[NamedNetwork, ...]:
        out: list[NamedNetwork] = []
        names: dict[str, Node] = {}
        prefixes: dict[Any, tuple[str, Node]] = {}
        for i, item in enumerate(self.sequence(node, "networks")):
            where = f"networks[{i}]"
            keys = self.mapping(item, where, _NETWORK_KEYS)
            for required in _NETWORK_KEYS:
                if required not in keys:
                    raise self.error(item, f"{where}: missing required key {required!r} "
                                           "(e.g. {name: office, cidr: 198.51.100.0/24})")
            name_node = keys["name"][1]
            name = self.string(name_node, f"{where}.name")
            if not name or name == _labels.OVERFLOW:
                raise self.error(name_node, f"{where}.name: {name!r} cannot be a network name "
                                            "(it is a label value: not empty, not __overflow__)")
            if name in names:
                raise self.error(name_node, f"{where}.name: network {name!r} is listed twice "
                                            f"(first at line {names[name].start_mark.line + 1}); "
                                            "give one entry a list of cidrs instead")
            names[name] = name_node
            cidr_node = keys["cidr"][1]
            cidr_nodes = self.sequence(cidr_node, f"{where}.cidr") \
                if isinstance(cidr_node, SequenceNode) else [cidr_node]
            if not cidr_nodes:
                raise self.error(cidr_node, f"{where}.cidr: empty list")
            nets = []
            for j, cnode in enumerate(cidr_nodes):
                cwhere = f"{where}.cidr" + (f"[{j}]" if isinstance(cidr_node, SequenceNode) else "")
                net = self.cidr(cnode, cwhere)
                if net in prefixes:
                    other, onode = prefixes[net]
                    raise self.error(cnode, f"{cwhere}: {net} is already network {other!r} "
                                            f"(line {onode.start_mark.line + 1}); an address "
                                            "can only have one name per prefix")
                prefixes[net] = (name, cnode)
                nets.append(net)
            out.append(NamedNetwork(name, tuple(nets)))
        if len(prefixes) > 65535:
            raise self.error(node, f"networks: {len(prefixes)} prefixes, at most 65535")
        return tuple(out)

    def cidr(self, node: Node, where: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        text = self.string(node, where)
        if "/" not in text:
            raise self.error(node, f"{where}: {text!r} has no prefix length; write e.g. "
                                   f"{text}/{128 if ':' in text else 32} for one address")
        try:
            return ipaddress.ip_network(text)
        except ValueError as e:
            try:
                loose = ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise self.error(node, f"{where}: {text!r} is not a network "
                                       f"(address/length): {e}") from None
            raise self.error(node, f"{where}: {text!r} has host bits set; did you mean "
                                   f"{loose}?") from None

    def check_labels_fit(self, config: Config, keys: dict[str, tuple[Node, Node]]) -> None:
        """Labels that read the packet need a copy range holding the headers; src_net/dst_net
        need networks. Said where the setting was written (or the labels, for the default)."""
        names = config.labels
        label_node = keys["labels"][1] if "labels" in keys else None
        if any(n in names for n in ("src_net", "dst_net")) and not config.networks:
            where = label_node or (keys["networks"][1] if "networks" in keys else None)
            raise self.error(where, "labels: src_net/dst_net need a `networks:` list to name "
                                    "(e.g. networks: [{name: office, cidr: 198.51.100.0/24}])")
        need, who = _labels.min_copy_range(names)
        if not need:
            return
        group_nodes = self.sequence(keys["groups"][1], "groups") if "groups" in keys else []
        for i, g in enumerate(config.groups):
            if 0 < g.copy_range < need:
                node = None
                if i < len(group_nodes):
                    gkeys = self.mapping(group_nodes[i], f"groups[{i}]", _GROUP_KEYS)
                    node = gkeys["copy_range"][1] if "copy_range" in gkeys else group_nodes[i]
                raise self.error(node, f"groups[{i}].copy_range: {g.copy_range} bytes cannot "
                                       f"hold the label {who!r}, which needs at least {need} (an "
                                       "IPv6 header and what follows it; 0 copies whole packets)")

    def web_config_file(self, node: Node) -> str | None:
        if isinstance(node, ScalarNode) and node.tag == _TAG + "null":
            return None
        text = self.string(node, "web_config_file")
        if not text:
            raise self.error(node, "web_config_file: must not be empty (leave it out, or null, "
                                   "for plain HTTP)")
        # Relative to the config file, as Prometheus does for the files its config names,
        # so the result does not depend on the daemon's working directory.
        base = os.path.dirname(os.path.abspath(self.path))
        return os.path.normpath(os.path.join(base, text))
