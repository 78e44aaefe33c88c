"""The words every treemap command shares: option types (the one year range, dates), help texts, the decorators
for options that several commands take, recipe defaults, one-line usage errors, logging and printing results.
:mod:`treemap.cli` holds the commands themselves."""

from __future__ import annotations

import json
import logging
import sys
from datetime import date, datetime
from pathlib import Path

import click
from click.core import ParameterSource

from treemap.dates import ERA, year_range
from treemap.errors import TreemapError

def option_words(param, ctx, value) -> str:
    """``--year 0``, or ``--year 0 (from --recipe)`` when the value came from a recipe."""
    name = max(param.opts, key=len) if param is not None and param.opts else "value"
    words = f"{name} {value}"
    if param is not None and ctx is not None and ctx.get_parameter_source(param.name) is ParameterSource.DEFAULT_MAP:
        words += " (from --recipe)"
    return words


class YearType(click.IntRange):
    """A year of Sentinel-2 imagery: ``year_range()``; anything else is one usage error naming the range."""

    name = "year"

    def __init__(self):
        super().__init__(*year_range())

    def convert(self, value, param, ctx):
        try:
            year = value if type(value) is int else int(str(value).strip())
        except ValueError:
            raise click.UsageError(f"{option_words(param, ctx, value)} is not a year like 2022", ctx) from None
        first, last = year_range()
        if not first <= year <= last:
            raise click.UsageError(f"{option_words(param, ctx, value)} is outside {first}..{last} ({ERA})", ctx)
        return year


class DateType(click.ParamType):
    """A YYYY-MM-DD date in the years of ``year_range()``."""

    name = "YYYY-MM-DD"

    def convert(self, value, param, ctx):
        if isinstance(value, date):
            day = value.date() if isinstance(value, datetime) else value
        else:
            try:
                day = datetime.strptime(str(value), "%Y-%m-%d").date()
            except ValueError:
                raise click.UsageError(f"{option_words(param, ctx, value)} is not a date like 2022-06-30",
                                       ctx) from None
        first, last = year_range()
        if not first <= day.year <= last:
            raise click.UsageError(f"{option_words(param, ctx, value)} is outside {first}-01-01..{last}-12-31 "
                                   f"({ERA})", ctx)
        return day


class BatchSizeType(click.ParamType):
    """A batch size: a positive integer, or ``auto`` (None: sized from the GPU's free memory, 4096 on a CPU)."""

    name = "N|auto"

    def convert(self, value, param, ctx):
        if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
            return None
        try:
            size = int(value)
        except (TypeError, ValueError):
            size = 0
        if size < 1:
            raise click.UsageError(f"{option_words(param, ctx, value)} is not a batch size (a positive whole "
                                   f"number, or auto)", ctx)
        return size


YEAR = YearType()
DATE = DateType()
BATCH_SIZE = BatchSizeType()
BATCH_HELP = ("Pixels per encoder batch, or auto: sized from free GPU memory on CUDA for models with fixed input "
              "statistics (the official per-batch scaling keeps 4096, as the batch is part of its result); 4096 "
              "on the CPU.")

CATALOG_HELP = ("demo, earth-search, earth-search-c1, planetary-computer, cdse, a STAC API URL (optionally "
                ".../collections/ID), a catalog.json or an item file.")
MODEL_HELP = "a treemap .safetensors, an official GeoTreeCLIP .pth, or 'demo' (the shipped demo model)"
DEVICE_HELP = "auto, cpu, cuda, cuda:1 ... (auto: CUDA when this machine has it, else the CPU)."
AOI_HELP = "Area of interest: GeoJSON Feature, FeatureCollection or Polygon in EPSG:4326."
RECIPE_HELP = "YAML recipe of option defaults (see recipes/); command-line options win."
OUT_FOLDER_HELP = "Output folder."


def setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger("treemap")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


class OneLineUsageError(click.UsageError):
    """A usage mistake (unknown option, bad value, missing option) as one line, like every other user mistake."""

    def __init__(self, error: click.UsageError):
        super().__init__(" ".join(error.format_message().split()), error.ctx)

    def show(self, file=None) -> None:
        click.echo(f"treemap: error: {self.message}", err=True)


# click >= 8.2 raises this for `treemap model` without a subcommand; it shows the help, which stays as it is
SHOWS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


def one_line(error: click.UsageError) -> click.UsageError:
    if isinstance(error, (OneLineUsageError, SHOWS_HELP)):
        return error
    return OneLineUsageError(error)


class TreemapGroup(click.Group):
    """Turns treemap's typed errors and click's usage errors into one line on stderr and a non-zero exit."""

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            raise one_line(exc) from None

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except TreemapError as exc:
            click.echo(f"treemap: error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except click.UsageError as exc:
            raise one_line(exc) from None
        except KeyboardInterrupt:
            click.echo("treemap: interrupted", err=True)
            ctx.exit(130)


def year_window(year, start, end):
    if year is not None:
        if start or end:
            raise click.UsageError("--year cannot be combined with --start/--end")
        return date(year, 1, 1), date(year, 12, 31)
    return start, end


def load_recipe(ctx, param, value):
    """--recipe FILE: a YAML mapping of option names to values, used as defaults (command-line options win). The
    values are checked against the options' types (treemap.documents.read_recipe) before anything runs."""
    if value is None:
        return None
    import dataclasses

    from treemap.documents import read_recipe

    names = {o.lstrip("-").replace("-", "_"): p.name for p in ctx.command.params for o in [p.name, *p.opts]}
    recipe = read_recipe(value, recipe_schema(ctx.command),
                         prepare=lambda doc: {names.get(str(k).replace("-", "_"), k): v for k, v in doc.items()})
    defaults = {k: v for k, v in dataclasses.asdict(recipe).items() if v is not None}
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


def recipe_schema(command: click.Command) -> type:
    """A frozen dataclass with a field per option of ``command``, typed after the option (None: not given)."""
    import dataclasses
    from typing import Annotated, Any, Literal

    from treemap.documents import Interval

    fields = []
    for p in command.params:
        if p.name == "recipe" or not isinstance(p, click.Option) or p.hidden:
            continue
        kind = p.type
        if isinstance(kind, (click.IntRange, click.FloatRange)):
            tp = Annotated[int if isinstance(kind, click.IntRange) else float, Interval(
                gt=kind.min if kind.min_open else None, ge=None if kind.min_open else kind.min,
                lt=kind.max if kind.max_open else None, le=None if kind.max_open else kind.max)]
        elif isinstance(kind, click.Choice):
            tp = Literal[tuple(kind.choices)]
        else:
            tp = next((t for cls, t in ((click.types.BoolParamType, bool), (click.types.IntParamType, int),
                                        (click.types.FloatParamType, float), (DateType, date),
                                        (click.Path, str), (click.types.StringParamType, str))
                       if isinstance(kind, cls)), Any)
        fields.append((p.name, tuple[tp, ...] if p.multiple else tp, dataclasses.field(default=None)))
    return dataclasses.make_dataclass(f"{command.name.title()}Recipe", fields, frozen=True)


def recipe_option(command):
    return click.option("--recipe", type=click.Path(path_type=Path), is_eager=True, expose_value=False,
                        callback=load_recipe, help=RECIPE_HELP)(command)


def window_options(command):
    """--start, --end and --year: the acquisition window of predict and search."""
    first, last = year_range()
    command = click.option("--year", type=YEAR, help="Shortcut for --start YEAR-01-01 --end YEAR-12-31.")(command)
    command = click.option("--end", type=DATE, help=f"Last acquisition date, {first}-01-01 to {last}-12-31 "
                           "(default: one year after --start).")(command)
    return click.option("--start", type=DATE, help=f"First acquisition date, {first}-01-01 to {last}-12-31 "
                        "(default: Jan 1 of the year).")(command)


def cluster_options(command):
    """--workers and --scheduler: where a run's tiles are computed (treemap.scale)."""
    command = click.option(
        "--scheduler", metavar="ADDRESS",
        help="Run the tiles on an existing dask cluster: its scheduler's address (tcp://host:8786) or scheduler "
             "file (.json). Its workers need --out on a shared filesystem at the same path.")(command)
    return click.option(
        "--workers", type=click.IntRange(1),
        help="Worker processes on this machine (default: one per CPU core, for CUDA predictions one per GPU); "
             "1 runs the tiles in this process.")(command)


def max_unreadable_option(command):
    """--max-unreadable: the share of a tile's assets that may be unreadable before the tile fails."""
    from treemap.io_env import DEFAULT_MAX_UNREADABLE

    return click.option(
        "--max-unreadable", "max_unreadable", default=DEFAULT_MAX_UNREADABLE, show_default=True,
        type=click.FloatRange(0, 1), metavar="FRACTION",
        help="A tile with a larger share of its assets (scene x band files) unreadable fails (exit code 3) instead "
             "of being written with holes; unreadable assets below it are read as nodata and named in the "
             "summary, tags and log.")(command)


def print_products(result, as_json: bool) -> None:
    """A run's summary as JSON, or its product paths one per line (stdout)."""
    if as_json:
        click.echo(json.dumps(result.to_json()))
    else:
        for path in result.products.values():
            click.echo(str(path))
