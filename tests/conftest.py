"""Shared fixtures. Tests never touch the real home directory."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _private_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("M2MSEC_HOME", str(tmp_path / "m2msec-home"))
    monkeypatch.delenv("M2MSEC_KEK", raising=False)
