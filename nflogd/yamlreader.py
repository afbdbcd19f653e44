"""YAML files read as located nodes, within bounds: the one reader of nflogd.yaml and web config.

Both files are composed into PyYAML nodes (SafeLoader) instead of plain Python objects, because only
the nodes know where each value was written: every check can then name the line to fix. Whatever
bytes a file holds, reading it ends, quickly, in nodes or in one ConfigError line
``FILE:LINE[:COL]: message``:

- nesting deeper than MAX_DEPTH is refused while composing (PyYAML's composer recurses per level:
  3000 levels were a RecursionError);
- aliases may repeat at most MAX_ALIAS_EXPANSION values in all, counted as a reader walks them,
  and none may contain itself: merge keys (``<<: *a``) nested a few levels were the billion-laughs
  shape, seconds per kilobyte, each level multiplying the time;
- a file larger than MAX_FILE_BYTES (2 MiB) is not read, an error line is at most MAX_MESSAGE
  characters; bytes that are not UTF-8 and characters YAML
  forbids are reported at their line and column.

NodeReader holds what both schemas share (located errors, mappings without duplicate keys); the
schemas themselves live in config.py and webconfig.py.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

__all__ = ["ConfigError", "MAX_ALIAS_EXPANSION", "MAX_DEPTH", "MAX_FILE_BYTES", "NodeReader",
           "TAG", "compose_file", "is_null"]

MAX_DEPTH = 64  # nflogd's deepest setting is 4 levels down
MAX_ALIAS_EXPANSION = 10_000  # values that aliases may add to a document, in all
# PyYAML composes ~2-3 MB/s here: 2 MiB keeps the worst file near a second. nflogd.yaml is a few
# hundred bytes; even 65535 `networks:` prefixes fit.
MAX_FILE_BYTES = 2 * 1024 * 1024
MAX_MESSAGE = 500  # characters of one error line: a value quoted in it is cut, not echoed whole
TAG = "tag:yaml.org,2002:"


class ConfigError(Exception):
    """A problem in a file, one line: ``FILE:LINE:COL: message`` (or ``FILE:LINE:``/``FILE:``).

    ``line`` and ``column`` are 1-based, None when the problem has no position (an unreadable
    file gives ``FILE: cannot read: <reason>``).
    """

    def __init__(self, path: str, line: int | None, column: int | None, message: str) -> None:
        self.path = path
        self.line = line
        self.column = column if line is not None else None
        message = " ".join(message.split())  # one line, whatever an OS or library said
        if len(message) > MAX_MESSAGE:
            message = message[:MAX_MESSAGE - 3] + "..."
        self.message = message
        where = path
        if line is not None:
            where += f":{line}"
            if self.column is not None:
                where += f":{self.column}"
        super().__init__(f"{where}: {self.message}")

    def __reduce__(self) -> Any:
        # Exception pickles args (the formatted text), which does not match the signature.
        return (type(self), (self.path, self.line, self.column, self.message))


def is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == TAG + "null"


class _TooDeep(yaml.composer.ComposerError):
    pass


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader whose composer refuses nesting deeper than MAX_DEPTH before recursing."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise _TooDeep(None, None, f"nested more than {MAX_DEPTH} levels deep", mark)
            node: Node | None = super().compose_node(parent, index)
            return node
        finally:
            self._depth -= 1


def _located(path: str, text: str, position: int, message: str) -> ConfigError:
    line = text.count("\n", 0, position) + 1
    column = position - (text.rfind("\n", 0, position) + 1) + 1
    return ConfigError(path, line, column, message)


def _yaml_error(path: str, e: yaml.MarkedYAMLError) -> ConfigError:
    """A PyYAML syntax error (several lines of text) as one located ConfigError."""
    mark = e.problem_mark or e.context_mark
    parts = []
    if e.context:
        context = e.context
        if e.context_mark is not None and mark is not None and e.context_mark.line != mark.line:
            context += f" (line {e.context_mark.line + 1})"
        parts.append(context)
    if e.problem:
        parts.append(e.problem)
    message = "invalid YAML: " + (": ".join(parts) or str(e))
    if mark is None:
        return ConfigError(path, None, None, message)
    return ConfigError(path, mark.line + 1, mark.column + 1, message)


def compose_file(path: str, what: str = "", error_type: type[ConfigError] = ConfigError
                 ) -> tuple[Node | None, yaml.SafeLoader]:
    """The root node of the YAML file at ``path`` (None when empty) and the loader that composed
    it (for constructing scalars; dispose() it after). Raises ``error_type`` (a ConfigError).

    ``what`` names the file in the "cannot read" message (e.g. "web config file").
    """
    try:
        return _compose(path, what)
    except ConfigError as e:
        if error_type is ConfigError:
            raise
        raise error_type(e.path, e.line, e.column, e.message) from None


def _compose(path: str, what: str) -> tuple[Node | None, yaml.SafeLoader]:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise ConfigError(path, None, None, f"cannot read{' ' + what if what else ''}: "
                                            f"{e.strerror or e}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(path, None, None, f"larger than {MAX_FILE_BYTES >> 20} MiB: "
                                            "refused (nflogd's files are a few kilobytes)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise ConfigError(path, line, column,
                          f"not valid UTF-8 (byte 0x{data[e.start]:02x})") from None
    loader = None
    try:
        loader = _BoundedLoader(text)  # checks for unprintable characters already
        root = loader.get_single_node()
        if root is not None:
            _check_aliases(path, root)
        return root, loader
    except yaml.reader.ReaderError as e:
        # PyYAML gives the character as its code point for str input, as bytes otherwise.
        code = e.character if isinstance(e.character, int) else ord(e.character)
        if loader is not None:
            loader.dispose()
        raise _located(path, text, e.position,
                       f"invalid YAML: unacceptable character #x{code:04x}") from None
    except yaml.MarkedYAMLError as e:
        if loader is not None:
            loader.dispose()
        raise _yaml_error(path, e) from None
    except ConfigError:
        if loader is not None:
            loader.dispose()
        raise


def _check_aliases(path: str, root: Node) -> None:
    """Refuse a node graph that contains itself or whose aliases repeat too many values.

    Composed nodes are a graph: an alias is the anchored node itself, shared. The size of the tree
    a reader walks (every shared node counted each time it is reached) is computed once per node,
    in linear time, without walking that tree.
    """
    sizes: dict[int, int] = {}
    own = 0  # nodes as written
    open_: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            open_.discard(key)
            total = 1 + sum(sizes[id(c)] for c in _children(node))
            sizes[key] = total
            continue
        if key in sizes:
            continue  # shared and already sized
        if key in open_:
            mark = node.start_mark
            raise ConfigError(path, mark.line + 1, mark.column + 1,
                              "an alias refers to a value that contains it")
        own += 1
        open_.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in open_:
                mark = child.start_mark
                raise ConfigError(path, mark.line + 1, mark.column + 1,
                                  "an alias refers to a value that contains it")
            if id(child) not in sizes:
                stack.append((child, False))
    if sizes[id(root)] - own > MAX_ALIAS_EXPANSION:
        # Name the first anchored value (in file order) that is repeated the most.
        heaviest = max((n for n in _nodes(root) if sizes[id(n)] > 1 and n is not root),
                       key=lambda n: (sizes[id(n)], -n.start_mark.index), default=root)
        mark = heaviest.start_mark
        raise ConfigError(path, mark.line + 1, mark.column + 1,
                          f"aliases repeat more than {MAX_ALIAS_EXPANSION} values "
                          f"({sizes[id(root)]} in all from {own} written): refused as an alias "
                          "bomb; write the values out")


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _nodes(root: Node) -> list[Node]:
    """Every distinct node once."""
    seen: dict[int, Node] = {}
    stack = [root]
    while stack:
        n = stack.pop()
        if id(n) not in seen:
            seen[id(n)] = n
            stack.extend(_children(n))
    return list(seen.values())


class NodeReader:
    """Located errors and the node shapes both schemas share.

    Each method takes ``where``, the dotted path of the value (``groups[1].group``), so messages
    say which setting is wrong as well as where it is.
    """

    error_type: type[ConfigError] = ConfigError

    def __init__(self, path: str) -> None:
        self.path = path

    def error(self, node: Node | None, message: str) -> ConfigError:
        if node is None:
            return self.error_type(self.path, None, None, message)
        mark = node.start_mark
        return self.error_type(self.path, mark.line + 1, mark.column + 1, message)

    def mapping(self, node: Node, where: str, known: tuple[str, ...] | None, *,
                merge: bool = True, _merging: tuple[int, ...] = ()
                ) -> dict[str, tuple[Node, Node]]:
        """{key: (key node, value node)}; duplicate and (if ``known``) unknown keys are errors.

        With ``merge``, YAML merge keys (``<<: *anchor``) are honoured, so entries can share
        settings; keys written in the mapping itself override merged ones, as the YAML spec says.
        Without, ``<<`` is an unknown key like any other.
        """
        if not isinstance(node, MappingNode):
            raise self.error(node, f"{where or 'the top level'}: expected a mapping "
                                   f"(key: value), got {describe(node)}")
        own: dict[str, tuple[Node, Node]] = {}
        merged: dict[str, tuple[Node, Node]] = {}
        for key, value in node.value:
            if not isinstance(key, ScalarNode):
                raise self.error(key, f"{where or 'the top level'}: keys must be plain names, "
                                      f"got {describe(key)}")
            name = key.value
            if name in own:
                raise self.error(key, f"{join(where, name)}: duplicate key (first given at "
                                      f"line {own[name][0].start_mark.line + 1})")
            if merge and key.tag == TAG + "merge":
                own[name] = (key, value)
                sources = value.value if isinstance(value, SequenceNode) else [value]
                for source in sources:
                    if id(source) in _merging or source is node:
                        raise self.error(source, f"{where or 'the top level'}: "
                                                 "merge key refers to itself")
                    items = self.mapping(source, where, known, _merging=_merging + (id(node),))
                    for k, kv in items.items():
                        merged.setdefault(k, kv)  # the first merged mapping wins
                continue
            if known is not None and name not in known:
                raise self.error(key, f"{where + ': ' if where else ''}unknown key {name!r}"
                                      + suggest(name, known))
            own[name] = (key, value)
        own.pop("<<", None)
        merged.update(own)
        return merged


_TYPE_NAMES = {
    TAG + "null": "null", TAG + "bool": "a boolean", TAG + "int": "an integer",
    TAG + "float": "a float", TAG + "str": "a string", TAG + "timestamp": "a date",
    TAG + "binary": "binary data",
}


def type_name(tag: str) -> str:
    return _TYPE_NAMES.get(tag, f"a value tagged {tag}")


def describe(node: Node) -> str:
    """Name a node's type for 'expected X, got Y' messages, with the text as written."""
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    name = type_name(node.tag)
    if node.tag == TAG + "null":
        return name
    text = node.value if len(node.value) <= 80 else node.value[:77] + "..."
    return f"{name} ({text!r})"


def join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def suggest(word: str, choices: tuple[str, ...]) -> str:
    """' (did you mean 'x'?)' for the closest choice, else the list of all choices."""
    import difflib  # only on this error path

    close = difflib.get_close_matches(word, list(choices), n=1)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (known: {', '.join(choices)})"
