"""Where a run's tiles are computed: in this process, on a local dask cluster, or on an existing one.

:func:`tile_runner` is a context manager that yields a :class:`TileRunner`; its :meth:`~TileRunner.map` calls a
tile function on every tile and yields ``(tile, result)`` pairs as the tiles finish.

* No scheduler (or ``"local"``), the default. A job with a single tile to compute, or ``workers == 1``, runs in this
  process with no cluster at all. Otherwise a :class:`distributed.LocalCluster` of worker processes starts for the
  job (never more workers than tiles) and is shut down at the end, also on errors and Ctrl-C. The default worker
  count is one per ``threads_per_worker`` CPU cores (one thread each by default); for CUDA predictions it is one
  per visible GPU, and each local worker then uses the GPU of its index. OpenMP, BLAS and numba in a worker use
  ``threads_per_worker`` threads, so workers do not oversubscribe the cores.
* A scheduler address (``tcp://host:8786``, any address :class:`distributed.Client` accepts) or a scheduler file
  (``*.json``): connect to an existing cluster within ``connect_timeout`` seconds (default
  ``$TREEMAP_SCHEDULER_TIMEOUT`` or 10) and use its workers; it is never shut down. Its workers must see the run's
  output folder at the same path (a shared filesystem) and the catalog's files or URLs, and run the same treemap.
  Every tile task checks the first: it reads a token the client wrote into the work folder, and fails with one line
  naming the folder when the worker cannot.

Tile functions take ``(tile, job)``: ``job`` is one picklable object shared by all tiles of the run (sent to the
cluster once); the paths in it must be absolute, as workers have their own working directory. Tile functions write
their own results (whole tiles, under temporary names) and return small values: results travel back to the client.
"""

from __future__ import annotations

import logging
import os
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from treemap import __version__
from treemap.errors import ClusterError

log = logging.getLogger("treemap.scale")

#: Seconds to reach a scheduler (and to wait for its first worker) when the spec does not say.
TIMEOUT_ENV = "TREEMAP_SCHEDULER_TIMEOUT"
DEFAULT_TIMEOUT = 10.0
#: The file in the work folder whose token each task reads to prove the worker sees the client's folder.
CHECK_NAME = ".treemap-shared-check"


@dataclass(frozen=True)
class ClusterSpec:
    """Where tiles run: ``scheduler`` None or "local" for this machine, else an existing scheduler's address or
    scheduler file; ``workers`` and ``threads_per_worker`` size the local cluster."""

    scheduler: str | None = None
    workers: int | None = None
    threads_per_worker: int | None = None
    connect_timeout: float | None = None

    def __post_init__(self):
        if self.workers is not None and self.workers < 1:
            raise ClusterError(f"--workers must be at least 1, not {self.workers}")
        if self.threads_per_worker is not None and self.threads_per_worker < 1:
            raise ClusterError(f"threads per worker must be at least 1, not {self.threads_per_worker}")
        if self.remote and self.workers is not None:
            raise ClusterError("--workers sizes the local cluster; with --scheduler the cluster's own workers run "
                               "the tiles")

    def check(self) -> "ClusterSpec":
        """Check a scheduler's address (or read its scheduler file) and that something listens there, within
        :meth:`timeout`: called before a run searches or loads a model, so that a malformed address or a scheduler
        that is not running is one line at once."""
        if self.remote:
            probe_scheduler(scheduler_address(self.scheduler), self.timeout(), self.scheduler)
        return self

    @property
    def remote(self) -> bool:
        return self.scheduler not in (None, "", "local")

    @property
    def threads(self) -> int:
        return self.threads_per_worker or 1

    def local_workers(self, gpus: int = 0) -> int:
        """Worker processes of a local cluster: ``workers``, else one per GPU when ``gpus``, else one per
        ``threads`` CPU cores (at least 1)."""
        if self.workers is not None:
            return self.workers
        if gpus > 0:
            return gpus
        return max(1, (os.cpu_count() or 1) // self.threads)

    def timeout(self) -> float:
        if self.connect_timeout is not None:
            return self.connect_timeout
        raw = os.environ.get(TIMEOUT_ENV, "").strip()
        try:
            return max(float(raw), 0.1) if raw else DEFAULT_TIMEOUT
        except ValueError:
            log.warning("ignoring %s=%r: not a number", TIMEOUT_ENV, raw)
            return DEFAULT_TIMEOUT


#: How often a tile the cluster dropped (not failed) is submitted again before the run gives up.
RESUBMITS = 2


class TileRunner:
    """Runs a tile function over tiles, in this process (``client`` None) or on a dask cluster."""

    def __init__(self, workers: int, client=None, folder: Path | None = None, token: str | None = None):
        self.workers = workers
        self._client = client
        self._folder = folder
        self._token = token

    @property
    def in_process(self) -> bool:
        return self._client is None

    def map(self, fn: Callable[[Any, Any], Any], tiles: Iterable, job: Any) -> Iterator[tuple[Any, Any]]:
        """``(tile, fn(tile, job))`` for every tile, in the order the tiles finish (in order in-process). A task's
        error is raised here; the tasks not yet finished are then cancelled."""
        tiles = list(tiles)
        if self._client is None:
            for tile in tiles:
                yield tile, fn(tile, job)
            return
        from concurrent.futures import CancelledError

        from distributed import KilledWorker, as_completed

        client = self._client
        # The job goes to every worker: scattered to one, it died with that worker (its tasks then failed as
        # "cancelled ... already forgotten" instead of being run again elsewhere).
        shared = client.scatter(job, hash=False, broadcast=True)
        run = uuid.uuid4().hex[:8]
        keys = [f"treemap-{getattr(tile, 'id', i)}-{run}" for i, tile in enumerate(tiles)]
        options = dict(pure=False, fn=fn, folder=str(self._folder), token=self._token, version=__version__)
        futures = client.map(_checked_call, tiles, key=keys, job=shared, **options)
        by_key = dict(zip(keys, tiles))
        retried: dict[str, int] = {}
        pending = as_completed(futures, loop=client.loop)
        try:
            for future in pending:
                tile = by_key[future.key]
                name = getattr(tile, "id", tile)
                try:
                    result = future.result()
                except KilledWorker:
                    raise ClusterError(f"tile {name} ended its dask worker process again and again (out of "
                                       f"memory?); try fewer --workers or a smaller --tile-size") from None
                except CancelledError as exc:  # the cluster dropped the task (a worker lost with its inputs)
                    tries = retried.get(str(name), 0) + 1
                    if tries > RESUBMITS:
                        raise ClusterError(f"tile {name} was dropped by the dask cluster {tries} times ({exc}); "
                                           f"are its workers stable?") from None
                    retried[str(name)] = tries
                    log.warning("tile %s was dropped by the dask cluster (%s); submitting it again", name, exc)
                    shared = client.scatter(job, hash=False, broadcast=True)
                    key = f"{future.key}-again{tries}"
                    again = client.submit(_checked_call, tile, key=key, job=shared, **options)
                    by_key[key] = tile
                    futures += [again, shared]
                    pending.add(again)
                    continue
                yield tile, result
        finally:
            client.cancel(futures + [shared])


def _checked_call(tile, fn, job, folder: str, token: str, version: str):
    """Runs on a worker: check the worker runs the client's treemap and sees its work folder, then do the tile."""
    import socket

    if version != __version__:
        raise ClusterError(f"the dask worker on {socket.gethostname()} runs treemap {__version__}, this client "
                           f"{version}: install the same version on the workers")
    check = Path(folder) / CHECK_NAME
    try:
        seen = check.read_text(encoding="utf-8")
    except OSError:
        seen = None
    if seen != token:
        raise ClusterError(f"the dask worker on {socket.gethostname()} cannot see the work folder {folder} "
                           f"(or sees another one): workers need the output folder on a shared filesystem at the "
                           f"same path")
    return fn(tile, job)


def worker_index() -> int | None:
    """The index of the local-cluster worker this runs on (its integer name), or None outside one."""
    try:
        from distributed import get_worker

        name = get_worker().name
    except (ImportError, ValueError):
        return None
    return name if isinstance(name, int) else None


def _worker_environ(threads: int) -> dict[str, str | None]:
    """Environment of local workers, set before they start: as many OpenMP/BLAS/numba threads as the worker has
    task threads, and glibc's default malloc trimming (distributed's aggressive MALLOC_TRIM_THRESHOLD_ costs a tile's
    many short-lived read buffers a lot of system time)."""
    n = str(threads)
    return {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n, "NUMBA_NUM_THREADS": n,
            "MALLOC_TRIM_THRESHOLD_": None}


def _start_local(workers: int, threads: int):
    import dask
    from distributed import Client, LocalCluster

    # memory_limit=0: a tile needs what it needs; a per-worker cap would pause or restart workers mid-tile.
    # silence_logs: a task's error comes back to the client, which reports it; the workers need not log it too.
    # The nannies run in this process and write the workers' environment into os.environ before spawning them;
    # it is put back afterwards so this process keeps its own thread settings.
    saved = dict(os.environ)
    with dask.config.set({"distributed.nanny.pre-spawn-environ": _worker_environ(threads),
                          "distributed.worker.profile.enabled": False}):
        try:
            cluster = LocalCluster(n_workers=workers, threads_per_worker=threads, processes=True, host="127.0.0.1",
                                   dashboard_address=None, memory_limit=0, silence_logs=logging.CRITICAL)
        finally:
            for key in set(os.environ) - set(saved):
                del os.environ[key]
            os.environ.update(saved)
    try:
        client = Client(cluster, set_as_default=False)
    except BaseException:
        cluster.close()
        raise
    return cluster, client


def scheduler_address(scheduler: str) -> str:
    """The address of a scheduler given as an address or a scheduler file; a :class:`ClusterError` for one that
    is malformed (checked before any connection, so a bad address is one clear line)."""
    from distributed.comm.addressing import parse_address, parse_host_port
    from distributed.comm.registry import get_backend

    address = scheduler
    if scheduler.endswith(".json"):
        from treemap.documents import read_json

        doc = read_json(scheduler, what="dask scheduler file", error=ClusterError, expect=dict)
        address = doc.get("address")
        if not isinstance(address, str):
            raise ClusterError(f"{scheduler} is not a dask scheduler file (no scheduler address in it)")
    try:
        scheme, location = parse_address(str(address))
        get_backend(scheme)
        if scheme in ("tcp", "tls", "ws", "wss"):
            parse_host_port(location)
    except (ValueError, ImportError) as exc:
        raise ClusterError(f"invalid dask scheduler address {address!r} ({str(exc).splitlines()[0]}); give one "
                           f"like tcp://host:8786 or a scheduler file") from None
    return str(address)


def probe_scheduler(address: str, timeout: float, given: str | None = None) -> None:
    """Open a dask connection to a ``tcp://`` scheduler (handshake included) and close it; a
    :class:`ClusterError` within about ``timeout`` seconds when nothing answers, the connection is refused, or what
    answers is not a dask scheduler (other transports are left to the client)."""
    import asyncio

    from distributed.comm import connect
    from distributed.comm.addressing import parse_address, parse_host_port

    scheme, location = parse_address(address)
    if scheme != "tcp":
        return
    reason = _tcp_fault(*parse_host_port(location), timeout)  # dask would retry a refusal until the timeout
    if reason is not None:
        raise ClusterError(f"cannot reach the dask scheduler {given or address} ({reason})")

    async def handshake() -> None:
        comm = await asyncio.wait_for(connect(address, timeout=timeout), timeout + 1)
        await comm.close()

    try:
        asyncio.run(handshake())
        return
    except (asyncio.TimeoutError, TimeoutError):
        reason = f"no answer within {timeout:g} s; is it running and is the address right?"
    except ConnectionRefusedError:
        reason = "connection refused; is the scheduler running on that port?"
    except OSError as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "timed out" in text.lower():
            text = f"no answer within {timeout:g} s; is it running and is the address right?"
        elif "refused" in text.lower():
            text = "connection refused; is the scheduler running on that port?"
        reason = text
    except Exception:  # noqa: BLE001 - bytes that are not dask's protocol make dask fail in many ways
        reason = "something answers there, but not a dask scheduler; is the port right?"
    raise ClusterError(f"cannot reach the dask scheduler {given or address} ({reason})")


def _tcp_fault(host: str, port: int, timeout: float) -> str | None:
    """Why a TCP connection to host:port fails, or None when it opens."""
    import socket

    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except socket.timeout:
        return f"no answer within {timeout:g} s; is it running and is the address right?"
    except socket.gaierror as exc:
        return f"unknown host {host!r}: {exc.strerror or exc}"
    except ConnectionRefusedError:
        return "connection refused; is the scheduler running on that port?"
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__


def _connect(spec: ClusterSpec):
    from distributed import Client

    address = scheduler_address(spec.scheduler)
    timeout = spec.timeout()
    try:
        client = Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError, ValueError, MemoryError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, (OSError, TimeoutError)) and "timed out" in reason.lower():
            reason = f"no answer within {timeout:g} s; is it running and is the address right?"
        raise ClusterError(f"cannot reach the dask scheduler {spec.scheduler} ({reason})") from None
    try:
        client.wait_for_workers(1, timeout=timeout)
    except (TimeoutError, OSError):
        client.close()
        raise ClusterError(f"the dask scheduler {address} has no workers (waited {timeout:g} s)") from None
    except BaseException:
        client.close()
        raise
    return client


@contextmanager
def tile_runner(spec: ClusterSpec, tasks: int, folder: Path, gpus: int = 0) -> Iterator[TileRunner]:
    """A :class:`TileRunner` for ``tasks`` tiles whose results go to the work folder ``folder`` (see the module
    doc). ``gpus``: visible GPUs the tiles will use (sizes the default local cluster)."""
    cluster = None
    if spec.remote:
        client = _connect(spec)
        workers = len(client.nthreads())
        log.info("tiles run on the dask cluster at %s (%d worker(s) now)", spec.scheduler, workers)
    else:
        workers = min(spec.local_workers(gpus), tasks)
        if workers <= 1:
            yield TileRunner(1)
            return
        cluster, client = _start_local(workers, spec.threads)
        log.info("tiles run on a local dask cluster: %d worker processes x %d thread(s)", workers, spec.threads)
    folder = Path(folder).absolute()  # workers do not share this process's working directory
    check = folder / CHECK_NAME
    try:
        token = uuid.uuid4().hex
        check.write_text(token, encoding="utf-8")
        yield TileRunner(workers, client, folder, token)
    finally:
        check.unlink(missing_ok=True)
        client.close()
        if cluster is not None:
            cluster.close()

