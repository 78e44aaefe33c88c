"""Typed errors. Each one carries a single line a user can act on; the CLI prints it and exits non-zero."""

from __future__ import annotations


class TreemapError(Exception):
    """Base class: an error caused by input or environment, not by a bug in treemap."""

    exit_code = 2


class AOIError(TreemapError):
    """The area of interest is missing, unreadable or not a polygon."""


class CatalogError(TreemapError):
    """A catalog cannot be found, reached or understood."""


class NoScenesError(TreemapError):
    """A search matched no scenes."""


class DateRangeError(TreemapError):
    """Start and end dates are invalid."""


class OutputError(TreemapError):
    """An output folder or file cannot be written."""


class ModelError(TreemapError):
    """A model checkpoint or species list cannot be used."""


class SpeciesListError(ModelError):
    """A species list is missing columns or empty."""


class ClusterError(TreemapError):
    """A dask scheduler cannot be reached, or its workers cannot do the job (for example they do not see the
    output folder)."""


class RunLockedError(TreemapError):
    """Another treemap run holds the lock on the output folder. Exit code 75 (EX_TEMPFAIL: try again later), so a
    cron wrapper can tell "still running" from a failure."""

    exit_code = 75
