"""The command line: parse options, call one function, print product paths (or JSON) on stdout, logs on stderr."""

from __future__ import annotations

import json
import logging
import sys
from datetime import date, datetime
from pathlib import Path

import click
from click.core import ParameterSource

from treemap import __version__
from treemap.dates import ERA, year_range
from treemap.errors import TreemapError

log = logging.getLogger("treemap")

# -- the words every command shares -----------------------------------------------------------------------------------


def _option_words(param, ctx, value) -> str:
    """``--year 0``, or ``--year 0 (from --recipe)`` when the value came from a recipe."""
    name = max(param.opts, key=len) if param is not None and param.opts else "value"
    words = f"{name} {value}"
    if param is not None and ctx is not None and ctx.get_parameter_source(param.name) is ParameterSource.DEFAULT_MAP:
        words += " (from --recipe)"
    return words


class _YearType(click.IntRange):
    """A year of Sentinel-2 imagery: ``year_range()``; anything else is one usage error naming the range."""

    name = "year"

    def __init__(self):
        super().__init__(*year_range())

    def convert(self, value, param, ctx):
        try:
            year = value if type(value) is int else int(str(value).strip())
        except ValueError:
            raise click.UsageError(f"{_option_words(param, ctx, value)} is not a year like 2022", ctx) from None
        first, last = year_range()
        if not first <= year <= last:
            raise click.UsageError(f"{_option_words(param, ctx, value)} is outside {first}..{last} ({ERA})", ctx)
        return year


class _DateType(click.ParamType):
    """A YYYY-MM-DD date in the years of ``year_range()``."""

    name = "YYYY-MM-DD"

    def convert(self, value, param, ctx):
        if isinstance(value, date):
            day = value.date() if isinstance(value, datetime) else value
        else:
            try:
                day = datetime.strptime(str(value), "%Y-%m-%d").date()
            except ValueError:
                raise click.UsageError(f"{_option_words(param, ctx, value)} is not a date like 2022-06-30",
                                       ctx) from None
        first, last = year_range()
        if not first <= day.year <= last:
            raise click.UsageError(f"{_option_words(param, ctx, value)} is outside {first}-01-01..{last}-12-31 "
                                   f"({ERA})", ctx)
        return day


YEAR = _YearType()
DATE = _DateType()

CATALOG_HELP = ("demo, earth-search, earth-search-c1, planetary-computer, cdse, a STAC API URL (optionally "
                ".../collections/ID), a catalog.json or an item file.")
MODEL_HELP = "a treemap .safetensors, an official GeoTreeCLIP .pth, or 'demo' (the shipped demo model)"
DEVICE_HELP = "auto, cpu, cuda, cuda:1 ... (auto: CUDA when this machine has it, else the CPU)."
AOI_HELP = "Area of interest: GeoJSON Feature, FeatureCollection or Polygon in EPSG:4326."
RECIPE_HELP = "YAML recipe of option defaults (see recipes/); command-line options win."
OUT_FOLDER_HELP = "Output folder."


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger("treemap")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


class _OneLineUsageError(click.UsageError):
    """A usage mistake (unknown option, bad value, missing option) as one line, like every other user mistake."""

    def __init__(self, error: click.UsageError):
        super().__init__(" ".join(error.format_message().split()), error.ctx)

    def show(self, file=None) -> None:
        click.echo(f"treemap: error: {self.message}", err=True)


# click >= 8.2 raises this for `treemap model` without a subcommand; it shows the help, which stays as it is
_SHOWS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


def _one_line(error: click.UsageError) -> click.UsageError:
    if isinstance(error, (_OneLineUsageError, _SHOWS_HELP)):
        return error
    return _OneLineUsageError(error)


class _Group(click.Group):
    """Turns treemap's typed errors and click's usage errors into one line on stderr and a non-zero exit."""

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            raise _one_line(exc) from None

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except TreemapError as exc:
            click.echo(f"treemap: error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except click.UsageError as exc:
            raise _one_line(exc) from None
        except KeyboardInterrupt:
            click.echo("treemap: interrupted", err=True)
            ctx.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="treemap")
@click.option("-v", "--verbose", count=True, help="More log output on stderr.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")
def cli(verbose: int, quiet: bool) -> None:
    """Tree-species maps from Sentinel-2 L2A time series."""
    _setup_logging(verbose, quiet)


def _year_window(year, start, end):
    if year is not None:
        if start or end:
            raise click.UsageError("--year cannot be combined with --start/--end")
        return date(year, 1, 1), date(year, 12, 31)
    return start, end


def _load_recipe(ctx, param, value):
    """--recipe FILE: a YAML mapping of option names to values, used as defaults (command-line options win). The
    values are checked against the options' types (treemap.documents.read_recipe) before anything runs."""
    if value is None:
        return None
    import dataclasses

    from treemap.documents import read_recipe

    names = {o.lstrip("-").replace("-", "_"): p.name for p in ctx.command.params for o in [p.name, *p.opts]}
    recipe = read_recipe(value, _recipe_schema(ctx.command),
                         prepare=lambda doc: {names.get(str(k).replace("-", "_"), k): v for k, v in doc.items()})
    defaults = {k: v for k, v in dataclasses.asdict(recipe).items() if v is not None}
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


def _recipe_schema(command: click.Command) -> type:
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
                                        (click.types.FloatParamType, float), (_DateType, date),
                                        (click.Path, str), (click.types.StringParamType, str))
                       if isinstance(kind, cls)), Any)
        fields.append((p.name, tuple[tp, ...] if p.multiple else tp, dataclasses.field(default=None)))
    return dataclasses.make_dataclass(f"{command.name.title()}Recipe", fields, frozen=True)


def _recipe_option(command):
    return click.option("--recipe", type=click.Path(path_type=Path), is_eager=True, expose_value=False,
                        callback=_load_recipe, help=RECIPE_HELP)(command)


def _window_options(command):
    """--start, --end and --year: the acquisition window of predict and search."""
    first, last = year_range()
    command = click.option("--year", type=YEAR, help="Shortcut for --start YEAR-01-01 --end YEAR-12-31.")(command)
    command = click.option("--end", type=DATE, help=f"Last acquisition date, {first}-01-01 to {last}-12-31 "
                           "(default: one year after --start).")(command)
    return click.option("--start", type=DATE, help=f"First acquisition date, {first}-01-01 to {last}-12-31 "
                        "(default: Jan 1 of the year).")(command)


def _cluster_options(command):
    """--workers and --scheduler: where a run's tiles are computed (treemap.scale)."""
    command = click.option(
        "--scheduler", metavar="ADDRESS",
        help="Run the tiles on an existing dask cluster: its scheduler's address (tcp://host:8786) or scheduler "
             "file (.json). Its workers need --out on a shared filesystem at the same path.")(command)
    return click.option(
        "--workers", type=click.IntRange(1),
        help="Worker processes on this machine (default: one per CPU core, for CUDA predictions one per GPU); "
             "1 runs the tiles in this process.")(command)


def _max_unreadable_option(command):
    """--max-unreadable: the share of a tile's assets that may be unreadable before the tile fails."""
    from treemap.io_env import DEFAULT_MAX_UNREADABLE

    return click.option(
        "--max-unreadable", "max_unreadable", default=DEFAULT_MAX_UNREADABLE, show_default=True,
        type=click.FloatRange(0, 1), metavar="FRACTION",
        help="A tile with a larger share of its assets (scene x band files) unreadable fails (exit code 3) instead "
             "of being written with holes; unreadable assets below it are read as nodata and named in the "
             "summary, tags and log.")(command)


def _print_products(result, as_json: bool) -> None:
    """A run's summary as JSON, or its product paths one per line (stdout)."""
    if as_json:
        click.echo(json.dumps(result.to_json()))
    else:
        for path in result.products.values():
            click.echo(str(path))


@cli.command()
@_recipe_option
@click.option("--aoi", "aoi", required=True, type=click.Path(path_type=Path, dir_okay=True), help=AOI_HELP)
@click.option("--out", "out", default=Path("treemap-out"), show_default=True, type=click.Path(path_type=Path),
              help=OUT_FOLDER_HELP)
@click.option("--catalog", default="earth-search", show_default=True, help=CATALOG_HELP)
@_window_options
@click.option("--max-cloud", default=100.0, show_default=True, type=click.FloatRange(0, 100),
              help="Skip scenes with more cloud cover (percent); pixels are masked with SCL anyway.")
@click.option("--tile-size", default=512, show_default=True, type=click.IntRange(16, 8192),
              help="Tile edge in 10 m pixels.")
@click.option("--model", help=f"The model: {MODEL_HELP}; default 'demo' for --catalog demo.")
@click.option("--species", help="Candidate species list CSV, or 'demo' (default for --catalog demo).")
@click.option("--batch-size", default=4096, show_default=True, type=click.IntRange(1),
              help="Pixels per encoder batch.")
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--head", type=click.Path(path_type=Path),
              help="A few-shot head file (treemap fewshot) fitted on --model: maps the head's species.")
@click.option("--top-k", default=0, show_default=True, type=click.IntRange(0, 20),
              help="Also write top_species.tif: the k most probable species per pixel and their probabilities.")
@click.option("--keep-work", is_flag=True, help="Keep the per-tile work folder after success.")
@_max_unreadable_option
@_cluster_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary instead of the product paths.")
def predict(aoi, out, catalog, start, end, year, max_cloud, tile_size, model, species, batch_size, device, head,
            top_k, keep_work, max_unreadable, workers, scheduler, as_json):
    """Map species probabilities over an AOI; prints the paths of the COGs written."""
    from treemap.run import PredictRequest, predict as run_predict

    start, end = _year_window(year, start, end)
    result = run_predict(PredictRequest(
        aoi=aoi, out=out, catalog=catalog, start=start, end=end, max_cloud=max_cloud, tile_size=tile_size,
        model=model, species=species, batch_size=batch_size, device=device, keep_work=keep_work, head=head,
        top_k=top_k, scheduler=scheduler, workers=workers, max_unreadable=max_unreadable))
    _print_products(result, as_json)


@cli.command()
@_recipe_option
@click.option("--aoi", "aoi", required=True, type=click.Path(path_type=Path), help=AOI_HELP)
@click.option("--year", required=True, type=YEAR, help="The year whose seasons are reported.")
@click.option("--out", "out", default=Path("treemap-out"), show_default=True, type=click.Path(path_type=Path),
              help=OUT_FOLDER_HELP)
@click.option("--catalog", default="earth-search", show_default=True, help=CATALOG_HELP)
@click.option("--index", type=click.Choice(["evi", "ndvi"]), default="evi", show_default=True,
              help="Vegetation index the seasons are read from.")
@click.option("--margin-days", default=183, show_default=True, type=click.IntRange(0, 366),
              help="Days of data read before and after the year, so cycles crossing the new year are whole.")
@click.option("--max-cloud", default=100.0, show_default=True, type=click.FloatRange(0, 100),
              help="Skip scenes with more cloud cover (percent); pixels are masked with SCL anyway.")
@click.option("--min-observations", default=12, show_default=True, type=click.IntRange(4),
              help="Fewer clear observations in the year: the pixel gets no dates (QA 1).")
@click.option("--tile-size", default=512, show_default=True, type=click.IntRange(16, 8192),
              help="Tile edge in 10 m pixels.")
@click.option("--seasonal", is_flag=True, help="Also write seasonal_composites.tif: clear-sky medians of the four "
              "phenological seasons.")
@click.option("--keep-work", is_flag=True, help="Keep the per-tile work folder after success.")
@_max_unreadable_option
@_cluster_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary instead of the product paths.")
def phenology(aoi, year, out, catalog, index, margin_days, max_cloud, min_observations, tile_size, seasonal,
              keep_work, max_unreadable, workers, scheduler, as_json):
    """Season timing per pixel (MCD12Q2 transition dates) for one year; prints the paths of the COGs written."""
    from treemap.phenology_run import PhenologyRequest, run_phenology

    result = run_phenology(PhenologyRequest(
        aoi=aoi, out=out, year=year, catalog=catalog, index=index, margin_days=margin_days, max_cloud=max_cloud,
        tile_size=tile_size, min_observations=min_observations, seasonal=seasonal, keep_work=keep_work,
        scheduler=scheduler, workers=workers, max_unreadable=max_unreadable))
    _print_products(result, as_json)


@cli.command()
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**32 - 1),
              help="World seed (layout, clouds, phenology): 0 to 4294967295.")
@click.option("--out", "out", type=click.Path(path_type=Path),
              help="Output folder for the world (default: the cache used by --catalog demo).")
def demo(seed, out):
    """Build the offline demo world (a synthetic Sentinel-2 L2A catalog); prints its catalog.json path."""
    from treemap.demo import WorldSpec, build_world, ensure_demo_world

    world = ensure_demo_world(seed=seed) if out is None else build_world(out, WorldSpec(seed=seed))
    click.echo(str(world.catalog))


@cli.command()
@click.option("--aoi", "aoi", required=True, type=click.Path(path_type=Path), help=AOI_HELP)
@_window_options
@click.option("--catalog", default="earth-search", show_default=True, help=CATALOG_HELP)
@click.option("--max-cloud", default=100.0, show_default=True, type=click.FloatRange(0, 100),
              help="Skip scenes with more cloud cover (percent).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per scene instead of a table.")
def search(aoi, start, end, year, catalog, max_cloud, as_json):
    """List the scenes `predict` would use (stdout); exits non-zero when there are none."""
    from treemap.aoi import read_aoi
    from treemap.errors import NoScenesError
    from treemap.stac import Query, open_catalog
    from treemap.stac.search import date_window, scene_table

    start, end = _year_window(year, start, end)
    default_year = date.today().year - 1
    if catalog == "demo":
        from treemap.demo import WorldSpec

        default_year = WorldSpec().year
    start, end = date_window(start, end, default_year)
    area = read_aoi(aoi)
    source = open_catalog(catalog)
    scenes = source.search(Query(area.bounds, start, end, max_cloud, geometry=area.geometry))
    if not scenes:
        raise NoScenesError(f"no Sentinel-2 L2A scenes in {source.name} for the AOI between {start} and {end}"
                            + (f" with at most {max_cloud:g} % cloud" if max_cloud < 100 else ""))
    lines = [json.dumps(scene.to_record()) for scene in scenes] if as_json else scene_table(scenes)
    click.echo("\n".join(lines))
    log.info("%d scenes", len(scenes))


@cli.command()
@click.option("--points", required=True, type=click.Path(path_type=Path),
              help="Occurrence CSV: longitude, latitude, year and level0/family/genus/species columns.")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="Output folder for the shards.")
@click.option("--catalog", default="earth-search", show_default=True, help=CATALOG_HELP)
@click.option("--recipe", type=click.Path(path_type=Path),
              help="YAML extraction recipe: compositing, shard size, auxiliary rasters (see recipes/).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary instead of the shard paths.")
def extract(points, out, catalog, recipe, as_json):
    """Training shards (official GeoTreeCLIP format) for occurrence points; resumable."""
    from treemap.extract import extract_points

    result = extract_points(points, out, catalog, recipe=recipe)
    if as_json:
        click.echo(json.dumps(result.to_json()))
    else:
        for shard in result.shards:
            click.echo(str(shard))
    log.info("%d samples written, %d points skipped (see %s)", result.written, result.skipped, result.report)


HEAD_KINDS = ("prototype", "linear")


@cli.command()
@click.option("--points", required=True, type=click.Path(path_type=Path),
              help="Labelled points: GeoJSON Point features (properties: species, optional genus, family, level0, "
                   "year) or a CSV like extract takes.")
@click.option("--model", "model_ref", required=True, help=f"The model the head is for: {MODEL_HELP}.")
@click.option("--catalog", default="earth-search", show_default=True, help=CATALOG_HELP)
@click.option("--kind", type=click.Choice(HEAD_KINDS), default="prototype", show_default=True,
              help="The head to fit. prototype: class means (from one sample per species); linear: logistic "
                   "regression.")
@click.option("--head", "old_kind", hidden=True, help="Deprecated spelling of --kind (predict --head is a file).")
@click.option("--year", type=YEAR, help="Imagery year for points without a year.")
@click.option("--taxonomy", type=click.Path(path_type=Path),
              help="Species-list CSV filling in level0/family/genus for points that give only the species.")
@click.option("--out", "out", type=click.Path(path_type=Path),
              help="Output file for the head (default: MODEL.head-KIND.safetensors beside the model).")
@click.option("--batch-size", default=1024, show_default=True, type=click.IntRange(1),
              help="Points per encoder batch.")
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary instead of the head's path.")
@click.pass_context
def fewshot(ctx, points, model_ref, catalog, kind, old_kind, year, taxonomy, out, batch_size, device, as_json):
    """Fit a few-shot species head from labelled points; use it with `predict --head`."""
    from treemap.fewshot import FewShotRequest, fit_from_points
    from treemap.infer import check_device

    if old_kind is not None:
        kind = _deprecated_head_kind(ctx, old_kind)
    check_device(device)
    result = fit_from_points(FewShotRequest(points=points, model=model_ref, catalog=catalog, kind=kind, out=out,
                                            year=year, taxonomy=taxonomy, batch_size=batch_size, device=device))
    click.echo(json.dumps(result.to_json()) if as_json else str(result.head))


def _deprecated_head_kind(ctx, value: str) -> str:
    """``fewshot --head KIND``, the spelling before --kind: accepted for one release, with a warning."""
    if ctx.get_parameter_source("kind") is ParameterSource.COMMANDLINE:
        raise click.UsageError("fewshot takes --kind; leave out --head")
    if value not in HEAD_KINDS:
        raise click.UsageError(f"fewshot --head {value}: the head kind is now --kind {'|'.join(HEAD_KINDS)} "
                               f"(a head file is for predict --head)")
    log.warning("fewshot --head %s is deprecated and goes away in the next release: use --kind %s", value, value)
    return value


@cli.group()
def model():
    """Model files: import official checkpoints, show a model card."""


@model.command("import")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path),
              help="Output file: the .safetensors model.")
@click.option("--stats", type=click.Path(path_type=Path),
              help="JSON with band_min/band_max/aux_min/aux_max: switch to fixed (batch-independent) normalisation.")
@click.option("--stats-from-shards", "stats_shards", type=click.Path(path_type=Path),
              help="A folder (or file) of training shards: derive the fixed statistics from them (band values "
                   "at the 0.1 and 99.9 percentiles, auxiliary min/max).")
@click.option("--stats-samples", default=20000, show_default=True, type=click.IntRange(1),
              help="Samples read for --stats-from-shards.")
@click.option("--species-list", "species_lists", multiple=True, help="Name of a species list the model was "
              "evaluated on (repeatable), recorded in the card.")
def model_import(source, out, stats, stats_shards, stats_samples, species_lists):
    """Import an official GeoTreeCLIP .pth (weights-only load) as a treemap .safetensors model + card."""
    from treemap.models.importer import import_checkpoint, read_statistics

    if stats and stats_shards:
        raise click.UsageError("give --stats or --stats-from-shards, not both")
    statistics = read_statistics(stats) if stats else None
    if stats_shards:
        from treemap.errors import ModelError
        from treemap.models.statistics import shard_statistics
        from treemap.shards import ShardError, list_shards

        try:
            statistics = shard_statistics(list_shards(stats_shards), stats_samples)
        except ShardError as exc:
            raise ModelError(f"--stats-from-shards {stats_shards}: {exc}") from None
    card = import_checkpoint(source, out, statistics, tuple(species_lists))
    log.info("imported %s (%s normalisation, source sha256 %s)", source, card.normalisation, card.source_sha256)
    click.echo(str(out))


@model.command("info")
@click.argument("path", type=click.Path(path_type=Path))
def model_info(path):
    """Print a model's card as JSON."""
    from treemap.models.checkpoint import load_model

    _, card = load_model(path)
    click.echo(card.to_json())


# -- treemap train: the train/ programs -------------------------------------------------------------------------------
# name -> (module, one line for `treemap train --help`). The modules are imported only when one runs (torch).
TRAIN_COMMANDS = {
    "geotreeclip": ("train.geotreeclip", "Pretrain GeoTreeCLIP on GlobalGeoTree-format shards."),
    "evaluate": ("train.evaluate", "Zero- and few-shot accuracy of a GeoTreeCLIP model."),
    "seco-eco": ("train.seco_eco", "Pretrain SeCo-Eco on phenology seasonal composites."),
    "demo-model": ("train.demo_model", "Rebuild the shipped demo models from the offline demo world."),
}


class _TrainCommand(click.Command):
    """``treemap train NAME ARGS...``: ARGS go unparsed to ``train.MODULE.main(ARGS, prog=...)``, the function behind
    ``python -m train.MODULE``, so both spellings share one parser (its options, its --help) and one behaviour."""

    def __init__(self, name: str, module: str, summary: str):
        super().__init__(
            name, help=f"{summary} Same as `python -m {module}`; `treemap train {name} --help` lists its options.",
            short_help=summary, add_help_option=False,
            context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
            params=[click.Argument(["args"], nargs=-1, type=click.UNPROCESSED)])
        self.module = module

    def invoke(self, ctx):
        import importlib

        program = importlib.import_module(self.module)
        try:
            code = program.main(list(ctx.params["args"]), prog=ctx.command_path)
        except SystemExit as exc:  # argparse: --help (0) or a usage error (2), already printed
            code = exc.code
        if code is not None and not isinstance(code, int):
            click.echo(str(code), err=True)
            code = 1
        ctx.exit(code or 0)


@cli.group(context_settings={"help_option_names": ["-h", "--help"]})
def train():
    """Pretrain and evaluate the encoders (the train/ programs; each is also `python -m train.MODULE`)."""


for _name, (_module, _summary) in TRAIN_COMMANDS.items():
    train.add_command(_TrainCommand(_name, _module, _summary))


def main() -> None:
    cli(prog_name="treemap")


if __name__ == "__main__":
    main()
