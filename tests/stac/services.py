"""Private instances of the real services the STAC tests use, on free loopback ports.

- PostgreSQL (Debian's ``postgresql-15`` binaries, PostGIS 3) in a throw-away data folder, trust auth on 127.0.0.1;
- pgstac schema through ``pypgstac migrate``, collections and items through ``pypgstac load``;
- stac-fastapi-pgstac served by uvicorn (``stac_fastapi.pgstac.app:create_app --factory``);
- nginx serving a folder (byte ranges: GDAL reads COGs with range requests).

pypgstac and stac-fastapi-pgstac live in their own virtual environment (``.venv-stac``, or ``$TREEMAP_STAC_VENV``),
installed by ``bash scripts/test-services.sh install``; only their executables are run from here.

Also a command for manual use: ``python tests/stac/services.py start|stop STATE_DIR`` (see scripts/test-services.sh).
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
INSTALL_HINT = "run `bash scripts/test-services.sh install`"


class ServicesMissing(RuntimeError):
    """A binary the services need is not installed (the message says which and how to install it)."""


def stac_venv() -> Path:
    return Path(os.environ.get("TREEMAP_STAC_VENV") or REPO / ".venv-stac")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bindir() -> Path | None:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name),
                        reverse=True)
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(str(Path(on_path).resolve().parent))
    for d in candidates:
        if all((Path(d) / exe).exists() for exe in ("initdb", "postgres", "pg_isready")):
            return Path(d)
    return None


def _nginx() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx")
                                          if os.access(p, os.X_OK)), None)


def check_postgres() -> Path:
    bindir = _pg_bindir()
    if bindir is None:
        raise ServicesMissing(f"PostgreSQL server binaries (initdb, postgres) not found; {INSTALL_HINT}")
    version = bindir.parent.name
    share = Path(f"/usr/share/postgresql/{version}/extension")
    if share.is_dir() and not (share / "postgis.control").exists():
        raise ServicesMissing(f"PostGIS for PostgreSQL {version} not installed; {INSTALL_HINT}")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            raise ServicesMissing("running as root and there is no `postgres` user to run PostgreSQL as") from None
    return bindir


def check_stac_api() -> Path:
    venv = stac_venv()
    for exe in ("uvicorn", "pypgstac"):
        if not (venv / "bin" / exe).exists():
            raise ServicesMissing(f"{venv}/bin/{exe} not found (pypgstac, stac-fastapi-pgstac); {INSTALL_HINT}")
    return venv


def check_nginx() -> str:
    exe = _nginx()
    if exe is None:
        raise ServicesMissing(f"nginx not found; {INSTALL_HINT}")
    return exe


def _wait(what: str, ready, proc: subprocess.Popen | None, log: Path | None, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"{what} exited with status {proc.returncode}:\n{tail}")
        try:
            if ready():
                return
        except OSError:
            pass
        time.sleep(0.1)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise RuntimeError(f"{what} not ready after {timeout:.0f} s:\n{tail}")


def _stop(proc: subprocess.Popen | None, timeout: float = 15.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)  # postgres: fast shutdown; uvicorn: graceful; nginx: fast
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return resp.status == 200


class Postgres:
    """A PostgreSQL server in its own data folder (made under /tmp, owned by `postgres` when run as root)."""

    def __init__(self, port: int | None = None):
        self.bindir = check_postgres()
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="treemap-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self.proc: subprocess.Popen | None = None
        self._user: dict = {}
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self._user = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgis"

    def env(self) -> dict[str, str]:
        return {"PGUSER": "postgres", "PGPASSWORD": "unused-trust-auth", "PGHOST": "127.0.0.1",
                "PGPORT": str(self.port), "PGDATABASE": "postgis"}

    def _run(self, *args: str) -> None:
        subprocess.run(args, check=True, capture_output=True, cwd=self.dir, **self._user)

    def start(self) -> "Postgres":
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "-E", "UTF8", "--locale=C", "--no-sync")
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [str(self.bindir / "postgres"), "-D", str(self.data), "-h", "127.0.0.1", "-p", str(self.port),
                 "-k", str(self.dir), "-c", "fsync=off", "-c", "synchronous_commit=off",
                 "-c", "full_page_writes=off"],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.dir, start_new_session=True, **self._user)
        isready = [str(self.bindir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)]
        _wait("postgres", lambda: subprocess.run(isready).returncode == 0, self.proc, self.log)
        self._run(str(self.bindir / "createdb") if (self.bindir / "createdb").exists() else "createdb",
                  "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "postgis")
        return self

    def stop(self) -> None:
        _stop(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


class PgStac:
    """pgstac in a :class:`Postgres`, loaded through pypgstac, served by stac-fastapi-pgstac."""

    def __init__(self, pg: Postgres, port: int | None = None):
        self.venv = check_stac_api()
        self.pg = pg
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="treemap-stacapi-"))
        self.log = self.dir / "uvicorn.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def pypgstac(self, *args: str) -> None:
        proc = subprocess.run([str(self.venv / "bin" / "pypgstac"), *args, "--dsn", self.pg.dsn],
                              capture_output=True, text=True, cwd=self.dir)
        if proc.returncode != 0:
            raise RuntimeError(f"pypgstac {' '.join(args)} failed:\n{proc.stderr[-3000:]}")

    def migrate(self) -> "PgStac":
        self.pypgstac("migrate")
        return self

    def load(self, collections: list[dict], items: list[dict]) -> None:
        """Load collections and items (method insert: an id already there is an error)."""
        if collections:
            path = self.dir / "collections.ndjson"
            path.write_text("".join(json.dumps(c) + "\n" for c in collections), encoding="utf-8")
            self.pypgstac("load", "collections", str(path), "--method", "insert")
        if items:
            path = self.dir / "items.ndjson"
            path.write_text("".join(json.dumps(i) + "\n" for i in items), encoding="utf-8")
            self.pypgstac("load", "items", str(path), "--method", "insert")

    def start(self) -> "PgStac":
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "VIRTUAL_ENV"))}
        env.update(self.pg.env())
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [str(self.venv / "bin" / "uvicorn"), "stac_fastapi.pgstac.app:create_app", "--factory",
                 "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning",
                 "--timeout-graceful-shutdown", "2"],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.dir, env=env, start_new_session=True)
        _wait("stac-fastapi-pgstac", lambda: _http_ok(self.url + "/"), self.proc, self.log)
        return self

    def stop(self) -> None:
        _stop(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


class Nginx:
    """nginx serving ``root`` read-only on 127.0.0.1 (static files, byte ranges, 404 for what is missing)."""

    def __init__(self, root: Path, port: int | None = None):
        self.exe = check_nginx()
        self.root = Path(root).resolve()
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="treemap-nginx-"))
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> str:
        d = self.dir
        # As root, nginx would switch its workers to `nobody`, who cannot read pytest's private temp folders.
        user = "user root root;\n" if os.geteuid() == 0 else ""
        temps = "\n".join(f"    {name}_temp_path {d}/{name};" for name in
                          ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        return f"""{user}daemon off;
master_process on;
worker_processes 2;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log {d}/access.log;
{temps}
    types {{ image/tiff tif tiff; application/json json; }}
    default_type application/octet-stream;
    sendfile on;
    keepalive_timeout 30;
    server {{
        listen 127.0.0.1:{self.port};
        root {self.root};
        location / {{ autoindex off; }}
    }}
}}
"""

    def start(self) -> "Nginx":
        conf = self.dir / "nginx.conf"
        conf.write_text(self.config(), encoding="utf-8")
        self.proc = subprocess.Popen(
            [self.exe, "-c", str(conf), "-p", str(self.dir), "-e", str(self.dir / "error.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        _wait("nginx", lambda: _port_open(self.port), self.proc, self.dir / "error.log")
        return self

    def requests_for(self, path_fragment: str) -> int:
        """How many requests the access log records for URLs containing ``path_fragment``."""
        log = self.dir / "access.log"
        return sum(path_fragment in line for line in log.read_text().splitlines()) if log.exists() else 0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # nginx: fast shutdown
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


# --- items for the server --------------------------------------------------------------------------------------------

def served_items(world_root: Path, base_url: str, collection: str = "sentinel-2-l2a") -> list[dict]:
    """The demo world's items with asset hrefs made absolute under ``base_url`` (nginx serving the world folder)."""
    items = []
    for path in sorted((Path(world_root) / "items").glob("*.json")):
        item = json.loads(path.read_text(encoding="utf-8"))
        for asset in item["assets"].values():
            href = asset["href"]
            if not href.startswith(("http://", "https://", "/")):
                rel = (path.parent / href).resolve().relative_to(Path(world_root).resolve())
                asset["href"] = f"{base_url}/{rel.as_posix()}"
        item["collection"] = collection
        item["links"] = []
        items.append(item)
    return items


def world_collection(world_root: Path, collection: str = "sentinel-2-l2a") -> dict:
    doc = json.loads((Path(world_root) / "sentinel-2-l2a" / "collection.json").read_text(encoding="utf-8"))
    doc["id"] = collection
    doc["links"] = []
    return doc


# --- manual use ------------------------------------------------------------------------------------------------------

def _start_cli(state_dir: Path) -> None:
    from treemap.demo import ensure_demo_world

    state_dir.mkdir(parents=True, exist_ok=True)
    state = state_dir / "services.json"
    if state.exists():
        sys.exit(f"services already started (see {state}); stop them first")
    world = ensure_demo_world()
    web = Nginx(world.root).start()
    pg = Postgres().start()
    api = PgStac(pg).migrate()
    api.load([world_collection(world.root)], served_items(world.root, web.url))
    api.start()
    state.write_text(json.dumps({
        "pids": [web.proc.pid, api.proc.pid, pg.proc.pid],
        "dirs": [str(web.dir), str(api.dir), str(pg.dir)],
        "stac_api": api.url, "files": web.url, "dsn": pg.dsn,
    }, indent=2))
    print(f"STAC API   {api.url}  (collection sentinel-2-l2a: the demo world)")
    print(f"files      {web.url}  (serving {world.root})")
    print(f"database   {pg.dsn}")
    print(f"try: treemap search --catalog {api.url} --aoi AOI --year {world.spec.year}")


def _stop_cli(state_dir: Path) -> None:
    state = state_dir / "services.json"
    if not state.exists():
        print(f"nothing to stop ({state} not found)")
        return
    doc = json.loads(state.read_text())
    for pid in doc["pids"]:
        try:
            os.kill(pid, signal.SIGINT if pid != doc["pids"][0] else signal.SIGTERM)
        except ProcessLookupError:
            pass
    for pid in doc["pids"]:
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
    for d in doc["dirs"]:
        shutil.rmtree(d, ignore_errors=True)
    state.unlink()
    print("stopped")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    if len(sys.argv) != 3 or sys.argv[1] not in ("start", "stop"):
        sys.exit("usage: services.py start|stop STATE_DIR")
    try:
        (_start_cli if sys.argv[1] == "start" else _stop_cli)(Path(sys.argv[2]))
    except ServicesMissing as exc:
        sys.exit(f"test-services: {exc}")
