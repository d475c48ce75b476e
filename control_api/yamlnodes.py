"""Reading the ``payments:`` section of ``profiles.yaml`` from YAML nodes, with
file:line:column problems.

It stands on :mod:`sipproxy.yamlreader`, as the proxy's own section does: the text is
composed to a node graph and never constructed wholesale (an alias bomb costs nothing), the
whole file must use plain YAML tags only and have no duplicate keys, and every problem is
recorded with the node's position and dotted key and raised at the end in one
:class:`sipproxy.yamlreader.ConfigError`, so a start-up or reload reports both sections
alike::

    profiles.yaml:93:7: payments.profiles.card.currency: must be an ISO 4217 code ..., got 'gbp'

:class:`NodeReader` adds what this section needs: :meth:`~NodeReader.section` finds a
top-level section, :meth:`~NodeReader.mapping` checks keys, and each typed getter returns
``None`` after recording a problem, so the caller carries on and reports everything at once.
"""

from __future__ import annotations

import difflib
import math
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

import yaml

from sipproxy.yamlreader import MERGE, Y, YamlReader, decode_text, kind, show

__all__ = ["NodeReader", "decode_text"]

_S = TypeVar("_S", bound=str)


class NodeReader(YamlReader):
    """Walks one composed YAML document, recording problems."""

    def section(self, name: str) -> yaml.Node | None:
        """The top-level ``name:`` section's node, after the whole-file checks; ``None`` when
        the file is empty, broken (a problem is recorded) or has no such section."""
        root = self.root()
        if root is None:
            return None
        if not isinstance(root, yaml.MappingNode):
            self.problem(root, None, f"the file must be a mapping of sections, got {kind(root)}")
            return None
        for k, v in root.value:
            if isinstance(k, yaml.ScalarNode) and k.tag == Y + "str" and k.value == name:
                return v  # type: ignore[no-any-return]
        return None

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
                if k.tag == MERGE:
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
