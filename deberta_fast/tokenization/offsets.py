"""Text preprocessing with character alignment, and transformers-style token offsets.

SentencePiece reports, for every piece, the span of input characters it came from. transformers'
DeBERTa-v2 tokenizer (a ``tokenizers`` Metaspace pipeline) reports slightly different spans for the same
pieces, and deberta_fast reproduces those:

* a "▁" that stands for whitespace covers the last whitespace character before the next word, or the CR of a
  last CR LF pair where the model has normalization rules (the tokenizers library normalizes a CR LF, one
  grapheme cluster, as one unit: transformers 5.25 with the model's rules);
* a "▁" SentencePiece prepends to the first word (the dummy prefix) covers that word's first character;
* a character composed by NFC normalization (``e`` + U+0301 -> ``é``) covers only its first source character.
"""

from __future__ import annotations

import string
import unicodedata
from collections.abc import Callable

__all__ = ["lower_with_map", "map_span", "piece_offsets", "punctuation_pattern", "split_on_punctuation"]

SPACE_PIECE = "\u2581"
_LAST_PUNCTUATION_PLANE_END = 0x20000
_punctuation = None


def lower_with_map(text: str) -> tuple[str, list[int] | None]:
    """``text.lower()`` and, when lowercasing changed the length, the source index of every output char."""
    lowered = text.lower()
    if len(lowered) == len(text):
        return lowered, None
    index: list[int] = []
    for i, char in enumerate(text):
        index.extend([i] * len(char.lower()))
    return lowered, index


def map_span(span: tuple[int, int], index: list[int] | None, length: int) -> tuple[int, int]:
    """Map a [start, end) span of lowercased text back to the source text (see ``lower_with_map``)."""
    if index is None:
        return span
    start, end = span
    if end > start:
        return index[start], index[end - 1] + 1
    source = index[start] if start < len(index) else length
    return source, source


def punctuation_pattern():
    """Compiled regex of one punctuation character: ASCII punctuation or a Unicode P* category.

    Built once, lazily, and shared by every tokenizer. Planes 0 and 1 are scanned: no P* character lies
    beyond them (the last is U+1E95F in Unicode 14 and 15).
    """
    global _punctuation
    if _punctuation is None:
        import re

        ranges, start = [], None
        for code in range(_LAST_PUNCTUATION_PLANE_END + 1):
            is_punct = code < _LAST_PUNCTUATION_PLANE_END and (
                chr(code) in string.punctuation or unicodedata.category(chr(code)).startswith("P")
            )
            if is_punct and start is None:
                start = code
            elif not is_punct and start is not None:
                ranges.append((start, code - 1))
                start = None
        body = "".join(re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in ranges)
        _punctuation = re.compile(f"[{body}]")
    return _punctuation


def split_on_punctuation(text: str) -> list[tuple[int, int]]:
    """Spans of ``text`` with every punctuation character on its own (DeBERTa's split_by_punct)."""
    spans, pos = [], 0
    for match in punctuation_pattern().finditer(text):
        if match.start() > pos:
            spans.append((pos, match.start()))
        spans.append((match.start(), match.end()))
        pos = match.end()
    if pos < len(text):
        spans.append((pos, len(text)))
    return spans


def _is_hangul_vt(char: str) -> bool:
    return "\u1161" <= char <= "\u11c2"


def _composed_end(chunk: str, start: int, end: int) -> int:
    """transformers' end for a piece whose last char may be an NFC composition of several source chars."""
    first = end - 1
    while first > start and (unicodedata.combining(chunk[first]) or _is_hangul_vt(chunk[first])):
        first -= 1
    if first < end - 1 and len(unicodedata.normalize("NFC", chunk[first:end])) == 1:
        return first + 1
    return end


def _unit_start(chunk: str, last: int, joins: Callable[[str, str], bool] | None) -> int:
    """The first character of the normalization unit that ends at ``chunk[last]`` (a word boundary)."""
    while joins is not None and last > 0 and joins(chunk[last - 1], chunk[last]):
        last -= 1
    return last


def piece_offsets(
    chunk: str,
    pieces: list[str],
    spans: list[tuple[int, int]],
    is_space: Callable[[str], bool],
    joins: Callable[[str, str], bool] | None = None,
) -> list[tuple[int, int]]:
    """Convert SentencePiece's per-piece character spans in ``chunk`` to transformers' offsets.

    Args:
        chunk: the text given to SentencePiece.
        pieces: its pieces (unknown pieces as their surface text, as sentencepiece returns them).
        spans: SentencePiece's [begin, end) character span of each piece in ``chunk``.
        is_space: whether SentencePiece folds a character into a word boundary (whitespace, or a
            character it deletes).
        joins: whether two such characters in a row are one unit, aligned with the first; None: never.
    """
    composed = not unicodedata.is_normalized("NFC", chunk)
    size = len(chunk)
    out = []
    for piece, (begin, end) in zip(pieces, spans):
        if composed and end > begin:
            end = _composed_end(chunk, begin, end)
        if piece[0] != SPACE_PIECE:
            if end == begin and begin < size:
                end = begin + 1  # a character produced by normalization ("…" -> "...") covers its source
            out.append((begin, end))
        elif len(piece) == 1:
            # a lone "▁": the next word starts where its span ends (zero-width: the dummy prefix)
            start = _unit_start(chunk, end - 1, joins) if end > 0 else 0
            out.append((start, start + 1))
        elif end - begin == len(piece) and chunk[begin] == " " and not is_space(chunk[begin + 1]):
            out.append((begin, end))  # the common case: "▁word" after exactly one space
        else:
            word = begin
            while word < end and is_space(chunk[word]):
                word += 1
            out.append((_unit_start(chunk, word - 1, joins) if word > 0 else 0, end))
    return out
