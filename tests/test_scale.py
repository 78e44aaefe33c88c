"""Tiles on a dask cluster: a real LocalCluster (`--workers 2`) and a real scheduler + workers started as separate
processes (`--scheduler`), against the serial run in one process; resume, the output-folder lock and the errors.

Small jobs: a 61 x 61 px AOI in the west part of the small demo world (one MGRS-like tile), 32 px tiles (4 tiles),
few scenes (phenology: the clearest ones; predict: one summer).
"""

import json
import operator
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from datetime import date

import numpy as np
import pytest
import rasterio
from shapely.geometry import box

from treemap.errors import ClusterError, RunLockedError
from treemap.grid import to_crs
from treemap.run import PredictRequest, predict
from treemap.scale import CHECK_NAME, ClusterSpec, scheduler_address, tile_runner
from treemap.workdir import WORK_DIR, work_lock

PHENOLOGY = ("--year", "2022", "--tile-size", "32", "--max-cloud", "5")
PREDICT = ("--model", "demo", "--species", "demo", "--start", "2022-05-01", "--end", "2022-07-31", "--tile-size", "32")


def _treemap(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "treemap", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def _read(path):
    with rasterio.open(path) as ds:
        return ds.read()


def _stop(procs: list[subprocess.Popen]) -> None:
    """Stop processes started for a test, last first: politely, then for good after 30 s."""
    for proc in reversed(procs):
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def aoi(small_world, tmp_path_factory):
    spec = small_world.spec
    local = box(spec.x_min + 100, spec.y_max - 700, spec.x_min + 700, spec.y_max - 100)
    path = tmp_path_factory.mktemp("aoi") / "aoi.geojson"
    path.write_text(json.dumps({"type": "Feature", "properties": {},
                                "geometry": to_crs(local, 4326, src_epsg=spec.epsg).__geo_interface__}))
    return path


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory):
    """A dask scheduler and two one-thread worker processes, started with the dask CLIs on 127.0.0.1 (in their own
    working directory: tile tasks must not depend on the client's). Yields the scheduler file."""
    root = tmp_path_factory.mktemp("dask")
    scheduler_file = root / "scheduler.json"
    env = {**os.environ, "TREEMAP_CACHE": str(tmp_path_factory.getbasetemp() / "cache"),
           "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    logs = [open(root / name, "w") for name in ("scheduler.log", "workers.log")]
    procs = [subprocess.Popen([sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--no-dashboard", "--scheduler-file", str(scheduler_file)],
                              cwd=root, env=env, stdout=logs[0], stderr=subprocess.STDOUT)]
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists():
            assert time.monotonic() < deadline, "the dask scheduler did not start"
            time.sleep(0.2)
        procs.append(subprocess.Popen([sys.executable, "-m", "dask", "worker", "--scheduler-file",
                                       str(scheduler_file), "--nworkers", "2", "--nthreads", "1", "--no-dashboard",
                                       "--local-directory", str(root)],
                                      cwd=root, env=env, stdout=logs[1], stderr=subprocess.STDOUT))
        from distributed import Client

        with Client(scheduler_file=str(scheduler_file), timeout=30, set_as_default=False) as client:
            client.wait_for_workers(2, timeout=60)
        yield scheduler_file
    finally:
        _stop(procs)
        for log in logs:
            log.close()


@pytest.fixture(scope="module")
def serial_phenology(small_world, aoi, tmp_path_factory):
    out = tmp_path_factory.mktemp("serial") / "out"
    proc = _treemap("phenology", "--aoi", aoi, "--catalog", small_world.catalog, *PHENOLOGY, "--out", out,
                    "--workers", 1)
    assert proc.returncode == 0, proc.stderr
    assert "dask cluster" not in proc.stderr
    return _read(out / "phenology.tif")


@pytest.fixture(scope="module")
def cluster_phenology(small_world, aoi, tmp_path_factory):
    out = tmp_path_factory.mktemp("cluster") / "out"
    proc = _treemap("phenology", "--aoi", aoi, "--catalog", small_world.catalog, *PHENOLOGY, "--out", out,
                    "--workers", 2, "--keep-work")
    assert proc.returncode == 0, proc.stderr
    return proc, out


def test_phenology_on_a_local_cluster_equals_the_serial_run(cluster_phenology, serial_phenology):
    proc, out = cluster_phenology
    assert "local dask cluster: 2 worker processes" in proc.stderr
    assert proc.stderr.count(" done (") == 4  # progress per finished tile
    assert proc.stdout.split() == [str(out / "phenology.tif")]
    result = _read(out / "phenology.tif")
    assert (result != -32768).any()
    np.testing.assert_array_equal(result, serial_phenology)
    (work,) = (out / WORK_DIR).iterdir()  # the lock is gone, the kept work folder has whole tiles only
    assert sorted(p.name for p in work.iterdir()) == sorted(
        [f"{t}{ext}" for t in ("r000c000", "r000c001", "r001c000", "r001c001") for ext in (".done", ".tif")]
        + ["manifest.json", "treemap.log"])


def test_phenology_resumes_on_a_scheduler_after_a_crash(small_world, aoi, cluster_phenology, serial_phenology,
                                                        scheduler, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(cluster_phenology[1], out)
    (out / "phenology.tif").unlink()
    (work,) = (out / WORK_DIR).iterdir()
    tiles = sorted(p.stem for p in work.glob("*.done"))
    assert len(tiles) == 4
    # a crash: two tiles without their marker (one also without its raster), a temporary file left behind
    (work / f"{tiles[0]}.done").unlink()
    (work / f"{tiles[0]}.tif").unlink()
    (work / f"{tiles[2]}.done").unlink()
    (work / f".{tiles[2]}.tif.tmp-0badf00d").write_bytes(b"partial")
    kept = {t: (work / f"{t}.tif").stat().st_mtime_ns for t in (tiles[1], tiles[3])}
    proc = _treemap("phenology", "--aoi", aoi, "--catalog", small_world.catalog, *PHENOLOGY, "--out", out,
                    "--keep-work", "--scheduler", scheduler)
    assert proc.returncode == 0, proc.stderr
    assert "tiles run on the dask cluster" in proc.stderr
    assert proc.stderr.count("already done") == 2
    assert proc.stderr.count(" done (") == 2
    assert {t: (work / f"{t}.tif").stat().st_mtime_ns for t in kept} == kept  # not recomputed
    assert sorted(p.stem for p in work.glob("*.done")) == tiles
    np.testing.assert_array_equal(_read(out / "phenology.tif"), serial_phenology)


def test_predict_on_a_scheduler_matches_the_serial_run(small_world, aoi, scheduler, tmp_path):
    serial = predict(PredictRequest(aoi=aoi, out=tmp_path / "serial", catalog=str(small_world.catalog),
                                    model="demo", species="demo", start=date(2022, 5, 1), end=date(2022, 7, 31),
                                    tile_size=32, workers=1))
    assert serial.tiles == 4
    address = scheduler_address(str(scheduler))  # the tcp:// form this time
    proc = _treemap("predict", "--aoi", aoi, "--catalog", small_world.catalog, *PREDICT,
                    "--out", tmp_path / "cluster", "--scheduler", address)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count(" done (") == 4
    probs = _read(tmp_path / "cluster" / "species_probability.tif").astype(int)
    expected = _read(serial.products["species_probability"]).astype(int)
    assert (probs != 255).any()
    assert np.abs(probs - expected).max() <= 1  # probability DN (0.005): torch may sum in another order
    dominant = _read(tmp_path / "cluster" / "dominant_species.tif")
    assert (dominant == _read(serial.products["dominant_species"])).mean() > 0.999
    # the model was loaded once per worker process, not once per tile
    from distributed import Client

    def loads():
        from treemap.modelset import predictors as _predictors

        return _predictors.loads

    with Client(address, timeout=30, set_as_default=False) as client:
        per_worker = client.run(loads)
    assert len(per_worker) == 2 and 1 <= sum(per_worker.values()) <= 2 and max(per_worker.values()) == 1


def test_workers_must_see_the_work_folder(scheduler, tmp_path):
    folder = tmp_path / "work"
    folder.mkdir()
    with tile_runner(ClusterSpec(scheduler=str(scheduler)), 2, folder) as runner:
        assert not runner.in_process
        assert sorted(runner.map(operator.add, ["a", "b"], "!")) == [("a", "a!"), ("b", "b!")]
        (folder / CHECK_NAME).write_text("another folder of the same name")  # what a worker on another disk sees
        with pytest.raises(ClusterError, match=re.escape(f"cannot see the work folder {folder}")):
            list(runner.map(operator.add, ["a", "b"], "!"))
    assert not (folder / CHECK_NAME).exists()


def test_unreachable_scheduler_is_one_line_before_the_search(aoi, tmp_path):
    """Checked before the catalog is searched (the catalog here does not even exist) and long before the timeout:
    a refused connection is not worth waiting for."""
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "out"
    started = time.monotonic()
    proc = _treemap("-q", "phenology", "--aoi", aoi, "--catalog", tmp_path / "no-catalog.json", *PHENOLOGY,
                    "--out", out, "--scheduler", f"tcp://127.0.0.1:{port}", env={"TREEMAP_SCHEDULER_TIMEOUT": "30"})
    assert time.monotonic() - started < 25
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"treemap: error: cannot reach the dask scheduler tcp://127.0.0.1:{port} (connection refused; is the "
        f"scheduler running on that port?)"]
    assert not out.exists() or not any(out.iterdir())


def test_something_that_is_not_a_scheduler_is_one_line(aoi, tmp_path):
    """A port where a web server answers (a wrong port, or a proxy) is named as such, within the timeout."""
    import http.server
    import threading

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        address = f"tcp://127.0.0.1:{httpd.server_address[1]}"
        proc = _treemap("predict", "--aoi", aoi, "--catalog", "demo", "--out", tmp_path / "out", "--scheduler",
                        address, env={"TREEMAP_SCHEDULER_TIMEOUT": "3"}, timeout=60)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"treemap: error: cannot reach the dask scheduler {address} (")
    assert "Traceback" not in proc.stderr


def test_a_run_survives_a_worker_that_dies(small_world, aoi, serial_phenology, tmp_path):
    """Two workers (no nanny, so nothing restarts the dead one); one is killed (SIGKILL) once the first tile is
    done, while the others are in flight. The scheduler hands its work to the survivor and the products are the
    serial run's."""
    root = tmp_path / "dask"
    root.mkdir()
    scheduler_file = root / "scheduler.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    log = open(root / "dask.log", "w")
    procs = [subprocess.Popen([sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--no-dashboard", "--scheduler-file", str(scheduler_file)],
                              cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)]
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists():
            assert time.monotonic() < deadline, "the dask scheduler did not start"
            time.sleep(0.2)
        workers = [subprocess.Popen([sys.executable, "-m", "dask", "worker", "--scheduler-file",
                                     str(scheduler_file), "--no-nanny", "--nthreads", "1", "--no-dashboard",
                                     "--local-directory", str(root / f"w{k}")],
                                    cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT) for k in range(2)]
        procs += workers
        from distributed import Client

        with Client(scheduler_file=str(scheduler_file), timeout=30, set_as_default=False) as client:
            client.wait_for_workers(2, timeout=60)
        out = tmp_path / "out"
        run = subprocess.Popen([sys.executable, "-m", "treemap", "phenology", "--aoi", str(aoi), "--catalog",
                                str(small_world.catalog), *PHENOLOGY, "--out", str(out), "--keep-work",
                                "--scheduler", str(scheduler_file)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        while not list((out / WORK_DIR).glob("*/*.done")):
            assert run.poll() is None, run.communicate()
            assert time.monotonic() < deadline, "no tile finished"
            time.sleep(0.05)
        workers[0].kill()
        workers[0].wait()
        stdout, stderr = run.communicate(timeout=300)
    finally:
        _stop(procs)
        log.close()
    assert run.returncode == 0, stderr
    assert stdout.split() == [str(out / "phenology.tif")]
    (work,) = [p for p in (out / WORK_DIR).iterdir() if p.is_dir()]
    assert len(list(work.glob("*.done"))) == 4
    np.testing.assert_array_equal(_read(out / "phenology.tif"), serial_phenology)


def test_a_second_run_on_the_same_output_is_refused(small_world, aoi, tmp_path):
    with work_lock(tmp_path) as lock:
        holder = json.loads(lock.read_text())
        assert holder["pid"] == os.getpid()
        proc = _treemap("-q", "phenology", "--aoi", aoi, "--catalog", small_world.catalog, *PHENOLOGY,
                        "--out", tmp_path)
        with pytest.raises(RunLockedError, match="another treemap run is writing to"):
            with work_lock(tmp_path):
                pass
    assert proc.returncode == 75
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"treemap: error: another treemap run is writing to {tmp_path} (pid {os.getpid()} ")
    assert not (tmp_path / "phenology.tif").exists()
    assert not lock.exists()
    with work_lock(tmp_path):  # free again
        pass


def test_cluster_spec():
    spec = ClusterSpec()
    assert not spec.remote and ClusterSpec(scheduler="local").local_workers() == spec.local_workers()
    assert spec.local_workers() == max(1, os.cpu_count() or 1)
    assert ClusterSpec(threads_per_worker=64).local_workers() == 1
    assert spec.local_workers(gpus=3) == 3 and ClusterSpec(workers=2).local_workers(gpus=3) == 2
    assert ClusterSpec(scheduler="tcp://h:1", connect_timeout=2).timeout() == 2
    with pytest.raises(ClusterError, match="--workers sizes the local cluster"):
        ClusterSpec(scheduler="tcp://127.0.0.1:8786", workers=2)
    with pytest.raises(ClusterError, match="at least 1"):
        ClusterSpec(workers=0)
    for bad in ("nonsense", "tcp://host-without-port", "foo://1.2.3.4:5"):
        with pytest.raises(ClusterError, match="invalid dask scheduler address"):
            scheduler_address(bad)
    with pytest.raises(ClusterError, match="dask scheduler file not found"):
        scheduler_address("/nonexistent/scheduler.json")


@pytest.mark.parametrize("spec, tasks", [(ClusterSpec(), 1), (ClusterSpec(workers=1), 5), (ClusterSpec(), 0)])
def test_one_tile_or_one_worker_runs_in_process(spec, tasks, tmp_path):
    with tile_runner(spec, tasks, tmp_path) as runner:
        assert runner.in_process
        assert list(runner.map(operator.add, ["a", "b"], "!")) == [("a", "a!"), ("b", "b!")]
    assert not list(tmp_path.iterdir())


def test_a_tile_the_cluster_drops_is_submitted_again(scheduler, tmp_path, monkeypatch, caplog):
    """A task the cluster cancels (as when a dead worker held its inputs) is not the tile's failure: the tile is
    submitted again and the run goes on."""
    import logging
    import uuid

    from distributed import Future

    import treemap.scale as scale

    caplog.set_level(logging.WARNING, logger="treemap.scale")
    folder = tmp_path / "work"
    folder.mkdir()
    tiles = ["a", "b", "c"]
    with tile_runner(ClusterSpec(scheduler=str(scheduler)), 2, folder) as runner:
        monkeypatch.setattr(scale.uuid, "uuid4", lambda: uuid.UUID(int=0))  # the run's keys: treemap-<i>-00000000
        results = runner.map(operator.add, tiles, "!")
        first = next(results)
        dropped = next(t for t in tiles if t != first[0])
        client = runner._client
        client.cancel([Future(f"treemap-{tiles.index(dropped)}-00000000", client)])
        rest = list(results)
    assert sorted([first, *rest]) == [(t, t + "!") for t in tiles]
    assert f"tile {dropped} was dropped by the dask cluster" in caplog.text
