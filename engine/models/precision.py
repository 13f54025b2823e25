"""Precision of a loaded transformer: bf16, fp16, or fp8 weights inside the repeated blocks.

Choices (`PRECISIONS`):
- `bf16`, `fp16`: the whole model in that dtype, except the modules the model class lists in
  `_keep_in_fp32_modules` (Wan: rotary tables, time embedder, modulation tables, fp32 norms), which stay
  float32 exactly as diffusers' `from_pretrained(torch_dtype=...)` leaves them.
- `fp8_e4m3fn`, `fp8_e5m2`: fp8 *storage*. Every nn.Linear inside the repeated transformer blocks becomes an
  `Fp8Linear` holding an fp8 weight plus one float32 per-tensor scale; at forward the weight is dequantized
  to bf16 and the matmul runs in bf16. Halves the memory of those weights, costs a little speed.
- `fp8_e4m3fn_fast`: fp8 *matmuls* through `torch._scaled_mm` on GPUs of compute capability >= 8.9
  (Ada, Hopper, Blackwell). Weight: per-tensor scale. Activations: quantized at every call with a dynamic
  per-tensor scale (row-wise is supported too; see DEFAULT_ACTIVATION_SCALING for why it is not the
  default). Output bf16. It pays off with regional compile, which fuses the activation quantization; eager
  it is only ~5 % faster than bf16. Where fp8 matmuls are not
  available (CPU, older GPUs) it falls back to fp8 storage + bf16 compute and says so in the returned notes
  and in a logging warning.
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointMismatchError, InvalidInputError

logger = logging.getLogger(__name__)

PRECISIONS = ("bf16", "fp16", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2")

_FLOAT_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_FP8_DTYPES = {
    "fp8_e4m3fn": torch.float8_e4m3fn,
    "fp8_e4m3fn_fast": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
}
# fp8 layers compute in bf16: fp16 would overflow on Wan's activations, fp32 would waste the bandwidth.
FP8_COMPUTE_DTYPE = torch.bfloat16

_SCALE_FLOOR = 1e-12  # keeps an all-zero weight or activation row from producing a zero (then inf) scale


def _fp8_max(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).max)


def _quantize_per_tensor(weight: torch.Tensor, fp8_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """float weight -> (fp8 weight, float32 0-dim scale) with weight ~= fp8.float() * scale."""
    fp8_max = _fp8_max(fp8_dtype)
    w = weight.detach().float()
    scale = (w.abs().amax() / fp8_max).clamp_min(_SCALE_FLOOR)
    # Values land in [-fp8_max, fp8_max] up to rounding; clamp because fp8 e4m3fn has no inf and an
    # out-of-range cast turns into NaN.
    quantized = (w / scale).clamp_(-fp8_max, fp8_max).to(fp8_dtype)
    return quantized, scale.reshape(())


class Fp8Linear(nn.Module):
    """A Linear layer whose weight is stored in fp8 with one float32 scale for the whole tensor.

    `weight` is an fp8 Parameter with requires_grad False (so it is listed, moved and offloaded like any
    weight), `weight_scale` a float32 0-dim buffer, `bias` (optional) a Parameter in `compute_dtype`.
    The real weight is `weight.float() * weight_scale`.

    Forward:
    - `use_scaled_mm` False: dequantize the weight to `compute_dtype` and run F.linear (fp8 storage).
    - `use_scaled_mm` True: quantize the input to fp8 e4m3fn (scale per row when `activation_scaling` is
      "row", one scale when "tensor") and multiply with `torch._scaled_mm`, output in `compute_dtype`.
      Needs an e4m3fn weight and in/out features divisible by 16 on CUDA (apply_precision checks this).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        fp8_dtype: torch.dtype = torch.float8_e4m3fn,
        compute_dtype: torch.dtype = FP8_COMPUTE_DTYPE,
        use_scaled_mm: bool = False,
        activation_scaling: str = "tensor",
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if fp8_dtype not in (torch.float8_e4m3fn, torch.float8_e5m2):
            raise InvalidInputError(f"Fp8Linear stores float8_e4m3fn or float8_e5m2 weights, not {fp8_dtype}.")
        if activation_scaling not in ("row", "tensor"):
            raise InvalidInputError(f"activation_scaling must be 'row' or 'tensor', not {activation_scaling!r}.")
        if use_scaled_mm and fp8_dtype != torch.float8_e4m3fn:
            raise InvalidInputError("fp8 matmuls (use_scaled_mm) need float8_e4m3fn weights, not float8_e5m2.")
        self.in_features = in_features
        self.out_features = out_features
        self.fp8_dtype = fp8_dtype
        self.compute_dtype = compute_dtype
        self.use_scaled_mm = use_scaled_mm
        self.activation_scaling = activation_scaling
        self.weight = nn.Parameter(
            torch.zeros(out_features, in_features, dtype=fp8_dtype, device=device), requires_grad=False
        )
        self.register_buffer("weight_scale", torch.ones((), dtype=torch.float32, device=device))
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features, dtype=compute_dtype, device=device), requires_grad=False)
        else:
            self.register_parameter("bias", None)

    # --- construction -------------------------------------------------------------------------------
    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        fp8_dtype: torch.dtype = torch.float8_e4m3fn,
        compute_dtype: torch.dtype = FP8_COMPUTE_DTYPE,
        use_scaled_mm: bool = False,
        *,
        activation_scaling: str = "tensor",
        work_device: torch.device | None = None,
    ) -> "Fp8Linear":
        """Quantize a Linear's weight (fresh per-tensor scale). The new layer lives where the Linear's weight
        lives; `work_device` (e.g. the GPU) only hosts the temporary float copy used to quantize."""
        home = linear.weight.device
        layer = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            fp8_dtype=fp8_dtype,
            compute_dtype=compute_dtype,
            use_scaled_mm=use_scaled_mm,
            activation_scaling=activation_scaling,
            device=home,
        )
        source = linear.weight.detach()
        if work_device is not None and source.device != work_device:
            source = source.to(work_device)
        layer.set_weight(source)
        if linear.bias is not None:
            layer.bias.data = linear.bias.detach().to(device=home, dtype=compute_dtype)
        return layer

    @classmethod
    def from_quantized(
        cls,
        weight_fp8: torch.Tensor,
        scale: torch.Tensor,
        bias: torch.Tensor | None,
        compute_dtype: torch.dtype = FP8_COMPUTE_DTYPE,
        use_scaled_mm: bool = False,
        *,
        activation_scaling: str = "tensor",
    ) -> "Fp8Linear":
        """Wrap an already-quantized weight (ComfyUI "fp8_scaled" files: fp8 weight + `scale_weight`) as is,
        without dequantizing it. `scale` may be 0-dim or hold one element."""
        if weight_fp8.dtype not in (torch.float8_e4m3fn, torch.float8_e5m2) or weight_fp8.ndim != 2:
            raise InvalidInputError(
                f"from_quantized needs a 2-D float8 weight, got {weight_fp8.dtype} of shape {tuple(weight_fp8.shape)}."
            )
        if scale.numel() != 1:
            raise InvalidInputError(
                f"from_quantized takes one per-tensor scale; got a scale of shape {tuple(scale.shape)} "
                "(per-channel scaled checkpoints are not supported)."
            )
        out_features, in_features = weight_fp8.shape
        layer = cls(
            in_features,
            out_features,
            bias=bias is not None,
            fp8_dtype=weight_fp8.dtype,
            compute_dtype=compute_dtype,
            use_scaled_mm=use_scaled_mm and weight_fp8.dtype == torch.float8_e4m3fn,
            activation_scaling=activation_scaling,
            device="meta",
        )
        home = weight_fp8.device
        layer.weight = nn.Parameter(weight_fp8.detach(), requires_grad=False)
        layer.weight_scale = scale.detach().to(device=home, dtype=torch.float32).reshape(())
        if bias is not None:
            layer.bias = nn.Parameter(bias.detach().to(device=home, dtype=compute_dtype), requires_grad=False)
        return layer

    # --- weight access (used by LoRA patching) ---------------------------------------------------------
    def dequantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The real weight, `weight * weight_scale`, in `dtype` (default: the compute dtype).
        The product is computed in float32 and rounded once."""
        dtype = dtype or self.compute_dtype
        return self.weight.to(dtype) * self.weight_scale

    def set_weight(self, float_weight: torch.Tensor) -> None:
        """Replace the weight by a float tensor of the same shape, re-quantized with a fresh per-tensor scale.
        The result stays on this layer's device whatever device `float_weight` is on."""
        if tuple(float_weight.shape) != (self.out_features, self.in_features):
            raise InvalidInputError(
                f"Fp8Linear.set_weight: shape {tuple(float_weight.shape)} does not match the layer's "
                f"({self.out_features}, {self.in_features})."
            )
        quantized, scale = _quantize_per_tensor(float_weight, self.fp8_dtype)
        home = self.weight.device
        self.weight.data = quantized.to(home)
        self.weight_scale = scale.to(home)

    # --- forward --------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_scaled_mm and self.weight.dtype == torch.float8_e4m3fn:
            return self._forward_scaled_mm(x)
        bias = self.bias
        if bias is not None and bias.dtype != self.compute_dtype:
            bias = bias.to(self.compute_dtype)
        return F.linear(x.to(self.compute_dtype), self.dequantized_weight(self.compute_dtype), bias)

    def _forward_scaled_mm(self, x: torch.Tensor) -> torch.Tensor:
        fp8_max = _fp8_max(torch.float8_e4m3fn)
        leading = x.shape[:-1]
        x2d = x.reshape(-1, self.in_features)
        if x2d.dtype != self.compute_dtype:
            x2d = x2d.to(self.compute_dtype)
        # Dynamic activation scale: max |x| per row ([M, 1]) or over the tensor (0-dim), in one reduction
        # kernel that reads x once (no |x| temporary).
        dims = dict(dim=1, keepdim=True) if self.activation_scaling == "row" else {}
        amax = torch.linalg.vector_norm(x2d, ord=float("inf"), dtype=torch.float32, **dims)
        inverse = fp8_max / amax.clamp_min(_SCALE_FLOOR)
        # One kernel: x * inverse computed in float32 and written straight as fp8 (no float32 temporary).
        # |x * inverse| <= fp8_max up to float32 rounding, which fp8 rounds back to fp8_max: no clamp needed.
        x_fp8 = torch.empty(x2d.shape, dtype=torch.float8_e4m3fn, device=x2d.device)
        torch.mul(x2d, inverse, out=x_fp8)
        scale_a = inverse.reciprocal()
        # _scaled_mm wants the second operand column-major: the [out, in] row-major weight transposed is.
        weight_t = self.weight.t()
        bias = self.bias
        if bias is not None and bias.dtype != self.compute_dtype:
            bias = bias.to(self.compute_dtype)
        if self.activation_scaling == "row":
            # Row-wise scaling takes float32 scales of shape [M, 1] and [1, N]; the weight's per-tensor
            # scale is broadcast over its N output columns. The bias goes outside the kernel.
            scale_b = self.weight_scale.reshape(1, 1).expand(1, self.out_features).contiguous()
            out = torch._scaled_mm(x_fp8, weight_t, scale_a=scale_a, scale_b=scale_b, out_dtype=self.compute_dtype)
            if bias is not None:
                out = out + bias
        else:
            out = torch._scaled_mm(
                x_fp8, weight_t, scale_a=scale_a, scale_b=self.weight_scale, bias=bias, out_dtype=self.compute_dtype
            )
        return out.reshape(*leading, self.out_features)

    def extra_repr(self) -> str:
        mode = f"fp8 matmul ({self.activation_scaling}-wise activations)" if self.use_scaled_mm else "fp8 storage"
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"weight={str(self.fp8_dtype).replace('torch.', '')}, compute={str(self.compute_dtype).replace('torch.', '')}, "
            f"{mode}"
        )


# --- capability checks -------------------------------------------------------------------------------
def _cuda_capability(device: torch.device) -> tuple[int, int] | None:
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_capability(device)


def fp8_matmul_supported(device) -> bool:
    """True where `torch._scaled_mm` runs fp8 matmuls: CUDA GPUs of compute capability 8.9 or newer."""
    capability = _cuda_capability(torch.device(device))
    return capability is not None and capability >= (8, 9) and hasattr(torch, "_scaled_mm")


# Activation scaling for fp8 matmuls. Measured on an H100 (torch 2.11, 4-layer Wan A14B-width model, 32,760
# tokens): one Linear 5120->13824 took bf16 5.64 ms, fp8 tensor-wise 4.18 ms, fp8 row-wise 5.98 ms (PyTorch's
# row-wise kernel is slower than cuBLAS' tensor-wise one); the whole forward 342 / 324 / 351 ms eager and
# 292 (bf16) / 251 / 255 ms with regional compile; accuracy against bf16 was the same (cosine 0.99997 both,
# relative error 0.0071). e4m3 keeps full relative precision over a ~3e4 range below the tensor's maximum,
# so one scale per tensor loses little; row-wise stays available (Fp8Linear(activation_scaling="row")).
DEFAULT_ACTIVATION_SCALING = "tensor"


def _activation_scaling_for(device: torch.device) -> str:
    return DEFAULT_ACTIVATION_SCALING


def describe_precision_fallback(precision: str, device) -> str | None:
    """The message to show when `precision` cannot run as asked on `device`, else None."""
    device = torch.device(device)
    if precision != "fp8_e4m3fn_fast" or fp8_matmul_supported(device):
        return None
    capability = _cuda_capability(device)
    if capability is None:
        where = "the CPU" if device.type == "cpu" else f"device '{device}'"
    else:
        where = f"{torch.cuda.get_device_name(device)} (compute capability {capability[0]}.{capability[1]})"
    return (
        f"fp8_e4m3fn_fast: fp8 matmuls need an NVIDIA GPU of compute capability 8.9 or newer (Ada, Hopper, "
        f"Blackwell); {where} has none, so the blocks' weights are stored in fp8 and computed in bf16 instead "
        "(same memory saving as fp8_e4m3fn, no fp8 speed-up)."
    )


# --- applying a precision to a model -----------------------------------------------------------------
def _keep_fp32_names(model: nn.Module) -> tuple[str, ...]:
    names = getattr(model, "_keep_in_fp32_modules", None) or ()
    return tuple([names] if isinstance(names, str) else names)


def _cast_tensors(model: nn.Module, dtype: torch.dtype, skip: tuple[type, ...] = ()) -> None:
    """Cast floating parameters and buffers to `dtype` one tensor at a time (no second copy of the model),
    keeping the model class's `_keep_in_fp32_modules` in float32 (accuracy: rotary tables, timestep
    embedding, modulation tables and fp32 norms are small and sensitive), and leaving modules of the
    `skip` types (fp8 layers) untouched."""
    keep = _keep_fp32_names(model)
    for module_name, module in model.named_modules():
        if skip and isinstance(module, skip):
            continue
        parts = module_name.split(".") if module_name else []
        for tensor_name, param in list(module.named_parameters(recurse=False)):
            target = torch.float32 if any(k in parts or k == tensor_name for k in keep) else dtype
            if param.is_floating_point() and param.dtype != target:
                param.data = param.data.to(target)
        for tensor_name, buffer in list(module.named_buffers(recurse=False)):
            target = torch.float32 if any(k in parts or k == tensor_name for k in keep) else dtype
            if buffer is not None and buffer.is_floating_point() and buffer.dtype != target:
                setattr(module, tensor_name, buffer.to(target))


def repeated_block_linears(model: nn.Module) -> list[str]:
    """Default fp8 scope: names of the nn.Linear layers inside the model's repeated transformer blocks
    (the classes named in diffusers' `_repeated_blocks`; `blocks.*` if the class names none)."""
    block_classes = set(getattr(model, "_repeated_blocks", None) or ())
    block_prefixes = [
        name + "." for name, module in model.named_modules() if name and type(module).__name__ in block_classes
    ]
    if not block_prefixes:
        block_prefixes = ["blocks."]
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and any(name.startswith(prefix) for prefix in block_prefixes)
    ]


def _scaled_mm_shape_ok(in_features: int, out_features: int) -> bool:
    # cuBLASLt fp8 GEMMs need both dimensions of the weight divisible by 16.
    return in_features % 16 == 0 and out_features % 16 == 0


def fp8_storage_dtype(precision: str) -> torch.dtype | None:
    """The dtype `precision` stores Linear weights in when it is an fp8 precision, else None."""
    return _FP8_DTYPES.get(precision)


def apply_precision(
    model: nn.Module,
    precision: str,
    device,
    quantized: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    *,
    fp8_layers: Callable[[nn.Module], Iterable[str]] = repeated_block_linears,
    activation_scaling: str | None = None,
) -> list[str]:
    """Cast `model` in place to `precision` (one of PRECISIONS); returns notes to show the user.

    `device` is where the model will compute: it decides whether fp8 matmuls are possible and, when it is a
    GPU, hosts the temporary float copy of each layer while it is quantized. The model stays where it is.
    `quantized` maps diffusers Linear names to (fp8 weight, scale) read from a ComfyUI fp8_scaled file; those
    layers are wrapped as stored instead of re-quantized. `fp8_layers(model)` names the Linear layers to
    convert for fp8 precisions (default: the Linear layers of the repeated transformer blocks).
    `activation_scaling` ("row" or "tensor") overrides the fp8-matmul activation scaling chosen for the
    device (benchmarks use it; users never need to).

    Only the Linear layers of the repeated blocks go fp8: they hold ~95 % of the weights, while the patch
    embedding, text/time embedders, norms, modulation tables and proj_out are small and are where
    quantization error hurts most (they feed or read every block), so they stay bf16/float32.
    Layers are converted one at a time, so the conversion needs one layer's worth of extra memory.
    """
    if precision not in PRECISIONS:
        raise InvalidInputError(f"Unknown precision '{precision}'. Choose one of: {', '.join(PRECISIONS)}.")
    device = torch.device(device)
    notes: list[str] = []
    if precision in _FLOAT_DTYPES:
        _cast_tensors(model, _FLOAT_DTYPES[precision])
        return notes

    fp8_dtype = _FP8_DTYPES[precision]
    use_scaled_mm = precision == "fp8_e4m3fn_fast" and fp8_matmul_supported(device)
    fallback = describe_precision_fallback(precision, device)
    if fallback:
        notes.append(fallback)
        logger.warning(fallback)
    activation_scaling = activation_scaling or _activation_scaling_for(device)
    work_device = device if device.type == "cuda" and torch.cuda.is_available() else None
    quantized = dict(quantized or {})

    names = list(fp8_layers(model))
    modules = dict(model.named_modules())
    reused, requantized, unaligned = 0, 0, []
    for name in names:
        linear = modules[name]
        if not isinstance(linear, nn.Linear):
            raise InvalidInputError(f"fp8 scope names '{name}', which is a {type(linear).__name__}, not a Linear.")
        layer_mm = use_scaled_mm and _scaled_mm_shape_ok(linear.in_features, linear.out_features)
        if use_scaled_mm and not layer_mm:
            unaligned.append(name)
        stored = quantized.pop(name, None)
        if stored is not None and stored[0].dtype == fp8_dtype:
            weight_fp8, scale = stored
            if tuple(weight_fp8.shape) != tuple(linear.weight.shape):
                raise CheckpointMismatchError(
                    f"fp8_scaled weight for '{name}' has shape {tuple(weight_fp8.shape)}, the model expects "
                    f"{tuple(linear.weight.shape)}."
                )
            home = linear.weight.device
            bias = linear.bias.detach() if linear.bias is not None else None
            layer = Fp8Linear.from_quantized(
                weight_fp8.to(home), scale.to(home), bias, FP8_COMPUTE_DTYPE, layer_mm,
                activation_scaling=activation_scaling,
            )
            reused += 1
        else:
            if stored is not None:
                requantized += 1
            layer = Fp8Linear.from_linear(
                linear, fp8_dtype, FP8_COMPUTE_DTYPE, layer_mm,
                activation_scaling=activation_scaling, work_device=work_device,
            )
        parent_name, _, child = name.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, child, layer)
        modules[name] = layer
        del linear  # the bf16 weight is freed here, before the next layer is converted
    # Everything that is not an fp8 layer computes in bf16 (float32 where the model class asks for it).
    _cast_tensors(model, FP8_COMPUTE_DTYPE, skip=(Fp8Linear,))

    if reused:
        notes.append(f"{precision}: used {reused} fp8 weights of the fp8_scaled checkpoint as stored.")
    if requantized:
        notes.append(
            f"{precision}: the checkpoint's fp8 weights are in another fp8 format; {requantized} layers were "
            "re-quantized from their dequantized values."
        )
    if unaligned:
        notes.append(
            f"{precision}: {len(unaligned)} layers (e.g. '{unaligned[0]}') have sizes not divisible by 16 and use "
            "fp8 storage with bf16 compute instead of fp8 matmuls."
        )
    return notes
