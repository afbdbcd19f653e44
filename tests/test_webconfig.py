"""Web config parsing: exporter-toolkit's format, FILE:LINE errors, refusals by name."""

from __future__ import annotations

import os
import re
import shutil
import ssl
import subprocess
import textwrap
from pathlib import Path

import bcrypt
import pytest

from nflogd.webconfig import WebConfig, WebConfigError, build_ssl_context, load_web_config

HASH = "$2y$04$FGnePhNSDYoKt12WawlioORHhKw6MYvLQ9ek6GScNyy.GnJ7p3vbu"  # "pw", cost 4


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("openssl") is None:
        pytest.fail("openssl is missing: apt-get install openssl")  # fail, never skip
    d = tmp_path_factory.mktemp("certs")
    for name in ("a", "b"):  # two self-signed pairs: "b" lets a test mismatch cert and key
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-keyout", f"{name}.key", "-out",
                        f"{name}.pem", "-days", "2", "-subj", f"/CN={name}"],
                       cwd=d, check=True, capture_output=True, timeout=30)
    return d


def write(tmp_path: Path, text: str, certs: Path | None = None) -> Path:
    if certs is not None:
        for f in ("a.pem", "a.key", "b.pem", "b.key"):
            shutil.copy(certs / f, tmp_path / f)
    p = tmp_path / "web.yml"
    p.write_text(textwrap.dedent(text).lstrip("\n"))
    return p


def error(path: Path, line: int | None, *words: str) -> str:
    with pytest.raises(WebConfigError) as e:
        load_web_config(path)
    msg = str(e.value)
    assert "\n" not in msg
    # FILE:LINE:COL: where the problem is a node, FILE:LINE: for a key's file, FILE: without one
    prefix = rf"{re.escape(str(path))}:{line}(:\d+)?: " if line else rf"{re.escape(str(path))}: "
    assert re.match(prefix, msg), msg
    for w in words:
        assert w in msg, msg
    assert (e.value.path, e.value.line) == (str(path), line)
    return msg


TLS = """
tls_server_config:
  cert_file: a.pem
  key_file: a.key
"""


def test_empty_file_means_plain_http_without_auth(tmp_path: Path) -> None:
    cfg = load_web_config(write(tmp_path, ""))
    assert cfg == WebConfig(path=str(tmp_path / "web.yml"))
    assert cfg.tls is None and not cfg.basic_auth_users and build_ssl_context(cfg) is None


def test_full_config(tmp_path: Path, certs: Path) -> None:
    htpasswd_hash = subprocess.run(["htpasswd", "-nbB", "-C", "4", "u", "secret"], check=True,
                                   capture_output=True, text=True).stdout.strip().split(":", 1)[1]
    p = write(tmp_path, f"""
        tls_server_config:
          cert_file: a.pem
          key_file: a.key
          client_ca_file: {certs / 'b.pem'}
          client_auth_type: RequireAndVerifyClientCert
          min_version: TLS13
          max_version: TLS13
          prefer_server_cipher_suites: false
          cipher_suites: []
          curve_preferences:
          client_allowed_sans: [scraper.example]
        http_server_config:
          http2: false
          headers:
            X-Frame-Options: sameorigin
            X-Content-Type-Options: nosniff
            Strict-Transport-Security: max-age=31536000
            X-XSS-Protection: ""
        basic_auth_users:
          alice: {HASH}
          u: '{htpasswd_hash}'
          "1234": {HASH}
        basic_auth_excluded_paths: [/]
        rate_limit:
          interval: 1m30s
          burst: 5
        """, certs)
    cfg = load_web_config(p)
    t = cfg.tls
    assert t is not None
    # relative paths are joined to the config file's directory, absolute ones kept
    assert t.cert_file == str(tmp_path / "a.pem") and t.key_file == str(tmp_path / "a.key")
    assert t.client_ca_file == str(certs / "b.pem")
    assert (t.min_version, t.max_version, t.client_auth_type) == ("TLS13", "TLS13",
                                                                 "RequireAndVerifyClientCert")
    assert t.client_allowed_sans == ("scraper.example",) and not t.prefer_server_cipher_suites
    assert dict(cfg.headers) == {"X-Frame-Options": "sameorigin",
                                 "X-Content-Type-Options": "nosniff",
                                 "Strict-Transport-Security": "max-age=31536000"}
    assert set(cfg.basic_auth_users) == {"alice", "u", "1234"}
    assert cfg.basic_auth_excluded_paths == ("/",)
    assert cfg.rate_limit is not None and (cfg.rate_limit.interval, cfg.rate_limit.burst) == (90, 5)
    # htpasswd -B writes $2y$, which the bcrypt package verifies as is
    assert cfg.basic_auth_users["u"].startswith("$2y$")
    assert bcrypt.checkpw(b"secret", cfg.basic_auth_users["u"].encode())
    ctx = build_ssl_context(cfg)
    assert ctx is not None and ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
    assert not ctx.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    assert "alice" not in repr(cfg) and "$2y$" not in repr(cfg)  # secrets stay out of logs


def test_defaults_and_inline_pem(tmp_path: Path, certs: Path) -> None:
    def block(name: str) -> str:
        return "|\n" + textwrap.indent((certs / name).read_text(), " " * 4)

    p = write(tmp_path, f"tls_server_config:\n  cert: {block('a.pem')}\n  key: {block('a.key')}\n"
                        f"  client_ca: {block('b.pem')}\n"
                        "  client_auth_type: VerifyClientCertIfGiven\n")
    cfg = load_web_config(p)
    assert cfg.tls is not None and cfg.tls.cert_file is None and cfg.tls.files == ()
    assert (cfg.tls.min_version, cfg.tls.max_version) == ("TLS12", "TLS13")
    assert "PRIVATE KEY" not in repr(cfg)
    ctx = build_ssl_context(cfg)
    assert ctx is not None and ctx.verify_mode == ssl.CERT_OPTIONAL
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    assert len(ctx.get_ca_certs()) == 1


def test_relative_paths_follow_the_config_file_not_the_cwd(tmp_path: Path, certs: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    p = write(tmp_path, TLS, certs)
    monkeypatch.chdir("/")
    assert load_web_config(p).tls.cert_file == str(tmp_path / "a.pem")  # type: ignore[union-attr]
    monkeypatch.chdir(tmp_path)
    assert load_web_config("web.yml").tls.key_file == str(tmp_path / "a.key")  # type: ignore[union-attr]


@pytest.mark.parametrize("text, line, words", [
    ("foo: 1\n", 1, ["unknown key foo"]),
    ("tls_server_config:\n  cert_file: a.pem\n  key_file: a.key\n  certfile: x\n", 4,
     ["unknown key tls_server_config.certfile"]),
    ("http_server_config:\n  headers: {}\n  http1: true\n", 3, ["http_server_config.http1"]),
    ("basic_auth_users:\n  a: " + HASH + "\n  a: " + HASH + "\n", 3, ["duplicate key", ".a"]),
    ("basic_auth_users: [a, b]\n", 1, ["basic_auth_users must be a mapping"]),
    ("tls_server_config:\n  cert_file: [a]\n", 2, ["cert_file must be a string"]),
    ("basic_auth_users:\n  a: b\n  c: d\n", 2, ["basic_auth_users.a is not a bcrypt hash"]),
    ("basic_auth_users:\n  a: $2y$03$" + HASH[7:] + "\n", 2, ["not a bcrypt hash"]),
    ("basic_auth_users:\n  'a:b': " + HASH + "\n", 2, ["contains ':'"]),
    ("basic_auth_excluded_paths: [/]\n", 1, ["basic_auth_users is empty"]),
    ("http_server_config:\n  headers:\n    Server: nginx\n", 3, ["'Server' can not be configured"]),
    ("http_server_config:\n  headers:\n    x-frame-options: deny\n", 3, ["can not be configured"]),
    ("http_server_config:\n  headers:\n    X-Frame-Options: allow\n", 3,
     ["invalid value for X-Frame-Options", "deny, sameorigin"]),
    ("http_server_config:\n  headers:\n    X-Content-Type-Options: sniff\n", 3, ["nosniff"]),
    ("http_server_config:\n  http2: true\n", 2, ["http_server_config.http2", "not supported"]),
    ("http_server_config:\n  http2: maybe\n", 2, ["http2 must be true or false"]),
    ("rate_limit:\n  interval: 1s\n  burst: 0\n", 3, ["rate_limit.burst"]),
    ("rate_limit:\n  interval: 5 seconds\n  burst: 1\n", 2, ["invalid duration"]),
    ("rate_limit:\n  interval: 1s\n  burst: many\n", 3, ["burst must be an integer"]),
    ("a: [1, 2\n", 2, ["invalid YAML"]),
    ("a: 1\n---\nb: 2\n", 2, ["invalid YAML"]),
    ("a:\n\tb: 1\n", 2, ["invalid YAML", "'\\t'"]),
])
def test_errors_name_file_and_line(tmp_path: Path, text: str, line: int, words: list[str]) -> None:
    error(write(tmp_path, text), line, *words)


@pytest.mark.parametrize("extra, line, words", [
    # what Python's ssl cannot honour is refused by name, never ignored
    ("  client_auth_type: RequestClientCert\n", 4,
     ["client_auth_type RequestClientCert is not supported"]),
    ("  client_auth_type: RequireAnyClientCert\n", 4, ["RequireAnyClientCert is not supported"]),
    ("  client_auth_type: RequireClientCert\n", 4, ["RequireClientCert is not supported"]),
    ("  cipher_suites: [TLS_AES_128_GCM_SHA256]\n", 4, ["cipher_suites is not supported"]),
    ("  curve_preferences: [X25519]\n", 4, ["curve_preferences is not supported"]),
    ("  min_version: TLS10\n", 4, ["min_version TLS10 is not supported"]),
    ("  min_version: TLS11\n", 4, ["min_version TLS11 is not supported"]),
    ("  max_version: TLS11\n", 4, ["max_version TLS11 is not supported"]),
    ("  min_version: TLS14\n", 4, ["invalid tls_server_config.min_version 'TLS14'"]),
    ("  min_version: TLS13\n  max_version: TLS12\n", 5, ["max_version is lower than min_version"]),
    ("  client_auth_type: Sometimes\n", 4, ["invalid tls_server_config.client_auth_type"]),
    ("  client_auth_type: RequireAndVerifyClientCert\n", 4, ["needs client_ca_file"]),
    ("  client_ca_file: b.pem\n", 4, ["NoClientCert"]),
    ("  client_ca_file: b.pem\n  client_auth_type: VerifyClientCertIfGiven\n"
     "  client_allowed_sans: [x]\n", 6, ["client_allowed_sans requires"]),
    ("  prefer_server_cipher_suites: 1\n", 4, ["prefer_server_cipher_suites must be true or false"]),
    ("  cert: inline\n", 4, ["give cert or cert_file, not both"]),
])
def test_tls_errors_name_key_and_line(tmp_path: Path, certs: Path, extra: str, line: int,
                                      words: list[str]) -> None:
    error(write(tmp_path, TLS.lstrip("\n") + extra, certs), line, *words)


def test_tls_settings_without_a_certificate_are_not_silently_dropped(tmp_path: Path) -> None:
    error(write(tmp_path, "tls_server_config:\n  min_version: TLS13\n"), 2,
          "min_version is set but no cert_file")
    assert load_web_config(write(tmp_path, "tls_server_config:\n")).tls is None
    error(write(tmp_path, "tls_server_config:\n  cert_file: a.pem\n"), 1, "missing one of key")
    error(write(tmp_path, "tls_server_config:\n  key_file: a.key\n"), 1, "missing one of cert")


def test_certificate_problems_name_the_key_and_line(tmp_path: Path, certs: Path) -> None:
    p = write(tmp_path, TLS, certs)
    (tmp_path / "a.key").unlink()
    error(p, 3, "tls_server_config.key_file", "cannot read", "a.key", "No such file")
    p = write(tmp_path, TLS.replace("a.key", "b.key"), certs)  # key of another certificate
    error(p, 2, "tls_server_config.cert_file", "cannot load certificate", "a.pem", "b.key")
    (tmp_path / "a.pem").write_text("not a certificate\n")
    error(write(tmp_path, TLS), 2, "tls_server_config.cert_file")
    p = write(tmp_path, TLS + "  client_ca_file: nothing.pem\n"
                              "  client_auth_type: RequireAndVerifyClientCert\n", certs)
    error(p, 4, "tls_server_config.client_ca_file", "nothing.pem")
    (tmp_path / "empty.pem").write_text("")
    p = write(tmp_path, TLS + "  client_ca_file: empty.pem\n"
                              "  client_auth_type: RequireAndVerifyClientCert\n", certs)
    error(p, 4, "tls_server_config.client_ca_file")


def test_encrypted_key_is_refused_without_prompting(tmp_path: Path, certs: Path) -> None:
    write(tmp_path, TLS, certs)
    subprocess.run(["openssl", "pkey", "-in", "a.key", "-out", "enc.key", "-aes256", "-passout",
                    "pass:x"], cwd=tmp_path, check=True, capture_output=True, timeout=30)
    p = write(tmp_path, TLS.replace("a.key", "enc.key"))
    error(p, 2, "tls_server_config.cert_file", "cannot load certificate")


def test_unreadable_file(tmp_path: Path) -> None:
    error(tmp_path / "missing.yml", None, "cannot read web config file", "No such file")


def test_build_ssl_context_rereads_files(tmp_path: Path, certs: Path) -> None:
    cfg = load_web_config(write(tmp_path, TLS, certs))
    (tmp_path / "a.pem").write_text("garbage")
    with pytest.raises(WebConfigError, match=r"web\.yml:2: tls_server_config\.cert_file"):
        build_ssl_context(cfg)
    os.replace(tmp_path / "b.pem", tmp_path / "a.pem")
    os.replace(tmp_path / "b.key", tmp_path / "a.key")
    assert build_ssl_context(cfg) is not None
