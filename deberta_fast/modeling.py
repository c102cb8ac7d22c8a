"""The DeBERTa-v2/v3 model and its task heads.

Module structure, parameter names, dropout placements and weight tying follow transformers'
``modeling_deberta_v2`` so that checkpoints load and save unchanged; attention goes through
:func:`deberta_fast.disentangled_attention` with the backend named by ``config.attn_backend``.

Shapes: B batch, N sequence length, hidden = config.hidden_size, H heads, D head size.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint as activation_checkpoint

from .activations import get_activation
from .attention import disentangled_attention
from .backends import prepare_backends
from .backends.call import check_not_additive, make_call
from .backends.torch_backend import torch_attention
from .checkpoint import (
    SAFE_WEIGHTS_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    load_state_dict,
    match_state_dict,
    resolve_model_dir,
    stale_weight_files,
    write_weights,
)
from .config import CONFIG_NAME, DebertaV2Config
from .io import atomic_path
from .outputs import (
    BaseModelOutput,
    MaskedLMOutput,
    MultipleChoiceModelOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)

__all__ = [
    "DebertaV2PreTrainedModel",
    "DebertaV2Model",
    "DebertaV2ForMaskedLM",
    "DebertaV2ForSequenceClassification",
    "DebertaV2ForTokenClassification",
    "DebertaV2ForQuestionAnswering",
    "DebertaV2ForMultipleChoice",
]

logger = logging.getLogger("deberta_fast")


def _check_padding_mask(attention_mask: torch.Tensor | None, batch: int, seq_len: int) -> None:
    if attention_mask is None:
        return
    if not isinstance(attention_mask, torch.Tensor):
        raise TypeError(f"attention_mask must be a tensor, got {type(attention_mask).__name__}")
    if tuple(attention_mask.shape) != (batch, seq_len):
        extended = "; deberta_fast does not take [B, N, N] or 4-D attention masks" if attention_mask.dim() > 2 else ""
        raise ValueError(
            f"attention_mask must be a [B, N] = {(batch, seq_len)} padding mask (1 = token, 0 = padding), got "
            f"{tuple(attention_mask.shape)}{extended}"
        )


# --- embeddings ----------------------------------------------------------------------------


class DebertaV2Embeddings(nn.Module):
    """Word (+ absolute position) (+ token type) embeddings, optional projection, LayerNorm, padding mask, dropout."""

    def __init__(self, config: DebertaV2Config):
        super().__init__()
        self.embedding_size = config.embedding_size or config.hidden_size
        self.word_embeddings = nn.Embedding(config.vocab_size, self.embedding_size, padding_idx=config.pad_token_id)
        self.position_biased_input = config.position_biased_input
        self.position_embeddings = (
            nn.Embedding(config.max_position_embeddings, self.embedding_size) if self.position_biased_input else None
        )
        self.token_type_embeddings = (
            nn.Embedding(config.type_vocab_size, self.embedding_size) if config.type_vocab_size > 0 else None
        )
        self.embed_proj = (
            nn.Linear(self.embedding_size, config.hidden_size, bias=False)
            if self.embedding_size != config.hidden_size else None
        )
        self.LayerNorm = nn.LayerNorm(config.hidden_size, config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.max_position_embeddings = config.max_position_embeddings
        self.register_buffer("position_ids", torch.arange(config.max_position_embeddings).expand((1, -1)), persistent=False)

    def reset_buffers(self) -> None:
        self.position_ids = torch.arange(self.max_position_embeddings, device=self.position_ids.device).expand((1, -1))

    def forward(self, input_ids=None, token_type_ids=None, position_ids=None, mask=None, inputs_embeds=None):
        """input_ids ``[B, N]`` or inputs_embeds ``[B, N, embedding_size]``; mask ``[B, N]``. Returns ``[B, N, hidden]``."""
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        seq_len = inputs_embeds.shape[1]
        embeddings = inputs_embeds
        if self.position_embeddings is not None:
            if position_ids is None:
                if seq_len > self.max_position_embeddings:
                    raise ValueError(
                        f"sequence length {seq_len} exceeds max_position_embeddings {self.max_position_embeddings} "
                        "(this config adds absolute position embeddings: position_biased_input=True)"
                    )
                position_ids = self.position_ids[:, :seq_len]
            embeddings = embeddings + self.position_embeddings(position_ids.long())
        if self.token_type_embeddings is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)
            embeddings = embeddings + self.token_type_embeddings(token_type_ids)
        if self.embed_proj is not None:
            embeddings = self.embed_proj(embeddings)
        embeddings = self.LayerNorm(embeddings)
        if mask is not None:
            embeddings = embeddings * mask.unsqueeze(2).to(embeddings.dtype)
        return self.dropout(embeddings)


# --- attention -----------------------------------------------------------------------------


class DisentangledSelfAttention(nn.Module):
    """Projections to heads plus the fused op. Parameter names as transformers (query_proj, key_proj, ...)."""

    def __init__(self, config: DebertaV2Config):
        super().__init__()
        self.config = config
        self.num_attention_heads = config.num_attention_heads
        self.attention_head_size = config.head_size
        self.all_head_size = self.num_attention_heads * self.attention_head_size
        self.query_proj = nn.Linear(config.hidden_size, self.all_head_size, bias=True)
        self.key_proj = nn.Linear(config.hidden_size, self.all_head_size, bias=True)
        self.value_proj = nn.Linear(config.hidden_size, self.all_head_size, bias=True)
        self.share_att_key = config.share_att_key
        self.pos_att_type = list(config.pos_att_type)
        self.relative_attention = config.relative_attention
        self.use_c2p = self.relative_attention and "c2p" in self.pos_att_type
        self.use_p2c = self.relative_attention and "p2c" in self.pos_att_type
        if self.relative_attention:
            self.position_buckets = config.position_buckets
            self.max_relative_positions = config.resolved_max_relative_positions
            self.pos_ebd_size = config.attention_span
            self.pos_dropout = nn.Dropout(config.hidden_dropout_prob)
            if not self.share_att_key:
                if "c2p" in self.pos_att_type:
                    self.pos_key_proj = nn.Linear(config.hidden_size, self.all_head_size, bias=True)
                if "p2c" in self.pos_att_type:
                    self.pos_query_proj = nn.Linear(config.hidden_size, self.all_head_size)
        else:
            self.position_buckets = config.position_buckets
            self.max_relative_positions = config.resolved_max_relative_positions
        # transformers counts the position terms named in pos_att_type even when relative_attention is off
        scale_factor = 1 + ("c2p" in self.pos_att_type) + ("p2c" in self.pos_att_type)
        # sqrt(D * factor) taken in float32, as transformers takes it (its float64 models too: 1e-8 relative)
        size = torch.tensor(self.attention_head_size * scale_factor, dtype=torch.float32, device="cpu")
        self.scale = 1.0 / size.sqrt().item()
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, N, H*D]`` -> ``[B, H, N, D]`` view (no copy)."""
        return x.view(x.shape[0], x.shape[1], self.num_attention_heads, -1).transpose(1, 2)

    def _pos_heads(self, x: torch.Tensor) -> torch.Tensor:
        """``[2S, H*D]`` -> ``[H, 2S, D]`` view (no copy)."""
        return x.view(x.shape[0], self.num_attention_heads, -1).transpose(0, 1)

    def position_modules(self) -> tuple[nn.Linear | None, nn.Linear | None]:
        """The projections that make pos_key (c2p) and pos_query (p2c) from the relative embeddings."""
        key = (self.key_proj if self.share_att_key else self.pos_key_proj) if self.use_c2p else None
        query = (self.query_proj if self.share_att_key else self.pos_query_proj) if self.use_p2c else None
        return key, query

    def position_tables(self, rel_embeddings: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(pos_key, pos_query), each ``[H, 2S, D]`` or None for an absent term, from ``[2S', hidden]``."""
        key_proj, query_proj = self.position_modules()
        if key_proj is None and query_proj is None:
            return None, None
        rel = self.pos_dropout(rel_embeddings[: self.pos_ebd_size * 2])
        return (
            self._pos_heads(key_proj(rel)) if key_proj is not None else None,
            self._pos_heads(query_proj(rel)) if query_proj is not None else None,
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_tables: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None),
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """hidden_states ``[B, N, hidden]``, attention_mask ``[B, N]`` or None, position_tables from
        :meth:`position_tables` (the encoder computes them, once per forward or cached in eval mode).

        Returns the context ``[B, N, H*D]`` and, if asked, the probabilities ``[B, H, N, N]``.
        """
        q = self._heads(self.query_proj(hidden_states))
        k = self._heads(self.key_proj(hidden_states))
        v = self._heads(self.value_proj(hidden_states))
        pos_key, pos_query = position_tables
        dropout_p = self.dropout.p if self.training else 0.0
        options = dict(
            position_buckets=self.position_buckets, max_relative_positions=self.max_relative_positions,
            scale=self.scale, dropout_p=dropout_p, masked_rows=self.config.masked_rows,
        )
        backend = self.config.attn_backend
        probs = None
        if output_attentions:
            if backend not in ("auto", "torch"):
                raise ValueError(
                    f"output_attentions=True needs the torch backend (the fused {backend!r} backend never "
                    "materializes the attention matrix); set attn_backend='auto' or 'torch'"
                )
            call = make_call(q, k, v, pos_key, pos_query, attention_mask, **options)
            context, probs = torch_attention(call, need_probs=True)
        else:
            context = disentangled_attention(q, k, v, pos_key, pos_query, attention_mask, **options, backend=backend)
        context = context.transpose(1, 2).reshape(hidden_states.shape[0], hidden_states.shape[1], self.all_head_size)
        return context, probs


class DebertaV2SelfOutput(nn.Module):
    """dense -> dropout -> LayerNorm(+ residual). ``in_features`` defaults to hidden_size."""

    def __init__(self, config: DebertaV2Config, in_features: int | None = None):
        super().__init__()
        self.dense = nn.Linear(in_features or config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + input_tensor)


class DebertaV2Attention(nn.Module):
    def __init__(self, config: DebertaV2Config):
        super().__init__()
        self.self = DisentangledSelfAttention(config)
        self.output = DebertaV2SelfOutput(config)

    def forward(self, hidden_states, attention_mask, position_tables=(None, None), output_attentions=False):
        context, probs = self.self(hidden_states, attention_mask, position_tables, output_attentions)
        return self.output(context, hidden_states), probs


class DebertaV2Intermediate(nn.Module):
    def __init__(self, config: DebertaV2Config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = get_activation(config.hidden_act)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.intermediate_act_fn(self.dense(hidden_states))


class DebertaV2Output(DebertaV2SelfOutput):
    def __init__(self, config: DebertaV2Config):
        super().__init__(config, config.intermediate_size)


class DebertaV2Layer(nn.Module):
    def __init__(self, config: DebertaV2Config):
        super().__init__()
        self.attention = DebertaV2Attention(config)
        self.intermediate = DebertaV2Intermediate(config)
        self.output = DebertaV2Output(config)

    def forward(self, hidden_states, attention_mask, position_tables=(None, None), output_attentions=False):
        attention_output, probs = self.attention(hidden_states, attention_mask, position_tables, output_attentions)
        return self.output(self.intermediate(attention_output), attention_output), probs


class ConvLayer(nn.Module):
    """nGiE: a 1-D convolution over the sequence, added to the first layer's output."""

    def __init__(self, config: DebertaV2Config):
        super().__init__()
        kernel_size = config.conv_kernel_size
        self.conv_act = get_activation(config.conv_act)
        self.conv = nn.Conv1d(
            config.hidden_size, config.hidden_size, kernel_size, padding=(kernel_size - 1) // 2, groups=config.conv_groups
        )
        self.LayerNorm = nn.LayerNorm(config.hidden_size, config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states, residual_states, input_mask):
        """hidden_states (layer input) and residual_states (layer output) ``[B, N, hidden]``; input_mask ``[B, N]``."""
        out = self.conv(hidden_states.transpose(1, 2)).transpose(1, 2)
        if input_mask is not None:
            # as transformers, which zeroes where (1 - mask).bool(): every value but 1 (the attention reads any
            # nonzero value as a token, and the output below is scaled by the value)
            padding = ~input_mask if input_mask.dtype == torch.bool else input_mask != 1
            out = out.masked_fill(padding.unsqueeze(-1), 0)
        out = self.conv_act(self.dropout(out))
        output = self.LayerNorm(residual_states + out)
        if input_mask is not None:
            output = output * input_mask.unsqueeze(2).to(output.dtype)
        return output


_PROBES: dict[tuple, torch.Tensor] = {}


def _probe_weights(p: torch.Tensor, size: int) -> torch.Tensor:
    """Fixed random weights in [-1, 1) for a parameter's values (1-D, its numel, its dtype and device): a slice of
    one vector per dtype and device of at least ``size`` values (the largest parameter), drawn from a fixed seed."""
    key = (p.dtype, p.device)
    weights = _PROBES.get(key)
    if weights is None or weights.numel() < size:
        generator = torch.Generator().manual_seed(20261207)
        weights = (torch.rand(size, generator=generator, dtype=torch.float64) * 2 - 1).to(p.device, p.dtype)
        _PROBES[key] = weights
    return weights[: p.numel()]


class DebertaV2Encoder(nn.Module):
    def __init__(self, config: DebertaV2Config):
        super().__init__()
        self.layer = nn.ModuleList([DebertaV2Layer(config) for _ in range(config.num_hidden_layers)])
        self.relative_attention = config.relative_attention
        if self.relative_attention:
            self.rel_embeddings = nn.Embedding(config.attention_span * 2, config.hidden_size)
        self.norm_rel_ebd = [x.strip() for x in str(config.norm_rel_ebd).lower().split("|")]
        if "layer_norm" in self.norm_rel_ebd:
            self.LayerNorm = nn.LayerNorm(config.hidden_size, config.layer_norm_eps, elementwise_affine=True)
        self.conv = ConvLayer(config) if config.conv_kernel_size > 0 else None
        self.gradient_checkpointing = False
        self._cached_tables = None  # (key, tables): eval-mode position tables, see position_tables()

    def get_rel_embedding(self) -> torch.Tensor | None:
        """``[2S, hidden]`` relative embeddings (layer-normed when norm_rel_ebd says so), or None."""
        if not self.relative_attention:
            return None
        rel = self.rel_embeddings.weight
        if "layer_norm" in self.norm_rel_ebd:
            rel = self.LayerNorm(rel)
        return rel

    def _table_params(self) -> list[torch.Tensor]:
        """Every parameter the position tables depend on."""
        params = [self.rel_embeddings.weight]
        if "layer_norm" in self.norm_rel_ebd:
            params += list(self.LayerNorm.parameters())
        for layer in self.layer:
            for module in layer.attention.self.position_modules():
                if module is not None:
                    params += list(module.parameters())
        return params

    def _table_key(self, params: list[torch.Tensor]) -> tuple | None:
        """Storage, version counter, a float64 sum and a random projection of each parameter; None: do not cache.

        The sum and the projection catch writes that bypass the version counter (through ``.data``, as EMA
        updates do): the sum the smallest change of a value, the projection (a dot with fixed random weights)
        a change that keeps the sum, such as two rows swapped."""
        try:
            ids = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params)
        except RuntimeError:  # inference tensors have no version counter
            return None
        sums = [p.detach().sum(dtype=torch.float64) for p in params]
        size = max(p.numel() for p in params)  # one vector for all (drawn again only for a larger model)
        dots = [torch.dot(p.detach().reshape(-1), _probe_weights(p, size)).double() for p in params]
        return ids, torch.stack(sums + dots)

    def position_tables(self) -> list[tuple[torch.Tensor | None, torch.Tensor | None]]:
        """Each layer's (pos_key, pos_query) ``[H, 2S, D]``.

        They depend on parameters only, not on the inputs. For a CPU model in eval mode without autograd
        they are computed once and reused while every parameter they depend on is unchanged (same storage,
        version counter, sum and random projection); this saves two [2S, hidden] x [hidden, hidden] GEMMs per layer and
        forward. Training, autograd, torch.compile and GPU models always recompute them (cheap there).
        """
        if not self.relative_attention:
            return [(None, None)] * len(self.layer)
        params = self._table_params()
        cacheable = (not self.training and not torch.is_grad_enabled() and not torch.compiler.is_compiling()
                     and params[0].device.type == "cpu")
        key = self._table_key(params) if cacheable else None
        cached = self._cached_tables
        if key is not None and cached is not None and cached[0][0] == key[0] and torch.equal(cached[0][1], key[1]):
            return cached[1]
        rel = self.get_rel_embedding()
        tables = [layer.attention.self.position_tables(rel) for layer in self.layer]
        if not torch.compiler.is_compiling():
            self._cached_tables = (key, tables) if key is not None else None
        return tables

    def forward(self, hidden_states, attention_mask, output_hidden_states=False, output_attentions=False):
        """hidden_states ``[B, N, hidden]``; attention_mask ``[B, N]`` or None.

        Returns (last hidden state, all hidden states or None, all attentions or None).
        """
        tables = self.position_tables()
        # The attention layers read the mask as padding (nonzero = token): made bool once here, a floating one
        # checked once, rather than in every layer's call; the conv layer takes the mask as given.
        attn_mask = attention_mask
        if attention_mask is not None and attention_mask.dtype != torch.bool:
            check_not_additive(attention_mask)
            attn_mask = attention_mask != 0
        all_hidden = [hidden_states] if output_hidden_states else None
        all_attentions = [] if output_attentions else None
        layer_input = hidden_states
        for i, (layer, layer_tables) in enumerate(zip(self.layer, tables)):
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                output, probs = activation_checkpoint(
                    layer, layer_input, attn_mask, layer_tables, output_attentions, use_reentrant=False
                )
            else:
                output, probs = layer(layer_input, attn_mask, layer_tables, output_attentions)
            if i == 0 and self.conv is not None:
                output = self.conv(hidden_states, output, attention_mask)
            if output_hidden_states:
                all_hidden.append(output)
            if output_attentions:
                all_attentions.append(probs)
            layer_input = output
        return (
            layer_input,
            tuple(all_hidden) if output_hidden_states else None,
            tuple(all_attentions) if output_attentions else None,
        )


# --- the pretrained-model base: init, tying, loading and saving -----------------------------


def _resolve_dtype(dtype, config: DebertaV2Config, checkpoint: dict[str, torch.Tensor]) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if dtype == "auto":
        if config.torch_dtype is not None:
            return config.torch_dtype
        floats = [t.dtype for t in checkpoint.values() if t.is_floating_point()]
        return floats[0] if floats else torch.float32
    if isinstance(dtype, str):
        resolved = getattr(torch, dtype, None)
        if not isinstance(resolved, torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r}")
        dtype = resolved
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype, 'auto' or None, got {dtype!r}")
    return dtype


class DebertaV2PreTrainedModel(nn.Module):
    """Base of all DeBERTa-v2 models: weight init, tying, ``from_pretrained`` and ``save_pretrained``."""

    config_class = DebertaV2Config
    base_model_prefix = "deberta"
    _keys_to_ignore_on_load_unexpected: list[str] = [r"position_embeddings"]

    def __init__(self, config: DebertaV2Config, attn_backend: str | None = None):
        super().__init__()
        if not isinstance(config, DebertaV2Config):
            if getattr(config, "model_type", None) == DebertaV2Config.model_type and hasattr(config, "to_dict"):
                config = DebertaV2Config.from_dict(config.to_dict())  # a transformers DebertaV2Config
            else:
                raise TypeError(f"config must be a DebertaV2Config, got {type(config).__name__}")
        prepare_backends(attn_backend if attn_backend is not None else config.attn_backend)  # before any change
        if attn_backend is not None:
            config.attn_backend = attn_backend
        self.config = config

    # init and tying
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range or 0.02
        if isinstance(module, (nn.Linear, nn.Conv1d)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, (LegacyDebertaV2LMPredictionHead, DebertaV2LMPredictionHead)):
            nn.init.zeros_(module.bias)

    def post_init(self) -> None:
        self.apply(self._init_weights)
        self.tie_weights()

    def tied_weights(self) -> dict[str, str]:
        """Tied parameters: {key that is tied: key it shares its tensor with}. Tied keys are not saved."""
        return {}

    def tie_weights(self) -> None:
        for target, source in self.tied_weights().items():
            module_name, _, attr = target.rpartition(".")
            setattr(self.get_submodule(module_name), attr, self.get_parameter(source))

    def _reset_buffers(self) -> None:
        for module in self.modules():
            if isinstance(module, DebertaV2Embeddings):
                module.reset_buffers()

    def set_attn_backend(self, name: str) -> None:
        """Use backend ``name`` ("auto", "torch", "triton", "cuda") for every attention layer."""
        prepare_backends(name)
        self.config.attn_backend = name

    def gradient_checkpointing_enable(self) -> None:
        for module in self.modules():
            if isinstance(module, DebertaV2Encoder):
                module.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        for module in self.modules():
            if isinstance(module, DebertaV2Encoder):
                module.gradient_checkpointing = False

    def _encode(self, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                output_attentions, output_hidden_states) -> BaseModelOutput:
        """The heads' call of the base model (always as a BaseModelOutput, whatever config.return_dict says)."""
        return self.deberta(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                            position_ids=position_ids, inputs_embeds=inputs_embeds,
                            output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                            return_dict=True)

    def _finish(self, out, return_dict: bool | None):
        """``out``, or its tuple when return_dict (default config.return_dict) is False."""
        return_dict = self.config.return_dict if return_dict is None else return_dict
        return out if return_dict else out.to_tuple()

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        config: DebertaV2Config | None = None,
        torch_dtype: torch.dtype | str | None = None,
        dtype: torch.dtype | str | None = None,
        attn_backend: str | None = None,
        output_loading_info: bool = False,
        ignore_mismatched_sizes: bool = False,
        hub_kwargs: dict[str, Any] | None = None,
        **config_overrides: Any,
    ):
        """Load a checkpoint directory written by transformers (or by :meth:`save_pretrained`).

        Args:
            name_or_path: a local directory with ``config.json`` and ``model.safetensors``,
                ``pytorch_model.bin`` or a sharded checkpoint; anything else is treated as a hub id and
                fetched with huggingface_hub when it is installed.
            config: use this config instead of the directory's ``config.json``.
            torch_dtype / dtype: parameter dtype; None = float32, ``"auto"`` = the config's (or checkpoint's).
            attn_backend: the attention backend ("auto", "torch", "triton", "cuda").
            output_loading_info: also return a dict of missing, unexpected and mismatched keys.
            ignore_mismatched_sizes: re-initialize parameters whose checkpoint shape differs instead of raising.
            **config_overrides: config fields to change (e.g. ``num_labels=3``, ``masked_rows="zero"``).

        Returns:
            The model in eval mode on the CPU (and the loading info if asked).
        """
        directory = resolve_model_dir(name_or_path, **(hub_kwargs or {}))
        if config is None:
            config = DebertaV2Config.from_pretrained(directory, **config_overrides)
        else:
            for key, value in config_overrides.items():
                setattr(config, key, value)
            config.validate()
        checkpoint = load_state_dict(directory)
        if torch_dtype is not None and dtype is not None and torch_dtype != dtype:
            raise ValueError("pass either torch_dtype or dtype, not both")
        param_dtype = _resolve_dtype(dtype if dtype is not None else torch_dtype, config, checkpoint)

        with torch.device("meta"):
            model = cls(config, attn_backend=attn_backend)
        model.to(param_dtype)
        expected = model.state_dict()
        tied = model.tied_weights()
        to_load, info = match_state_dict(
            checkpoint, expected, prefix=cls.base_model_prefix,
            ignore_unexpected=cls._keys_to_ignore_on_load_unexpected,
            ignore_missing=["^" + re.escape(k) + "$" for k in tied],
            ignore_mismatched_sizes=ignore_mismatched_sizes,
        )
        model.to_empty(device="cpu")
        model._reset_buffers()
        model.tie_weights()
        fresh = sorted({k.rpartition(".")[0] for k in info.missing_keys + [m[0] for m in info.mismatched_keys]})
        for name in fresh:
            model._init_weights(model.get_submodule(name))
        result = model.load_state_dict(to_load, strict=False)
        leftover = [k for k in result.missing_keys if k not in tied and k not in info.missing_keys
                    and k not in {m[0] for m in info.mismatched_keys}]
        if leftover:  # pragma: no cover - match_state_dict accounts for every key
            raise CheckpointError(f"internal error: keys neither loaded nor initialized: {leftover}")
        model.tie_weights()
        model.eval()
        _report(cls.__name__, str(name_or_path), info)
        if output_loading_info:
            return model, info.as_dict()
        return model

    def save_pretrained(self, directory: str | os.PathLike, *, safe_serialization: bool = True) -> Path:
        """Write ``model.safetensors`` (or ``pytorch_model.bin``) and ``config.json`` that transformers loads.

        Both files are written to temporary names first and renamed into place once both are whole, so a
        failure while writing leaves the directory as it was. The weight files of an earlier save that this one
        does not overwrite (the other format, shards and their indexes) are removed, with a warning: one left
        beside it could be read in its place (loaders prefer ``model.safetensors`` to ``pytorch_model.bin``).
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tied = self.tied_weights()
        state = {k: v for k, v in self.state_dict().items() if k not in tied}
        weights_name = SAFE_WEIGHTS_NAME if safe_serialization else WEIGHTS_NAME
        self.config.architectures = [type(self).__name__]
        self.config.dtype = str(self.dtype).removeprefix("torch.")
        with atomic_path(directory / weights_name) as weights_tmp, atomic_path(directory / CONFIG_NAME) as config_tmp:
            write_weights(state, weights_tmp, safe_serialization)
            config_tmp.write_text(self.config.to_json_string(), encoding="utf-8")
            stale = stale_weight_files(directory, weights_name)
            if stale:  # before the renames: a save cut short here leaves no weights, not the old ones
                logger.warning("save_pretrained: removing the weight files of an earlier save in %s: %s",
                               directory, [path.name for path in stale])
                for path in stale:
                    path.unlink(missing_ok=True)
        return directory


def _report(class_name: str, source: str, info) -> None:
    if info.unexpected_keys:
        logger.warning(
            "Some weights of the model checkpoint at %s were not used when initializing %s: %s",
            source, class_name, info.unexpected_keys,
        )
    if info.missing_keys:
        logger.warning(
            "Some weights of %s were not initialized from the model checkpoint at %s and are newly initialized: %s\n"
            "You should probably TRAIN this model on a down-stream task to be able to use it for predictions and inference.",
            class_name, source, info.missing_keys,
        )
    if info.mismatched_keys:
        detail = ", ".join(f"{k}: checkpoint {a} vs model {b}" for k, a, b in info.mismatched_keys)
        logger.warning("Some weights of %s were re-initialized because their shapes differ: %s", class_name, detail)


# --- the base model ------------------------------------------------------------------------


class DebertaV2Model(DebertaV2PreTrainedModel):
    """The bare DeBERTa-v2 encoder: embeddings, N layers of disentangled attention, optional nGiE conv."""

    def __init__(self, config: DebertaV2Config, attn_backend: str | None = None):
        super().__init__(config, attn_backend)
        config = self.config  # converted if a transformers config was passed
        self.embeddings = DebertaV2Embeddings(config)
        self.encoder = DebertaV2Encoder(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.word_embeddings = value

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutput | tuple:
        """input_ids ``[B, N]`` (or inputs_embeds ``[B, N, embedding_size]``), attention_mask ``[B, N]``
        (1 = token, 0 = padding), token_type_ids / position_ids ``[B, N]``.

        Returns BaseModelOutput(last_hidden_state ``[B, N, hidden]``, hidden_states, attentions), or its
        tuple when return_dict is False.
        """
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        if input_ids is not None and inputs_embeds is not None:
            raise ValueError("You cannot specify both input_ids and inputs_embeds at the same time")
        if input_ids is None and inputs_embeds is None:
            raise ValueError("You have to specify either input_ids or inputs_embeds")
        for name, value in (("input_ids", input_ids), ("inputs_embeds", inputs_embeds)):
            if value is not None and not isinstance(value, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__} (a tokenizer called with "
                                "return_tensors='pt' returns tensors)")
        if input_ids is not None and input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [B, N], got shape {tuple(input_ids.shape)}")
        if inputs_embeds is not None and inputs_embeds.dim() != 3:
            raise ValueError(f"inputs_embeds must be [B, N, embedding_size], got shape {tuple(inputs_embeds.shape)}")
        batch, seq_len = (input_ids if input_ids is not None else inputs_embeds).shape[:2]
        _check_padding_mask(attention_mask, batch, seq_len)

        embedding_output = self.embeddings(
            input_ids=input_ids, token_type_ids=token_type_ids, position_ids=position_ids,
            mask=attention_mask, inputs_embeds=inputs_embeds,
        )
        last, hidden_states, attentions = self.encoder(
            embedding_output, attention_mask, output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
        out = BaseModelOutput(last_hidden_state=last, hidden_states=hidden_states, attentions=attentions)
        return self._finish(out, return_dict)


# --- heads ---------------------------------------------------------------------------------


class LegacyDebertaV2PredictionHeadTransform(nn.Module):
    def __init__(self, config: DebertaV2Config):
        super().__init__()
        self.embedding_size = config.embedding_size or config.hidden_size
        self.dense = nn.Linear(config.hidden_size, self.embedding_size)
        self.transform_act_fn = get_activation(config.hidden_act)
        self.LayerNorm = nn.LayerNorm(self.embedding_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.transform_act_fn(self.dense(hidden_states)))


class LegacyDebertaV2LMPredictionHead(nn.Module):
    def __init__(self, config: DebertaV2Config):
        super().__init__()
        self.transform = LegacyDebertaV2PredictionHeadTransform(config)
        self.embedding_size = config.embedding_size or config.hidden_size
        self.decoder = nn.Linear(self.embedding_size, config.vocab_size)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(hidden_states))


class LegacyDebertaV2OnlyMLMHead(nn.Module):
    def __init__(self, config: DebertaV2Config):
        super().__init__()
        self.predictions = LegacyDebertaV2LMPredictionHead(config)

    def forward(self, sequence_output: torch.Tensor) -> torch.Tensor:
        return self.predictions(sequence_output)


class DebertaV2LMPredictionHead(nn.Module):
    """The non-legacy MLM head: dense, activation, LayerNorm, then the word embeddings as the decoder."""

    def __init__(self, config: DebertaV2Config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.transform_act_fn = get_activation(config.hidden_act)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, elementwise_affine=True)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden_states: torch.Tensor, word_embeddings: nn.Embedding) -> torch.Tensor:
        hidden_states = self.LayerNorm(self.transform_act_fn(self.dense(hidden_states)))
        return torch.matmul(hidden_states, word_embeddings.weight.t()) + self.bias


class DebertaV2OnlyMLMHead(nn.Module):
    def __init__(self, config: DebertaV2Config):
        super().__init__()
        self.lm_head = DebertaV2LMPredictionHead(config)

    def forward(self, sequence_output: torch.Tensor, word_embeddings: nn.Embedding) -> torch.Tensor:
        return self.lm_head(sequence_output, word_embeddings)


class ContextPooler(nn.Module):
    """Pools the sequence by its first token: dropout, dense, activation."""

    def __init__(self, config: DebertaV2Config):
        super().__init__()
        self.dense = nn.Linear(config.pooler_hidden_size, config.pooler_hidden_size)
        self.dropout = nn.Dropout(config.pooler_dropout)
        self.act = get_activation(config.pooler_hidden_act)
        self.output_dim = config.hidden_size

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(self.dropout(hidden_states[:, 0])))


class DebertaV2ForMaskedLM(DebertaV2PreTrainedModel):
    """Masked language modelling: the legacy head (``cls.predictions``) or, with ``legacy=False``,
    ``lm_predictions.lm_head`` decoding through the word embeddings."""

    _keys_to_ignore_on_load_unexpected = [r"position_embeddings", r"mask_predictions.*"]

    def __init__(self, config: DebertaV2Config, attn_backend: str | None = None):
        super().__init__(config, attn_backend)
        config = self.config  # converted if a transformers config was passed
        self.legacy = config.legacy
        self.deberta = DebertaV2Model(config)
        if self.legacy:
            self.cls = LegacyDebertaV2OnlyMLMHead(config)
        else:
            self.lm_predictions = DebertaV2OnlyMLMHead(config)
        self.post_init()

    def tied_weights(self) -> dict[str, str]:
        if self.legacy and self.config.tie_word_embeddings:
            return {
                "cls.predictions.decoder.weight": "deberta.embeddings.word_embeddings.weight",
                "cls.predictions.decoder.bias": "cls.predictions.bias",
            }
        return {}

    def get_output_embeddings(self) -> nn.Module:
        return self.cls.predictions.decoder if self.legacy else self.lm_predictions.lm_head.dense

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                labels=None, output_attentions=None, output_hidden_states=None, return_dict=None, **kwargs):
        """Returns MaskedLMOutput: logits ``[B, N, vocab]``; loss if labels ``[B, N]`` (-100 = ignored)."""
        outputs = self._encode(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                               output_attentions, output_hidden_states)
        sequence_output = outputs.last_hidden_state
        if self.legacy:
            logits = self.cls(sequence_output)
        else:
            logits = self.lm_predictions(sequence_output, self.deberta.embeddings.word_embeddings)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.view(-1, self.config.vocab_size), labels.view(-1))
        out = MaskedLMOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                             attentions=outputs.attentions)
        return self._finish(out, return_dict)


class DebertaV2ForSequenceClassification(DebertaV2PreTrainedModel):
    """Pooled first token -> dropout -> linear. Losses: regression (num_labels 1), single-label with rows of
    negative labels ignored, soft labels (labels ``[B, num_labels]``), or by ``config.problem_type``."""

    def __init__(self, config: DebertaV2Config, attn_backend: str | None = None):
        super().__init__(config, attn_backend)
        config = self.config  # converted if a transformers config was passed
        self.num_labels = config.num_labels
        self.deberta = DebertaV2Model(config)
        self.pooler = ContextPooler(config)
        self.classifier = nn.Linear(self.pooler.output_dim, self.num_labels)
        drop = config.cls_dropout if config.cls_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(drop)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                labels=None, output_attentions=None, output_hidden_states=None, return_dict=None, **kwargs):
        """Returns SequenceClassifierOutput: logits ``[B, num_labels]``; loss if labels are given."""
        outputs = self._encode(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                               output_attentions, output_hidden_states)
        logits = self.classifier(self.dropout(self.pooler(outputs.last_hidden_state)))
        loss = None
        if labels is not None:
            loss, logits = self._loss(logits, labels)
        out = SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                       attentions=outputs.attentions)
        return self._finish(out, return_dict)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        problem = self.config.problem_type
        if problem is None:
            if self.num_labels == 1:  # regression; the logits are returned flattened, as transformers does
                logits = logits.view(-1).to(labels.dtype)
                return F.mse_loss(logits, labels.view(-1)), logits
            if labels.dim() == 1 or labels.size(-1) == 1:  # single label; rows with labels < 0 are ignored
                labels = labels.view(-1)
                keep = labels >= 0
                if not bool(keep.any()):
                    return torch.tensor(0).to(logits), logits
                return F.cross_entropy(logits[keep].float(), labels[keep].long()), logits
            return -(torch.log_softmax(logits, dim=-1) * labels).sum(-1).mean(), logits  # soft labels
        if problem == "regression":
            if self.num_labels == 1:
                return F.mse_loss(logits.squeeze(), labels.squeeze()), logits
            return F.mse_loss(logits, labels), logits
        if problem == "single_label_classification":
            return F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1)), logits
        return F.binary_cross_entropy_with_logits(logits, labels), logits


class DebertaV2ForTokenClassification(DebertaV2PreTrainedModel):
    """Per-token classification (NER, tagging): every token's hidden state -> dropout -> linear to
    ``num_labels``."""

    def __init__(self, config: DebertaV2Config, attn_backend: str | None = None):
        super().__init__(config, attn_backend)
        config = self.config  # converted if a transformers config was passed
        self.num_labels = config.num_labels
        self.deberta = DebertaV2Model(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                labels=None, output_attentions=None, output_hidden_states=None, return_dict=None, **kwargs):
        """Returns TokenClassifierOutput: logits ``[B, N, num_labels]``; loss if labels ``[B, N]`` (-100 = ignored)."""
        outputs = self._encode(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                               output_attentions, output_hidden_states)
        logits = self.classifier(self.dropout(outputs.last_hidden_state))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
        out = TokenClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                    attentions=outputs.attentions)
        return self._finish(out, return_dict)


class DebertaV2ForQuestionAnswering(DebertaV2PreTrainedModel):
    """Extractive question answering: a linear layer gives each token a start and an end logit (the span)."""

    def __init__(self, config: DebertaV2Config, attn_backend: str | None = None):
        super().__init__(config, attn_backend)
        config = self.config  # converted if a transformers config was passed
        self.num_labels = config.num_labels
        self.deberta = DebertaV2Model(config)
        self.qa_outputs = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                start_positions=None, end_positions=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, **kwargs):
        """Returns QuestionAnsweringModelOutput: start_logits and end_logits ``[B, N]``; loss if start_positions and
        end_positions ``[B]`` are given (positions outside the sequence are ignored)."""
        outputs = self._encode(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                               output_attentions, output_hidden_states)
        logits = self.qa_outputs(outputs.last_hidden_state)
        start_logits, end_logits = logits.split(1, dim=-1)
        start_logits = start_logits.squeeze(-1).contiguous()
        end_logits = end_logits.squeeze(-1).contiguous()
        loss = None
        if start_positions is not None and end_positions is not None:
            if start_positions.dim() > 1:
                start_positions = start_positions.squeeze(-1)
            if end_positions.dim() > 1:
                end_positions = end_positions.squeeze(-1)
            ignored = start_logits.size(1)
            start_positions = start_positions.clamp(0, ignored)
            end_positions = end_positions.clamp(0, ignored)
            loss = (F.cross_entropy(start_logits, start_positions, ignore_index=ignored)
                    + F.cross_entropy(end_logits, end_positions, ignore_index=ignored)) / 2
        out = QuestionAnsweringModelOutput(loss=loss, start_logits=start_logits, end_logits=end_logits,
                                           hidden_states=outputs.hidden_states, attentions=outputs.attentions)
        return self._finish(out, return_dict)


class DebertaV2ForMultipleChoice(DebertaV2PreTrainedModel):
    """Multiple choice: each of C choices encoded as its own sequence, pooled first token -> dropout -> linear to one
    score; the choices' scores compete in a softmax."""

    def __init__(self, config: DebertaV2Config, attn_backend: str | None = None):
        super().__init__(config, attn_backend)
        config = self.config  # converted if a transformers config was passed
        self.num_labels = config.num_labels
        self.deberta = DebertaV2Model(config)
        self.pooler = ContextPooler(config)
        self.classifier = nn.Linear(self.pooler.output_dim, 1)
        drop = config.cls_dropout if config.cls_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(drop)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                labels=None, output_attentions=None, output_hidden_states=None, return_dict=None, **kwargs):
        """Inputs ``[B, C, N]`` (C choices; inputs_embeds ``[B, C, N, E]``). Returns MultipleChoiceModelOutput:
        logits ``[B, C]``; loss if labels ``[B]``."""
        num_choices = (input_ids if input_ids is not None else inputs_embeds).shape[1]

        def flat(t, keep=1):
            return t.reshape(-1, *t.shape[-keep:]) if t is not None else None

        outputs = self._encode(flat(input_ids), flat(attention_mask), flat(token_type_ids), flat(position_ids),
                               flat(inputs_embeds, 2), output_attentions, output_hidden_states)
        logits = self.classifier(self.dropout(self.pooler(outputs.last_hidden_state))).view(-1, num_choices)
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        out = MultipleChoiceModelOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                        attentions=outputs.attentions)
        return self._finish(out, return_dict)
