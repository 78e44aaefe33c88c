"""Evaluation of a GeoTreeCLIP model the way the GlobalGeoTree paper does it.

    python -m train.evaluate --model MODEL --shards DIR --species GlobalGeoTree-10kEval-90.csv \
        [--few-shot 1 3] [--out report.json] [--markdown report.md]
    treemap train evaluate ...  (the same program)

* Zero-shot: every sample's location embedding against the text embeddings of all candidate species (the species
  list); top-1 and top-5 accuracy at species, genus and family level, where the genus and family predictions are
  those of the predicted species (top-5 genus: the true genus is the genus of one of the 5 best species).
* Breakdown by the ``Category`` column of the species list (Frequent / Common / Rare in the 10kEval lists); a list
  without it gives only the overall figures. Samples whose species is not in the list are counted, not scored.
* Few-shot (``--few-shot 1 3``): per species, ``k`` samples (seeded) form the support set; a copy of the model is
  fine-tuned on it with the contrastive loss (location encoders at ``--ft-lr``, text tower at a tenth of it, as in
  the official fine-tuning), then scored on the remaining samples (the query set), next to the zero-shot figures
  of the same query set.

Models with the official per-batch normalisation are scored in batches of ``--batch-size`` in shard order (their
outputs depend on the batch); models with fixed normalisation do not depend on it.

Output: a JSON report and a Markdown table (stdout, or ``--markdown``).
"""

from __future__ import annotations

import argparse
import copy
import logging
import random
import sys
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from treemap.documents import read_csv_rows
from treemap.errors import SpeciesListError, TreemapError
from treemap.shards import Sample, list_shards, read_shard
from treemap.taxonomy import SpeciesList, Taxon, load_species_list

log = logging.getLogger("train.evaluate")

LEVELS = ("species", "genus", "family")


@dataclass(frozen=True)
class EvalSet:
    samples: list[Sample]
    species: SpeciesList
    categories: dict[str, str]  # species -> category ("" when the list has none)


def read_categories(path: str | Path) -> dict[str, str]:
    """``level3_species`` (or ``species``) -> ``Category`` of a species list CSV; empty without that column."""
    header, rows = read_csv_rows(path, what="species list", error=SpeciesListError)
    col = next((c for c in ("level3_species", "species") if c in header), None)
    if col is None or "Category" not in header:
        return {}
    return {row[col].strip(): row["Category"].strip() for row in rows if row.get(col)}


def load_eval_set(shards, species_csv: str | Path | None = None) -> EvalSet:
    samples = [s for path in list_shards(shards) for s in read_shard(path)]
    if not samples:
        raise TreemapError("the evaluation shards hold no samples")
    if species_csv is not None:
        species = load_species_list(species_csv)
        categories = read_categories(species_csv)
    else:
        seen: dict[str, Taxon] = {}
        for s in samples:
            t = s.text
            seen.setdefault(t["level3_species"], Taxon(t["level0"], t["level1_family"], t["level2_genus"],
                                                       t["level3_species"]))
        species = SpeciesList(tuple(seen.values()), name="shards")
        categories = {}
    return EvalSet(samples, species, categories)


# -- embeddings and scores --------------------------------------------------------------------------------------------
@torch.no_grad()
def location_embeddings(model, samples: list[Sample], batch_size: int = 256, device: str | torch.device = "cpu"
                        ) -> torch.Tensor:
    """``(N, E)`` location embeddings, batches in the given order."""
    model = model.to(device).eval()
    out = []
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if torch.device(device).type == "cuda" else nullcontext()
    for i in range(0, len(samples), batch_size):
        chunk = samples[i:i + batch_size]
        images = torch.stack([s.images for s in chunk]).to(device)
        aux = torch.stack([s.aux_tensor() for s in chunk]).to(device)
        with autocast:
            out.append(model.encode_location(images, aux).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def text_embeddings(model, species: SpeciesList, batch_size: int = 256) -> torch.Tensor:
    model.eval()
    prompts = list(species.prompts)
    return torch.cat([model.encode_prompts(prompts[i:i + batch_size]).float().cpu()
                      for i in range(0, len(prompts), batch_size)])


def ranked_species(location: torch.Tensor, text: torch.Tensor, k: int = 5) -> torch.Tensor:
    """Indices ``(N, k)`` of the best ``k`` candidate species by cosine similarity."""
    sims = torch.nn.functional.normalize(location, dim=-1) @ torch.nn.functional.normalize(text, dim=-1).T
    return sims.topk(min(k, sims.shape[1]), dim=1).indices


def accuracy(ranked: torch.Tensor, truth: list[Taxon], species: SpeciesList) -> dict:
    """Top-1 / top-5 at species, genus and family level (genus and family of the predicted species)."""
    taxa = species.taxa
    out = {"n": len(truth)}
    for level in LEVELS:
        top1 = top5 = 0
        for row, t in zip(ranked.tolist(), truth):
            want = getattr(t, level)
            got = [getattr(taxa[i], level) for i in row]
            top1 += got[0] == want
            top5 += want in got[:5]
        n = max(1, len(truth))
        out[level] = {"top1": top1 / n, "top5": top5 / n}
    return out


def score(model, samples: list[Sample], species: SpeciesList, categories: dict[str, str], batch_size: int = 256,
          device="cpu", text: torch.Tensor | None = None) -> dict:
    """Zero-shot figures of ``samples`` overall and per category."""
    index = {t.species: i for i, t in enumerate(species.taxa)}
    scored = [s for s in samples if s.text["level3_species"] in index]
    result: dict = {"not_in_list": len(samples) - len(scored)}
    if not scored:
        result["all"] = {"n": 0}
        return result
    loc = location_embeddings(model, scored, batch_size, device)
    if text is None:
        text = text_embeddings(model, species)
    ranked = ranked_species(loc, text)
    truth = [species.taxa[index[s.text["level3_species"]]] for s in scored]
    result["all"] = accuracy(ranked, truth, species)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(scored):
        cat = categories.get(s.text["level3_species"], "")
        if cat:
            groups[cat].append(i)
    for cat, idx in sorted(groups.items()):
        result[cat] = accuracy(ranked[idx], [truth[i] for i in idx], species)
    return result


# -- few-shot -------------------------------------------------------------------------------------------------------
def split_shots(samples: list[Sample], shots: int, seed: int = 0) -> tuple[list[Sample], list[Sample]]:
    """Per species, ``shots`` support samples (seeded choice); the rest is the query set."""
    by_species: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        by_species[s.text["level3_species"]].append(i)
    rng = random.Random(f"shots:{seed}:{shots}")
    support: set[int] = set()
    for name in sorted(by_species):
        idx = by_species[name]
        support.update(rng.sample(idx, min(shots, len(idx))))
    return ([samples[i] for i in sorted(support)], [s for i, s in enumerate(samples) if i not in support])


def finetune(model, support: list[Sample], *, epochs: int = 10, lr: float = 1e-5, batch_size: int = 128,
             temperature: float = 0.07, seed: int = 0, device="cpu"):
    """A fine-tuned copy of ``model``: contrastive loss on the support set (location encoders at ``lr``, the text
    tower at ``lr / 10``), AdamW, gradient clipping at 1."""
    from train.fastpath import folded_month_encoder
    from train.geotreeclip import FROZEN, PromptTokens, contrastive_loss
    from treemap.shards import collate

    tuned = copy.deepcopy(model).to(device).train()
    text_params, other = [], []
    for name, p in tuned.named_parameters():
        p.requires_grad_(not name.startswith(FROZEN))
        if p.requires_grad:
            (text_params if name.startswith("text_encoder.") else other).append(p)
    optimizer = torch.optim.AdamW([{"params": other, "lr": lr}, {"params": text_params, "lr": lr * 0.1}],
                                  weight_decay=1e-4)
    tokens = PromptTokens(tuned.config.context_length)
    rng = random.Random(f"finetune:{seed}")
    order = list(range(len(support)))
    with folded_month_encoder(tuned):
        for _ in range(epochs):
            rng.shuffle(order)
            for i in range(0, len(order), batch_size):
                chunk = [support[j] for j in order[i:i + batch_size]]
                if len(chunk) < 2:
                    continue
                loss = contrastive_loss(tuned, collate(chunk), tokens, torch.device(device), temperature, "sample",
                                        nullcontext())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(other + text_params, 1.0)
                optimizer.step()
    return tuned.eval()


# -- report -----------------------------------------------------------------------------------------------------------
def evaluate(model_path: str | Path, shards, species_csv: str | Path | None = None, *, shots: tuple[int, ...] = (),
             batch_size: int = 256, ft_epochs: int = 10, ft_lr: float = 1e-5, seed: int = 0,
             device: str = "cpu") -> dict:
    from treemap.models import load_model

    model, card = load_model(model_path)
    data = load_eval_set(shards, species_csv)
    report = {"model": str(model_path), "normalisation": card.normalisation,
              "species_list": str(species_csv) if species_csv else "species of the shards",
              "candidates": len(data.species), "samples": len(data.samples),
              "zero_shot": score(model, data.samples, data.species, data.categories, batch_size, device)}
    if shots:
        report["few_shot"] = {}
    for k in shots:
        support, query = split_shots(data.samples, k, seed)
        tuned = finetune(model, support, epochs=ft_epochs, lr=ft_lr, seed=seed, device=device)
        report["few_shot"][str(k)] = {
            "support": len(support), "query": len(query),
            "zero_shot_on_query": score(model, query, data.species, data.categories, batch_size, device),
            "fine_tuned": score(tuned, query, data.species, data.categories, batch_size, device),
        }
    return report


def markdown(report: dict) -> str:
    head = ("| setting | group | n | species top-1 | species top-5 | genus top-1 | genus top-5 | family top-1 | "
            "family top-5 |\n|---|---|---:|---:|---:|---:|---:|---:|---:|")
    rows = []

    def add(setting: str, result: dict) -> None:
        for group, r in result.items():
            if not isinstance(r, dict) or "species" not in r:
                continue
            cells = [f"{100 * r[lv][k]:.1f}" for lv in LEVELS for k in ("top1", "top5")]
            rows.append(f"| {setting} | {group} | {r['n']} | " + " | ".join(cells) + " |")

    add("zero-shot", report["zero_shot"])
    for k, r in report.get("few_shot", {}).items():
        add(f"zero-shot (query of {k}-shot)", r["zero_shot_on_query"])
        add(f"{k}-shot fine-tuned", r["fine_tuned"])
    title = f"Model `{Path(report['model']).name}`, {report['samples']} samples, {report['candidates']} candidates"
    return f"{title}\n\n{head}\n" + "\n".join(rows) + "\n"


def build_parser(prog: str = "python -m train.evaluate") -> argparse.ArgumentParser:
    """The options of ``python -m train.evaluate`` = ``treemap train evaluate``."""
    from train import Parser

    parser = Parser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True,
                        help="the model: a treemap .safetensors, an official GeoTreeCLIP .pth, or 'demo' (the shipped "
                             "demo model)")
    parser.add_argument("--shards", required=True, nargs="+", help="evaluation shards (folders, files, globs)")
    parser.add_argument("--species", help="candidate species list CSV (10kEval format: level0..level3_species, "
                                          "Category), or 'demo'; default: the species of the shards")
    parser.add_argument("--few-shot", nargs="*", type=int, default=[], metavar="K", help="shots, e.g. 1 3")
    parser.add_argument("--batch-size", type=int, default=256,
                        help="samples per encoder batch (default 256; a model with per-batch normalisation "
                             "depends on it)")
    parser.add_argument("--ft-epochs", type=int, default=10)
    parser.add_argument("--ft-lr", type=float, default=1e-5)
    parser.add_argument("--seed", type=int, default=0, help="seed of the few-shot support sets and fine-tuning")
    parser.add_argument("--device", default="auto",
                        help="auto, cpu, cuda, cuda:1 ... (auto, the default: CUDA when this machine has it, else "
                             "the CPU)")
    parser.add_argument("--out", type=Path, help="output file: the JSON report")
    parser.add_argument("--markdown", type=Path, help="Markdown table path (default: stdout)")
    return parser


def _demo_file(folder: str, name: str) -> str:
    """The path of a file shipped in treemap/data (the 'demo' model or species list)."""
    from importlib import resources

    return str(resources.files("treemap.data") / folder / name)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``python -m train.evaluate`` and ``treemap train evaluate``: the report as JSON (``--out``) and Markdown."""
    parser = build_parser(*([prog] if prog else []))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    model = _demo_file("models", "demo-tiny.safetensors") if args.model == "demo" else args.model
    species = _demo_file("species", "demo.csv") if args.species == "demo" else args.species
    try:
        from treemap.devices import check_device

        device = check_device(args.device)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        report = evaluate(model, args.shards, species, shots=tuple(args.few_shot),
                          batch_size=args.batch_size, ft_epochs=args.ft_epochs, ft_lr=args.ft_lr, seed=args.seed,
                          device=device)
    except TreemapError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    table = markdown(report)
    if args.out:
        from treemap.outputs import write_json_atomic

        write_json_atomic(args.out, report)
    if args.markdown:
        args.markdown.write_text(table, encoding="utf-8")
    else:
        sys.stdout.write(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
