"""m2msec.paths.write_private: the one writer of key and secret files."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from m2msec import paths
from m2msec.cli.ca import app as ca_app
from m2msec.paths import state_path, write_private
from m2msec.store.seal import load_kek


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_zero() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.usefixtures("umask_zero")
@pytest.mark.parametrize("exist_ok", [False, True])
def test_private_even_with_umask_zero(tmp_path: Path, exist_ok: bool) -> None:
    target = tmp_path / "secret"
    write_private(target, b"s3cret", exist_ok=exist_ok)
    assert target.read_bytes() == b"s3cret"
    assert mode(target) == 0o600
    assert leftovers(tmp_path) == []


def test_mode_is_exact_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o277)  # would strip the owner's write bit from a creation mode
    try:
        write_private(tmp_path / "key", b"k")
        write_private(tmp_path / "cert", b"c", mode=0o644)
    finally:
        os.umask(old)
    assert mode(tmp_path / "key") == 0o600
    assert mode(tmp_path / "cert") == 0o644


def test_private_from_the_first_byte(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    created: list[int] = []
    real_open = os.open

    def spy(path: str | os.PathLike[str], flags: int, mode: int = 0o777) -> int:
        if flags & os.O_CREAT:
            assert flags & os.O_EXCL
            created.append(mode)
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", spy)
    write_private(tmp_path / "secret", b"x")
    write_private(tmp_path / "secret", b"y", exist_ok=True)
    assert created == [0o600, 0o600]


def test_replace_keeps_the_old_file_when_fsync_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "secret"
    write_private(target, b"old")

    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError, match="Input/output error"):
        write_private(target, b"new", exist_ok=True)
    assert target.read_bytes() == b"old"
    assert leftovers(tmp_path) == []


def test_replace_keeps_the_old_file_when_the_rename_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "secret"
    write_private(target, b"old")

    def broken(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError, match="No space left"):
        write_private(target, b"new", exist_ok=True)
    assert target.read_bytes() == b"old"
    assert leftovers(tmp_path) == []


def test_replace_swaps_the_content(tmp_path: Path) -> None:
    target = tmp_path / "secret"
    write_private(target, b"old")
    write_private(target, b"new", exist_ok=True)
    assert target.read_bytes() == b"new"
    assert mode(target) == 0o600
    assert leftovers(tmp_path) == []


def test_new_file_refuses_an_existing_one(tmp_path: Path) -> None:
    target = tmp_path / "secret"
    target.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="refusing to overwrite an existing file") as info:
        write_private(target, b"other")
    assert info.value.filename == str(target)
    assert target.read_bytes() == b"keep me"
    assert leftovers(tmp_path) == []


def test_new_file_refuses_a_symlink(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    (tmp_path / "secret").symlink_to(elsewhere)
    with pytest.raises(FileExistsError):
        write_private(tmp_path / "secret", b"x")
    assert not elsewhere.exists()


def test_new_file_without_hard_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_links(src: object, dst: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    target = tmp_path / "secret"
    write_private(target, b"x")
    assert target.read_bytes() == b"x" and mode(target) == 0o600
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        write_private(target, b"y")
    assert target.read_bytes() == b"x"
    assert leftovers(tmp_path) == []


def test_failed_new_file_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError):
        write_private(tmp_path / "secret", b"x")
    assert list(tmp_path.iterdir()) == []


def test_state_path(tmp_path: Path) -> None:
    home = tmp_path / "m2msec-home"  # conftest's $M2MSEC_HOME
    assert state_path("bsf.db") == home / "bsf.db"
    assert not home.exists()
    assert state_path("bsf.db", create=True) == home / "bsf.db"
    assert mode(home) == 0o700
    assert paths.default_store_path() == home / "m2msec.db"


# -- through the shipped callers ------------------------------------------------------------


@pytest.mark.usefixtures("umask_zero")
def test_ca_init_and_issue_write_keys_0600(tmp_path: Path) -> None:
    runner = CliRunner()
    d = tmp_path / "ca"
    result = runner.invoke(ca_app, ["init", "--dir", str(d), "--domain", "in.provider.com"])
    assert result.exit_code == 0, result.output
    assert mode(d / "ca.key") == 0o600
    assert mode(d / "ca.pem") == 0o644
    result = runner.invoke(
        ca_app,
        ["issue", "--dir", str(d), "--entity-id", "/mn-cse-123456", "--out", str(tmp_path / "mn")],
    )
    assert result.exit_code == 0, result.output
    assert mode(tmp_path / "mn.key") == 0o600
    assert mode(tmp_path / "mn.pem") == 0o644
    assert leftovers(d) == [] and leftovers(tmp_path) == []


@pytest.mark.usefixtures("umask_zero")
def test_kek_file_is_0600(tmp_path: Path) -> None:
    kek = load_kek(tmp_path / "kek", create=True)
    assert mode(tmp_path / "kek") == 0o600
    assert (tmp_path / "kek").read_text() == kek.hex() + "\n"
    assert load_kek(tmp_path / "kek", create=True) == kek  # an existing file is read, kept
    assert leftovers(tmp_path) == []
