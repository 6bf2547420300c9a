"""A throwaway PostgreSQL server for the tests: ``pg_url`` starts one per test session, ``new_database`` adds
an empty database to it.

Registered for every test module by ``pytest_plugins`` in ``tests/conftest.py`` (pytest finds the fixture by
name). The cluster lives in a temporary folder, listens on 127.0.0.1 at a free port with its unix socket in
that folder, trusts local connections and runs with ``fsync=off``; it is stopped and deleted at the end.
Without the PostgreSQL server binaries the tests skip, except under ``CI=true`` where that is a failure.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Iterator, Optional

import pytest
from sqlalchemy.engine import make_url

SUPERUSER = "postgres"


def find_bindir() -> Optional[Path]:
    """The folder holding initdb, pg_ctl and postgres: pg_config's, Debian's newest, or the PATH's."""
    candidates: list[Path] = []
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        if out.returncode == 0:
            candidates.append(Path(out.stdout.strip()))
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += [Path(p) for p in sorted(versions, key=lambda p: int(Path(p).parent.name), reverse=True)
                   if Path(p).parent.name.isdigit()]
    if shutil.which("initdb"):
        candidates.append(Path(shutil.which("initdb")).resolve().parent)
    for d in candidates:
        if all((d / b).is_file() for b in ("initdb", "pg_ctl", "postgres")):
            return d
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"PostgreSQL tests cannot run in CI: {reason}")
    pytest.skip(f"PostgreSQL tests skipped: {reason}")


class Cluster:
    """initdb + pg_ctl in a temporary folder; as the ``postgres`` OS user when running as root."""

    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.as_user: Optional[str] = None
        pw = None
        if os.geteuid() == 0:  # the server refuses to run as root
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                _unavailable("running as root and there is no 'postgres' OS user to run the server as")
            self.as_user = "postgres"
        self.root = Path(tempfile.mkdtemp(prefix="sports-pg-"))
        self.data, self.sock, self.log = self.root / "data", self.root / "sock", self.root / "server.log"
        self.sock.mkdir()
        if pw is not None:
            for p in (self.root, self.sock):
                os.chown(p, pw.pw_uid, pw.pw_gid)
        self.port = free_port()

    def _cmd(self, binary: str, *args: str) -> list[str]:
        cmd = [str(self.bindir / binary), *args]
        return ["runuser", "-u", self.as_user, "--", *cmd] if self.as_user else cmd

    def _run(self, binary: str, *args: str) -> None:
        r = subprocess.run(self._cmd(binary, *args), capture_output=True, text=True, cwd=self.root)
        if r.returncode != 0:
            log = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(f"{binary} {' '.join(args)} failed ({r.returncode}):\n{r.stdout}{r.stderr}\n{log}")

    def start(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "--encoding=UTF8",
                  "--locale=C", "--no-sync")
        options = (f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.sock} "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=50")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run(self._cmd("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop"),
                           capture_output=True, cwd=self.root)
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"


def new_database(url: str, name: Optional[str] = None) -> str:
    """Create an empty database on ``url``'s server; return its URL."""
    import psycopg

    name = name or f"t_{uuid.uuid4().hex[:12]}"
    u = make_url(url)
    with psycopg.connect(host=u.host, port=u.port, user=u.username, dbname="postgres", autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    return u.set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """SQLAlchemy URL of an empty database on a PostgreSQL server that lives as long as the test session."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("the psycopg package is not installed")
    bindir = find_bindir()
    if bindir is None:
        _unavailable("no initdb/pg_ctl/postgres found (pg_config --bindir, /usr/lib/postgresql/*/bin, PATH); "
                     "install the 'postgresql' package")
    cluster = Cluster(bindir)
    try:
        cluster.start()
        yield new_database(cluster.url("postgres"), "sports")
    finally:
        cluster.stop()
