"""A real PostgreSQL for the registry tests, started once per session on a free loopback port.

Debian's server binaries (``/usr/lib/postgresql/<version>/bin``) run a throwaway cluster in a temp
directory: ``initdb`` then ``pg_ctl start``; nothing of the system's own clusters is touched. As
root (initdb refuses to run as root) both run as the ``postgres`` user, in a directory chowned to
it. When no server is installed, the fixture installs the ``postgresql`` package with apt-get if
it runs as root and apt-get exists, else the tests are skipped with the reason.

Import the fixtures into a test module (``from tests.pg_fixture import postgres, postgres_url``);
``fresh_postgres_url`` gives each test an empty database of its own on the shared server.
The install and start-up durations are kept in :data:`TIMINGS` (and printed with ``-rA``/``-s``).
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

__all__ = [
    "TIMINGS",
    "PostgresServer",
    "find_server_binaries",
    "fresh_postgres_url",
    "postgres",
    "postgres_url",
]

PG_ROOT = Path("/usr/lib/postgresql")
SERVICE_USER = "postgres"
DB_USER = "weijian"
DB_NAME = "weijian"
START_TIMEOUT_S = 60
INSTALL_TIMEOUT_S = 300
# Seconds spent installing the server package (None: it was there) and starting the cluster.
TIMINGS: dict[str, float | None] = {"install_s": None, "initdb_s": None, "start_s": None}


def find_server_binaries(root: Path = PG_ROOT) -> Path | None:
    """The ``bin`` directory of the newest installed server that has initdb and pg_ctl."""
    candidates = []
    for path in glob.glob(str(root / "*" / "bin")):
        directory = Path(path)
        if (directory / "initdb").is_file() and (directory / "pg_ctl").is_file():
            version = directory.parent.name
            key = tuple(int(p) for p in version.split(".") if p.isdigit())
            candidates.append((key, directory))
    return max(candidates)[1] if candidates else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _install_server() -> str | None:
    """apt-get install postgresql when allowed; returns why not (a skip reason) or None."""
    if os.geteuid() != 0:
        return "PostgreSQL server not installed and not root: apt-get install postgresql"
    if shutil.which("apt-get") is None:
        return "PostgreSQL server not installed and apt-get is not available"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "postgresql"]
    started = time.perf_counter()
    try:
        result = subprocess.run(
            install, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S
        )
        if result.returncode != 0:  # stale package lists: refresh once and retry
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=120)
            result = subprocess.run(
                install, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S
            )
    except subprocess.TimeoutExpired:
        return f"apt-get install postgresql took longer than {INSTALL_TIMEOUT_S} s"
    TIMINGS["install_s"] = time.perf_counter() - started
    if result.returncode != 0:
        return f"apt-get install postgresql failed: {result.stderr.strip()[-500:]}"
    return None


@dataclass
class PostgresServer:
    """A cluster of our own: ``initdb`` into ``base/data``, listening on 127.0.0.1:``port`` only."""

    bindir: Path
    base: Path
    port: int = field(default_factory=_free_port)
    password: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    run_as: str | None = None  # the OS user the server runs as (root cannot run it)

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def log(self) -> Path:
        return self.base / "server.log"

    def url(self, database: str = DB_NAME) -> str:
        return f"postgresql+psycopg://{DB_USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def _run(self, args: Sequence[str], timeout: float = START_TIMEOUT_S) -> None:
        command = [str(a) for a in args]
        if self.run_as is not None:
            command = ["runuser", "-u", self.run_as, "--", *command]
        # A fixed, neutral environment: the cluster must not inherit the caller's locale or TZ.
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC"}
        result = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=timeout, cwd=self.base
        )
        if result.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(
                f"{' '.join(command)} failed ({result.returncode}):\n"
                f"{result.stdout}{result.stderr}{log}"
            )

    def start(self) -> None:
        pwfile = self.base / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self.run_as is not None:
            shutil.chown(self.base, self.run_as)
            shutil.chown(pwfile, self.run_as)
        pwfile.chmod(0o600)
        started = time.perf_counter()
        self._run(
            [
                self.bindir / "initdb",
                "-D",
                self.data,
                "-U",
                DB_USER,
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",  # a throwaway cluster: skip the fsyncs
            ],
            timeout=120,
        )
        TIMINGS["initdb_s"] = time.perf_counter() - started
        pwfile.unlink()
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} "
            f"-c unix_socket_directories='{self.base}' "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=50 -c shared_buffers=32MB"
        )
        started = time.perf_counter()
        self._run(
            [
                self.bindir / "pg_ctl",
                "-D",
                self.data,
                "-l",
                self.log,
                "-o",
                options,
                "-w",
                "-t",
                str(START_TIMEOUT_S),
                "start",
            ]
        )
        self.execute_admin(f'CREATE DATABASE "{DB_NAME}"')
        TIMINGS["start_s"] = time.perf_counter() - started

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run([self.bindir / "pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop"])

    def execute_admin(self, sql: str) -> None:
        """Run one statement outside a transaction (CREATE/DROP DATABASE) on ``postgres``."""
        import psycopg

        with psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=DB_USER,
            password=self.password,
            dbname="postgres",
            autocommit=True,
            connect_timeout=10,
        ) as connection:
            connection.execute(sql)  # type: ignore[arg-type]

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        name = name or f"t_{uuid.uuid4().hex[:12]}"
        self.execute_admin(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _service_user() -> str | None:
    try:
        import pwd

        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        return None
    return SERVICE_USER


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A running PostgreSQL (skips the tests with the reason when there is none to be had)."""
    pytest.importorskip("psycopg", reason="psycopg 3 is not installed: pip install psycopg[binary]")
    bindir = find_server_binaries()
    if bindir is None:
        reason = _install_server()
        if reason is not None:
            pytest.skip(reason)
        bindir = find_server_binaries()
        if bindir is None:
            pytest.skip(f"no initdb/pg_ctl under {PG_ROOT}/*/bin after installing postgresql")
    run_as = None
    if os.geteuid() == 0:
        run_as = _service_user()
        if run_as is None:
            pytest.skip(f"running as root and there is no {SERVICE_USER!r} user to run the server")
    # Not under pytest's basetemp: that is mode 0700 and owned by root, so the postgres user
    # could not reach a directory inside it.
    base = Path(tempfile.mkdtemp(prefix="weijian-pg-"))
    server = PostgresServer(bindir, base, run_as=run_as)
    try:
        server.start()
    except BaseException:
        try:
            server.stop()
        finally:
            shutil.rmtree(base, ignore_errors=True)
        raise
    try:
        yield server
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url(postgres: PostgresServer) -> str:
    """``postgresql+psycopg://...`` of the database created with the server."""
    return postgres.url()


@pytest.fixture
def fresh_postgres_url(postgres: PostgresServer) -> Iterator[str]:
    """An empty database for one test, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    url = postgres.create_database(name)
    yield url
    postgres.execute_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
