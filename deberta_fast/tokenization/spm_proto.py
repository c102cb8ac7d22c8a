"""Read and write SentencePiece ``ModelProto`` files without the protobuf package.

Only the fields the tokenizer needs are decoded (field numbers from sentencepiece_model.proto); every
other field is skipped. ``build_model_proto`` writes the minimal proto SentencePiece needs to load a
Unigram model, used to rebuild an spm.model from a transformers ``tokenizer.json``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

__all__ = [
    "NORMAL",
    "UNKNOWN",
    "CONTROL",
    "USER_DEFINED",
    "UNUSED",
    "BYTE",
    "UNIGRAM",
    "ModelInfo",
    "NormalizerSpec",
    "ProtoError",
    "build_model_proto",
    "normalizer_of_model",
    "parse_model_proto",
    "parse_normalizer_spec",
]

# SentencePiece.Type
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
# TrainerSpec.ModelType
UNIGRAM = 1

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


class ProtoError(ValueError):
    """The bytes are not a well-formed SentencePiece model proto."""


@dataclass
class NormalizerSpec:
    """NormalizerSpec fields (defaults as in sentencepiece_model.proto)."""

    name: str = ""
    precompiled_charsmap: bytes = b""
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = True
    escape_whitespaces: bool = True


@dataclass
class ModelInfo:
    """What the tokenizer reads from a model file: pieces with scores and types, and a few specs."""

    pieces: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    types: list[int] = field(default_factory=list)
    model_type: int = UNIGRAM
    byte_fallback: bool = False
    normalizer: NormalizerSpec = field(default_factory=NormalizerSpec)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ProtoError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ProtoError("varint longer than 10 bytes")


def _fields(data: bytes):
    """Yield (field_number, wire_type, value) for every field of one message."""
    pos, end = 0, len(data)
    while pos < end:
        key, pos = _read_varint(data, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ProtoError("field number 0")
        if wire == _VARINT:
            value, pos = _read_varint(data, pos)
        elif wire == _LEN:
            size, pos = _read_varint(data, pos)
            if pos + size > end:
                raise ProtoError("length-delimited field runs past the end")
            value, pos = data[pos : pos + size], pos + size
        elif wire == _I32:
            if pos + 4 > end:
                raise ProtoError("truncated fixed32")
            value, pos = data[pos : pos + 4], pos + 4
        elif wire == _I64:
            if pos + 8 > end:
                raise ProtoError("truncated fixed64")
            value, pos = data[pos : pos + 8], pos + 8
        else:
            raise ProtoError(f"unsupported wire type {wire}")
        yield number, wire, value


def _text(value) -> str:
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError as err:
        raise ProtoError(f"string field is not UTF-8: {err}") from None


def parse_normalizer_spec(data: bytes) -> NormalizerSpec:
    """Decode a serialized NormalizerSpec message."""
    spec = NormalizerSpec()
    for number, wire, value in _fields(data):
        if number == 1 and wire == _LEN:
            spec.name = _text(value)
        elif number == 2 and wire == _LEN:
            spec.precompiled_charsmap = bytes(value)
        elif number == 3 and wire == _VARINT:
            spec.add_dummy_prefix = bool(value)
        elif number == 4 and wire == _VARINT:
            spec.remove_extra_whitespaces = bool(value)
        elif number == 5 and wire == _VARINT:
            spec.escape_whitespaces = bool(value)
    return spec


def normalizer_of_model(data: bytes) -> NormalizerSpec:
    """The NormalizerSpec of a serialized ModelProto (which may have no pieces, e.g. a normalizer's)."""
    for number, wire, value in _fields(data):
        if number == 3 and wire == _LEN:
            return parse_normalizer_spec(value)
    return NormalizerSpec()


def parse_model_proto(data: bytes) -> ModelInfo:
    """Decode the pieces, trainer model type / byte fallback and normalizer spec of a ModelProto.

    Raises ProtoError when the bytes are not a SentencePiece model (malformed wire format, or no pieces).
    """
    info = ModelInfo()
    for number, wire, value in _fields(data):
        if number == 1 and wire == _LEN:  # repeated SentencePiece pieces
            piece, score, kind = None, 0.0, NORMAL
            for n, w, v in _fields(value):
                if n == 1 and w == _LEN:
                    piece = _text(v)
                elif n == 2 and w == _I32:
                    score = struct.unpack("<f", v)[0]
                elif n == 3 and w == _VARINT:
                    kind = v
            if piece is None:
                raise ProtoError("a piece has no text")
            info.pieces.append(piece)
            info.scores.append(score)
            info.types.append(kind)
        elif number == 2 and wire == _LEN:  # TrainerSpec
            for n, w, v in _fields(value):
                if n == 3 and w == _VARINT:
                    info.model_type = v
                elif n == 35 and w == _VARINT:
                    info.byte_fallback = bool(v)
        elif number == 3 and wire == _LEN:  # NormalizerSpec
            info.normalizer = parse_normalizer_spec(value)
    if not info.pieces:
        raise ProtoError("no pieces")
    return info


def _key(number: int, wire: int) -> bytes:
    return _varint((number << 3) | wire)


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # proto2 int32 negatives are ten-byte varints
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _len_field(number: int, payload: bytes) -> bytes:
    return _key(number, _LEN) + _varint(len(payload)) + payload


def _str_field(number: int, text: str) -> bytes:
    return _len_field(number, text.encode("utf-8"))


def _int_field(number: int, value: int) -> bytes:
    return _key(number, _VARINT) + _varint(int(value))


def build_model_proto(
    pieces: list[tuple[str, float, int]],
    *,
    special_ids: dict[str, int],
    normalizer: NormalizerSpec,
) -> bytes:
    """Serialize a Unigram ModelProto.

    Args:
        pieces: (piece, score, type) per id, type one of NORMAL, UNKNOWN, CONTROL, USER_DEFINED.
        special_ids: ids of "unk", "bos", "eos", "pad" (-1 when absent); their pieces are taken from ``pieces``.
        normalizer: the NormalizerSpec to embed (rules SentencePiece applies before segmenting).
    """
    out = bytearray()
    for piece, score, kind in pieces:
        body = _str_field(1, piece) + _key(2, _I32) + struct.pack("<f", float(score)) + _int_field(3, kind)
        out += _len_field(1, body)
    trainer = _int_field(3, UNIGRAM) + _int_field(4, len(pieces))
    for name, id_field, piece_field in (("unk", 40, 45), ("bos", 41, 46), ("eos", 42, 47), ("pad", 43, 48)):
        index = special_ids.get(name, -1)
        trainer += _int_field(id_field, index)
        if index >= 0:
            trainer += _str_field(piece_field, pieces[index][0])
    out += _len_field(2, trainer)
    spec = (
        _str_field(1, normalizer.name)
        + _len_field(2, normalizer.precompiled_charsmap)
        + _int_field(3, normalizer.add_dummy_prefix)
        + _int_field(4, normalizer.remove_extra_whitespaces)
        + _int_field(5, normalizer.escape_whitespaces)
    )
    out += _len_field(3, spec)
    return bytes(out)
