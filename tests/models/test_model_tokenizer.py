"""The shipped CLIP tokenizer gives the same ids as open_clip's ``tokenize``.

The reference is open_clip's ``tokenizer.py`` loaded by file path from the open_clip_torch wheel (or from an installed
open_clip), never by importing the ``open_clip`` package, whose ``__init__`` needs torchvision. It needs the test-only
packages ``ftfy`` and ``regex``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from treemap.models.tokenizer import EOT_ID, SOT_ID, VOCAB_SIZE, default_tokenizer, tokenize

DATA = Path(__file__).parent / "data"
WHEEL_CANDIDATES = [
    os.environ.get("TREEMAP_OPEN_CLIP_WHEEL", ""),
    str(Path(__file__).resolve().parents[2] / ".venv" / "test-wheels" / "open_clip_torch-3.3.0-py3-none-any.whl"),
]


def _taxa() -> list[str]:
    lines = (DATA / "globalgeotree_10keval_taxa.txt").read_text(encoding="utf-8").splitlines()
    return [line for line in lines if line and not line.startswith("#")]


def _reference_source(tmp: Path) -> Path | None:
    """Path of open_clip's tokenizer.py next to its vocabulary file, or None."""
    for wheel in WHEEL_CANDIDATES:
        if wheel and Path(wheel).is_file():
            with zipfile.ZipFile(wheel) as zf:
                for name in ("open_clip/tokenizer.py", "open_clip/bpe_simple_vocab_16e6.txt.gz"):
                    (tmp / Path(name).name).write_bytes(zf.read(name))
            return tmp / "tokenizer.py"
    spec = importlib.util.find_spec("open_clip")  # locates the package without running its __init__
    if spec is not None and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]) / "tokenizer.py"
        if path.is_file():
            return path
    return None


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    for dep in ("ftfy", "regex"):
        if importlib.util.find_spec(dep) is None:
            pytest.skip(f"tokenizer parity needs the test-only package {dep!r} (pip install ftfy regex)")
    source = _reference_source(tmp_path_factory.mktemp("open_clip_ref"))
    if source is None:
        pytest.skip("tokenizer parity needs open_clip's tokenizer.py: "
                    "set TREEMAP_OPEN_CLIP_WHEEL to an open_clip_torch wheel")
    spec = importlib.util.spec_from_file_location("_open_clip_tokenizer_reference", source)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(spec.name, None)
    return module.tokenize


def test_special_ids_and_vocab_size():
    tok = default_tokenizer()
    assert (tok.sot_id, tok.eot_id, tok.vocab_size) == (SOT_ID, EOT_ID, VOCAB_SIZE) == (49406, 49407, 49408)


def test_layout_padding_and_truncation():
    ids = tokenize(["Fagus sylvatica", "tree " * 200], context_length=77)
    assert ids.dtype == torch.long and ids.shape == (2, 77)
    n = int((ids[0] != 0).sum())
    assert ids[0, 0] == SOT_ID and ids[0, n - 1] == EOT_ID and (ids[0, n:] == 0).all()
    assert ids[1, 0] == SOT_ID and ids[1, -1] == EOT_ID and (ids[1] != 0).all()
    assert tokenize("Fagus sylvatica").shape == (1, 77)


def test_decode_round_trip():
    tok = default_tokenizer()
    text = "Deciduous Broadleaf / Fagaceae / Fagus / Fagus sylvatica"
    assert tok.decode(tok.encode(text)) == text.lower()


def test_parity_with_open_clip_on_globalgeotree_taxa(reference):
    taxa = _taxa()
    assert len(taxa) > 1000
    ours = tokenize(taxa)
    theirs = reference(taxa)
    mismatched = [t for t, a, b in zip(taxa, ours, theirs) if not torch.equal(a, b)]
    assert not mismatched, f"{len(mismatched)} taxa differ, e.g. {mismatched[:3]}"


EDGE_CASES = [
    "Abies × borisii-regis",
    "Sorbus aucuparia ‘Joseph Rock’ isn’t “curly”",
    "  Quercus   ROBUR\t\n ",
    "it's they're we've I'm you'll he'd 'S",
    "Café naïve Æsculus ﬁcus ＦＵＬＬ",
    "Acer 2024 ½ ² x10 #$%&*!? ..'s",
    "Tom &amp; Jerry &lt;3 &amp;amp;",
    "<end_of_text> inside <start_of_text>text",
    "Ελληνικά 中文 русский 日本語のテキスト",
    "emoji 🌲🌳 tree",
    "",
    "word " * 100,
]


def test_parity_with_open_clip_on_edge_cases(reference):
    for text in EDGE_CASES:
        for context_length in (77, 8):
            assert torch.equal(tokenize([text], context_length), reference([text], context_length)), text
