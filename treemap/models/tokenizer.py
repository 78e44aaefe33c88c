"""Offline CLIP byte-pair-encoding tokenizer for the GeoTreeCLIP text tower.

The text tower of GeoTreeCLIP is the CLIP text transformer, so prompts must be turned into the ids of OpenAI's CLIP
vocabulary. The merge table ships with treemap (``data/bpe_simple_vocab_16e6.txt.gz``, MIT licence, see
``data/LICENSE-clip-bpe``); nothing is downloaded and no other package is imported.

The ids agree with open_clip's ``tokenize``: ``[49406] + bpe(clean(text)) + [49407]``, zero padding up to the context
length, and an over-long sequence cut to the context length with its last id replaced by 49407.

Text cleaning: the reference runs ``ftfy.fix_text`` before everything else. treemap does not depend on ftfy; it applies
the parts of ftfy's default fixes that concern well-formed text (HTML entities, C1 controls read as Windows-1252,
Latin ligatures, full-width characters, curly quotes, terminal escapes, control characters, NFC normalisation).
Text with mojibake (UTF-8 decoded as Latin-1 and the like), which ftfy repairs, is the one case where the ids can
differ from the reference; species names do not contain it.
"""

from __future__ import annotations

import gzip
import html
import re
import unicodedata
from collections.abc import Iterable, Sequence
from functools import lru_cache
from importlib import resources

import torch

SOT_ID = 49406
"""Id of ``<start_of_text>``."""
EOT_ID = 49407
"""Id of ``<end_of_text>`` (the CLIP text tower pools its output here)."""
CONTEXT_LENGTH = 77
VOCAB_SIZE = 49408

_VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
_N_MERGES = 49152 - 256 - 2  # merges used by CLIP: the vocabulary is 256 bytes x 2 + merges + 2 special tokens
_SPECIALS = ("<start_of_text>", "<end_of_text>")
_CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")

# The parts of ftfy's default fix_text that concern well-formed text (same character tables as ftfy 6.3).
_QUOTES = {0x02BC: "'", **{c: "'" for c in range(0x2018, 0x201C)}, **{c: '"' for c in range(0x201C, 0x2020)}}
_LIGATURES = {
    0x0132: "IJ", 0x0133: "ij", 0x0149: "\u02bcn", 0x01F1: "DZ", 0x01F2: "Dz", 0x01F3: "dz",
    0x01C4: "D\u017d", 0x01C5: "D\u017e", 0x01C6: "d\u017e", 0x01C7: "LJ", 0x01C8: "Lj", 0x01C9: "lj",
    0x01CA: "NJ", 0x01CB: "Nj", 0x01CC: "nj", 0xFB00: "ff", 0xFB01: "fi", 0xFB02: "fl", 0xFB03: "ffi",
    0xFB04: "ffl", 0xFB05: "\u017ft", 0xFB06: "st",
}
_WIDTH = {0x3000: " "}
_WIDTH.update(
    (c, unicodedata.normalize("NFKC", chr(c)))
    for c in range(0xFF01, 0xFFF0)
    if unicodedata.normalize("NFKC", chr(c)) != chr(c)
)
_CONTROLS = dict.fromkeys(
    [*range(0x00, 0x09), 0x0B, *range(0x0E, 0x20), 0x7F, *range(0x206A, 0x2070), 0xFEFF, *range(0xFFF9, 0xFFFD)]
)
_C1 = {}
for _c in range(0x80, 0xA0):
    try:
        _C1[_c] = bytes([_c]).decode("cp1252")
    except UnicodeDecodeError:  # bytes that cp1252 leaves undefined stay as they are
        pass
_TERMINAL_ESCAPE = re.compile(r"\x1b\[[\d;]*[A-Za-z]")


def _is_kept_byte(b: int) -> bool:
    """Bytes that are printable Latin-1 characters and stand for themselves in the byte alphabet."""
    return 0x21 <= b <= 0x7E or 0xA1 <= b <= 0xAC or 0xAE <= b <= 0xFF


def _byte_symbols() -> list[str]:
    """One printable character per byte value, indexed by byte (the GPT-2/CLIP reversible byte alphabet).

    Kept bytes stand for themselves; the other 68 are mapped, in increasing byte order, to code points 256, 257, ...
    """
    symbols: list[str] = []
    extra = 0
    for byte in range(256):
        if _is_kept_byte(byte):
            symbols.append(chr(byte))
        else:
            symbols.append(chr(256 + extra))
            extra += 1
    return symbols


def _base_alphabet_order() -> list[int]:
    """Byte values in the order CLIP numbers them: the kept bytes first, then the remapped ones."""
    return [b for b in range(256) if _is_kept_byte(b)] + [b for b in range(256) if not _is_kept_byte(b)]


def fix_text(text: str) -> str:
    """The cleaning applied before tokenising (see the module docstring for its relation to ftfy)."""
    for _ in range(8):  # ftfy repeats its fixes until the text stops changing
        before = text
        if "<" not in text:  # text that looks like HTML keeps its entities at this stage
            text = html.unescape(text)
        text = text.translate(_C1).translate(_LIGATURES).translate(_WIDTH).translate(_QUOTES)
        text = _TERMINAL_ESCAPE.sub("", text).translate(_CONTROLS)
        text = unicodedata.normalize("NFC", text)
        if text == before:
            break
    text = html.unescape(html.unescape(text))
    return text.strip()


def clean(text: str) -> str:
    """Fix, collapse whitespace and lower-case: the text that is split into words."""
    return " ".join(fix_text(text).split()).lower()


def _kind(ch: str) -> str:
    cat = unicodedata.category(ch)
    if cat[0] == "L":
        return "L"
    if cat[0] == "N":
        return "N"
    if ch.isspace():
        return "S"
    return "P"


def split_words(text: str) -> list[str]:
    """Pre-tokenise cleaned text into CLIP words.

    At each position the first rule that applies wins: a special token, an English contraction suffix, a run of
    letters, a single digit, a run of other non-space characters; whitespace is skipped.
    """
    words: list[str] = []
    i, n = 0, len(text)
    while i < n:
        for special in _SPECIALS:
            if text.startswith(special, i):
                words.append(special)
                i += len(special)
                break
        else:
            if text[i] == "'":
                low = text[i:i + 3].lower()
                hit = next((c for c in _CONTRACTIONS if low.startswith(c)), None)
                if hit is not None:
                    words.append(text[i:i + len(hit)])
                    i += len(hit)
                    continue
            kind = _kind(text[i])
            if kind == "S":
                i += 1
            elif kind == "N":
                words.append(text[i])
                i += 1
            else:
                j = i + 1
                if kind == "L":
                    while j < n and _kind(text[j]) == "L":
                        j += 1
                else:
                    # A run of punctuation ends at whitespace, a letter or a digit. (A special token in the
                    # middle of such a run is not split out, as in the regular-expression original.)
                    while j < n and _kind(text[j]) == "P":
                        j += 1
                words.append(text[i:j])
                i = j
    return words


class ClipTokenizer:
    """CLIP BPE tokenizer reading a gzip merge table (the one shipped with treemap by default)."""

    def __init__(self, merges_text: str):
        lines = merges_text.split("\n")[1 : _N_MERGES + 1]  # first line is a version header
        merges = [tuple(line.split()) for line in lines]
        if len(merges) != _N_MERGES or any(len(m) != 2 for m in merges):
            raise ValueError("the CLIP BPE merge table is truncated or malformed")
        self._byte_symbols = _byte_symbols()
        base = [self._byte_symbols[b] for b in _base_alphabet_order()]
        vocab = base + [s + "</w>" for s in base] + ["".join(m) for m in merges] + list(_SPECIALS)
        self.encoder: dict[str, int] = {tok: i for i, tok in enumerate(vocab)}
        self.decoder: dict[int, str] = {i: tok for tok, i in self.encoder.items()}
        self._ranks: dict[tuple[str, str], int] = {m: r for r, m in enumerate(merges)}
        self.vocab_size = len(vocab)
        self.sot_id = self.encoder[_SPECIALS[0]]
        self.eot_id = self.encoder[_SPECIALS[1]]
        self._bpe = lru_cache(maxsize=65536)(self._bpe_uncached)

    @classmethod
    def from_file(cls, path) -> "ClipTokenizer":
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            return cls(fh.read())

    def _bpe_uncached(self, word: str) -> tuple[str, ...]:
        """Merge the byte symbols of one word, lowest-ranked pair first, until no known pair is left."""
        if word in _SPECIALS:
            return (word,)
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            best_rank, best = None, None
            for pair in zip(parts, parts[1:]):
                rank = self._ranks.get(pair)
                if rank is not None and (best_rank is None or rank < best_rank):
                    best_rank, best = rank, pair
            if best is None:
                break
            merged: list[str] = []
            k = 0
            while k < len(parts):
                if k + 1 < len(parts) and parts[k] == best[0] and parts[k + 1] == best[1]:
                    merged.append(best[0] + best[1])
                    k += 2
                else:
                    merged.append(parts[k])
                    k += 1
            parts = merged
        return tuple(parts)

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` without the start and end tokens."""
        ids: list[int] = []
        for word in split_words(clean(text)):
            if word in _SPECIALS:
                ids.append(self.encoder[word])
                continue
            symbols = "".join(self._byte_symbols[b] for b in word.encode("utf-8"))
            ids.extend(self.encoder[piece] for piece in self._bpe(symbols))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of a sequence of ids (special tokens are kept as their names)."""
        byte_of = {s: b for b, s in enumerate(self._byte_symbols)}
        out = bytearray()
        for i in ids:
            token = self.decoder[int(i)]
            if token in _SPECIALS:
                out.extend(token.encode("utf-8"))
                continue
            end_of_word = token.endswith("</w>")
            out.extend(byte_of[ch] for ch in token.removesuffix("</w>"))
            if end_of_word:
                out.extend(b" ")
        return out.decode("utf-8", errors="replace").strip()

    def __call__(self, texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH) -> torch.LongTensor:
        if isinstance(texts, str):
            texts = [texts]
        if context_length < 2:
            raise ValueError("context_length must be at least 2")
        out = torch.zeros(len(texts), context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.sot_id, *self.encode(text), self.eot_id]
            if len(ids) > context_length:
                ids = ids[: context_length - 1] + [self.eot_id]
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out


@lru_cache(maxsize=1)
def default_tokenizer() -> ClipTokenizer:
    """The tokenizer over the vocabulary shipped in ``treemap/models/data`` (loaded once)."""
    ref = resources.files("treemap.models") / "data" / _VOCAB_FILE
    with resources.as_file(ref) as path:
        return ClipTokenizer.from_file(path)


def tokenize(texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH) -> torch.LongTensor:
    """Token ids, shape ``(len(texts), context_length)``, as open_clip's ``tokenize`` gives them."""
    return default_tokenizer()(texts, context_length=context_length)
