"""What a run shows while it works.

On a terminal (stderr is a TTY and the console shows INFO, i.e. no ``-q``) a live bar: tiles done of total, scenes
read, km² mapped per hour and the time left. Anywhere else (cron, systemd, a pipe, a file) no bar: one log line per
finished tile carries the same figures, so a log read afterwards tells the same story. The log file of the run
(``treemap.log``) always gets the per-tile lines.

``TREEMAP_PROGRESS=0`` turns the bar off and ``TREEMAP_PROGRESS=1`` forces it on (for terminals that do not say they
are one).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from contextlib import contextmanager
from typing import Iterator

from treemap.grid import Tile

log = logging.getLogger("treemap.tiles")
#: The per-tile lines: on the console only when there is no bar; always in the log file.
tile_log = logging.getLogger("treemap.tiles.progress")
ENV = "TREEMAP_PROGRESS"


def _console_handlers() -> list[logging.Handler]:
    return [h for h in logging.getLogger("treemap").handlers
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]


def bar_wanted(stream=None) -> bool:
    """Whether a live bar suits this run: forced by ``TREEMAP_PROGRESS``, else a TTY on stderr whose console shows
    INFO messages (``-q`` raises the console level and so turns the bar off)."""
    forced = os.environ.get(ENV, "").strip().lower()
    if forced in ("0", "no", "off", "false"):
        return False
    consoles = _console_handlers()
    shows_info = any(h.level <= logging.INFO for h in consoles) and logging.getLogger("treemap").isEnabledFor(
        logging.INFO) if consoles else False
    if forced in ("1", "yes", "on", "true"):
        return shows_info
    stream = stream or sys.stderr
    try:
        return shows_info and stream.isatty()
    except (AttributeError, ValueError):
        return False


class _NotOnConsole(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith(tile_log.name)


class RunProgress:
    """Counts finished tiles and reports them: to the bar when there is one, as a log line per tile always (the
    console drops those lines while the bar shows them)."""

    def __init__(self, tiles: list[Tile], total_scenes: int, bar=None):
        self.total = len(tiles)
        self.done = 0
        self.failed = 0
        self.scenes = 0
        self.km2 = 0.0
        self.started = time.monotonic()
        self.total_scenes = total_scenes
        self.bar = bar

    def rate_km2_per_hour(self) -> float:
        hours = (time.monotonic() - self.started) / 3600
        return self.km2 / hours if hours > 0 else 0.0

    def eta_seconds(self) -> float | None:
        finished = self.done + self.failed
        if not finished or finished >= self.total:
            return None
        elapsed = time.monotonic() - self.started
        return elapsed / finished * (self.total - finished)

    def tile_finished(self, tile: Tile, record: dict | None) -> None:
        failed = record is not None and "failed" in record
        if failed:
            self.failed += 1
        else:
            self.done += 1
            self.km2 += tile.width * tile.height * tile.resolution ** 2 / 1e6
            self.scenes += int((record or {}).get("scenes", 0))
        k = self.done + self.failed
        eta = self.eta_seconds()
        tile_log.info("tile %s %s (%d/%d; %s scene reads, %.2f km² so far, %.1f km²/h%s)", tile.id,
                      "failed" if failed else "done", k, self.total, self.scenes, self.km2,
                      self.rate_km2_per_hour(), f", about {_clock(eta)} left" if eta is not None else "")
        if self.bar is not None:
            self.bar.set_postfix_str(f"{self.scenes} scene reads, {self.rate_km2_per_hour():.1f} km²/h"
                                     + (f", {self.failed} failed" if self.failed else ""), refresh=False)
            self.bar.update(1)


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


@contextmanager
def run_progress(tiles: list[Tile], total_scenes: int, what: str = "tiles") -> Iterator[RunProgress]:
    """A :class:`RunProgress` for a run over ``tiles``, with a live bar on a terminal (see the module doc)."""
    if not tiles or not bar_wanted():
        yield RunProgress(tiles, total_scenes)
        return
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    consoles = _console_handlers()
    quiet = _NotOnConsole()
    try:
        width = os.get_terminal_size(sys.stderr.fileno()).columns
    except (OSError, ValueError, AttributeError):
        width = 0
    sizing = {"dynamic_ncols": True} if width > 0 else {"ncols": 100}  # a terminal that reports no size
    with tqdm(total=len(tiles), desc=what, unit="tile", file=sys.stderr, smoothing=0.1, **sizing,
              bar_format="{desc}: {n_fmt}/{total_fmt} |{bar}| {elapsed}<{remaining}{postfix}") as bar, \
            logging_redirect_tqdm(loggers=[logging.getLogger("treemap")]):
        # messages keep flowing above the bar; the per-tile lines are the bar's job on the console
        redirected = _console_handlers()
        for handler in redirected:
            handler.addFilter(quiet)
            if consoles:
                handler.setFormatter(consoles[0].formatter)
                handler.setLevel(consoles[0].level)
        try:
            yield RunProgress(tiles, total_scenes, bar)
        finally:
            for handler in redirected:
                handler.removeFilter(quiet)
