"""The node's SIGHUP handler: a reload that cannot happen is said, never raised."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from structlog.testing import capture_logs

from control_api.node import Node
from control_api.profiles import StorageConfig, default_payments, load_payments
from sipproxy.config import Config


def test_sighup_without_a_file_is_logged_not_raised() -> None:
    payments = replace(default_payments(), storage=StorageConfig(":memory:"))
    node = Node(Config(), payments)
    try:
        with capture_logs() as logs:
            node.reload()
        assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["SIGHUP ignored"]
    finally:
        node.storage.close()


def test_sighup_with_a_bad_file_keeps_the_running_config(tmp_path: Path) -> None:
    good = tmp_path / "profiles.yaml"
    good.write_text("payments:\n  storage: {path: ':memory:'}\n")
    node = Node(Config(), load_payments(good))
    try:
        before = node.service.config
        good.write_text("payments:\n  accounts: [not, a, mapping]\n")
        node.reload()
        assert node.service.config is before
    finally:
        node.storage.close()
