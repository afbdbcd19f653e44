"""nflogd/_nflog.pyi checked, not trusted: its names, signatures and docstrings against the module.

The stub is written by hand (types the C side cannot say); everything the C side does say
(__text_signature__, __doc__, which names exist) must agree with it. No root, no kernel.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path
from typing import Any

import pytest

from nflogd import _nflog

STUB = Path(_nflog.__file__).with_name("_nflog.pyi")
TREE = ast.parse(STUB.read_text())
CLASSES = {n.name: n for n in TREE.body if isinstance(n, ast.ClassDef)}


def words(doc: str | None) -> str:
    """A docstring with its line breaks and indentation folded (the stub wraps differently)."""
    return " ".join((doc or "").split())


def public(names: object) -> set[str]:
    return {n for n in names if not n.startswith("_")}  # type: ignore[attr-defined]


def stub_members(cls: ast.ClassDef) -> dict[str, list[ast.FunctionDef]]:
    out: dict[str, list[ast.FunctionDef]] = {}
    for node in cls.body:
        if isinstance(node, ast.FunctionDef):
            out.setdefault(node.name, []).append(node)
    return out


def is_property(fn: ast.FunctionDef) -> bool:
    return any(isinstance(d, ast.Name) and d.id == "property" for d in fn.decorator_list)


def stub_params(fn: ast.FunctionDef, drop_first: bool) -> list[tuple[str, str, Any]]:
    """(name, kind, default) as inspect would give them, from the stub's def."""
    a = fn.args
    out: list[tuple[str, str, Any]] = []
    positional = a.posonlyargs + a.args
    defaults = [inspect.Parameter.empty] * (len(positional) - len(a.defaults)) + \
        [ast.literal_eval(d) for d in a.defaults]
    for i, (arg, default) in enumerate(zip(positional, defaults)):
        kind = "POSITIONAL_ONLY" if i < len(a.posonlyargs) else "POSITIONAL_OR_KEYWORD"
        out.append((arg.arg, kind, default))
    if a.vararg:
        out.append((a.vararg.arg, "VAR_POSITIONAL", inspect.Parameter.empty))
    for arg, d in zip(a.kwonlyargs, a.kw_defaults):
        out.append((arg.arg, "KEYWORD_ONLY",
                    inspect.Parameter.empty if d is None else ast.literal_eval(d)))
    if a.kwarg:
        out.append((a.kwarg.arg, "VAR_KEYWORD", inspect.Parameter.empty))
    return out[1:] if drop_first else out  # self / cls: C's $self is not a parameter


def c_params(obj: object) -> list[tuple[str, str, Any]]:
    sig = inspect.signature(obj)  # type: ignore[arg-type]
    return [(p.name, p.kind.name, p.default) for p in sig.parameters.values()]


def test_the_stub_names_exactly_what_the_module_has() -> None:
    names: set[str] = set()
    for node in TREE.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            names.add(node.name)
    assert public(names) == public(dir(_nflog))
    for name, cls in CLASSES.items():
        members = stub_members(cls)
        assert public(members) == public(vars(getattr(_nflog, name))), name


def test_every_constant_has_its_docstring_right_after_it() -> None:
    body = TREE.body
    for i, node in enumerate(body):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) \
                and not node.target.id.startswith("_"):
            nxt = body[i + 1] if i + 1 < len(body) else None
            assert isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) \
                and isinstance(nxt.value.value, str), f"{node.target.id} has no docstring below it"
            value = getattr(_nflog, node.target.id)
            want = ast.unparse(node.annotation).split("[")[0]
            assert type(value).__name__ == want, (node.target.id, type(value), want)


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_class_signatures_and_docstrings_match(name: str) -> None:
    cls = getattr(_nflog, name)
    node = CLASSES[name]
    assert words(ast.get_docstring(node)) == words(cls.__doc__), name
    if issubclass(cls, BaseException):
        assert [ast.unparse(b) for b in node.bases] == [b.__name__ for b in cls.__bases__]
        return
    members = stub_members(node)
    # The constructor: the class's __text_signature__ against the stub's __init__ or __new__.
    ctor = (members.get("__init__") or members["__new__"])[0]
    assert cls.__text_signature__, f"{name} has no text signature"
    assert stub_params(ctor, drop_first=True) == c_params(cls), f"{name}()"
    checked = 0
    for attr, value in vars(cls).items():
        kind = type(value).__name__
        if attr.startswith("__") and kind != "method_descriptor":
            continue  # slot wrappers (__iter__, __len__ ...) carry CPython's own docs
        defs = members[attr]
        if kind == "getset_descriptor":
            assert is_property(defs[0]), f"{name}.{attr} is a property in C"
            assert words(ast.get_docstring(defs[0])) == words(value.__doc__), f"{name}.{attr}"
            setter = any(isinstance(d, ast.Attribute) and d.attr == "setter"
                         for fn in defs for d in fn.decorator_list)
            assert setter == _has_setter(cls, attr), f"{name}.{attr}: setter in stub vs C"
        elif kind == "method_descriptor":
            assert value.__text_signature__, f"{name}.{attr} has no text signature"
            assert stub_params(defs[0], drop_first=True) == c_params(value)[1:], \
                f"{name}.{attr}{value.__text_signature__}"
            assert words(ast.get_docstring(defs[0])) == words(value.__doc__), f"{name}.{attr}"
        checked += 1
    assert checked >= 2


def _has_setter(cls: type, attr: str) -> bool:
    """Whether the C getset entry has a setter: one without says "not writable" to any value."""
    probe = None if cls is _nflog.NflogData else cls.__new__(cls)  # NflogData needs a message
    if probe is None:
        return False  # every NflogData attribute is read-only; the repr test covers them
    try:
        setattr(probe, attr, object())  # a value no setter takes: it refuses before acting
    except AttributeError as e:
        return "not writable" not in str(e)
    except Exception:  # noqa: BLE001 - refusing the value is what a setter does
        return True
    return True
