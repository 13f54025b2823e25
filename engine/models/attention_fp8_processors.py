"""Route the self-attention of Wan (diffusers `WanTransformer3DModel`) and LTX-Video
(`LTXVideoTransformer3DModel`) through the FP8 attention kernel, one model at a time.

diffusers' attention dispatcher only knows its own backends (an enum), so the FP8 kernel is not a
dispatcher backend: each self-attention module (`attn1` of every block) gets a processor of ours, a
subclass of the stock processor whose `__call__` computes q, k, v exactly as the stock one does (same
projections, norms and rotary embedding) and hands them to the kernel. Everything else keeps the stock
path: cross-attention (the 512 text tokens), and any call the kernel does not cover (an attention mask,
context parallelism, Wan 2.1's image tokens), which goes through diffusers' dispatcher with the processor's
`_attention_backend`. Nothing process-wide changes; other models keep their processors.

Under diffusers' Ulysses sequence split (several GPUs) the processors make the head exchange themselves
(ulysses_exchange.py) around the kernel; any other context parallelism (ring attention) takes the stock path.

`implementation` picks what does the attention: 'auto' (the default: 'gluon-ws' where WARP_SPECIALIZED says, by
head dim and length, and Gluon runs; 'triton' otherwise: the same arithmetic either way, so the same output), 'triton' (the kernel, through the `reelsmith::fp8_attention`
custom op, so torch.compile keeps the block in one graph), 'cudnn' (cuDNN's fused FP8 attention with the same
smoothing, attention_fp8_cudnn.py; on an H100 5 % slower than the kernel and less
accurate, so not `auto`'s choice), 'gluon' (the same arithmetic as 'triton' in Gluon, MMAs left in flight
through the softmax, attention_fp8_gluon.py; as accurate, measured slower), 'gluon-ws' (the same arithmetic
warp-specialized, FlashAttention-3's loader warp and two consumer warpgroups taking turns at the tensor cores,
attention_fp8_gluon_ws.py; as accurate, on an H100 6 % faster than 'triton' at Wan 720p, 2 % at 480p and 12 %
at LTX 13B's length) or 'reference' (the PyTorch twin of our kernel's quantisation scheme: slow, for tests and
CPU debugging).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import BackendUnavailableError, InvalidInputError
from .attention_fp8_reference import HEAD_DIMS, K_GROUP, Q_GROUP, QK_DTYPES, fp8_attention_reference
from .ulysses_exchange import attend_across_ranks, can_exchange

IMPLEMENTATIONS = ("auto", "triton", "cudnn", "gluon", "gluon-ws", "reference")


@dataclass(frozen=True)
class WarpSpecialized:
    """Where 'auto' takes the warp-specialized kernel for one head dim: from `from_tokens` tokens, in `config` (a
    name in attention_fp8_gluon_ws.GLUON_WS_CONFIGS; 'default': its DEFAULT_GLUON_WS_CONFIG)."""
    from_tokens: int
    config: str = "default"


# head dim -> where 'auto' takes the warp-specialized kernel (H100, 2026-12-07, per layer, head dim 128: Wan 720p,
# 75,600 tokens, 131.8 ms against the Triton kernel's 140.1; 480p, 32,760 tokens, 26.47 against 26.88; LTX 13B,
# 11,440 tokens, 3.00 against 3.43; shorter sequences not measured). Head dim 64 (LTX-Video 2B) keeps the Triton
# kernel: no warp-specialized config is measured faster there yet.
WARP_SPECIALIZED = {128: WarpSpecialized(from_tokens=8192)}


def _triton_attention_op():
    try:
        from .attention_fp8 import fp8_attention_op
    except ImportError as error:
        raise BackendUnavailableError(
            f"FP8 attention needs Triton ({error}); it comes with PyTorch's CUDA wheels on Linux "
            "(`pip install triton` otherwise). Choose the 'cudnn' or 'sdpa' attention backend.") from error
    return fp8_attention_op


def _optional_attention_op(implementation: str, module: str, op: str, unavailable: str):
    """The op of an implementation that may be unable to run here ('cudnn', 'gluon', 'gluon-ws'): `module`'s `op`, or a
    BackendUnavailableError with the reason its `unavailable()` gives (or why it does not import)."""
    try:
        loaded = importlib.import_module(f".{module}", __package__)
    except ImportError as error:
        reason = f"its module does not import ({error})"
    else:
        reason = getattr(loaded, unavailable)()
        if reason is None:
            return getattr(loaded, op)
    raise BackendUnavailableError(f"FP8 attention implementation '{implementation}' cannot run: {reason}. Choose the "
                                  "implementation 'triton'.")


# implementation -> the op that attends ('auto': the one for every call the warp-specialized kernel does not
# take; the 'reference' calls the PyTorch twin directly)
_OP_LOADERS = {
    "auto": lambda: _OP_LOADERS["triton"](),
    "triton": _triton_attention_op,
    "cudnn": lambda: _optional_attention_op("cudnn", "attention_fp8_cudnn", "cudnn_fp8_attention_op",
                                            "cudnn_frontend_missing"),
    "gluon": lambda: _optional_attention_op("gluon", "attention_fp8_gluon", "gluon_fp8_attention_op",
                                            "gluon_unavailable"),
    "gluon-ws": lambda: _optional_attention_op("gluon-ws", "attention_fp8_gluon_ws", "gluon_ws_fp8_attention_op",
                                               "gluon_ws_unavailable"),
}


class _Fp8SelfAttention:
    """The attention step shared by the FP8 self-attention processors."""

    def setup_fp8(self, stock_backend, implementation: str, config: str, qk_dtype: str) -> None:
        if implementation not in IMPLEMENTATIONS:
            raise InvalidInputError(
                f"FP8 attention implementation '{implementation}' is not one of {', '.join(IMPLEMENTATIONS)}.")
        if qk_dtype not in QK_DTYPES:
            raise InvalidInputError(f"FP8 attention qk_dtype '{qk_dtype}' is not one of {', '.join(QK_DTYPES)}.")
        self._attention_backend = stock_backend  # for the calls that stay on diffusers' dispatcher
        self.implementation = implementation
        self.config = config
        self.qk_dtype = qk_dtype
        self._op = _OP_LOADERS[implementation]() if implementation in _OP_LOADERS else None
        # 'auto''s op for long sequences at head dim 128, unless a Triton config or FP8 Q.K was asked for (the
        # warp-specialized kernel has neither)
        self._long_sequence_op = (_warp_specialized_op_if_it_runs()
                                  if implementation == "auto" and config == "default" and qk_dtype == "int8" else None)

    def stays_stock(self, encoder_hidden_states, attention_mask) -> bool:
        """Calls the kernel does not take: cross-attention, a mask, a context parallelism other than Ulysses."""
        return (encoder_hidden_states is not None or attention_mask is not None
                or (self._parallel_config is not None and not can_exchange(self._parallel_config)))

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """[B, S, H, D] in, [B, S, H, D] out (under a sequence split: this GPU's slice of S)."""
        if self._parallel_config is not None:
            return attend_across_ranks(query, key, value, self._attend_whole, self._parallel_config)
        return self._attend_whole(query, key, value)

    def _attend_whole(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        if self.implementation == "reference":
            return fp8_attention_reference(query, key, value, "bshd", qk_dtype=self.qk_dtype)
        warp_specialized = WARP_SPECIALIZED.get(query.shape[-1])
        if self._long_sequence_op is not None and warp_specialized is not None \
                and query.shape[1] >= warp_specialized.from_tokens:
            return self._long_sequence_op(query, key, value, warp_specialized.config)
        if self.implementation in ("auto", "triton"):  # the Triton op takes a config
            return self._op(query, key, value, "bshd", self.config, self.qk_dtype, Q_GROUP, K_GROUP)
        if self.implementation == "gluon-ws":  # its config for this head dim, as 'auto' would take it
            return self._op(query, key, value, warp_specialized.config if warp_specialized else "default")
        return self._op(query, key, value)


def _warp_specialized_op_if_it_runs():
    """The warp-specialized kernel's op where it runs here (Hopper, a Triton with Gluon), else None: 'auto' then
    keeps the Triton kernel, which computes the same."""
    try:
        return _OP_LOADERS["gluon-ws"]()
    except BackendUnavailableError:
        return None


def _wan_rotary(x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    # Wan rotates interleaved channel pairs (even, odd); same arithmetic as diffusers' Wan processor
    even, odd = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = freqs_cos[..., 0::2], freqs_sin[..., 1::2]
    return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2).type_as(x)


def _processor_classes():
    from diffusers.models.transformers.transformer_ltx import LTXVideoAttnProcessor, apply_rotary_emb
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor

    class WanFp8SelfAttnProcessor(_Fp8SelfAttention, WanAttnProcessor):
        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
            if self.stays_stock(encoder_hidden_states, attention_mask) or attn.add_k_proj is not None:
                return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
            if getattr(attn, "fused_projections", False):
                query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
            else:
                query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
            query, key = attn.norm_q(query), attn.norm_k(key)
            query, key, value = (x.unflatten(2, (attn.heads, -1)) for x in (query, key, value))
            if rotary_emb is not None:
                query, key = _wan_rotary(query, *rotary_emb), _wan_rotary(key, *rotary_emb)
            hidden_states = self.attend(query, key, value).flatten(2, 3).type_as(query)
            return attn.to_out[1](attn.to_out[0](hidden_states))

    class LTXFp8SelfAttnProcessor(_Fp8SelfAttention, LTXVideoAttnProcessor):
        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                     image_rotary_emb=None):
            if self.stays_stock(encoder_hidden_states, attention_mask):
                return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
            query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
            query, key = attn.norm_q(query), attn.norm_k(key)
            if image_rotary_emb is not None:
                query, key = apply_rotary_emb(query, image_rotary_emb), apply_rotary_emb(key, image_rotary_emb)
            query, key, value = (x.unflatten(2, (attn.heads, -1)) for x in (query, key, value))
            hidden_states = self.attend(query, key, value).flatten(2, 3).to(query.dtype)
            return attn.to_out[1](attn.to_out[0](hidden_states))

    return {WanAttnProcessor: WanFp8SelfAttnProcessor, LTXVideoAttnProcessor: LTXFp8SelfAttnProcessor}


_PROCESSORS = None


def fp8_processor_classes() -> dict[type, type]:
    """stock processor class -> our FP8 subclass (built once, on first use: diffusers is imported lazily)."""
    global _PROCESSORS
    if _PROCESSORS is None:
        _PROCESSORS = _processor_classes()
    return _PROCESSORS


def is_fp8_processor(processor) -> bool:
    return isinstance(processor, _Fp8SelfAttention)


def _stock_class(processor) -> type | None:
    classes = fp8_processor_classes()
    if is_fp8_processor(processor):
        return next(stock for stock, ours in classes.items() if isinstance(processor, ours))
    return type(processor) if type(processor) in classes else None


def self_attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The self-attention modules of a Wan or LTX-Video transformer: `attn1` of each block."""
    found = []
    for name, module in model.named_modules():
        processor = getattr(module, "processor", None)
        if processor is None or _stock_class(processor) is None or name.rsplit(".", 1)[-1] != "attn1":
            continue
        if getattr(module, "is_cross_attention", False):
            continue
        found.append((name, module))
    return found


def fp8_self_attention_refusal(model: nn.Module) -> str | None:
    """Why the 'fp8' backend cannot take `model`'s self-attention (None when it can)."""
    modules = self_attention_modules(model)
    if not modules:
        return (f"{type(model).__name__} has no Wan or LTX-Video self-attention layers; the 'fp8' attention "
                "backend covers those two families only. Choose 'cudnn' or 'sdpa'.")
    for name, module in modules:
        head_dim = module.to_q.out_features // module.heads
        if head_dim not in HEAD_DIMS:
            return (f"{name}: head dim {head_dim} is not supported by the 'fp8' attention backend (it supports "
                    f"{' and '.join(map(str, HEAD_DIMS))}). Choose 'cudnn' or 'sdpa'.")
    return None


def apply_fp8_self_attention(model: nn.Module, stock_backend=None, *, implementation: str = "auto",
                             config: str = "default", qk_dtype: str = "int8") -> int:
    """Give every self-attention module of `model` an FP8 processor; returns how many. `stock_backend` is the
    diffusers backend the calls outside the kernel use. Raises InvalidInputError for a model with no Wan /
    LTX-Video self-attention or a head dim the kernel does not support."""
    refusal = fp8_self_attention_refusal(model)
    if refusal is not None:
        raise InvalidInputError(refusal)
    modules = self_attention_modules(model)
    classes = fp8_processor_classes()
    for _, module in modules:
        processor = classes[_stock_class(module.processor)]()
        processor.setup_fp8(stock_backend, implementation, config, qk_dtype)
        module.set_processor(processor)
    return len(modules)


def remove_fp8_self_attention(model: nn.Module) -> int:
    """Put the stock processors back where FP8 ones are (keeping their backend); returns how many."""
    restored = 0
    for module in model.modules():
        processor = getattr(module, "processor", None)
        if processor is not None and is_fp8_processor(processor):
            stock = _stock_class(processor)()
            stock._attention_backend = processor._attention_backend
            module.set_processor(stock)
            restored += 1
    return restored
