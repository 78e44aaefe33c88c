"""The command line: parse options, call one function, print product paths (or JSON) on stdout, logs on stderr."""

from __future__ import annotations

import json
import logging
import sys
from datetime import date, datetime
from pathlib import Path

import click

from treemap import __version__
from treemap.errors import TreemapError

log = logging.getLogger("treemap")


class _DateType(click.ParamType):
    name = "YYYY-MM-DD"

    def convert(self, value, param, ctx):
        if isinstance(value, date):
            return value
        try:
            return datetime.strptime(value, "%Y-%m-%d").date()
        except ValueError:
            self.fail(f"{value!r} is not a date like 2022-06-30", param, ctx)


DATE = _DateType()


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger("treemap")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


class _Group(click.Group):
    """Turns treemap's typed errors into one line on stderr and a non-zero exit."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except TreemapError as exc:
            click.echo(f"treemap: error: {exc}", err=True)
            ctx.exit(exc.exit_code)
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
        if p.name == "recipe" or not isinstance(p, click.Option):
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


def _print_products(result, as_json: bool) -> None:
    """A run's summary as JSON, or its product paths one per line (stdout)."""
    if as_json:
        click.echo(json.dumps(result.to_json()))
    else:
        for path in result.products.values():
            click.echo(str(path))


@cli.command()
@click.option("--recipe", type=click.Path(path_type=Path), is_eager=True, expose_value=False,
              callback=_load_recipe, help="YAML file of option defaults (see recipes/).")
@click.option("--aoi", "aoi", required=True, type=click.Path(path_type=Path, dir_okay=True),
              help="Area of interest: GeoJSON Feature, FeatureCollection or Polygon in EPSG:4326.")
@click.option("--out", "out", default=Path("treemap-out"), show_default=True, type=click.Path(path_type=Path),
              help="Output folder.")
@click.option("--catalog", default="earth-search", show_default=True,
              help="demo, earth-search, planetary-computer, cdse, a STAC API URL, a catalog.json or an item file.")
@click.option("--start", type=DATE, help="First acquisition date (default: Jan 1 of the year).")
@click.option("--end", type=DATE, help="Last acquisition date (default: one year after --start).")
@click.option("--year", type=int, help="Shortcut for --start YEAR-01-01 --end YEAR-12-31.")
@click.option("--max-cloud", default=100.0, show_default=True, type=click.FloatRange(0, 100),
              help="Skip scenes with more cloud cover (percent); pixels are masked with SCL anyway.")
@click.option("--tile-size", default=512, show_default=True, type=click.IntRange(16, 8192),
              help="Tile edge in 10 m pixels.")
@click.option("--model", help="Model: a treemap .safetensors, an official .pth, or 'demo' (default for --catalog demo).")
@click.option("--species", help="Candidate species list CSV, or 'demo' (default for --catalog demo).")
@click.option("--batch-size", default=4096, show_default=True, type=click.IntRange(1))
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1 ...")
@click.option("--head", type=click.Path(path_type=Path),
              help="A few-shot head file (treemap fewshot) fitted on --model: maps the head's species.")
@click.option("--top-k", default=0, show_default=True, type=click.IntRange(0, 20),
              help="Also write top_species.tif: the k most probable species per pixel and their probabilities.")
@click.option("--keep-work", is_flag=True, help="Keep the per-tile work folder after success.")
@_cluster_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary instead of paths.")
def predict(aoi, out, catalog, start, end, year, max_cloud, tile_size, model, species, batch_size, device, head,
            top_k, keep_work, workers, scheduler, as_json):
    """Map species probabilities over an AOI; prints the paths of the COGs written."""
    from treemap.run import PredictRequest, predict as run_predict

    start, end = _year_window(year, start, end)
    result = run_predict(PredictRequest(
        aoi=aoi, out=out, catalog=catalog, start=start, end=end, max_cloud=max_cloud, tile_size=tile_size,
        model=model, species=species, batch_size=batch_size, device=device, keep_work=keep_work, head=head,
        top_k=top_k, scheduler=scheduler, workers=workers))
    _print_products(result, as_json)


@cli.command()
@click.option("--recipe", type=click.Path(path_type=Path), is_eager=True, expose_value=False,
              callback=_load_recipe, help="YAML file of option defaults (see recipes/).")
@click.option("--aoi", "aoi", required=True, type=click.Path(path_type=Path),
              help="Area of interest: GeoJSON Feature, FeatureCollection or Polygon in EPSG:4326.")
@click.option("--year", required=True, type=click.IntRange(1, 9998), help="The year whose seasons are reported.")
@click.option("--out", "out", default=Path("treemap-out"), show_default=True, type=click.Path(path_type=Path),
              help="Output folder.")
@click.option("--catalog", default="earth-search", show_default=True, help="Any --catalog form of predict.")
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
@_cluster_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary instead of paths.")
def phenology(aoi, year, out, catalog, index, margin_days, max_cloud, min_observations, tile_size, seasonal,
              keep_work, workers, scheduler, as_json):
    """Season timing per pixel (MCD12Q2 transition dates) for one year; prints the paths of the COGs written."""
    from treemap.phenology_run import PhenologyRequest, run_phenology

    result = run_phenology(PhenologyRequest(
        aoi=aoi, out=out, year=year, catalog=catalog, index=index, margin_days=margin_days, max_cloud=max_cloud,
        tile_size=tile_size, min_observations=min_observations, seasonal=seasonal, keep_work=keep_work,
        scheduler=scheduler, workers=workers))
    _print_products(result, as_json)


@cli.command()
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**32 - 1),
              help="World seed (layout, clouds, phenology): 0 to 4294967295.")
@click.option("--out", "out", type=click.Path(path_type=Path),
              help="Folder for the world (default: the cache used by --catalog demo).")
def demo(seed, out):
    """Build the offline demo world (a synthetic Sentinel-2 L2A catalog); prints its catalog.json path."""
    from treemap.demo import WorldSpec, build_world, ensure_demo_world

    world = ensure_demo_world(seed=seed) if out is None else build_world(out, WorldSpec(seed=seed))
    click.echo(str(world.catalog))


@cli.command()
@click.option("--aoi", "aoi", required=True, type=click.Path(path_type=Path),
              help="Area of interest: GeoJSON Feature, FeatureCollection or Polygon in EPSG:4326.")
@click.option("--start", type=DATE, help="First acquisition date (default: Jan 1 of the year).")
@click.option("--end", type=DATE, help="Last acquisition date (default: one year after --start).")
@click.option("--year", type=int, help="Shortcut for --start YEAR-01-01 --end YEAR-12-31.")
@click.option("--catalog", default="earth-search", show_default=True,
              help="demo, earth-search, earth-search-c1, planetary-computer, cdse, a STAC API URL (optionally "
                   ".../collections/ID), a catalog.json or an item file.")
@click.option("--max-cloud", default=100.0, show_default=True, type=click.FloatRange(0, 100),
              help="Skip scenes with more cloud cover (percent).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per scene instead of a table.")
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
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="Folder for the shards.")
@click.option("--catalog", default="earth-search", show_default=True, help="Any --catalog form of predict.")
@click.option("--recipe", type=click.Path(path_type=Path),
              help="YAML: compositing, shard size, auxiliary rasters (see recipes/).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary instead of shard paths.")
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


@cli.command()
@click.option("--points", required=True, type=click.Path(path_type=Path),
              help="Labelled points: GeoJSON Point features (properties: species, optional genus, family, level0, "
                   "year) or a CSV like extract takes.")
@click.option("--model", "model_ref", required=True, help="The model the head is for: a .safetensors/.pth or 'demo'.")
@click.option("--catalog", default="earth-search", show_default=True, help="Any --catalog form of predict.")
@click.option("--head", "kind", type=click.Choice(["prototype", "linear"]), default="prototype", show_default=True,
              help="prototype: class means (from one sample per species); linear: logistic regression.")
@click.option("--year", type=click.IntRange(2015, 2100), help="Imagery year for points without a year.")
@click.option("--taxonomy", type=click.Path(path_type=Path),
              help="Species-list CSV filling in level0/family/genus for points that give only the species.")
@click.option("--out", "out", type=click.Path(path_type=Path),
              help="Head file (default: MODEL.head-KIND.safetensors beside the model).")
@click.option("--batch-size", default=1024, show_default=True, type=click.IntRange(1))
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1 ...")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary instead of the head's path.")
def fewshot(points, model_ref, catalog, kind, year, taxonomy, out, batch_size, device, as_json):
    """Fit a few-shot species head from labelled points; use it with `predict --head`."""
    from treemap.fewshot import FewShotRequest, fit_from_points
    from treemap.infer import check_device

    check_device(device)
    result = fit_from_points(FewShotRequest(points=points, model=model_ref, catalog=catalog, kind=kind, out=out,
                                            year=year, taxonomy=taxonomy, batch_size=batch_size, device=device))
    click.echo(json.dumps(result.to_json()) if as_json else str(result.head))


@cli.group()
def model():
    """Model files: import official checkpoints, show a model card."""


@model.command("import")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="Target .safetensors file.")
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


def main() -> None:
    cli(prog_name="treemap")


if __name__ == "__main__":
    main()
