"""Tiny configs and inputs shared by the model tests (random init, no hub)."""

from __future__ import annotations

import torch

BASE = dict(
    vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, max_position_embeddings=64,
    relative_attention=True, pos_att_type="p2c|c2p", position_buckets=-1, max_relative_positions=-1,
    share_att_key=False, position_biased_input=True, type_vocab_size=0, layer_norm_eps=1e-7,
)

# Each entry flips features of BASE; together they cover the grid the foundation issue asks for.
CONFIGS = {
    "v2-absolute": dict(),
    "no-relative": dict(relative_attention=False),
    "c2p-only": dict(pos_att_type=["c2p"]),
    "p2c-only": dict(pos_att_type="p2c", share_att_key=True),
    "buckets-clamp": dict(position_buckets=4, max_relative_positions=8, share_att_key=True),
    "v3-like": dict(position_buckets=8, max_relative_positions=16, share_att_key=True, position_biased_input=False,
                    norm_rel_ebd="layer_norm", type_vocab_size=0, hidden_act="gelu"),
    "nGiE-conv": dict(conv_kernel_size=3, conv_act="gelu", norm_rel_ebd="layer_norm", max_relative_positions=12),
    "embed-proj-types": dict(embedding_size=24, type_vocab_size=2, position_biased_input=True),
    "conv-groups-noshare": dict(conv_kernel_size=3, conv_groups=2, conv_act="tanh", position_buckets=6,
                                max_relative_positions=20, position_biased_input=False, type_vocab_size=2),
}

B, N = 3, 24


def make_batch(cfg: dict, num_choices: int | None = None, seed: int = 0):
    """input_ids, attention_mask (right padding, left padding, none), token_type_ids."""
    g = torch.Generator().manual_seed(seed)
    shape = (B, num_choices, N) if num_choices else (B, N)
    ids = torch.randint(1, cfg["vocab_size"], shape, generator=g)
    mask = torch.ones(shape, dtype=torch.long)
    mask[0, ..., N - 7 :] = 0  # right padding
    mask[1, ..., :5] = 0  # left padding
    ids = ids.masked_fill(mask == 0, 0)
    types = None
    if cfg.get("type_vocab_size", 0) > 0:
        types = torch.zeros(shape, dtype=torch.long)
        types[..., N // 2 :] = 1
    return ids, mask, types
