"""What a run shows while it works: a live bar on a terminal (a real pseudo-terminal here), one line per tile
elsewhere, nothing but the product paths with -q; the log file beside the products has the per-tile lines always."""

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time

import pytest

PRODUCTS = ("species_probability.tif", "dominant_species.tif", "genus_probability.tif", "family_probability.tif",
            "leaf_type_probability.tif", "uncertainty.tif", "tree_mask.tif")


@pytest.fixture(scope="module")
def args(small_world, corner_aoi):
    return ["predict", "--aoi", str(corner_aoi), "--catalog", str(small_world.catalog), "--model", "demo",
            "--species", "demo", "--start", "2022-05-01", "--end", "2022-07-31", "--tile-size", "32",
            "--workers", "1"]


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "TREEMAP_PROGRESS"}
    return {**env, "COLUMNS": "120", **extra}


def _on_a_terminal(cmd: list[str], timeout: float = 600) -> tuple[int, str, str]:
    """Run ``cmd`` with stderr on a pseudo-terminal and stdout on a pipe; (exit code, stdout, terminal text)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))  # 30 rows x 120 columns
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL, env=_env())
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1.0)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(master)
    stdout = proc.stdout.read().decode()
    proc.stdout.close()
    return proc.wait(timeout=60), stdout, b"".join(chunks).decode(errors="replace")


def _products(out) -> list[str]:
    return sorted(str(out / name) for name in PRODUCTS)


def test_a_terminal_gets_a_live_bar(args, tmp_path):
    out = tmp_path / "out"
    code, stdout, terminal = _on_a_terminal([sys.executable, "-m", "treemap", *args, "--out", str(out)])
    assert code == 0, terminal
    assert sorted(stdout.split()) == _products(out)
    assert "\rtiles: " in terminal  # redrawn in place (a bare \n arrives as \r\n from a terminal)
    assert "tiles: 4/4" in terminal and "km²/h" in terminal and "scene reads" in terminal
    assert " done (" not in terminal  # the bar shows the tiles; no line per tile on the console
    assert "INFO treemap.tiles: grid EPSG" in terminal  # other messages still print, above the bar
    log = (out / "treemap.log").read_text()
    assert log.count(" done (") == 4 and "km²/h" in log


def test_a_pipe_gets_one_line_per_tile(args, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "treemap", *args, "--out", str(out)], capture_output=True,
                          text=True, timeout=600, env=_env())
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if " done (" in line]
    assert len(lines) == 4
    assert lines[-1].split(" done (")[1].startswith("4/4; ") and "km²/h" in lines[-1]
    assert "left)" in lines[0]  # an estimate of the time left while tiles remain
    assert sorted(proc.stdout.split()) == _products(out)


def test_quiet_prints_only_the_product_paths(args, tmp_path):
    out = tmp_path / "out"
    code, stdout, terminal = _on_a_terminal([sys.executable, "-m", "treemap", "-q", *args, "--out", str(out)])
    assert code == 0, terminal
    assert terminal.strip() == ""  # not even a bar on a terminal
    assert stdout.splitlines() and sorted(stdout.splitlines()) == _products(out)
    assert (out / "treemap.log").read_text().count(" done (") == 4  # the log file keeps everything
