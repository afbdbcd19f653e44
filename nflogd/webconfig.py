"""The web configuration file (`--web.config.file`): Prometheus exporter-toolkit's YAML format.

An operator who already protects node_exporter with a web config file can point nflogd at the same
file. What Python's ssl module cannot do exactly (some client_auth_type values, Go cipher-suite and
curve names, HTTP/2) is refused with the key's name and line: a security setting must never be
dropped silently. Unknown keys are errors, as in exporter-toolkit (yaml UnmarshalStrict).
"""

from __future__ import annotations

import os
import re
import ssl
import tempfile
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

import yaml

from .yamlreader import ConfigError, NodeReader, compose_file, is_null

__all__ = [
    "WebConfigError",
    "TLSServerConfig",
    "RateLimit",
    "WebConfig",
    "load_web_config",
    "build_ssl_context",
]


class WebConfigError(ConfigError):
    """A web config problem, one line: `FILE:LINE[:COL]: message` (`FILE: message` with no line).

    The same shape as the config's errors, ConfigError(path, line, column, message); a class of
    its own so that callers can tell which file it was.
    """


# client_auth_type values that Python's ssl implements exactly, mapped to its verify modes.
# Go's RequestClientCert and RequireAnyClientCert accept certificates that are NOT verified
# against a CA; Python's ssl can only ask for a certificate and verify it, so those are refused.
_CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_CLIENT_AUTH_UNSUPPORTED = ("RequestClientCert", "RequireAnyClientCert", "RequireClientCert")

_TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
_TLS_ORDER = ("TLS10", "TLS11", "TLS12", "TLS13")

# exporter-toolkit lets only these response headers be set, some only to fixed values
# (web/handler.go extraHTTPHeaders); names are matched exactly, as its Go map lookup does.
_HEADERS: dict[str, tuple[str, ...]] = {
    "Strict-Transport-Security": (),
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": (),
    "Content-Security-Policy": (),
}

# What `bcrypt.checkpw` and Go's bcrypt both accept: $2a$/$2b$/$2y$ (htpasswd -B writes $2y$;
# the Python bcrypt package verifies it as is, no rewriting to $2b$ needed), cost 04..31.
_BCRYPT = re.compile(r"\$2[abxy]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")

_GO_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0,
                      "m": 60.0, "h": 3600.0}
_GO_DURATION = re.compile(r"([0-9]*\.?[0-9]+)(ns|us|µs|μs|ms|s|m|h)")


@dataclass(frozen=True)
class TLSServerConfig:
    """`tls_server_config` with relative paths already joined to the config file's directory."""

    cert_file: str | None
    key_file: str | None
    cert: str | None  # inline PEM
    key: str | None = field(repr=False)  # inline PEM: a secret, kept out of repr()
    client_ca_file: str | None
    client_ca: str | None  # inline PEM
    client_auth_type: str  # one of _CLIENT_AUTH
    min_version: str  # TLS12 or TLS13
    max_version: str
    prefer_server_cipher_suites: bool
    client_allowed_sans: tuple[str, ...] | None
    source: str = field(repr=False)  # the web config file, for FILE:LINE errors
    lines: Mapping[str, int] = field(repr=False, compare=False, hash=False)

    @property
    def files(self) -> tuple[str, ...]:
        """Files to watch for certificate rotation."""
        return tuple(f for f in (self.cert_file, self.key_file, self.client_ca_file) if f)

    def line(self, key: str) -> int | None:
        return self.lines.get(key) or self.lines.get("")


@dataclass(frozen=True)
class RateLimit:
    """`rate_limit`: a token bucket shared by every client, answering 429 when empty."""

    interval: float  # seconds between two tokens
    burst: int


@dataclass(frozen=True)
class WebConfig:
    path: str
    tls: TLSServerConfig | None = None
    # user -> bcrypt hash; hashes are secrets in exporter-toolkit, so not in repr()
    basic_auth_users: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({}), repr=False, compare=False, hash=False)
    basic_auth_excluded_paths: tuple[str, ...] = ()
    headers: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({}), compare=False, hash=False)
    rate_limit: RateLimit | None = None


# --- YAML walking with line numbers ---------------------------------------------------------------

class _Doc(NodeReader):
    """Turns yaml nodes into checked values as Go's yaml.v2 would (any scalar is a string, null
    is empty, no merge keys); every error names the file and the node's line and column."""

    error_type = WebConfigError

    def mapping(self, node: yaml.Node, where: str, known: tuple[str, ...] | None, *,
                merge: bool = False, _merging: tuple[int, ...] = ()
                ) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        """key -> (key node, value node); duplicates and (if `known`) unknown keys are errors.
        A merge key (`<<`) is an unknown key here, whatever ``merge`` says."""
        allowed = known
        if is_null(node):
            return {}
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, f"{where} must be a mapping")
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for knode, vnode in node.value:
            if not isinstance(knode, yaml.ScalarNode):
                raise self.error(knode, f"{where}: keys must be strings")
            key = knode.value
            name = f"{where}.{key}" if where else key
            if key in out:
                raise self.error(knode, f"duplicate key {name}")
            if allowed is not None and key not in allowed:
                raise self.error(knode, f"unknown key {name} (expected one of: {', '.join(allowed)})")
            out[key] = (knode, vnode)
        return out

    def string(self, node: yaml.Node, name: str) -> str:
        """Any scalar as its text, as yaml.v2 does for a Go string field; null -> ""."""
        if is_null(node):
            return ""
        if not isinstance(node, yaml.ScalarNode):
            raise self.error(node, f"{name} must be a string")
        return str(node.value)

    def boolean(self, node: yaml.Node, name: str) -> bool:
        if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:bool":
            return node.value.lower() in ("true", "yes", "on")
        raise self.error(node, f"{name} must be true or false")

    def integer(self, node: yaml.Node, name: str) -> int:
        if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:int":
            try:
                return int(node.value.replace("_", ""), 0)
            except ValueError:
                pass
        raise self.error(node, f"{name} must be an integer")

    def strings(self, node: yaml.Node, name: str) -> list[str]:
        if is_null(node):
            return []
        if not isinstance(node, yaml.SequenceNode):
            raise self.error(node, f"{name} must be a list")
        return [self.string(item, f"{name} item") for item in node.value]


def _line(node: yaml.Node | None) -> int | None:
    return node.start_mark.line + 1 if node is not None else None



def _join(base: str, path: str) -> str | None:
    # exporter-toolkit joins relative paths to the config file's directory (config_util.JoinDir)
    if not path:
        return None
    return path if os.path.isabs(path) else os.path.join(base, path)


# --- the sections ------------------------------------------------------------------------------------

_TOP_KEYS = ("tls_server_config", "http_server_config", "basic_auth_users",
             "basic_auth_excluded_paths", "rate_limit")
_TLS_KEYS = ("cert", "key", "client_ca", "cert_file", "key_file", "client_auth_type",
             "client_ca_file", "cipher_suites", "curve_preferences", "min_version", "max_version",
             "prefer_server_cipher_suites", "client_allowed_sans")
_HTTP_KEYS = ("http2", "headers")
_RATE_KEYS = ("interval", "burst")


def load_web_config(path: str | os.PathLike[str]) -> WebConfig:
    """Read, check and return the web config at `path`.

    Certificates, keys and client CAs are loaded once here (as exporter-toolkit's Validate does), so
    `nflogd --check-config` catches a bad certificate before the daemon does. Raises WebConfigError.
    """
    path = os.fspath(path)
    root, loader = compose_file(path, "web config file", WebConfigError)
    loader.dispose()  # values are read as text, as yaml.v2 does: no constructing
    doc = _Doc(path)
    if root is None:  # an empty file: no TLS, no auth, as exporter-toolkit
        return WebConfig(path=path)
    top = doc.mapping(root, "", _TOP_KEYS)
    base = os.path.dirname(os.path.abspath(path))

    tls = None
    if "tls_server_config" in top:
        tls = _tls(doc, top["tls_server_config"], base)
    users = _users(doc, top["basic_auth_users"][1]) if "basic_auth_users" in top else {}
    excluded: list[str] = []
    if "basic_auth_excluded_paths" in top:
        knode, vnode = top["basic_auth_excluded_paths"]
        excluded = doc.strings(vnode, "basic_auth_excluded_paths")
        if excluded and not users:
            raise doc.error(knode, "basic_auth_excluded_paths is set but basic_auth_users is empty")
    headers = _http(doc, top["http_server_config"][1]) if "http_server_config" in top else {}
    rate = _rate(doc, top["rate_limit"][1]) if "rate_limit" in top else None

    config = WebConfig(
        path=path,
        tls=tls,
        basic_auth_users=MappingProxyType(users),
        basic_auth_excluded_paths=tuple(excluded),
        headers=MappingProxyType(headers),
        rate_limit=rate,
    )
    build_ssl_context(config)  # load the files now: errors at start-up and in --check-config
    return config


def _tls(doc: _Doc, nodes: tuple[yaml.Node, yaml.Node], base: str) -> TLSServerConfig | None:
    knode, vnode = nodes
    m = doc.mapping(vnode, "tls_server_config", _TLS_KEYS)
    lines = {"": _line(knode) or 0}
    lines.update({k: _line(kn) or 0 for k, (kn, _) in m.items()})

    def s(key: str) -> str:
        return doc.string(m[key][1], f"tls_server_config.{key}") if key in m else ""

    def err(key: str, message: str) -> ConfigError:
        return doc.error(m[key][0] if key in m else knode, message)

    cert, key, client_ca = s("cert"), s("key"), s("client_ca")
    cert_file, key_file, client_ca_file = s("cert_file"), s("key_file"), s("client_ca_file")
    client_auth = s("client_auth_type")

    # Python cannot honour these: refuse by name rather than serve something other than asked.
    for name, why in (
        ("cipher_suites", "Go cipher-suite names cannot be applied to Python's ssl (OpenSSL picks "
                          "the TLS 1.2 ciphers); remove the key"),
        ("curve_preferences", "Python's ssl cannot set a list of curves; remove the key"),
    ):
        if name in m and doc.strings(m[name][1], f"tls_server_config.{name}"):
            raise err(name, f"tls_server_config.{name} is not supported: {why}")
    if client_auth in _CLIENT_AUTH_UNSUPPORTED:
        raise err("client_auth_type",
                  f"tls_server_config.client_auth_type {client_auth} is not supported: Python's ssl "
                  "cannot accept a client certificate without verifying it; use "
                  "RequireAndVerifyClientCert (or VerifyClientCertIfGiven) with client_ca_file")
    if client_auth and client_auth not in _CLIENT_AUTH:
        raise err("client_auth_type",
                  f"invalid tls_server_config.client_auth_type {client_auth!r} (expected one of: "
                  f"{', '.join(_CLIENT_AUTH)})")
    client_auth = client_auth or "NoClientCert"

    versions = {}
    for name, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
        v = s(name) or default
        if v not in _TLS_VERSIONS:
            raise err(name, f"invalid tls_server_config.{name} {v!r} (expected one of: "
                            f"{', '.join(_TLS_ORDER)})")
        if v in ("TLS10", "TLS11"):
            # OpenSSL 3 refuses TLS 1.0/1.1 at its default security level, and Python's default
            # ciphers have none for them: the setting could not take effect.
            raise err(name, f"tls_server_config.{name} {v} is not supported: Python's ssl with this "
                            "OpenSSL has no cipher for TLS 1.0 or 1.1 at its security level; use "
                            "TLS12 or TLS13")
        versions[name] = v
    if _TLS_ORDER.index(versions["min_version"]) > _TLS_ORDER.index(versions["max_version"]):
        raise err("max_version", "tls_server_config.max_version is lower than min_version")

    prefer = True  # exporter-toolkit's default
    if "prefer_server_cipher_suites" in m:
        prefer = doc.boolean(m["prefer_server_cipher_suites"][1],
                             "tls_server_config.prefer_server_cipher_suites")

    sans = None
    if "client_allowed_sans" in m:
        sans = tuple(doc.strings(m["client_allowed_sans"][1], "tls_server_config.client_allowed_sans"))
        if client_auth != "RequireAndVerifyClientCert":
            # exporter-toolkit also allows RequireAnyClientCert, which Python cannot do (above)
            raise err("client_allowed_sans", "tls_server_config.client_allowed_sans requires "
                                             "client_auth_type RequireAndVerifyClientCert")

    # exporter-toolkit turns TLS on when any of these is set (TLSConfig.IsEnabled)
    enabled = any((cert, key, client_ca, cert_file, key_file, client_ca_file, s("client_auth_type")))
    if not enabled:
        # Go would silently serve plain HTTP and drop min_version & co; say so instead
        extra = [k for k in m if k not in ("cert", "key", "client_ca", "cert_file", "key_file",
                                           "client_ca_file", "client_auth_type")]
        if extra:
            raise err(extra[0], f"tls_server_config.{extra[0]} is set but no cert_file/key_file: "
                                "TLS would be off and the setting ignored")
        return None
    for a, b in (("cert", "cert_file"), ("key", "key_file"), ("client_ca", "client_ca_file")):
        if s(a) and s(b):
            raise err(a, f"tls_server_config: give {a} or {b}, not both")
    if not cert and not cert_file:
        raise err("", "tls_server_config: missing one of cert or cert_file")
    if not key and not key_file:
        raise err("", "tls_server_config: missing one of key or key_file")
    has_ca = bool(client_ca or client_ca_file)
    if has_ca and client_auth == "NoClientCert":
        raise err("client_ca_file" if client_ca_file else "client_ca",
                  "tls_server_config: a client CA is configured but client_auth_type is "
                  "NoClientCert (set RequireAndVerifyClientCert)")
    if not has_ca and client_auth != "NoClientCert":
        # Go would verify against the system roots, i.e. trust any public CA's client
        # certificates; that is never what an operator meant, so ask for the CA explicitly.
        raise err("client_auth_type", f"tls_server_config.client_auth_type {client_auth} needs "
                                      "client_ca_file (or client_ca)")
    return TLSServerConfig(
        cert_file=_join(base, cert_file), key_file=_join(base, key_file),
        cert=cert or None, key=key or None,
        client_ca_file=_join(base, client_ca_file), client_ca=client_ca or None,
        client_auth_type=client_auth,
        min_version=versions["min_version"], max_version=versions["max_version"],
        prefer_server_cipher_suites=prefer, client_allowed_sans=sans,
        source=doc.path, lines=MappingProxyType(lines),
    )


def _users(doc: _Doc, node: yaml.Node) -> dict[str, str]:
    users: dict[str, str] = {}
    for user, (knode, vnode) in doc.mapping(node, "basic_auth_users", None).items():
        if ":" in user:
            # Basic auth splits user:password at the first colon: this user could never log in
            raise doc.error(knode, f"basic_auth_users: user name {user!r} contains ':'")
        h = doc.string(vnode, f"basic_auth_users.{user}")
        if not _BCRYPT.fullmatch(h):
            raise doc.error(vnode, f"basic_auth_users.{user} is not a bcrypt hash "
                                 "(make one with: htpasswd -nBC 10 '' | tr -d ':\\n')")
        users[user] = h
    return users


def _http(doc: _Doc, node: yaml.Node) -> dict[str, str]:
    m = doc.mapping(node, "http_server_config", _HTTP_KEYS)
    if "http2" in m and doc.boolean(m["http2"][1], "http_server_config.http2"):
        raise doc.error(m["http2"][0], "http_server_config.http2 true is not supported: nflogd "
                                     "serves HTTP/1.1 only; remove the key or set it to false")
    headers: dict[str, str] = {}
    if "headers" in m:
        for name, (knode, vnode) in doc.mapping(m["headers"][1], "http_server_config.headers",
                                                None).items():
            value = doc.string(vnode, f"http_server_config.headers.{name}")
            allowed = _HEADERS.get(name)
            if allowed is None:
                raise doc.error(knode, f"HTTP header {name!r} can not be configured (allowed: "
                                     f"{', '.join(_HEADERS)})")
            if allowed and value and value not in allowed:
                raise doc.error(vnode, f"invalid value for {name}: {value!r} (expected one of: "
                                     f"{', '.join(allowed)})")
            if any(c in value for c in "\r\n\0"):
                raise doc.error(vnode, f"http_server_config.headers.{name} contains a control character")
            if value:  # "Unset if blank"
                headers[name] = value
    return headers


def _rate(doc: _Doc, node: yaml.Node) -> RateLimit | None:
    m = doc.mapping(node, "rate_limit", _RATE_KEYS)
    interval = 0.0
    if "interval" in m:
        interval = _go_duration(doc, m["interval"][1], "rate_limit.interval")
    burst = doc.integer(m["burst"][1], "rate_limit.burst") if "burst" in m else 0
    if interval <= 0:
        return None  # "set to 0 to disable rate limiter"
    if burst < 1:
        raise doc.error(m["burst"][0] if "burst" in m else node,
                      "rate_limit.burst must be at least 1 (0 would refuse every request)")
    return RateLimit(interval=interval, burst=burst)


def _go_duration(doc: _Doc, node: yaml.Node, name: str) -> float:
    """A Go time.Duration string ("1s", "1m30s", "250ms"), as yaml.v2 decodes it; 0 allowed."""
    text = doc.string(node, name).strip()
    if text in ("0", ""):
        return 0.0
    pos, total = 0, 0.0
    for match in _GO_DURATION.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _GO_DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or pos == 0:
        raise doc.error(node, f"{name}: invalid duration {text!r} (e.g. 1s, 250ms, 1m30s)")
    return total


# --- TLS ---------------------------------------------------------------------------------------------

def build_ssl_context(config: WebConfig) -> ssl.SSLContext | None:
    """A server SSLContext for `config`, or None when it asks for no TLS.

    Reads the certificate, key and client CA files every call, so calling it again after a file
    changed picks up the new certificate. Raises WebConfigError naming the key and line.
    """
    t = config.tls
    if t is None:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _TLS_VERSIONS[t.min_version]
    ctx.maximum_version = _TLS_VERSIONS[t.max_version]
    # Client-initiated renegotiation only costs the server CPU; nothing here needs it.
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    if t.prefer_server_cipher_suites:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.set_alpn_protocols(["http/1.1"])

    def fail(key: str, what: str, e: Exception) -> WebConfigError:
        reason = getattr(e, "strerror", None) or getattr(e, "reason", None) or str(e)
        reason = re.sub(r"\s*\(_ssl\.c:\d+\)$", "", str(reason))  # where in CPython: noise here
        return WebConfigError(t.source, t.line(key), None,
                              f"tls_server_config.{key}: {what}: {reason}")

    for key, path in (("cert_file", t.cert_file), ("key_file", t.key_file)):
        if path:
            try:
                with open(path, "rb"):
                    pass
            except OSError as e:
                raise fail(key, f"cannot read {path}", e) from None
    try:
        with _pem_path(t.cert, t.cert_file) as cert_path, _pem_path(t.key, t.key_file) as key_path:
            try:
                # a passphrase callback that gives nothing: an encrypted key fails instead of
                # prompting on the daemon's stdin
                ctx.load_cert_chain(cert_path, key_path, password=_no_passphrase)
            except (OSError, ssl.SSLError, ValueError) as e:
                raise fail("cert_file" if t.cert_file else "cert",
                           f"cannot load certificate {t.cert_file or '(inline)'} with key "
                           f"{t.key_file or '(inline)'}", e) from None
    except OSError as e:  # the inline PEM could not be staged
        raise fail("cert", "cannot stage inline certificate", e) from None

    if t.client_auth_type != "NoClientCert":
        ctx.verify_mode = _CLIENT_AUTH[t.client_auth_type]
        try:
            if t.client_ca_file:
                ctx.load_verify_locations(cafile=t.client_ca_file)
            else:
                ctx.load_verify_locations(cadata=t.client_ca)
        except (OSError, ssl.SSLError, ValueError) as e:
            key = "client_ca_file" if t.client_ca_file else "client_ca"
            raise fail(key, f"cannot load client CA {t.client_ca_file or '(inline)'}", e) from None
        if not ctx.get_ca_certs():
            key = "client_ca_file" if t.client_ca_file else "client_ca"
            raise WebConfigError(t.source, t.line(key), None,
                                 f"tls_server_config.{key}: no CA certificate found")
    return ctx


def _no_passphrase() -> bytes:
    raise ValueError("the key is encrypted; nflogd needs an unencrypted key")


class _pem_path:
    """A path OpenSSL can open for a PEM given inline, without the secret touching a disk.

    Python's load_cert_chain() takes only paths, so inline PEM goes to an anonymous memory file
    (memfd) opened through /proc/self/fd; where that is unavailable, to a private temporary file
    removed right after loading.
    """

    def __init__(self, inline: str | None, path: str | None) -> None:
        self.inline, self.path = inline, path
        self.fd: int | None = None
        self.tmp: str | None = None

    def __enter__(self) -> str:
        if self.path or self.inline is None:
            return self.path or ""
        data = self.inline.encode()
        memfd_create: Callable[..., int] | None = getattr(os, "memfd_create", None)
        if memfd_create is not None and os.path.isdir("/proc/self/fd"):
            self.fd = memfd_create("nflogd-pem", getattr(os, "MFD_CLOEXEC", 0))
            os.write(self.fd, data)
            return f"/proc/self/fd/{self.fd}"
        fd, self.tmp = tempfile.mkstemp(prefix="nflogd-pem-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return self.tmp

    def __exit__(self, *exc: Any) -> None:
        if self.fd is not None:
            os.close(self.fd)
        if self.tmp is not None:
            os.unlink(self.tmp)
