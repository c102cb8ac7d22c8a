"""DeBERTa-v2/v3 tokenizer on SentencePiece: transformers' outputs, fast multi-threaded batches.

``DebertaV2Tokenizer`` turns text into model inputs with nothing but the ``sentencepiece`` library:
input_ids, attention_mask, token_type_ids ([CLS] A [SEP] is type 0, B [SEP] type 1), offsets,
special-tokens masks, truncation with overflow windows, padding, and "pt"/"np" tensors. It reads and
writes the tokenizer files transformers uses (spm.model, tokenizer_config.json, special_tokens_map.json,
added_tokens.json, tokenizer.json). Batches are segmented by SentencePiece's multi-threaded batch API.

Parity. For the same spm.model, token ids, attention masks, token type ids, special-token masks, overflow
rows and character offsets are those of transformers' ``DebertaV2Tokenizer`` (5.x, the ``tokenizers``
backend), except where transformers 5.x departs from SentencePiece, i.e. from DeBERTa's own tokenizer and
transformers 4.x's sentencepiece tokenizer. There deberta_fast follows SentencePiece:

* Normalization. transformers 5.x before 5.25 (and 5.25's tokenizer built from a vocabulary) replaces the
  model file's normalization rules (for DeBERTa v2/v3, SentencePiece's ``nmt_nfkc``: NFKC plus its whitespace
  and control-character rules) with NFC and its own whitespace collapsing; 5.25's ``from_pretrained`` keeps
  them (the same ids and offsets as deberta_fast on text of whitespace and the characters the README names;
  not after characters the rules delete, such as U+000B, where the tokenizers library shifts the offsets,
  nor always for a grapheme cluster of several characters, which it normalizes by its first character's
  rule). So in those other 5.x the "fi" ligature, full-width letters, circled digits, no-break and
  ideographic spaces, zero-width spaces and control characters stay unnormalized (usually becoming
  [UNK]), while SentencePiece, DeBERTa and transformers 4.x map them (``ﬁ`` -> ``fi``, ``Ａ`` -> ``A``,
  ``①`` -> ``1``, U+3000 -> space) or drop them. deberta_fast applies the model file's rules.
* Spans encoded on their own. Text between added tokens, and with ``split_by_punct`` each run between
  punctuation characters, is segmented by SentencePiece separately (as DeBERTa's tokenizer does), so
  whitespace at the end of such a span is dropped. transformers 5.x turns it into an extra "▁" token in
  two cases: before a *normalized* added token, and before punctuation with ``split_by_punct=True``
  ("a (b": the pieces of "a", then an extra "▁", then those of "(" and "b"). Special tokens ([CLS],
  [MASK], ...) are not normalized, so this never applies to them.
* Lowercasing (``do_lower_case``) uses ``str.lower`` as DeBERTa and transformers 4.x do; 5.x lowercases
  character by character, which differs only for a word-final Greek capital sigma.
* ``split_special_tokens=True`` hands special tokens to SentencePiece as plain text; 5.x still matches
  [PAD], [CLS], [SEP] and [UNK] whole because they are entries of its Unigram vocabulary.

Where transformers 5.x fails silently or crashes, deberta_fast raises instead: ValueError for a max_length
smaller than the special tokens of a row (5.x skips truncation) and for a stride not smaller than the
tokens left per sequence (5.x panics); IndexError for decoding an id outside the vocabulary (5.x drops
it). ``is_split_into_words`` is not supported.

Offsets follow transformers: a "▁" that stands for whitespace covers the last whitespace character before
its word (of a CR LF there, the CR, as the tokenizers library aligns it under the model's rules: see
``_joins``), the "▁" prepended to a text's first word covers that word's first character, special tokens and
padding are (0, 0). For characters SentencePiece normalizes differently from transformers 5.x (above), the
offsets are SentencePiece's, adjusted by the same two rules.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import sentencepiece

from .tokenization.added_tokens import SPECIAL_TOKEN_NAMES, AddedToken, TokenSplitter, as_added_token
from .tokenization.files import (
    ADDED_TOKENS_FILE,
    SPECIAL_TOKENS_MAP_FILE,
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_FILE,
    VOCAB_FILE,
    atomic_write,
    json_bytes,
    read_pretrained,
    tokenizer_json,
)
from .tokenization.offsets import SPACE_PIECE, lower_with_map, map_span, piece_offsets, split_on_punctuation
from .tokenization.postprocess import (
    LARGE_INTEGER,
    BatchEncoding,
    Piece,
    TruncationParams,
    assemble,
    build_rows,
    normalize_padding,
    normalize_truncation,
)
from .tokenization.spm_proto import CONTROL, USER_DEFINED, ProtoError, parse_model_proto

__all__ = ["AddedToken", "BatchEncoding", "DebertaV2Tokenizer"]

VERY_LARGE_INTEGER = int(1e30)  # transformers' "no model_max_length"


def _load_processor(data: bytes, source: str):
    """Parse and load a model proto; errors name ``source``."""
    try:
        info = parse_model_proto(data)
    except ProtoError as err:
        raise ValueError(f"{source} is not a valid SentencePiece model file ({err})") from None
    processor = sentencepiece.SentencePieceProcessor()
    try:
        processor.LoadFromSerializedProto(data)
    except Exception as err:  # sentencepiece raises RuntimeError/OSError with its own status text
        raise ValueError(f"{source} is not a valid SentencePiece model file ({err})") from None
    return info, processor


_OFFSET_MAPPING: bool | None = None


def _has_offset_mapping(processor) -> bool:
    """Whether this sentencepiece has ``out_type="offset_mapping"`` (0.2.1+); older ones give protos."""
    global _OFFSET_MAPPING
    if _OFFSET_MAPPING is None:
        try:
            processor.encode(["a"], out_type="offset_mapping")
            _OFFSET_MAPPING = True
        except Exception:  # ValueError / RuntimeError("unknown out_type") depending on the version
            _OFFSET_MAPPING = False
    return _OFFSET_MAPPING


def _as_id_list(ids: Any) -> list:
    if hasattr(ids, "tolist"):  # torch.Tensor, numpy.ndarray
        ids = ids.tolist()
    if isinstance(ids, int):
        return [ids]
    return list(ids)


class DebertaV2Tokenizer:
    """SentencePiece tokenizer for DeBERTa-v2/v3 with transformers' ``DebertaV2Tokenizer`` interface.

    Args:
        vocab_file: path to the SentencePiece model (spm.model). Exactly one of vocab_file / model_proto.
        do_lower_case: lowercase the text before tokenizing.
        split_by_punct: segment the text between punctuation characters separately, each punctuation
            character on its own.
        bos_token, eos_token, unk_token, sep_token, pad_token, cls_token, mask_token: the special tokens,
            as str or AddedToken. A token that is a piece of the model keeps the piece's id; any other gets
            the next free id (DeBERTa-v3's [MASK] becomes id 128000).
        additional_special_tokens: more special tokens.
        added_tokens_decoder: {id: AddedToken or its dict} added tokens at fixed ids (tokenizer_config.json).
        model_max_length: the default max_length for truncation / padding="max_length".
        padding_side, truncation_side: "right" or "left".
        clean_up_tokenization_spaces: default of ``decode``'s flag of the same name.
        split_special_tokens: default of ``__call__``'s flag: encode special tokens in text as plain text.
        num_threads: threads for batch segmentation; None uses every CPU this process may run on.
        model_proto: the model file's bytes instead of a path.
    """

    vocab_files_names = {"vocab_file": VOCAB_FILE}
    model_input_names = ["input_ids", "attention_mask", "token_type_ids"]
    SPECIAL_TOKENS_ATTRIBUTES = SPECIAL_TOKEN_NAMES

    def __init__(
        self,
        vocab_file: str | os.PathLike | None = None,
        *,
        do_lower_case: bool = False,
        split_by_punct: bool = False,
        bos_token: str | AddedToken | None = "[CLS]",
        eos_token: str | AddedToken | None = "[SEP]",
        unk_token: str | AddedToken | None = "[UNK]",
        sep_token: str | AddedToken | None = "[SEP]",
        pad_token: str | AddedToken | None = "[PAD]",
        cls_token: str | AddedToken | None = "[CLS]",
        mask_token: str | AddedToken | None = "[MASK]",
        additional_special_tokens: Sequence[str | AddedToken] | None = None,
        added_tokens_decoder: Mapping[int | str, Any] | None = None,
        model_max_length: int | None = None,
        padding_side: str = "right",
        truncation_side: str = "right",
        clean_up_tokenization_spaces: bool = False,
        split_special_tokens: bool = False,
        num_threads: int | None = None,
        model_proto: bytes | None = None,
    ):
        if (vocab_file is None) == (model_proto is None):
            raise ValueError("pass exactly one of vocab_file (path to spm.model) or model_proto (its bytes)")
        if vocab_file is not None:
            path = os.fspath(vocab_file)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"SentencePiece model file not found: {path!r}")
            with open(path, "rb") as handle:
                model_proto = handle.read()
            source = path
            self.vocab_file: str | None = path
        else:
            source = "model_proto"
            self.vocab_file = None
        self._model_proto = bytes(model_proto)
        self._info, self._sp = _load_processor(self._model_proto, source)
        if padding_side not in ("right", "left") or truncation_side not in ("right", "left"):
            raise ValueError("padding_side and truncation_side must be 'right' or 'left'")
        if num_threads is not None and num_threads < 1:
            raise ValueError(f"num_threads must be >= 1 or None, got {num_threads}")

        self.do_lower_case = bool(do_lower_case)
        self.split_by_punct = bool(split_by_punct)
        self.model_max_length = VERY_LARGE_INTEGER if model_max_length is None else int(model_max_length)
        self.padding_side = padding_side
        self.truncation_side = truncation_side
        self.clean_up_tokenization_spaces = bool(clean_up_tokenization_spaces)
        self.split_special_tokens = bool(split_special_tokens)
        self.name_or_path = self.vocab_file or ""
        self.init_kwargs: dict[str, Any] = {}  # extra tokenizer_config.json keys, written back by save_pretrained
        self._num_threads = num_threads
        self._pool = None
        self._pool_pid = None
        self._space_cache: dict[str, bool] = {}

        self._pieces: list[str] = list(self._info.pieces)
        self._piece_ids: dict[str, int] = {}
        for index, piece in enumerate(self._pieces):
            self._piece_ids.setdefault(piece, index)
        self._added: dict[int, AddedToken] = {}
        self._added_ids: dict[str, int] = {}
        self._special: dict[str, AddedToken | None] = {}
        self._extra_special: list[AddedToken] = []

        for key, value in (added_tokens_decoder or {}).items():
            self._register(int(key), as_added_token(value))
        for index, (piece, kind) in enumerate(zip(self._pieces, self._info.types)):
            if kind in (CONTROL, USER_DEFINED) and index not in self._added and piece not in self._added_ids:
                self._register(index, AddedToken(piece, special=kind == CONTROL))
        named = dict(
            bos_token=bos_token,
            eos_token=eos_token,
            unk_token=unk_token,
            sep_token=sep_token,
            pad_token=pad_token,
            cls_token=cls_token,
            mask_token=mask_token,
        )
        for name in SPECIAL_TOKEN_NAMES:
            value = named[name]
            self._special[name] = None if value is None else self._add_special(value)
        for value in additional_special_tokens or ():
            token = self._add_special(value)
            if token.content not in {t.content for t in self._extra_special}:
                self._extra_special.append(token)
        self._splitters: dict[bool, TokenSplitter] = {}
        self._vocab_len: int | None = None

    # ------------------------------------------------------------------ vocabulary and special tokens

    def _register(self, index: int, token: AddedToken) -> None:
        previous = self._added.get(index)
        if previous is not None and self._added_ids.get(previous.content) == index:
            del self._added_ids[previous.content]
        self._added[index] = token
        self._added_ids[token.content] = index
        self._splitters = {}
        self._vocab_len = None

    def _next_id(self) -> int:
        return max(len(self._pieces), max(self._added, default=-1) + 1)

    def _known_id(self, content: str) -> int | None:
        if content in self._added_ids:
            return self._added_ids[content]
        return self._piece_ids.get(content)

    def _add_special(self, value: str | AddedToken) -> AddedToken:
        token = as_added_token(value, special=True)
        index = self._known_id(token.content)
        if index is None:
            index = self._next_id()
        existing = self._added.get(index)
        if existing is None or existing.content != token.content:
            self._register(index, token)
        elif not existing.special:  # e.g. a user-defined piece now named as a special token
            self._register(index, as_added_token(existing, special=True))
        return self._added[index]

    def add_tokens(self, new_tokens: str | AddedToken | Iterable[str | AddedToken], special_tokens: bool = False) -> int:
        """Add tokens matched in text before SentencePiece runs; returns how many new ids were created.

        A plain string becomes a normalized token (matched after lowercasing when do_lower_case), or a
        non-normalized special token when ``special_tokens`` is True. A token already in the vocabulary
        keeps its id.
        """
        if isinstance(new_tokens, (str, AddedToken)) or hasattr(new_tokens, "content"):
            new_tokens = [new_tokens]
        created = 0
        for value in new_tokens:
            if isinstance(value, str):
                token = AddedToken(value, normalized=not special_tokens, special=special_tokens)
            else:
                token = as_added_token(value, special=True if special_tokens else None)
            index = self._known_id(token.content)
            if index is None:
                index = self._next_id()
                created += 1
            elif index in self._added:
                continue
            self._register(index, token)
        return created

    def add_special_tokens(self, special_tokens_dict: Mapping[str, Any]) -> int:
        """Set named special tokens (keys of SPECIAL_TOKENS_ATTRIBUTES) and/or ``additional_special_tokens``.

        Returns how many new ids were created.
        """
        before = self._next_id()
        for key, value in special_tokens_dict.items():
            if key in ("additional_special_tokens", "extra_special_tokens"):
                for item in [value] if isinstance(value, (str, AddedToken)) else value:
                    token = self._add_special(item)
                    if token.content not in {t.content for t in self._extra_special}:
                        self._extra_special.append(token)
            elif key in SPECIAL_TOKEN_NAMES:
                self._special[key] = None if value is None else self._add_special(value)
            else:
                raise ValueError(f"unknown special token key {key!r}; use one of {SPECIAL_TOKEN_NAMES}")
        return self._next_id() - before

    def _special_content(self, name: str) -> str | None:
        token = self._special.get(name)
        return None if token is None else token.content

    def _special_id(self, name: str) -> int | None:
        content = self._special_content(name)
        return None if content is None else self._known_id(content)

    bos_token = property(lambda self: self._special_content("bos_token"), doc="Beginning-of-sequence token ([CLS]).")
    eos_token = property(lambda self: self._special_content("eos_token"), doc="End-of-sequence token ([SEP]).")
    unk_token = property(lambda self: self._special_content("unk_token"), doc="Unknown token ([UNK]).")
    sep_token = property(lambda self: self._special_content("sep_token"), doc="Separator token ([SEP]).")
    pad_token = property(lambda self: self._special_content("pad_token"), doc="Padding token ([PAD]).")
    cls_token = property(lambda self: self._special_content("cls_token"), doc="Classifier token ([CLS]).")
    mask_token = property(lambda self: self._special_content("mask_token"), doc="Mask token ([MASK]).")
    bos_token_id = property(lambda self: self._special_id("bos_token"), doc="Id of bos_token.")
    eos_token_id = property(lambda self: self._special_id("eos_token"), doc="Id of eos_token.")
    unk_token_id = property(lambda self: self._special_id("unk_token"), doc="Id of unk_token.")
    sep_token_id = property(lambda self: self._special_id("sep_token"), doc="Id of sep_token.")
    pad_token_id = property(lambda self: self._special_id("pad_token"), doc="Id of pad_token.")
    cls_token_id = property(lambda self: self._special_id("cls_token"), doc="Id of cls_token.")
    mask_token_id = property(lambda self: self._special_id("mask_token"), doc="Id of mask_token.")
    pad_token_type_id = 0

    @property
    def additional_special_tokens(self) -> list[str]:
        """Special tokens beyond the named ones."""
        return [t.content for t in self._extra_special]

    @property
    def special_tokens_map(self) -> dict[str, str]:
        """{attribute: token} for the named special tokens that are set."""
        return {name: token.content for name, token in self._special.items() if token is not None}

    @property
    def all_special_tokens(self) -> list[str]:
        """Named special tokens, then additional ones, without duplicates."""
        seen: dict[str, None] = {}
        for token in [*self._special.values(), *self._extra_special]:
            if token is not None:
                seen.setdefault(token.content, None)
        return list(seen)

    @property
    def all_special_ids(self) -> list[int]:
        """Ids of ``all_special_tokens``."""
        return [self._known_id(token) for token in self.all_special_tokens]

    @property
    def vocab_size(self) -> int:
        """Pieces in the SentencePiece model (without added tokens)."""
        return len(self._pieces)

    def __len__(self) -> int:
        """Size of the vocabulary including added tokens."""
        if self._vocab_len is None:
            self._vocab_len = len(self.get_vocab())
        return self._vocab_len

    def get_vocab(self) -> dict[str, int]:
        """{token: id} over the model's pieces and the added tokens."""
        vocab = dict(self._piece_ids)
        vocab.update(self._added_ids)
        return vocab

    def get_added_vocab(self) -> dict[str, int]:
        """{token: id} of the added tokens (special tokens included)."""
        return {token.content: index for index, token in sorted(self._added.items())}

    @property
    def added_tokens_decoder(self) -> dict[int, AddedToken]:
        """{id: AddedToken} of the added tokens, by id."""
        return dict(sorted(self._added.items()))

    @property
    def added_tokens_encoder(self) -> dict[str, int]:
        """{token: id} of the added tokens, by id."""
        return self.get_added_vocab()

    def convert_tokens_to_ids(self, tokens: str | Iterable[str]) -> int | list[int]:
        """Token(s) to id(s); a token outside the vocabulary maps to unk_token_id."""
        if isinstance(tokens, str):
            index = self._known_id(tokens)
            return self.unk_token_id if index is None else index
        return [self.convert_tokens_to_ids(token) for token in tokens]

    def _id_to_token(self, index: int) -> str:
        token = self._added.get(index)
        if token is not None:
            return token.content
        if 0 <= index < len(self._pieces):
            return self._pieces[index]
        raise IndexError(f"token id {index} is outside this tokenizer's vocabulary (size {len(self)})")

    def convert_ids_to_tokens(self, ids: int | Iterable[int], skip_special_tokens: bool = False) -> str | list[str]:
        """Id(s) to token string(s); ids outside the vocabulary raise IndexError."""
        if isinstance(ids, int) or (hasattr(ids, "ndim") and ids.ndim == 0):
            return self._id_to_token(int(ids))
        skip = set(self.all_special_ids) if skip_special_tokens else ()
        return [self._id_to_token(int(i)) for i in _as_id_list(ids) if int(i) not in skip]

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        """Special tokens added to one row: 2 ([CLS] A [SEP]) or 3 for a pair ([CLS] A [SEP] B [SEP])."""
        return 3 if pair else 2

    def build_inputs_with_special_tokens(self, token_ids_0: list[int], token_ids_1: list[int] | None = None) -> list[int]:
        """[CLS] A [SEP] or [CLS] A [SEP] B [SEP]."""
        cls, sep = [self.cls_token_id], [self.sep_token_id]
        if token_ids_1 is None:
            return cls + list(token_ids_0) + sep
        return cls + list(token_ids_0) + sep + list(token_ids_1) + sep

    def get_special_tokens_mask(
        self,
        token_ids_0: list[int],
        token_ids_1: list[int] | None = None,
        already_has_special_tokens: bool = False,
    ) -> list[int]:
        """1 for a special token, 0 for a text token, for the row ``build_inputs_with_special_tokens`` makes.

        With ``already_has_special_tokens`` the ids are a finished row and every special id counts.
        """
        if already_has_special_tokens:
            if token_ids_1 is not None:
                raise ValueError("token_ids_1 must be None when the ids already have special tokens")
            special = set(self.all_special_ids)
            return [1 if int(i) in special else 0 for i in token_ids_0]
        mask = [1] + [0] * len(token_ids_0) + [1]
        if token_ids_1 is not None:
            mask += [0] * len(token_ids_1) + [1]
        return mask

    def create_token_type_ids_from_sequences(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None
    ) -> list[int]:
        """0 for [CLS] A [SEP], 1 for B [SEP]."""
        first = [0] * (len(token_ids_0) + 2)
        return first if token_ids_1 is None else first + [1] * (len(token_ids_1) + 1)

    # ------------------------------------------------------------------ segmentation

    def _splitter(self, skip_special: bool) -> TokenSplitter:
        splitter = self._splitters.get(skip_special)
        if splitter is None:
            splitter = TokenSplitter(self._added, self.do_lower_case, skip_special)
            self._splitters[skip_special] = splitter
        return splitter

    def _batch_options(self) -> dict[str, Any]:
        """Thread options for sentencepiece's batch calls: a persistent pool where the library has one."""
        threads = self._num_threads
        if threads is None:
            threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        if not hasattr(sentencepiece, "ThreadPool"):
            return {"num_threads": threads}
        if self._pool is None or self._pool_pid != os.getpid():  # a forked worker needs its own threads
            self._pool = sentencepiece.ThreadPool(threads)
            self._pool_pid = os.getpid()
        return {"thread_pool": self._pool}

    def _encode_chunks(self, chunks: list[str]) -> list[list[int]]:
        if len(chunks) <= 1:
            return [self._sp.encode(chunk) for chunk in chunks]
        return self._sp.encode(chunks, **self._batch_options())

    def _encode_chunks_with_spans(self, chunks: list[str]) -> list[tuple[list[int], list[str], list[tuple[int, int]]]]:
        """Ids, pieces and character spans per chunk (sentencepiece >= 0.2.1 'offset_mapping', else protos)."""
        if not chunks:
            return []
        if _has_offset_mapping(self._sp):
            results = self._sp.encode(chunks, out_type="offset_mapping", **self._batch_options())
            return [(r["ids"], r["pieces"], r["offsets"]) for r in results]
        out = []
        for chunk, proto in zip(chunks, self._sp.encode(chunks, out_type="immutable_proto")):
            pieces = list(proto.pieces)
            spans = [(p.begin, p.end) for p in pieces]
            if any(chunk[b:e] != p.surface for p, (b, e) in zip(pieces, spans)):  # byte offsets: convert
                chars = [0] * (len(chunk.encode("utf-8")) + 1)
                position = 0
                for i, char in enumerate(chunk):
                    width = len(char.encode("utf-8"))
                    chars[position : position + width] = [i] * width
                    position += width
                chars[position] = len(chunk)
                spans = [(chars[b], chars[e]) for b, e in spans]
            out.append(([p.id for p in pieces], [p.piece for p in pieces], spans))
        return out

    def _joins(self, first: str, second: str) -> bool:
        """Whether the tokenizers library, applying the model's normalization rules, aligns the word boundary
        that ``first second`` become with ``first`` alone: a CR LF pair, which it normalizes as one unit (a
        grapheme cluster, Unicode's rule GB3) by the rule of its CR. (SentencePiece normalizes the two apart,
        two spaces folded into one: the same pieces.)"""
        if first != "\r" or second != "\n":  # (called at every word boundary: the cheap test first)
            return False
        return bool(self._info.normalizer.precompiled_charsmap) and self._is_space("\r")

    def _is_space(self, char: str) -> bool:
        """Whether SentencePiece treats ``char`` as a word boundary (whitespace) or deletes it."""
        if char == " ":
            return True
        if char.isalnum():
            return False
        cached = self._space_cache.get(char)
        if cached is None:
            cached = self._sp.normalize(f"a{char}b") in (f"{SPACE_PIECE}a{SPACE_PIECE}b", f"{SPACE_PIECE}ab")
            self._space_cache[char] = cached
        return cached

    def _tokenize_texts(self, texts: list[str], with_offsets: bool, split_special: bool) -> list[Piece]:
        """Segment every text: split on added tokens, lowercase, split on punctuation, SentencePiece.

        All the spans of all the texts go to SentencePiece in one multi-threaded batch call.
        """
        splitter = self._splitter(split_special)
        plain = not self.do_lower_case and not self.split_by_punct and splitter.normalized is None
        chunks: list[str] = []
        plans: list[Any] = []
        for text in texts:
            if plain and not splitter.has_raw_match(text):
                plans.append(len(chunks))
                chunks.append(text)
                continue
            parts: list[tuple] = []
            for start, end, token_id in splitter.split_raw(text):
                if token_id is not None:
                    parts.append((token_id, start, end))
                    continue
                segment = text[start:end]
                lowered, index = lower_with_map(segment) if self.do_lower_case else (segment, None)
                for low_start, low_end, inner_id in splitter.split_normalized(lowered):
                    if inner_id is not None:
                        span = map_span((low_start, low_end), index, len(segment))
                        parts.append((inner_id, start + span[0], start + span[1]))
                        continue
                    sub = lowered[low_start:low_end]
                    spans = split_on_punctuation(sub) if self.split_by_punct else [(0, len(sub))]
                    for sub_start, sub_end in spans:
                        parts.append((None, len(chunks), low_start + sub_start, start, index, len(segment)))
                        chunks.append(sub[sub_start:sub_end])
            plans.append(parts)

        chunk_pieces = None
        if with_offsets:
            encoded = self._encode_chunks_with_spans(chunks)
            chunk_ids = [ids for ids, _, _ in encoded]
            chunk_pieces = [pieces for _, pieces, _ in encoded]
            chunk_offsets = [
                piece_offsets(chunk, pieces, spans, self._is_space, self._joins)
                for chunk, (_, pieces, spans) in zip(chunks, encoded)
            ]
        else:
            chunk_ids = self._encode_chunks(chunks)

        out = []
        for plan in plans:
            if isinstance(plan, int):
                if with_offsets:
                    out.append(Piece(chunk_ids[plan], chunk_offsets[plan], chunk_pieces[plan]))
                else:
                    out.append(Piece(chunk_ids[plan]))
                continue
            ids: list[int] = []
            offsets: list[tuple[int, int]] = []
            tokens: list[str] = []
            for part in plan:
                if part[0] is not None:
                    ids.append(part[0])
                    offsets.append((part[1], part[2]))
                    tokens.append(self._id_to_token(part[0]))
                    continue
                _, chunk, low_base, seg_start, index, seg_len = part
                ids.extend(chunk_ids[chunk])
                if with_offsets:
                    tokens.extend(chunk_pieces[chunk])
                    for begin, end in chunk_offsets[chunk]:
                        begin, end = map_span((begin + low_base, end + low_base), index, seg_len)
                        offsets.append((begin + seg_start, end + seg_start))
            out.append(Piece(ids, offsets, tokens) if with_offsets else Piece(ids))
        return out

    # ------------------------------------------------------------------ encoding

    def __call__(
        self,
        text: str | Sequence[str],
        text_pair: str | Sequence[str] | None = None,
        *,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        stride: int = 0,
        is_split_into_words: bool = False,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_tensors: str | None = None,
        return_token_type_ids: bool | None = None,
        return_attention_mask: bool | None = None,
        return_overflowing_tokens: bool = False,
        return_special_tokens_mask: bool = False,
        return_offsets_mapping: bool = False,
        return_length: bool = False,
        split_special_tokens: bool | None = None,
        verbose: bool = True,
    ) -> BatchEncoding:
        """Encode a text, a pair of texts, or a batch of texts / pairs into model inputs.

        Args:
            text: a str, or a list/tuple of str (a batch).
            text_pair: the second text(s) of pairs: a str for a single text, a list of the same length
                for a batch.
            add_special_tokens: [CLS] A [SEP] (B [SEP]).
            padding: False / "do_not_pad", True / "longest" (the batch's longest row), "max_length".
            truncation: True / "longest_first", "only_first", "only_second", False / None. Setting only
                max_length truncates with "longest_first".
            max_length: the row length for truncation and padding="max_length", special tokens included;
                defaults to model_max_length when that is set.
            stride: with return_overflowing_tokens, tokens shared by consecutive overflow windows.
            pad_to_multiple_of: round the padded length up to a multiple of this.
            padding_side: "right" or "left" (default: the tokenizer's).
            return_tensors: None (python lists), "pt" (torch.int64 tensors) or "np".
            return_token_type_ids, return_attention_mask: default True.
            return_overflowing_tokens: add a row per overflow window, with "overflow_to_sample_mapping".
            return_special_tokens_mask, return_offsets_mapping, return_length: extra outputs.
            split_special_tokens: encode special tokens found in the text as plain text.

        Returns:
            BatchEncoding with input_ids [B, N], token_type_ids [B, N], attention_mask [B, N] and the
            requested extras (offset_mapping [B, N, 2]). For a single text without return_tensors and
            without overflow rows, the values are unbatched ([N]), as in transformers.
        """
        if is_split_into_words:
            raise NotImplementedError("is_split_into_words is not supported; join the words into a text instead")
        batched = isinstance(text, (list, tuple))
        if batched:
            texts = list(text)
            if isinstance(text_pair, str):
                raise TypeError("text_pair must be a list/tuple of str like text when text is a batch")
            pairs = list(text_pair) if text_pair is not None else None
            if pairs is not None and len(pairs) != len(texts):
                raise ValueError(f"text has {len(texts)} items but text_pair has {len(pairs)}")
        else:
            texts = [text]
            if text_pair is not None and not isinstance(text_pair, str):
                raise TypeError(f"text_pair must be a str when text is a str, got {type(text_pair).__name__}")
            pairs = [text_pair] if text_pair else None  # as transformers, an empty pair means no pair
        for name, values in (("text", texts), ("text_pair", pairs or ())):
            for i, value in enumerate(values):
                if not isinstance(value, str):
                    where = f"{name}[{i}]" if batched else name
                    raise TypeError(f"{where} must be a str, got {type(value).__name__}")
        if return_tensors not in (None, "pt", "np"):
            raise ValueError(f"return_tensors must be None, 'pt' or 'np', got {return_tensors!r}")

        padding_strategy, truncation_strategy, max_length = self._strategies(
            padding, truncation, max_length, pad_to_multiple_of, verbose
        )
        if split_special_tokens is None:
            split_special_tokens = self.split_special_tokens
        if return_token_type_ids is None:
            return_token_type_ids = "token_type_ids" in self.model_input_names
        if return_attention_mask is None:
            return_attention_mask = "attention_mask" in self.model_input_names

        params = None
        if truncation_strategy != "do_not_truncate":
            single = self.num_special_tokens_to_add(False)
            if stride < 0 or (max_length >= single and stride > max_length - single):
                raise ValueError(
                    f"stride={stride} must be >= 0 and at most max_length={max_length} minus the {single} special "
                    "tokens of a single text"
                )
            params = TruncationParams(max_length, stride, truncation_strategy, self.truncation_side)
        side = padding_side if padding_side is not None else self.padding_side
        if side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {side!r}")

        encoded = self._tokenize_texts(texts + (pairs or []), return_offsets_mapping, split_special_tokens)
        firsts, seconds = encoded[: len(texts)], (encoded[len(texts) :] if pairs is not None else None)
        n_special = self.num_special_tokens_to_add(pairs is not None) if add_special_tokens else 0
        rows = build_rows(firsts, seconds, params, n_special, return_overflowing_tokens)
        result = assemble(
            rows,
            cls_id=self.cls_token_id,
            sep_id=self.sep_token_id,
            add_special_tokens=add_special_tokens,
            pad_id=self.pad_token_id,
            pad_type_id=self.pad_token_type_id,
            padding=padding_strategy,
            max_length=max_length,
            pad_to_multiple_of=pad_to_multiple_of,
            padding_side=side,
            return_tensors=return_tensors,
            return_token_type_ids=return_token_type_ids,
            return_attention_mask=return_attention_mask,
            return_special_tokens_mask=return_special_tokens_mask,
            return_offsets_mapping=return_offsets_mapping,
            return_length=return_length,
            return_overflow_mapping=return_overflowing_tokens,
        )
        if verbose and max_length is None:
            longest = max((len(row) for row in result["input_ids"]), default=0)
            if longest > self.model_max_length:
                warnings.warn(
                    f"a row has {longest} tokens, more than model_max_length={self.model_max_length}; "
                    "the model cannot take it without truncation",
                    stacklevel=2,
                )
        if not batched and return_tensors is None and not return_overflowing_tokens:
            result = BatchEncoding(
                {key: value[0] if value and isinstance(value[0], list) else value for key, value in result.items()}
            )
        return result

    def _strategies(self, padding, truncation, max_length, pad_to_multiple_of, verbose) -> tuple[str, str, int | None]:
        """Resolve padding/truncation/max_length as transformers does."""
        if max_length is not None and padding is False and truncation is None:
            truncation = "longest_first"  # transformers: max_length alone turns truncation on
        padding_strategy = normalize_padding(padding)
        truncation_strategy = normalize_truncation(truncation)
        if verbose and padding is True and max_length is not None and truncation_strategy == "do_not_truncate":
            warnings.warn(
                "max_length is ignored when padding=True and there is no truncation; use padding='max_length'",
                stacklevel=3,
            )
        if max_length is None:
            unlimited = self.model_max_length > LARGE_INTEGER
            if padding_strategy == "max_length":
                if unlimited:
                    padding_strategy = "do_not_pad"
                else:
                    max_length = self.model_max_length
            if truncation_strategy != "do_not_truncate":
                if unlimited:
                    truncation_strategy = "do_not_truncate"
                else:
                    max_length = self.model_max_length
        if padding_strategy != "do_not_pad" and self.pad_token_id is None:
            raise ValueError("padding needs a pad token, and this tokenizer has none (set pad_token)")
        if (
            truncation_strategy != "do_not_truncate"
            and padding_strategy != "do_not_pad"
            and pad_to_multiple_of is not None
            and max_length is not None
            and max_length % pad_to_multiple_of
        ):
            raise ValueError(
                f"truncation length ({max_length}) is not a multiple of pad_to_multiple_of ({pad_to_multiple_of})"
            )
        return padding_strategy, truncation_strategy, max_length

    def batch_encode(
        self, texts: Sequence[str], text_pairs: Sequence[str] | None = None, **kwargs: Any
    ) -> BatchEncoding:
        """Encode a batch of texts (or pairs): ``self(list(texts), text_pairs, **kwargs)``, always batched."""
        if isinstance(texts, str) or not isinstance(texts, Iterable):
            raise TypeError(f"texts must be a list of str, got {type(texts).__name__}")
        return self(list(texts), None if text_pairs is None else list(text_pairs), **kwargs)

    def encode(
        self,
        text: str,
        text_pair: str | None = None,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        stride: int = 0,
        padding_side: str | None = None,
        return_tensors: str | None = None,
        **kwargs: Any,
    ):
        """The input_ids of ``self(text, text_pair, ...)``: a list of ids (a tensor with return_tensors)."""
        return self(
            text,
            text_pair,
            add_special_tokens=add_special_tokens,
            padding=padding,
            truncation=truncation,
            max_length=max_length,
            stride=stride,
            padding_side=padding_side,
            return_tensors=return_tensors,
            **kwargs,
        )["input_ids"]

    def tokenize(
        self,
        text: str,
        pair: str | None = None,
        add_special_tokens: bool = False,
        split_special_tokens: bool | None = None,
    ) -> list[str]:
        """The pieces of a text (and pair), as SentencePiece writes them: unknown characters keep their text."""
        if not isinstance(text, str) or not isinstance(pair, (str, type(None))):
            bad = text if not isinstance(text, str) else pair
            raise TypeError(f"tokenize takes str text (and pair), got {type(bad).__name__}")
        if split_special_tokens is None:
            split_special_tokens = self.split_special_tokens
        pieces = self._tokenize_texts([text] + ([pair] if pair else []), True, split_special_tokens)
        if not add_special_tokens:
            return [token for piece in pieces for token in piece.tokens]
        tokens = [self.cls_token, *pieces[0].tokens, self.sep_token]
        if pair:
            tokens += [*pieces[1].tokens, self.sep_token]
        return tokens

    # ------------------------------------------------------------------ decoding

    def convert_tokens_to_string(self, tokens: Sequence[str]) -> str:
        """Join tokens into text: "▁" becomes a space; the first token's "▁" are dropped."""
        pieces = [token.replace(SPACE_PIECE, "" if i == 0 else " ") for i, token in enumerate(tokens)]
        return "".join(pieces)

    def decode(
        self,
        token_ids: Any,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
    ) -> str | list[str]:
        """Ids to text. A batch (list of lists, or a 2-D tensor) gives a list of texts.

        Args:
            token_ids: an id, a list of ids, a list of lists, or a torch/numpy array of rank 0-2.
            skip_special_tokens: drop special tokens ([CLS], [SEP], [PAD], [MASK], ...).
            clean_up_tokenization_spaces: remove spaces before punctuation and English contractions
                (default: the tokenizer's setting, False).
        """
        ids = _as_id_list(token_ids)
        if ids and isinstance(ids[0], (list, tuple)):
            return [self._decode_one(row, skip_special_tokens, clean_up_tokenization_spaces) for row in ids]
        return self._decode_one(ids, skip_special_tokens, clean_up_tokenization_spaces)

    def batch_decode(
        self, sequences: Any, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool | None = None
    ) -> list[str]:
        """Decode every row of a batch (see ``decode``)."""
        rows = _as_id_list(sequences)
        return [self._decode_one(_as_id_list(row), skip_special_tokens, clean_up_tokenization_spaces) for row in rows]

    def _decode_one(self, ids: list, skip_special_tokens: bool, clean_up: bool | None) -> str:
        if skip_special_tokens:
            skip = set(self.all_special_ids) | {i for i, t in self._added.items() if t.special}
            tokens = [self._id_to_token(int(i)) for i in ids if int(i) not in skip]
        else:
            tokens = [self._id_to_token(int(i)) for i in ids]
        text = self.convert_tokens_to_string(tokens)
        if clean_up if clean_up is not None else self.clean_up_tokenization_spaces:
            text = self.clean_up_tokenization(text)
        return text

    @staticmethod
    def clean_up_tokenization(text: str) -> str:
        """Remove the spaces a whitespace tokenizer leaves before punctuation and English contractions."""
        for before, after in (
            (" .", "."),
            (" ?", "?"),
            (" !", "!"),
            (" ,", ","),
            (" ' ", "'"),
            (" n't", "n't"),
            (" 'm", "'m"),
            (" 's", "'s"),
            (" 've", "'ve"),
            (" 're", "'re"),
        ):
            text = text.replace(before, after)
        return text

    # ------------------------------------------------------------------ saving and loading

    def _config(self) -> dict[str, Any]:
        """tokenizer_config.json: read by transformers 4.x (slow and fast) and 5.x."""
        config = dict(self.init_kwargs)
        for name in SPECIAL_TOKEN_NAMES:
            token = self._special.get(name)
            if token is not None:
                config[name] = token.content
        config.update(
            tokenizer_class="DebertaV2Tokenizer",
            do_lower_case=self.do_lower_case,
            split_by_punct=self.split_by_punct,
            model_max_length=self.model_max_length,
            padding_side=self.padding_side,
            truncation_side=self.truncation_side,
            clean_up_tokenization_spaces=self.clean_up_tokenization_spaces,
            added_tokens_decoder={str(i): t.to_dict() for i, t in sorted(self._added.items())},
        )
        config.setdefault("vocab_type", "spm")
        config.setdefault("sp_model_kwargs", {})
        if self.split_special_tokens:
            config["split_special_tokens"] = True
        if self._extra_special:
            config["additional_special_tokens"] = [t.content for t in self._extra_special]
        return config

    def _tokenizer_json(self) -> dict[str, Any]:
        return tokenizer_json(
            pieces=self._pieces,
            scores=self._info.scores,
            unk_id=self._sp.unk_id(),
            added=self._added,
            charsmap=self._info.normalizer.precompiled_charsmap,
            do_lower_case=self.do_lower_case,
            split_by_punct=self.split_by_punct,
            cls=(self.cls_token, self.cls_token_id),
            sep=(self.sep_token, self.sep_token_id),
        )

    def save_vocabulary(self, save_directory: str | os.PathLike, filename_prefix: str | None = None) -> tuple[str]:
        """Write the SentencePiece model (spm.model) into ``save_directory``; returns its path."""
        directory = os.fspath(save_directory)
        if not os.path.isdir(directory):
            raise NotADirectoryError(f"save_vocabulary needs an existing directory, got {directory!r}")
        path = os.path.join(directory, (f"{filename_prefix}-" if filename_prefix else "") + VOCAB_FILE)
        atomic_write(path, self._model_proto)
        return (path,)

    def save_pretrained(self, save_directory: str | os.PathLike, filename_prefix: str | None = None) -> tuple[str, ...]:
        """Write spm.model, tokenizer_config.json, special_tokens_map.json, added_tokens.json (when there
        are tokens beyond the model's pieces) and tokenizer.json; each file atomically.

        transformers' ``DebertaV2Tokenizer.from_pretrained`` reads the directory back (5.x from
        tokenizer.json, 4.x from spm.model), as does ``DebertaV2Tokenizer.from_pretrained`` here.
        Returns the paths written.
        """
        directory = os.fspath(save_directory)
        if os.path.isfile(directory):
            raise NotADirectoryError(f"save_pretrained needs a directory, {directory!r} is a file")
        os.makedirs(directory, exist_ok=True)
        prefix = f"{filename_prefix}-" if filename_prefix else ""
        written = []
        files: list[tuple[str, bytes]] = [
            (TOKENIZER_CONFIG_FILE, json_bytes(self._config())),
            (SPECIAL_TOKENS_MAP_FILE, json_bytes({**self.special_tokens_map, **(
                {"additional_special_tokens": self.additional_special_tokens} if self._extra_special else {}
            )})),
        ]
        beyond = {t.content: i for i, t in sorted(self._added.items()) if i >= len(self._pieces)}
        if beyond:
            files.append((ADDED_TOKENS_FILE, json_bytes(beyond)))
        files.append((TOKENIZER_FILE, json_bytes(self._tokenizer_json(), indent=None)))
        for name, data in files:
            path = os.path.join(directory, prefix + name)
            atomic_write(path, data)
            written.append(path)
        written.extend(self.save_vocabulary(directory, filename_prefix))
        return tuple(written)

    @classmethod
    def from_pretrained(cls, pretrained_path: str | os.PathLike, **kwargs: Any) -> "DebertaV2Tokenizer":
        """Load from a directory written by transformers (4.x or 5.x) or by ``save_pretrained``, or from
        the path of an spm.model file.

        A directory needs spm.model, or else a Unigram tokenizer.json (what transformers 5.x writes), from
        which the SentencePiece model is rebuilt with SentencePiece's nmt_nfkc rules unless the file carries
        its own. tokenizer_config.json, special_tokens_map.json, added_tokens.json and tokenizer.json's
        added tokens are honoured. Keyword arguments override the saved configuration.
        """
        path = os.fspath(pretrained_path)
        if os.path.isfile(path):
            return cls(path, **kwargs)
        args, extra_config = read_pretrained(path)
        args.update(kwargs)
        tokenizer = cls(**args)
        tokenizer.name_or_path = path
        tokenizer.init_kwargs = extra_config
        return tokenizer

    def __reduce__(self):
        return (_rebuild, (self._model_proto, self._state()))

    def _state(self) -> dict[str, Any]:
        state = {name: self._special.get(name) for name in SPECIAL_TOKEN_NAMES}
        state.update(
            do_lower_case=self.do_lower_case,
            split_by_punct=self.split_by_punct,
            additional_special_tokens=list(self._extra_special),
            added_tokens_decoder=dict(self._added),
            model_max_length=self.model_max_length,
            padding_side=self.padding_side,
            truncation_side=self.truncation_side,
            clean_up_tokenization_spaces=self.clean_up_tokenization_spaces,
            split_special_tokens=self.split_special_tokens,
            num_threads=self._num_threads,
        )
        return {"kwargs": state, "vocab_file": self.vocab_file, "name_or_path": self.name_or_path,
                "init_kwargs": dict(self.init_kwargs)}

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name_or_path={self.name_or_path!r}, vocab_size={self.vocab_size}, "
            f"len={len(self)}, do_lower_case={self.do_lower_case}, split_by_punct={self.split_by_punct}, "
            f"model_max_length={self.model_max_length}, special_tokens={self.special_tokens_map})"
        )


def _rebuild(model_proto: bytes, state: dict[str, Any]) -> DebertaV2Tokenizer:
    tokenizer = DebertaV2Tokenizer(model_proto=model_proto, **state["kwargs"])
    tokenizer.vocab_file = state["vocab_file"]
    tokenizer.name_or_path = state["name_or_path"]
    tokenizer.init_kwargs = state["init_kwargs"]
    return tokenizer


