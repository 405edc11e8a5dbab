"""A throwaway PostgreSQL server for the tests (Debian package ``postgresql``).

``pg_server`` (session scope) runs ``initdb`` and ``pg_ctl`` on a private cluster in a
temporary directory, listening on 127.0.0.1 at a free port and on a unix socket in that
directory, with trust authentication (nothing else can reach it) and ``fsync=off`` (the
tests check transactions, not disks). When we are root the cluster runs as the
``postgres`` OS user (PostgreSQL refuses to run as root). It is stopped at the end of the
session. ``pg_url`` gives each test a fresh, empty database on it.

No PostgreSQL installed is a test failure naming the package, never a skip.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.interop import free_port

__all__ = ["PgServer", "pg_server", "pg_url"]

HOST = "127.0.0.1"
_INSTALL = "install the Debian package 'postgresql' (apt-get install postgresql)"


def _bindir() -> Path:
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if not candidates:
        pytest.fail(f"PostgreSQL (initdb) not found: {_INSTALL}", pytrace=False)
    return Path(candidates[-1]).parent


@dataclass
class PgServer:
    """A running private PostgreSQL cluster."""

    directory: Path
    port: int
    bindir: Path
    _ids: Iterator[int]

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@{HOST}:{self.port}/{database}"

    def new_database(self) -> str:
        name = f"maf_{os.getpid()}_{next(self._ids)}"
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return name

    def drop_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _as_postgres(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.fail(f"running as root and there is no 'postgres' user: {_INSTALL}", pytrace=False)
    return ["runuser", "-u", "postgres", "--", *argv]


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.fail("psycopg is missing: pip install -e '.[test]' (psycopg[binary])")
    bindir = _bindir()
    directory = Path(tempfile.mkdtemp(prefix="m2msec-pg-"))
    data = directory / "data"
    if os.geteuid() == 0 and _has_postgres_user():
        entry = pwd.getpwnam("postgres")
        os.chown(directory, entry.pw_uid, entry.pw_gid)
    port = free_port()
    started = False
    try:
        run = subprocess.run(
            _as_postgres(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                    "--no-sync",
                    "--no-instructions",
                ]
            ),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if run.returncode:
            pytest.fail(f"initdb failed ({_INSTALL}):\n{run.stderr[-2000:]}", pytrace=False)
        options = (
            f"-p {port} -k {directory} -c listen_addresses={HOST} -c fsync=off "
            "-c full_page_writes=off -c max_connections=100"
        )
        run = subprocess.run(
            _as_postgres(
                [
                    str(bindir / "pg_ctl"),
                    "-D",
                    str(data),
                    "-l",
                    str(directory / "log"),
                    "-o",
                    options,
                    "-w",
                    "-t",
                    "60",
                    "start",
                ]
            ),
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        if run.returncode:
            log = ""
            with contextlib.suppress(OSError):
                log = (directory / "log").read_text()[-2000:]
            pytest.fail(f"PostgreSQL did not start:\n{run.stderr}\n{log}", pytrace=False)
        started = True
        yield PgServer(directory, port, bindir, itertools.count(1))
    finally:
        if started:
            subprocess.run(
                _as_postgres(
                    [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]
                ),
                capture_output=True,
                timeout=60,
                check=False,
            )
        shutil.rmtree(directory, ignore_errors=True)


def _has_postgres_user() -> bool:
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return False
    return True


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """A fresh empty database on the throwaway server, dropped after the test."""
    name = pg_server.new_database()
    try:
        yield pg_server.url(name)
    finally:
        pg_server.drop_database(name)
