"""treemap.errors: every error is one line, keeps its exit code, survives pickling (dask sends errors between
processes), and is also the built-in exception that says what went wrong."""

import pickle

import pytest

from treemap import errors
from treemap.errors import TreemapError, missing_file_error

EXPECTED_BUILTIN = {
    "AOIError": ValueError, "AOINotFoundError": FileNotFoundError,
    "CatalogError": ValueError, "CatalogNotFoundError": FileNotFoundError,
    "CatalogUnreachableError": ConnectionError, "ItemError": ValueError,
    "NoScenesError": LookupError, "DateRangeError": ValueError,
    "ModelError": ValueError, "ModelNotFoundError": FileNotFoundError,
    "SpeciesListError": ValueError, "SpeciesListNotFoundError": FileNotFoundError,
    "PointsError": ValueError, "PointsNotFoundError": FileNotFoundError,
    "RecipeError": ValueError, "RecipeNotFoundError": FileNotFoundError,
    "ExtractError": ValueError, "ShardError": ValueError, "SecoDataError": ValueError,
    "OutputError": OSError, "WriteError": OSError, "ClusterError": ConnectionError,
    "RunLockedError": BlockingIOError, "DeviceError": ValueError, "TilesFailedError": RuntimeError,
}
ERRORS = sorted(name for name, obj in vars(errors).items()
                if isinstance(obj, type) and issubclass(obj, TreemapError) and obj is not TreemapError)


@pytest.mark.parametrize("name", ERRORS)
def test_one_line_exit_code_and_pickling(name):
    cls = getattr(errors, name)
    err = cls("cannot read AOI file a.geojson: invalid JSON at line 1 column 2: Expecting value")
    assert str(err) == "cannot read AOI file a.geojson: invalid JSON at line 1 column 2: Expecting value"
    assert err.args == (str(err),)
    assert isinstance(err.exit_code, int) and err.exit_code == cls.exit_code
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is cls and str(back) == str(err) and back.exit_code == err.exit_code


@pytest.mark.parametrize("name, builtin", sorted(EXPECTED_BUILTIN.items()))
def test_each_error_is_the_matching_builtin(name, builtin):
    assert issubclass(getattr(errors, name), builtin)


def test_exit_codes():
    assert TreemapError.exit_code == 2 and errors.AOIError("x").exit_code == 2
    assert errors.RunLockedError("x").exit_code == 75
    assert errors.WriteError("x").exit_code == 74 and errors.TilesFailedError("x").exit_code == 3


def test_os_error_flavours_keep_the_message():
    err = errors.OutputError("cannot write to output folder /x: Read-only file system")
    assert err.errno is None and err.strerror is None and str(err) == err.args[0]
    with pytest.raises(OSError):
        raise errors.ClusterError("cannot reach the dask scheduler tcp://x:8786")


@pytest.mark.parametrize("base", [errors.AOIError, errors.CatalogError, errors.ModelError, errors.SpeciesListError,
                                  errors.PointsError, errors.RecipeError])
def test_missing_file_flavour(base):
    cls = missing_file_error(base)
    assert cls is not base and issubclass(cls, base) and issubclass(cls, FileNotFoundError)
    assert missing_file_error(errors.DateRangeError) is errors.DateRangeError


def test_old_import_paths_still_work():
    from train.recipe import RecipeError
    from treemap.extract import ExtractError, PointsError
    from treemap.points import PointsError as PointsError2

    assert RecipeError is errors.RecipeError and ExtractError is errors.ExtractError
    assert PointsError is PointsError2 is errors.PointsError


def test_errors_survive_the_pickling_dask_uses():
    """dask ships a worker's exception to the client through tblib's pickling, which builds it with
    ``cls.__new__``: every error must come back whole that way too, not only through plain pickle."""
    from tblib import pickling_support

    pickling_support.install()
    for name in ERRORS:
        cls = getattr(errors, name)
        try:
            raise cls("cannot write /out/x.tif: No space left on device")
        except TreemapError as exc:
            raised = exc
        back = pickle.loads(pickle.dumps(raised))
        assert type(back) is cls and str(back) == str(raised) and back.exit_code == cls.exit_code
