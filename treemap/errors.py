"""Typed errors. Each one carries a single line a user can act on; the CLI prints it and exits non-zero.

Every error is also the built-in exception that says what went wrong, so code that knows nothing of treemap can
still handle it: ``ValueError`` for invalid content (an AOI that is not a polygon, a recipe field out of range),
``FileNotFoundError`` for a missing input file (the ``...NotFoundError`` classes, which are also their domain's
error: ``except AOIError`` catches a missing AOI file too), ``OSError`` for outputs that cannot be written,
``ConnectionError`` for a catalog or cluster that cannot be reached, ``LookupError`` for a search without results.
``str(error)`` is the one-line message and ``error.exit_code`` the process exit status (2 unless said otherwise).
"""

from __future__ import annotations


class TreemapError(Exception):
    """Base class: an error caused by input or environment, not by a bug in treemap."""

    exit_code = 2


# -- inputs -----------------------------------------------------------------------------------------------------------
class AOIError(TreemapError, ValueError):
    """The area of interest is unreadable or not a valid polygon in longitude/latitude."""


class AOINotFoundError(AOIError, FileNotFoundError):
    """The AOI file does not exist."""


class CatalogError(TreemapError, ValueError):
    """A catalog cannot be found or understood (an unknown name, a file that is not STAC)."""


class CatalogNotFoundError(CatalogError, FileNotFoundError):
    """A local catalog or item file does not exist."""


class CatalogUnreachableError(CatalogError, ConnectionError):
    """A STAC API cannot be reached or answers with an HTTP error."""


class ItemError(CatalogError):
    """An item that is not a usable Sentinel-2 L2A scene (missing bands, no CRS, ...)."""


class NoScenesError(TreemapError, LookupError):
    """A search matched no scenes."""


class DateRangeError(TreemapError, ValueError):
    """Start and end dates are invalid."""


class ModelError(TreemapError, ValueError):
    """A model checkpoint, head, statistics file or species list cannot be used."""


class ModelNotFoundError(ModelError, FileNotFoundError):
    """A model, head or statistics file does not exist."""


class SpeciesListError(ModelError):
    """A species list is unreadable, missing columns or empty."""


class SpeciesListNotFoundError(SpeciesListError, FileNotFoundError):
    """The species list file does not exist."""


class PointsError(TreemapError, ValueError):
    """A points file cannot be used: unreadable, or lacking required columns."""


class PointsNotFoundError(PointsError, FileNotFoundError):
    """The points file does not exist."""


class RecipeError(TreemapError, ValueError):
    """A recipe (option defaults, extraction or training settings) is unreadable or invalid; the message names
    the field."""


class RecipeNotFoundError(RecipeError, FileNotFoundError):
    """The recipe file does not exist."""


class MaskError(TreemapError, ValueError):
    """A --mask or --mask-classes that cannot be used: an unreadable land-cover raster, one without a CRS, a class
    list that is not integers."""


class MaskNotFoundError(MaskError, FileNotFoundError):
    pass


class AuxError(TreemapError, ValueError):
    """An auxiliary layer set that cannot be used: an unknown variable, a layer GDAL cannot open, one without a CRS
    or the band asked for, a layer that covers none of the area."""


class AuxNotFoundError(AuxError, FileNotFoundError):
    pass


class ExtractError(TreemapError, ValueError):
    """An extraction cannot run: invalid options, or an output folder that belongs to another extraction."""


class ShardError(TreemapError, ValueError):
    """A shard or one of its samples cannot be read or written."""


class SecoDataError(TreemapError, ValueError):
    """Seasonal composites or patches that SeCo-Eco pretraining cannot use."""


class ProjectionError(TreemapError, ValueError):
    """A PCA projection file (``treemap embed --pca-from``) that cannot be used: damaged, of another format, or
    fitted on another model's embeddings; or a ``--pca`` that cannot be fitted."""


class ProjectionNotFoundError(ProjectionError, FileNotFoundError):
    pass


#: The FileNotFoundError flavour of each input error (see :func:`missing_file_error`).
_NOT_FOUND: dict[type, type] = {
    AOIError: AOINotFoundError, CatalogError: CatalogNotFoundError, ModelError: ModelNotFoundError,
    SpeciesListError: SpeciesListNotFoundError, PointsError: PointsNotFoundError, RecipeError: RecipeNotFoundError,
    MaskError: MaskNotFoundError, AuxError: AuxNotFoundError, ProjectionError: ProjectionNotFoundError,
}


def missing_file_error(error: type[TreemapError]) -> type[TreemapError]:
    """The class to raise when the input file of ``error`` does not exist: the subclass of ``error`` that is also a
    ``FileNotFoundError``, or ``error`` itself when it has none."""
    return _NOT_FOUND.get(error, error)


# -- outputs and the environment --------------------------------------------------------------------------------------
class OutputError(TreemapError, OSError):
    """An output folder or file cannot be written."""


class ClusterError(TreemapError, ConnectionError):
    """A dask scheduler cannot be reached, or its workers cannot do the job (for example they do not see the
    output folder)."""


class RunLockedError(TreemapError, BlockingIOError):
    """Another treemap run holds the lock on the output folder. Exit code 75 (EX_TEMPFAIL: try again later), so a
    cron wrapper can tell "still running" from a failure."""

    exit_code = 75


class WriteError(OutputError):
    """A product, tile or sidecar could not be written (a full disk, a folder that vanished or became read-only,
    a file that reads back damaged). Exit code 74 (EX_IOERR); nothing new is published at the final paths."""

    exit_code = 74


class DeviceError(TreemapError, ValueError):
    """A --device that does not exist or is not available on this machine."""



class TilesFailedError(TreemapError, RuntimeError):
    """Some tiles of a run failed (reading, computing, too many unreadable assets); the others are done and kept,
    no product was written. Exit code 3; a rerun retries only the failed tiles."""

    exit_code = 3

# A class that is both a ValueError and an OSError finds ValueError.__new__ first in its MRO, which refuses to build
# an OSError-shaped instance. Pickling that calls ``cls.__new__`` (tblib, used by dask to ship a worker's error to
# the client) then fails; OSError's constructor is the right one for every error that is an OSError.
for _cls in [c for c in list(globals().values()) if isinstance(c, type) and issubclass(c, TreemapError)]:
    if issubclass(_cls, OSError):
        _cls.__new__ = OSError.__new__  # type: ignore[method-assign]
del _cls
