"""Added and special tokens, and splitting text on them before SentencePiece sees it."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["SPECIAL_TOKEN_NAMES", "AddedToken", "TokenSplitter", "as_added_token"]

# The named special tokens, in transformers' order (the order new ids are given out in).
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


@dataclass(frozen=True)
class AddedToken:
    """A token matched in the text before SentencePiece runs (same fields as transformers' AddedToken).

    Attributes:
        content: the token's text.
        single_word: match only when not inside a word.
        lstrip / rstrip: the match also swallows whitespace on its left / right.
        normalized: match against the (lowercased, when do_lower_case) text rather than the raw text.
        special: a special token ([CLS], [MASK], ...): skipped by ``decode(skip_special_tokens=True)``.
    """

    content: str
    single_word: bool = False
    lstrip: bool = False
    rstrip: bool = False
    normalized: bool = False
    special: bool = False

    def __str__(self) -> str:
        return self.content

    def to_dict(self) -> dict[str, Any]:
        """The JSON form transformers writes in ``added_tokens_decoder``."""
        return asdict(self)


def as_added_token(value: Any, *, special: bool | None = None) -> AddedToken:
    """Convert a str, a dict (transformers' JSON form) or an AddedToken-like object to an AddedToken.

    ``special`` overrides the flag when given; a plain string becomes a non-normalized token.
    """
    if isinstance(value, AddedToken):
        token = value
    elif isinstance(value, str):
        token = AddedToken(value)
    elif isinstance(value, dict):
        fields = {k: v for k, v in value.items() if k in AddedToken.__dataclass_fields__}
        if not isinstance(fields.get("content"), str):
            raise ValueError(f"added token {value!r} has no string 'content'")
        token = AddedToken(**fields)
    elif isinstance(getattr(value, "content", None), str):  # transformers / tokenizers AddedToken
        token = AddedToken(
            value.content,
            single_word=bool(getattr(value, "single_word", False)),
            lstrip=bool(getattr(value, "lstrip", False)),
            rstrip=bool(getattr(value, "rstrip", False)),
            normalized=bool(getattr(value, "normalized", False)),
            special=bool(getattr(value, "special", False)),
        )
    else:
        raise TypeError(f"a token must be a str or an AddedToken, got {type(value).__name__}")
    if not token.content:
        raise ValueError("an added token cannot be empty")
    if special is not None and token.special != special:
        token = AddedToken(**{**asdict(token), "special": special})
    return token


def _pattern(tokens: list[tuple[int, AddedToken, str]]) -> tuple[re.Pattern, list[int]] | None:
    """One alternation, longest content first, so the leftmost match is also the longest there.

    Each alternative is a capturing group; ``match.lastindex`` names the token that matched.
    """
    if not tokens:
        return None
    parts, ids = [], []
    for index, token, text in sorted(tokens, key=lambda item: -len(item[2])):
        part = re.escape(text)
        if token.single_word:
            part = rf"(?<!\w){part}(?!\w)"
        if token.lstrip:
            part = r"\s*" + part
        if token.rstrip:
            part = part + r"\s*"
        parts.append(f"({part})")
        ids.append(index)
    return re.compile("|".join(parts)), ids


class TokenSplitter:
    """Finds added tokens in text: raw-text tokens first, then normalized ones in lowercased segments.

    The split methods return ``(start, end, token_id)`` for an added token and ``(start, end, None)`` for
    the text between tokens (empty ranges are dropped).
    """

    def __init__(self, tokens: dict[int, AddedToken], do_lower_case: bool, skip_special: bool = False):
        raw, normalized = [], []
        for index, token in tokens.items():
            if skip_special and token.special:
                continue
            if token.normalized:
                normalized.append((index, token, token.content.lower() if do_lower_case else token.content))
            else:
                raw.append((index, token, token.content))
        self.raw = _pattern(raw)
        self.normalized = _pattern(normalized)
        # A match must contain a token's first character; "[" in text is much cheaper than the regex scan.
        self._raw_first = "".join({text[0] for _, _, text in raw})

    @staticmethod
    def _split(compiled, text: str) -> list[tuple[int, int, int | None]]:
        if compiled is None:
            return [(0, len(text), None)] if text else []
        pattern, ids = compiled
        out, pos = [], 0
        for match in pattern.finditer(text):
            if match.start() > pos:
                out.append((pos, match.start(), None))
            out.append((match.start(), match.end(), ids[match.lastindex - 1]))
            pos = match.end()
        if pos < len(text):
            out.append((pos, len(text), None))
        return out

    def has_raw_match(self, text: str) -> bool:
        """Whether any non-normalized token occurs in ``text`` (the common fast path is a no)."""
        if self.raw is None or not any(char in text for char in self._raw_first):
            return False
        return self.raw[0].search(text) is not None

    def split_raw(self, text: str) -> list[tuple[int, int, int | None]]:
        """Split ``text`` on the non-normalized tokens (matched in the raw text)."""
        return self._split(self.raw, text)

    def split_normalized(self, text: str) -> list[tuple[int, int, int | None]]:
        """Split an already lowercased (when do_lower_case) segment on the normalized tokens."""
        return self._split(self.normalized, text)
