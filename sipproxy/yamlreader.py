"""Reading ``profiles.yaml`` safely, with file:line:column problems: what every section's
reader shares.

The proxy's ``proxy:`` section (:mod:`sipproxy.config`) and the control API's ``payments:``
section (``control_api.yamlnodes``) each walk their own schema; both stand on this module:

- :func:`decode_text`: a size bound checked before parsing, UTF-8 text or a problem naming
  the line and column of the first bad byte.
- :class:`YamlReader`: composes the text to a node graph (libyaml's C parser where PyYAML
  was built with it) and never constructs it wholesale, so an alias bomb costs nothing;
  :meth:`~YamlReader.check_graph` enforces plain YAML tags and no duplicate keys over the
  whole file; every problem is recorded with the node's position and dotted key and raised
  at the end in one :class:`ConfigError`, so a start-up or reload reports everything at once::

      profiles.yaml:12:5: proxy.media.port_min: must be an even port 1024-65534, got 7001
"""

from __future__ import annotations

from dataclasses import dataclass
from os import PathLike
from typing import Final

import yaml

__all__ = [
    "KIND",
    "MAX_FILE_SIZE",
    "MERGE",
    "ConfigError",
    "ConfigProblem",
    "Y",
    "YamlReader",
    "decode_text",
    "file_error",
    "kind",
    "read_file",
    "show",
]

MAX_FILE_SIZE: Final = 1 << 20
"""Larger files are refused unread (a configuration file is a few KiB)."""


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong: where (file, 1-based line and column), which key, what."""

    file: str
    line: int | None
    column: int | None
    key: str | None
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class ConfigError(ValueError):
    """The configuration cannot be used; ``problems`` lists every reason, in file order."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems: tuple[ConfigProblem, ...] = tuple(
            sorted(problems, key=lambda p: (p.line or 0, p.column or 0))
        )
        super().__init__("\n".join(str(p) for p in self.problems))


def file_error(
    file: str, message: str, line: int | None = None, column: int | None = None
) -> ConfigError:
    return ConfigError([ConfigProblem(file, line, column, None, message)])


def read_file(path: str | PathLike[str]) -> bytes:
    """The file's bytes, at most one past :data:`MAX_FILE_SIZE` (so :func:`decode_text`
    refuses a larger one without reading it all), or :class:`ConfigError`."""
    try:
        with open(path, "rb") as fh:
            return fh.read(MAX_FILE_SIZE + 1)
    except OSError as exc:
        raise file_error(str(path), f"cannot read: {exc.strerror}") from None


def decode_text(text: str | bytes, filename: str) -> str:
    """UTF-8 (BOM allowed) text of at most :data:`MAX_FILE_SIZE`, or :class:`ConfigError`."""
    if len(text) > MAX_FILE_SIZE:
        raise file_error(filename, f"larger than {MAX_FILE_SIZE} bytes, refused unread")
    if isinstance(text, str):
        return text
    try:
        return text.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raw = exc.object
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        byte = raw[exc.start]
        raise file_error(
            filename, f"not UTF-8 text (byte 0x{byte:02x}): is this a YAML file?", line, column
        ) from None


_Loader: type[yaml.SafeLoader] | type[yaml.CSafeLoader]
try:
    _Loader = yaml.CSafeLoader
except AttributeError:  # PyYAML built without libyaml
    _Loader = yaml.SafeLoader

Y: Final = "tag:yaml.org,2002:"
_SAFE_TAGS: Final = frozenset(
    Y + t
    for t in (
        "str",
        "int",
        "float",
        "bool",
        "null",
        "map",
        "seq",
        "timestamp",
        "binary",
        "set",
        "omap",
        "pairs",
        "merge",
        "value",
    )
)
MERGE: Final = Y + "merge"
KIND: Final = {
    Y + "map": "a mapping",
    Y + "seq": "a list",
    Y + "null": "null",
    Y + "bool": "a boolean",
    Y + "int": "an integer",
    Y + "float": "a number",
    Y + "str": "a string",
}


def kind(node: yaml.Node) -> str:
    """What a node is, in words (``a mapping``, ``a string``...)."""
    return KIND.get(node.tag, node.tag.removeprefix(Y))


def show(value: object) -> str:
    """A value for an error message, shortened."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class YamlReader:
    """One YAML document as composed nodes, and the problems found in it so far."""

    def __init__(self, filename: str, text: str) -> None:
        self.filename = filename
        self.text = text
        self.problems: list[ConfigProblem] = []
        self._loader = _Loader(text)

    def close(self) -> None:
        self._loader.dispose()

    def raise_problems(self) -> None:
        if self.problems:
            raise ConfigError(self.problems)

    def problem(self, node: yaml.Node | None, key: str | None, message: str) -> None:
        line = col = None
        if node is not None and node.start_mark is not None:
            line, col = node.start_mark.line + 1, node.start_mark.column + 1
        self.problems.append(ConfigProblem(self.filename, line, col, key, message))

    def root(self) -> yaml.Node | None:
        """The document's root node after the whole-file checks; ``None`` for an empty file
        or one that does not parse (a problem is recorded)."""
        try:
            root = self._loader.get_single_node()
        except yaml.YAMLError as exc:
            self._yaml_problem(exc)
            return None
        except RecursionError:
            self.problem(None, None, "YAML nested too deeply")
            return None
        if root is not None:
            self.check_graph(root)
        return root  # type: ignore[no-any-return]

    def _yaml_problem(self, exc: yaml.YAMLError) -> None:
        if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
            mark = exc.problem_mark
            what = ", ".join(x for x in (exc.context, exc.problem) if x)
            self.problems.append(
                ConfigProblem(
                    self.filename, mark.line + 1, mark.column + 1, None, f"YAML syntax: {what}"
                )
            )
        elif isinstance(exc, yaml.reader.ReaderError):  # a character YAML does not allow
            at = exc.position
            line = self.text.count("\n", 0, at) + 1
            column = at - (self.text.rfind("\n", 0, at) + 1) + 1
            what = f"character #x{exc.character:04x} is not allowed in YAML: is this a YAML file?"
            self.problems.append(ConfigProblem(self.filename, line, column, None, what))
        else:
            self.problems.append(ConfigProblem(self.filename, None, None, None, f"YAML: {exc}"))

    def check_graph(self, root: yaml.Node) -> None:
        """Whole-file checks: safe tags only, no duplicate keys. Iterative, each node once."""
        seen: set[int] = set()
        stack: list[tuple[yaml.Node, str | None]] = [(root, None)]
        while stack:
            node, path = stack.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            if node.tag not in _SAFE_TAGS:
                self.problem(node, path, f"tag {node.tag!r} is not allowed (plain YAML only)")
                continue
            if isinstance(node, yaml.MappingNode):
                keys: dict[tuple[str, str], yaml.Node] = {}
                for k, v in node.value:
                    sub = path
                    if isinstance(k, yaml.ScalarNode) and k.tag != MERGE:
                        sub = f"{path}.{k.value}" if path else str(k.value)
                        ident = (k.tag, k.value)
                        if ident in keys:
                            first = keys[ident].start_mark.line + 1
                            self.problem(k, sub, f"duplicate key (first at line {first})")
                        else:
                            keys[ident] = k
                    stack.append((k, path))
                    stack.append((v, sub))
            elif isinstance(node, yaml.SequenceNode):
                stack.extend((item, f"{path or ''}[{i}]") for i, item in enumerate(node.value))
