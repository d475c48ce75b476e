"""Reading one section of ``profiles.yaml`` from YAML nodes, with file:line:column problems.

The same approach as :mod:`sipproxy.config` (whose reader is private): the text is composed to
a node graph (libyaml's C parser where available) and never constructed wholesale, so an alias
bomb costs nothing; the whole file must use plain YAML tags only and have no duplicate keys;
every problem is recorded (not raised) with the node's position and the dotted key, and all of
them are raised at the end in one :class:`sipproxy.config.ConfigError`, the error type the
proxy's own section uses, so a start-up or reload reports both sections alike::

    profiles.yaml:93:7: payments.profiles.card.currency: must be an ISO 4217 code ..., got 'gbp'

:class:`NodeReader` is the toolkit: :meth:`~NodeReader.section` finds a top-level section,
:meth:`~NodeReader.mapping` checks keys, and each typed getter returns ``None`` after recording
a problem, so the caller carries on and reports everything at once.
"""

from __future__ import annotations

import difflib
import math
from decimal import Decimal, InvalidOperation
from typing import Any, Final, TypeVar

import yaml

from sipproxy.config import MAX_FILE_SIZE, ConfigError, ConfigProblem

__all__ = ["NodeReader", "decode_text"]

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
_MERGE: Final = Y + "merge"
_KIND: Final = {
    Y + "map": "a mapping",
    Y + "seq": "a list",
    Y + "null": "null",
    Y + "bool": "a boolean",
    Y + "int": "an integer",
    Y + "float": "a number",
    Y + "str": "a string",
}
_S = TypeVar("_S", bound=str)


def kind(node: yaml.Node) -> str:
    """What a node is, in words (``a mapping``, ``a string``...)."""
    return _KIND.get(node.tag, node.tag.removeprefix(Y))


def show(value: object) -> str:
    """A value for an error message, shortened."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def decode_text(text: str | bytes, filename: str) -> str:
    """UTF-8 (BOM allowed) text of at most :data:`MAX_FILE_SIZE`, or :class:`ConfigError`."""
    if len(text) > MAX_FILE_SIZE:
        raise ConfigError(
            [ConfigProblem(filename, None, None, None, f"larger than {MAX_FILE_SIZE} bytes")]
        )
    if isinstance(text, str):
        return text
    try:
        return text.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = text.count(b"\n", 0, exc.start) + 1
        column = exc.start - (text.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(
            [ConfigProblem(filename, line, column, None, "not UTF-8 text: is this a YAML file?")]
        ) from None


class NodeReader:
    """Walks one composed YAML document, recording problems."""

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

    # -- problems

    def problem(self, node: yaml.Node | None, key: str | None, message: str) -> None:
        line = col = None
        if node is not None and node.start_mark is not None:
            line, col = node.start_mark.line + 1, node.start_mark.column + 1
        self.problems.append(ConfigProblem(self.filename, line, col, key, message))

    def _yaml_problem(self, exc: yaml.YAMLError) -> None:
        if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
            mark = exc.problem_mark
            what = ", ".join(x for x in (exc.context, exc.problem) if x)
            self.problems.append(
                ConfigProblem(
                    self.filename, mark.line + 1, mark.column + 1, None, f"YAML syntax: {what}"
                )
            )
        else:
            self.problems.append(ConfigProblem(self.filename, None, None, None, f"YAML: {exc}"))

    # -- document

    def section(self, name: str) -> yaml.Node | None:
        """The top-level ``name:`` section's node, after the whole-file checks; ``None`` when
        the file is empty, broken (a problem is recorded) or has no such section."""
        try:
            root = self._loader.get_single_node()
        except yaml.YAMLError as exc:
            self._yaml_problem(exc)
            return None
        except RecursionError:
            self.problem(None, None, "YAML nested too deeply")
            return None
        if root is None:
            return None
        self._check_graph(root)
        if not isinstance(root, yaml.MappingNode):
            self.problem(root, None, f"the file must be a mapping of sections, got {kind(root)}")
            return None
        for k, v in root.value:
            if isinstance(k, yaml.ScalarNode) and k.tag == Y + "str" and k.value == name:
                return v  # type: ignore[no-any-return]
        return None

    def _check_graph(self, root: yaml.Node) -> None:
        """Safe tags only, no duplicate keys; iterative, each node once."""
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
                    if isinstance(k, yaml.ScalarNode) and k.tag != _MERGE:
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

    # -- shapes

    def mapping(
        self,
        node: yaml.Node,
        dotted: str,
        allowed: tuple[str, ...] | None,
        required: tuple[str, ...] = (),
    ) -> dict[str, yaml.Node] | None:
        """A mapping's keys to value nodes (null: empty). ``allowed=None`` takes any name
        (a mapping of ids); unknown keys and missing ``required`` keys are problems."""
        if isinstance(node, yaml.ScalarNode) and node.tag == Y + "null":
            out: dict[str, yaml.Node] = {}
        elif not isinstance(node, yaml.MappingNode):
            what = f"a mapping of {', '.join(allowed)}" if allowed else "a mapping"
            self.problem(node, dotted, f"must be {what}, got {kind(node)}")
            return None
        else:
            out = {}
            for k, v in node.value:
                if k.tag == _MERGE:
                    self.problem(k, dotted, "merge keys (<<) are not supported; write keys out")
                    continue
                if not (isinstance(k, yaml.ScalarNode) and k.tag == Y + "str"):
                    self.problem(k, dotted, f"keys must be names, got {kind(k)}")
                    continue
                name = k.value
                if allowed is not None and name not in allowed:
                    hint = difflib.get_close_matches(name, allowed, n=1)
                    self.problem(
                        k,
                        f"{dotted}.{name}",
                        "unknown key"
                        + (f" (did you mean {hint[0]}?)" if hint else "")
                        + f"; allowed: {', '.join(allowed)}",
                    )
                    continue
                out.setdefault(name, v)
        for name in required:
            if name not in out:
                self.problem(node, f"{dotted}.{name}", "required key is missing")
        return out

    def sequence(self, node: yaml.Node, dotted: str, what: str) -> list[yaml.Node] | None:
        if not isinstance(node, yaml.SequenceNode):
            self.problem(node, dotted, f"must be a list of {what}, got {kind(node)}")
            return None
        return list(node.value)

    def scalar(self, node: yaml.Node, dotted: str) -> tuple[bool, Any]:
        """``(ok, value)`` of a scalar with safe_load semantics; a collection or a value its
        tag cannot construct is ``(False, None)`` (the latter recorded here)."""
        if not isinstance(node, yaml.ScalarNode):
            return False, None
        try:
            return True, self._loader.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, KeyError, TypeError, OverflowError) as exc:
            reason = exc.problem if isinstance(exc, yaml.MarkedYAMLError) else exc
            self.problem(node, dotted, f"cannot be read as {kind(node)}: {reason}")
            return False, None

    def _bad(self, node: yaml.Node, dotted: str, what: str, ok: bool, value: Any) -> None:
        got = show(value) if ok else kind(node)
        self.problem(node, dotted, f"must be {what}, got {got}")

    # -- typed values: None after recording a problem

    def string(self, node: yaml.Node, dotted: str, what: str, *, max_len: int = 200) -> str | None:
        ok, value = self.scalar(node, dotted)
        if not ok or not isinstance(value, str) or not value.strip() or len(value) > max_len:
            self._bad(node, dotted, what, ok, value)
            return None
        return value

    def boolean(self, node: yaml.Node, dotted: str) -> bool | None:
        ok, value = self.scalar(node, dotted)
        if not ok or not isinstance(value, bool):
            self._bad(node, dotted, "true or false", ok, value)
            return None
        return value

    def number(self, node: yaml.Node, dotted: str, lo: float, hi: float, what: str) -> float | None:
        ok, value = self.scalar(node, dotted)
        if (
            not ok
            or type(value) not in (int, float)
            or not math.isfinite(value)
            or not lo <= value <= hi
        ):
            self._bad(node, dotted, what, ok, value)
            return None
        return float(value)

    def decimal(self, node: yaml.Node, dotted: str, what: str) -> Decimal | None:
        """A decimal amount exactly as written (``12.50`` stays two places): int, float or
        string scalars, read from their text, never through binary floating point."""
        ok, value = self.scalar(node, dotted)
        if ok and type(value) in (int, float, str) and isinstance(node, yaml.ScalarNode):
            try:
                amount = Decimal(str(node.value).strip())
            except InvalidOperation:
                amount = None
            if amount is not None and amount.is_finite():
                return amount
        self._bad(node, dotted, what, ok, value)
        return None

    def choice(self, node: yaml.Node, dotted: str, choices: tuple[_S, ...]) -> _S | None:
        ok, value = self.scalar(node, dotted)
        for c in choices:
            if ok and isinstance(value, str) and value == c:
                return c
        self._bad(node, dotted, f"one of {', '.join(choices)}", ok, value)
        return None
