"""The command line: parse options, call one function, print product paths (or JSON) on stdout, logs on stderr."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click
from click.core import ParameterSource

from treemap import __version__
from treemap.cli_words import (
    AOI_HELP, BATCH_HELP, BATCH_SIZE, CATALOG_HELP, DEVICE_HELP, MODEL_HELP, OUT_FOLDER_HELP, TreemapGroup, YEAR,
    cluster_options, max_unreadable_option, print_products, recipe_option, setup_logging, window_options, year_window)

log = logging.getLogger("treemap")


@click.group(cls=TreemapGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="treemap")
@click.option("-v", "--verbose", count=True, help="More log output on stderr.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")
def cli(verbose: int, quiet: bool) -> None:
    """Tree-species maps from Sentinel-2 L2A time series."""
    setup_logging(verbose, quiet)
    from treemap.io_env import bound_block_cache

    bound_block_cache()


@cli.command()
@recipe_option
@click.option("--aoi", "aoi", required=True, type=click.Path(path_type=Path, dir_okay=True), help=AOI_HELP)
@click.option("--out", "out", default=Path("treemap-out"), show_default=True, type=click.Path(path_type=Path),
              help=OUT_FOLDER_HELP)
@click.option("--catalog", default="earth-search", show_default=True, help=CATALOG_HELP)
@window_options
@click.option("--max-cloud", default=100.0, show_default=True, type=click.FloatRange(0, 100),
              help="Skip scenes with more cloud cover (percent); pixels are masked with SCL anyway.")
@click.option("--tile-size", default=512, show_default=True, type=click.IntRange(16, 8192),
              help="Tile edge in 10 m pixels.")
@click.option("--model", help=f"The model: {MODEL_HELP}; default 'demo' for --catalog demo.")
@click.option("--species", help="Candidate species list CSV, or 'demo' (default for --catalog demo).")
@click.option("--batch-size", default="auto", show_default=True, type=BATCH_SIZE, help=BATCH_HELP)
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--head", type=click.Path(path_type=Path),
              help="A few-shot head file (treemap fewshot) fitted on --model: maps the head's species (a SeCo-Eco "
                   "head on its own cells of stride x 10 m, for --year).")
@click.option("--top-k", default=0, show_default=True, type=click.IntRange(0, 20),
              help="Also write top_species.tif: the k most probable species per pixel and their probabilities.")
@click.option("--mask", "mask", default="builtin", show_default=True, metavar="builtin|none|RASTER",
              help="Where non-tree land is masked: the built-in rule on the year's composites, none, or a "
                   "land-cover raster GDAL reads (any CRS); writes tree_mask.tif, species are nodata off trees.")
@click.option("--mask-classes", metavar="CODES",
              help="With --mask RASTER: the raster's tree classes, comma-separated [default: 10,95, ESA "
                   "WorldCover tree cover and mangroves].")
@click.option("--aux", "aux", type=click.Path(path_type=Path), metavar="LAYERS.yaml",
              help="Auxiliary layers (elevation, SoilGrids, WorldClim BIO): a YAML file naming a raster per "
                   "variable; without it the model gets longitude and latitude only.")
@click.option("--compile", "compile_", is_flag=True,
              help="torch.compile the location encoder: slower start (tens of seconds), faster batches on large runs.")
@click.option("--keep-work", is_flag=True, help="Keep the per-tile work folder after success.")
@max_unreadable_option
@cluster_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary instead of the product paths.")
def predict(aoi, out, catalog, start, end, year, max_cloud, tile_size, model, species, batch_size, device, head,
            top_k, mask, mask_classes, aux, compile_, keep_work, max_unreadable, workers, scheduler, as_json):
    """Map species probabilities over an AOI; prints the paths of the COGs written."""
    from treemap.masking import mask_spec
    from treemap.run import PredictRequest, predict as run_predict

    start, end = year_window(year, start, end)
    mask = mask_spec(mask, mask_classes)
    layers = None
    if aux is not None:
        from treemap.auxiliary import read_layer_set

        layers = read_layer_set(aux)
    result = run_predict(PredictRequest(
        aoi=aoi, out=out, catalog=catalog, start=start, end=end, max_cloud=max_cloud, tile_size=tile_size,
        model=model, species=species, batch_size=batch_size, device=device, keep_work=keep_work, head=head,
        top_k=top_k, scheduler=scheduler, workers=workers, max_unreadable=max_unreadable, mask=mask,
        aux=layers, compile=compile_))
    print_products(result, as_json)


@cli.command()
@recipe_option
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
@click.option("--snow-screen/--no-snow-screen", default=True, show_default=True,
              help="Drop the snow on the ground the scene classification missed before the fit (SCL 11 never "
                   "counts).")
@click.option("--seasonal", is_flag=True, help="Also write seasonal_composites.tif: clear-sky medians of the four "
              "phenological seasons.")
@click.option("--keep-work", is_flag=True, help="Keep the per-tile work folder after success.")
@max_unreadable_option
@cluster_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary instead of the product paths.")
def phenology(aoi, year, out, catalog, index, margin_days, max_cloud, min_observations, tile_size, snow_screen,
              seasonal, keep_work, max_unreadable, workers, scheduler, as_json):
    """Season timing per pixel (MCD12Q2 transition dates) for one year; prints the paths of the COGs written."""
    from treemap.phenology_run import PhenologyRequest, run_phenology

    result = run_phenology(PhenologyRequest(
        aoi=aoi, out=out, year=year, catalog=catalog, index=index, margin_days=margin_days, max_cloud=max_cloud,
        tile_size=tile_size, min_observations=min_observations, snow_screen=snow_screen, seasonal=seasonal,
        keep_work=keep_work,
        scheduler=scheduler, workers=workers, max_unreadable=max_unreadable))
    print_products(result, as_json)


def seco_options(f):
    """--chip, --stride and --season: how SeCo-Eco features of a place are made (embed and fewshot alike)."""
    f = click.option("--season", default="mean", show_default=True,
                     help="seco-eco: 'mean' of the usable seasons' features, or one season (0-3 or its name).")(f)
    f = click.option("--stride", default=8, show_default=True, type=click.IntRange(1, 1024),
                     help="seco-eco: pixels between chip centres; a map's pixel is stride x 10 m.")(f)
    return click.option("--chip", default=16, show_default=True, type=click.IntRange(4, 1024),
                        help="seco-eco: chip edge in 10 m pixels (the patch size the model was trained on).")(f)


def seco_spec(chip: int, stride: int, season: str, aux, year: int):
    """The SeCo-Eco recipe of the options; a usage error for a bad --season or an --aux it cannot take."""
    from treemap.chips import parse_season
    from treemap.embed_seco import SecoEmbedSpec

    if aux is not None:
        raise click.UsageError("--aux feeds GeoTreeCLIP; SeCo-Eco takes no auxiliary layers")
    try:
        season = parse_season(season)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--season") from None
    return SecoEmbedSpec(chip=chip, stride=stride, season=season, year=year)


@cli.command()
@click.option("--aoi", "aoi", required=True, type=click.Path(path_type=Path), help=AOI_HELP)
@click.option("--out", "out", default=Path("treemap-out"), show_default=True, type=click.Path(path_type=Path),
              help=OUT_FOLDER_HELP)
@click.option("--catalog", default="earth-search", show_default=True, help=CATALOG_HELP)
@window_options
@click.option("--max-cloud", default=100.0, show_default=True, type=click.FloatRange(0, 100),
              help="Skip scenes with more cloud cover (percent); pixels are masked with SCL anyway.")
@click.option("--tile-size", default=512, show_default=True, type=click.IntRange(16, 8192),
              help="Tile edge in 10 m pixels.")
@click.option("--encoder", type=click.Choice(["geotreeclip", "seco-eco"]), default="geotreeclip", show_default=True,
              help="geotreeclip: the location embedding per 10 m pixel; seco-eco: SeCo-Eco features of chips of "
                   "the year's phenology seasonal composites, one per --stride px.")
@click.option("--model", help=f"The model: {MODEL_HELP}; default 'demo' for --catalog demo. For seco-eco: a "
                              "SeCo-Eco .safetensors file (treemap train seco-eco).")
@seco_options
@click.option("--pca", default=0, show_default=True, type=click.IntRange(0),
              help="Write K principal components instead of the whole embedding; the projection is saved as "
                   "embedding_pca.safetensors beside the map.")
@click.option("--pca-from", type=click.Path(path_type=Path), metavar="FILE",
              help="Apply a saved projection (embedding_pca.safetensors of an earlier run), so maps share axes.")
@click.option("--float32", "float32", is_flag=True, help="float32 bands (NaN nodata) instead of scaled int16.")
@click.option("--aux", "aux", type=click.Path(path_type=Path), metavar="LAYERS.yaml",
              help="Auxiliary layers (elevation, climate, soil) the model takes; see the README.")
@click.option("--batch-size", default="auto", show_default=True, type=BATCH_SIZE, help=BATCH_HELP)
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--keep-work", is_flag=True, help="Keep the per-tile work folder after success.")
@max_unreadable_option
@cluster_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary instead of the product path.")
def embed(aoi, out, catalog, start, end, year, max_cloud, tile_size, encoder, model, chip, stride, season, pca,
          pca_from, float32, aux, batch_size, device, keep_work, max_unreadable, workers, scheduler, as_json):
    """Map the encoder's embeddings (embedding.tif); prints the path of the COG written."""
    from treemap.embed import EmbedRequest, embed as run_embed

    seco = None
    if encoder == "seco-eco":
        from treemap.dates import default_year

        if start is not None or end is not None:
            raise click.UsageError("--encoder seco-eco maps one phenological year: give --year, not --start/--end")
        seco = seco_spec(chip, stride, season, aux, year if year is not None else default_year(catalog))
    else:
        start, end = year_window(year, start, end)
    layers = None
    if aux is not None:
        from treemap.auxiliary import read_layer_set

        layers = read_layer_set(aux)
    result = run_embed(EmbedRequest(
        aoi=aoi, out=out, catalog=catalog, start=start, end=end, max_cloud=max_cloud, tile_size=tile_size,
        model=model, encoder=encoder, seco=seco, batch_size=batch_size, device=device, pca=pca, pca_from=pca_from,
        float32=float32, aux=layers,
        keep_work=keep_work, scheduler=scheduler, workers=workers, max_unreadable=max_unreadable))
    print_products(result, as_json)


@cli.command()
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**32 - 1),
              help="World seed (layout, clouds, phenology): 0 to 4294967295.")
@click.option("--out", "out", type=click.Path(path_type=Path),
              help="Output folder for the world (default: the cache used by --catalog demo).")
@click.option("--size", metavar="WxH", help="Width x height in km, 1..25 each (default 6.4x4), e.g. 10x10: a "
              "larger world for measurements; use it with --catalog and the catalog.json path printed.")
def demo(seed, out, size):
    """Build the offline demo world (a synthetic Sentinel-2 L2A catalog); prints its catalog.json path."""
    from treemap.demo import WorldSpec, build_world, ensure_demo_world
    from treemap.demo.spec import parse_size, sized_spec

    if size is not None:
        try:
            size = parse_size(size)
        except ValueError as exc:
            raise click.UsageError(f"--size {size} {exc}") from None
    spec = WorldSpec(seed=seed) if size is None else sized_spec(seed, *size)
    world = ensure_demo_world(seed=seed, size=size) if out is None else build_world(out, spec)
    click.echo(str(world.catalog))


@cli.command()
@click.option("--aoi", "aoi", required=True, type=click.Path(path_type=Path), help=AOI_HELP)
@window_options
@click.option("--catalog", default="earth-search", show_default=True, help=CATALOG_HELP)
@click.option("--max-cloud", default=100.0, show_default=True, type=click.FloatRange(0, 100),
              help="Skip scenes with more cloud cover (percent).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per scene instead of a table.")
def search(aoi, start, end, year, catalog, max_cloud, as_json):
    """List the scenes `predict` would use (stdout); exits non-zero when there are none."""
    from treemap.aoi import read_aoi
    from treemap.dates import default_year
    from treemap.stac.search import date_window, scene_table
    from treemap.tiles import find_scenes

    start, end = year_window(year, start, end)
    start, end = date_window(start, end, default_year(catalog))
    scenes = find_scenes(catalog, read_aoi(aoi), start, end, max_cloud)
    lines = [json.dumps(scene.to_record()) for scene in scenes] if as_json else scene_table(scenes)
    click.echo("\n".join(lines))
    log.info("%d scenes", len(scenes))


@cli.command()
@click.argument("species_list", metavar="LIST")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (species, their colours, the genus, "
              "family and leaf-type groups) instead of a table.")
def species(species_list, as_json):
    """Show the taxonomy of a species list (a CSV, or 'demo') and each species' map colour."""
    from treemap.styles import species_legend, species_table
    from treemap.taxonomy import species_list_from

    taxa = species_list_from(species_list)
    click.echo(json.dumps(species_legend(taxa)) if as_json else species_table(taxa))
    log.info("%d species, %d genera, %d families, %d leaf types", len(taxa), *(len(taxa.groups(level)[0])
             for level in ("genus", "family", "level0")))


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
@click.option("--aux", "aux", type=click.Path(path_type=Path), metavar="LAYERS.yaml",
              help="Auxiliary layers as predict --aux takes them (map with the same file).")
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--encoder", type=click.Choice(["geotreeclip", "seco-eco"]), default="geotreeclip", show_default=True,
              help="Whose features the head is fitted on: GeoTreeCLIP's location embedding, or SeCo-Eco's features "
                   "of the point's cell as `embed --encoder seco-eco` maps it (--model: a SeCo-Eco file).")
@seco_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary instead of the head's path.")
@click.pass_context
def fewshot(ctx, points, model_ref, catalog, kind, old_kind, year, taxonomy, out, batch_size, aux, device, encoder,
            chip, stride, season, as_json):
    """Fit a few-shot species head from labelled points; use it with `predict --head`."""
    from treemap.fewshot import FewShotRequest, fit_from_points
    from treemap.devices import check_device

    if old_kind is not None:
        kind = _deprecated_head_kind(ctx, old_kind)
    check_device(device)
    seco = seco_spec(chip, stride, season, aux, year or 0) if encoder == "seco-eco" else None
    layers = None
    if aux is not None:
        from treemap.auxiliary import read_layer_set

        layers = read_layer_set(aux)
    result = fit_from_points(FewShotRequest(points=points, model=model_ref, catalog=catalog, kind=kind, out=out,
                                            year=year, taxonomy=taxonomy, batch_size=batch_size, device=device,
                                            aux=layers, encoder=encoder, seco=seco))
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
    "seco-eco": ("train.seco_eco", "Pretrain SeCo-Eco on seasonal composites or sample shards."),
    "probe": ("train.probe", "Probe frozen encoder features: k-NN and a linear probe."),
    "sample": ("train.sample", "SSL4Eco sampling: locations, seasons, scenes, patch shards."),
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
