"""Internals of :class:`deberta_fast.tokenizer.DebertaV2Tokenizer`.

``spm_proto`` reads and writes SentencePiece model files without protobuf, ``added_tokens`` splits text on
added/special tokens, ``offsets`` maps SentencePiece piece spans to transformers-style character offsets and
``postprocess`` does truncation, overflow windows, special tokens, padding and tensor conversion.
"""
