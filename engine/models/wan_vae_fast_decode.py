"""A faster decode of Wan VAE latents (2.1 and 2.2) over a loaded diffusers `AutoencoderKLWan`: the same
weights and the same frames as `vae.decode`, with less memory traffic.

diffusers runs its decoder once per latent frame; every causal conv concatenates the two cached frames in
front of its input and then pads it spatially (two full copies of every conv input), RMS norm + SiLU are
five element-wise passes, and the nearest upsampling round-trips through float32. This forward runs over
the same modules' weights and differs only in how the work is laid out:
- several latent frames per decoder call (`chunk_latent_frames`), with each causal conv's last two input
  frames carried from chunk to chunk exactly as diffusers' `feat_cache` carries them;
- each conv input is one buffer: the two carried frames, then the new frames written straight into it by
  the fused RMS norm + SiLU (`channel_rms_norm`); the spatial zero padding happens inside the convolution;
- activations and weights channels-last (NDHWC) on the GPU, so cuDNN needs no layout conversions;
- nearest 2x upsampling as one strided copy in the activation dtype (exact: it only duplicates values),
  with the time upsampler's frame interleaving folded into the same copy;
- frames go to the host chunk by chunk through pinned memory while the next chunk decodes (`host_frames`);
- every large activation is freed as soon as it is consumed, and the upsamplers and the mid-block attention
  work on a few frames at a time, so peak memory stays below diffusers' at the default chunk size.

Equivalence, as diffusers computes it (autoencoder_kl_wan.py, diffusers 0.42.1): chunk 0 is latent frame 0
alone and sets `first_chunk`. A causal 3x3x3 conv over the chunked stream equals one over the whole clip
with two zero frames in front. The time upsampler (`upsample3d`) passes the clip's first frame through
unchanged and doubles the rest with a causal (3,1,1) conv over them (zero-padded as if the first frame did
not exist), interleaving its two channel halves as frames 2t and 2t+1. The 2.2 decoder's `DupUp3D`
shortcut drops the first `factor_t - 1` frames of the first chunk. None of this depends on where chunks
start, so any chunking gives the same frames (up to the convolution algorithms' rounding).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.autoencoder_kl_wan import (
    WanAttentionBlock,
    WanCausalConv3d,
    WanResample,
    WanResidualBlock,
    WanResidualUpBlock,
    WanRMS_norm,
    WanUpBlock,
)
from torch import nn

from ..errors import BackendUnavailableError
from .channel_rms_norm import rms_norm_channels
from .host_frames import HostFrames

# Latent pixels (frames x height x width) per decoder call: 2 latent frames at 720p (90 x 160), 4 at 480p.
# GPU memory of the activations, counted by tracing every allocation of a 720p decode (2.1 VAE, bf16, no
# cuDNN workspace): 6.5 GiB at 1 latent frame a call, 8.4 at 2, 12.3 at 4 (diffusers' decode: 9.1), of
# which 4.4 GiB are the two frames every causal conv carries from call to call.
# Counted in decoded pixels, so the 2.2 VAE (16x spatial) gets 2 latent frames a call at 720p too: measured on an
# H100, 2.2 at 720p took 2.46 s / 11.0 GiB at 2 frames a call and 2.50 s / 23.9 GiB at 8.
DEFAULT_CHUNK_OUTPUT_PIXELS = 2 * 720 * 1280
# Elements of the nearest-upsampled activation per upsampler convolution (1 GiB in bf16).
UPSAMPLE_PIECE_ELEMENTS = 2**29
# Elements of the attention score matrices per attention call (the mid block, at the latent size).
ATTENTION_SCORE_ELEMENTS = 2**30


def default_chunk_latent_frames(latent_height: int, latent_width: int, spatial_factor: int = 8) -> int:
    return max(1, DEFAULT_CHUNK_OUTPUT_PIXELS // (latent_height * latent_width * spatial_factor ** 2))


def chunk_bounds(frames: int, chunk: int) -> list[tuple[int, int]]:
    """[start, stop) of each decoder call: as few calls as `chunk` allows, sizes as even as possible."""
    calls = math.ceil(frames / max(1, chunk))
    edges = [i * frames // calls for i in range(calls + 1)]
    return list(zip(edges[:-1], edges[1:]))


def _unsupported(what: str) -> BackendUnavailableError:
    return BackendUnavailableError(f"Fast Wan VAE decode does not support {what}; diffusers' decode is used instead.")


def _detached(parameter: torch.Tensor | None) -> torch.Tensor | None:
    return None if parameter is None else parameter.detach()


class _Norm:
    """WanRMS_norm's parameters; applied with or without the SiLU that follows it."""

    def __init__(self, norm: WanRMS_norm, use_triton: bool):
        if not (isinstance(norm.bias, float) and norm.bias == 0.0) or not norm.channel_first:
            raise _unsupported("an RMS norm with a bias or channels-last parameters")
        self.gamma = norm.gamma.detach().reshape(-1)
        self.scale = norm.scale
        self.use_triton = use_triton

    def __call__(self, x: torch.Tensor, silu: bool, out: torch.Tensor | None = None) -> torch.Tensor:
        return rms_norm_channels(x, self.gamma, self.scale, silu=silu, out=out, use_triton=self.use_triton)


class _CausalConv:
    """One WanCausalConv3d: its weights in the activation layout, and the input frames it carries between
    chunks (`context` of them: 2 for a 3-frame kernel, 0 for a 1-frame one)."""

    def __init__(self, conv: WanCausalConv3d, memory_format: torch.memory_format, out_channels_multiple: int = 1):
        if tuple(conv.stride) != (1, 1, 1) or tuple(conv.dilation) != (1, 1, 1) or conv.groups != 1:
            raise _unsupported("a strided, dilated or grouped decoder convolution")
        pad_w, _, pad_h, _, context, _ = conv._padding
        if context not in (0, 2):  # diffusers carries exactly two frames (CACHE_T) between calls
            raise _unsupported(f"a causal convolution reaching {context} frames back")
        self.context = context
        self.padding = (0, pad_h, pad_w)
        weight, bias = conv.weight.detach(), _detached(conv.bias)
        self.out_channels = weight.shape[0]
        extra = -self.out_channels % out_channels_multiple  # e.g. 3 RGB outputs -> 8: tensor-core friendly
        if extra:
            weight = torch.cat([weight, weight.new_zeros(extra, *weight.shape[1:])])
            bias = None if bias is None else torch.cat([bias, bias.new_zeros(extra)])
        self.weight = weight.contiguous(memory_format=memory_format)
        self.bias = bias
        self.memory_format = memory_format
        self.carried: torch.Tensor | None = None  # the last `context` input frames; None: zeros (clip start)

    def input_buffer(self, like: torch.Tensor, frames: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(buffer, body): a conv input with the carried frames in front; the caller fills `body`."""
        batch, channels, count, height, width = like.shape
        count = count if frames is None else frames
        buffer = torch.empty((batch, channels, self.context + count, height, width), dtype=like.dtype,
                             device=like.device, memory_format=self.memory_format)
        if self.context:
            if self.carried is None:
                buffer[:, :, :self.context].zero_()
            else:
                buffer[:, :, :self.context].copy_(self.carried)
        return buffer, buffer[:, :, self.context:]

    def run(self, buffer: torch.Tensor) -> torch.Tensor:
        if self.context:
            self.carried = buffer[:, :, -self.context:].clone()
        # cuDNN keeps channels-last; this only converts where a backend does not (CPU), so the fused norm
        # always finds its rows
        out = F.conv3d(buffer, self.weight, self.bias, padding=self.padding).contiguous(memory_format=self.memory_format)
        return out[:, :self.out_channels] if out.shape[1] != self.out_channels else out

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.context:
            return self.run(x)
        buffer, body = self.input_buffer(x)
        body.copy_(x)
        return self.run(buffer)


class _ResidualBlock:
    def __init__(self, block: WanResidualBlock, memory_format, use_triton: bool):
        if not isinstance(block.nonlinearity, nn.SiLU):
            raise _unsupported(f"the activation {type(block.nonlinearity).__name__}")
        self.norm1, self.norm2 = _Norm(block.norm1, use_triton), _Norm(block.norm2, use_triton)
        self.conv1 = _CausalConv(block.conv1, memory_format)
        self.conv2 = _CausalConv(block.conv2, memory_format)
        shortcut = block.conv_shortcut
        self.shortcut = None if isinstance(shortcut, nn.Identity) else _CausalConv(shortcut, memory_format)

    def convs(self):
        return [self.conv1, self.conv2] + ([self.shortcut] if self.shortcut else [])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(x) if self.shortcut is not None else x
        buffer, body = self.conv1.input_buffer(x)
        self.norm1(x, silu=True, out=body)
        h = self.conv1.run(buffer)
        del buffer, body  # each large activation is freed as soon as it is consumed: peak memory
        buffer, body = self.conv2.input_buffer(h)
        self.norm2(h, silu=True, out=body)
        del h
        h = self.conv2.run(buffer)
        del buffer, body
        return h.add_(shortcut)


class _Attention:
    """WanAttentionBlock: single-head attention over each frame's pixels. On channels-last activations the
    per-frame images and the pixel-by-channel matrices attention needs are views, not copies."""

    def __init__(self, block: WanAttentionBlock, use_triton: bool):
        self.norm = _Norm(block.norm, use_triton)
        self.qkv_weight, self.qkv_bias = block.to_qkv.weight.detach(), _detached(block.to_qkv.bias)
        self.proj_weight, self.proj_bias = block.proj.weight.detach(), _detached(block.proj.bias)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, frames, height, width = x.shape
        images = x.transpose(1, 2).flatten(0, 1)  # [B*T, C, H, W]
        qkv = F.conv2d(self.norm(images, silu=False), self.qkv_weight, self.qkv_bias)
        qkv = qkv.flatten(2).transpose(1, 2).unsqueeze(1).contiguous()  # [B*T, 1, H*W, 3C]
        q, k, v = qkv.chunk(3, dim=-1)
        # A few frames per attention call: at head width 384 PyTorch may use its math kernel, whose score
        # matrix is (H*W)^2 per frame (0.4 GB at 720p).
        out = q.new_empty(q.shape[0], q.shape[2], channels)  # [B*T, H*W, C]
        step = max(1, ATTENTION_SCORE_ELEMENTS // (height * width) ** 2)
        for start in range(0, q.shape[0], step):
            part = slice(start, start + step)
            out[part] = F.scaled_dot_product_attention(q[part], k[part], v[part]).squeeze(1)
        del qkv, q, k, v
        out = F.conv2d(out.transpose(1, 2).unflatten(2, (height, width)), self.proj_weight, self.proj_bias)
        return x + out.unflatten(0, (batch, frames)).transpose(1, 2)


class _Upsampler:
    """WanResample in upsample2d / upsample3d mode: (time doubling), nearest 2x in space, 3x3 conv per frame."""

    def __init__(self, resample: WanResample, memory_format, subpixel: bool = False):
        if resample.mode not in ("upsample2d", "upsample3d"):
            raise _unsupported(f"resample mode {resample.mode!r} in the decoder")
        upsample, conv = resample.resample[0], resample.resample[1]
        if (tuple(float(s) for s in upsample.scale_factor) != (2.0, 2.0)
                or upsample.mode not in ("nearest", "nearest-exact")
                or tuple(conv.kernel_size) != (3, 3) or tuple(conv.padding) != (1, 1)
                or tuple(conv.stride) != (1, 1) or conv.groups != 1):
            raise _unsupported("an upsampler other than nearest 2x + 3x3 conv")
        self.time_conv = _CausalConv(resample.time_conv, memory_format) if resample.mode == "upsample3d" else None
        self.image_format = torch.channels_last if memory_format == torch.channels_last_3d else torch.contiguous_format
        self.weight = conv.weight.detach().contiguous(memory_format=self.image_format)
        self.bias = _detached(conv.bias)
        self.memory_format = memory_format
        self.phase_weights = self._phase_weights(conv.weight.detach()) if subpixel else None

    def _phase_weights(self, weight: torch.Tensor) -> list[list[torch.Tensor]]:
        """Nearest 2x then a 3x3 conv = four 2x2 convs on the small image, one per output pixel parity (a, b):
        output row 2i + a reads upsampled rows 2i + a - 1 .. 2i + a + 1, i.e. small rows i - 1 + a and i + a,
        the middle kernel row joining the first (a = 0) or the last (a = 1). Same for columns. Exact in real
        arithmetic; the summed weights are rounded once to the weight dtype."""
        merge = weight.new_tensor([[[1, 0, 0], [0, 1, 1]], [[1, 1, 0], [0, 0, 1]]], dtype=torch.float32)
        return [[torch.einsum("uy,oiyx,vx->oiuv", merge[a], weight.float(), merge[b]).to(weight.dtype)
                 .contiguous(memory_format=self.image_format) for b in (0, 1)] for a in (0, 1)]

    def convs(self):
        return [self.time_conv] if self.time_conv else []

    def _convolve_subpixel(self, piece: torch.Tensor, target: torch.Tensor) -> None:
        """piece [1, C, n, k, H, W] -> target [1, n*k, O, 2H, 2W] through the four phase convolutions."""
        _, channels, n, k, height, width = piece.shape
        if k == 1:
            images = piece.squeeze(3).transpose(1, 2).flatten(0, 1)  # a view of the input when channels-last
        else:  # time-doubled frames: interleave them once, at the small size
            frames = torch.empty((1, channels, n * k, height, width), dtype=piece.dtype, device=piece.device,
                                 memory_format=self.memory_format)
            frames.unflatten(2, (n, k)).copy_(piece)
            images = frames.transpose(1, 2).flatten(0, 1)
        grid = target.flatten(0, 1).unflatten(3, (width, 2)).unflatten(2, (height, 2))  # [N, O, H, 2, W, 2]
        for a in (0, 1):
            for b in (0, 1):
                # padding 1 each side: output (p, q) reads small rows p - 1, p; parity a takes rows i - 1 + a, i + a
                phase = F.conv2d(images, self.phase_weights[a][b], self.bias, padding=1)
                grid[:, :, :, a, :, b].copy_(phase[:, :, a:a + height, b:b + width])
                del phase

    def __call__(self, x: torch.Tensor, first: bool) -> torch.Tensor:
        batch, channels, frames, height, width = x.shape
        # Sources [B, C, n, k, H, W]: each of n source frames becomes k output frames.
        if self.time_conv is None:
            sources = [x.unsqueeze(3)]
        else:
            # The clip's first frame is not time-upsampled ("Rep" in diffusers' cache); the others go through
            # the time conv, whose two channel halves become frames 2t and 2t+1.
            sources = [x[:, :, :1].unsqueeze(3)] if first else []
            rest = x[:, :, 1:] if first else x
            if rest.shape[2]:
                doubled = self.time_conv(rest)  # [B, 2C, T, H, W]
                sources.append(doubled.unflatten(1, (2, channels)).permute(0, 2, 3, 1, 4, 5))
                del doubled
        out_frames = sum(source.shape[2] * source.shape[3] for source in sources)
        out = torch.empty((batch * out_frames, self.weight.shape[0], 2 * height, 2 * width), dtype=x.dtype,
                          device=x.device, memory_format=self.image_format).unflatten(0, (batch, out_frames))
        # Upsample and convolve a few frames at a time: the 4x upsampled tensor is the largest of the decoder.
        frames_per_piece = max(1, UPSAMPLE_PIECE_ELEMENTS // (channels * 4 * height * width))
        done = 0
        for source in sources:
            per_frame = source.shape[3]
            step = max(1, frames_per_piece // per_frame)
            for start in range(0, source.shape[2], step):
                piece = source[:, :, start:start + step]
                count = piece.shape[2] * per_frame
                if self.phase_weights is not None:
                    self._convolve_subpixel(piece, out[:, done:done + count])
                    done += count
                    continue
                up = torch.empty((batch, channels, count, 2 * height, 2 * width), dtype=x.dtype, device=x.device,
                                 memory_format=self.memory_format)
                blocks = up.unflatten(4, (width, 2)).unflatten(3, (height, 2)).unflatten(2, (piece.shape[2], per_frame))
                blocks.copy_(piece[:, :, :, :, :, None, :, None].expand_as(blocks))  # [B, C, n, k, H, 2, W, 2]
                images = up.transpose(1, 2).flatten(0, 1)  # [B*count, C, 2H, 2W]: a view when channels-last
                convolved = F.conv2d(images, self.weight, self.bias, padding=1)
                del up, blocks, images
                out[:, done:done + count].copy_(convolved.unflatten(0, (batch, count)))
                done += count
        return out.transpose(1, 2)


def _add_duplicated(x: torch.Tensor, source: torch.Tensor, factor_t: int, factor_s: int, first: bool) -> None:
    """x += DupUp3D(source) in place, without materialising the duplicated tensor. DupUp3D gives output
    channel c at sub-position s = (time, row, column offset) the input channel (c * factor + s) // repeats."""
    batch, in_channels, frames, height, width = source.shape
    out_channels = x.shape[1]
    factor = factor_t * factor_s * factor_s
    repeats = out_channels * factor // in_channels
    groups = factor // repeats  # a whole number: checked when the block was prepared
    expanded = source.unflatten(1, (out_channels, groups)).unsqueeze(3)
    expanded = expanded.expand(batch, out_channels, groups, repeats, frames, height, width)
    sub = expanded.reshape(batch, out_channels, factor_t, factor_s, factor_s, frames, height, width)
    sub = sub.permute(0, 1, 5, 2, 6, 3, 7, 4)  # [B, C, T, factor_t, H, factor_s, W, factor_s]
    grid = x.unflatten(4, (width, factor_s)).unflatten(3, (height, factor_s))  # [B, C, F, H, fs, W, fs]
    start = 0
    if first and factor_t > 1:  # the clip's first latent frame keeps only its last time copy
        grid[:, :, :1].add_(sub[:, :, 0, factor_t - 1:])
        start = 1
    if frames > start:
        grid[:, :, start:].unflatten(2, (frames - start, factor_t)).add_(sub[:, :, start:])


class _UpBlock:
    def __init__(self, block: nn.Module, memory_format, use_triton: bool, subpixel: bool):
        self.resnets = [_ResidualBlock(r, memory_format, use_triton) for r in block.resnets]
        self.duplicate = None
        if isinstance(block, WanResidualUpBlock):  # Wan 2.2
            resample = block.upsampler
            shortcut = block.avg_shortcut
            if shortcut is not None:
                if shortcut.factor % shortcut.repeats:
                    raise _unsupported(f"a DupUp3D shortcut with {shortcut.in_channels} -> "
                                       f"{shortcut.out_channels} channels")
                self.duplicate = (shortcut.factor_t, shortcut.factor_s)
        elif isinstance(block, WanUpBlock):  # Wan 2.1
            resample = block.upsamplers[0] if block.upsamplers is not None else None
        else:
            raise _unsupported(f"the decoder block {type(block).__name__}")
        self.upsampler = None if resample is None else _Upsampler(resample, memory_format, subpixel)

    def convs(self):
        return [c for r in self.resnets for c in r.convs()] + (self.upsampler.convs() if self.upsampler else [])


class FastWanDecoder:
    """The decoder of one AutoencoderKLWan, prepared for chunked decoding. `reset()` starts a new clip."""

    def __init__(self, vae: nn.Module, memory_format: torch.memory_format = torch.channels_last_3d,
                 use_triton: bool = True, subpixel_upsample: bool = False):
        decoder = vae.decoder
        if not isinstance(decoder.nonlinearity, nn.SiLU):
            raise _unsupported(f"the activation {type(decoder.nonlinearity).__name__}")
        self.memory_format = memory_format
        self.patch_size = vae.config.patch_size or 1
        self.post_quant_conv = _CausalConv(vae.post_quant_conv, memory_format)
        self.conv_in = _CausalConv(decoder.conv_in, memory_format)
        mid = decoder.mid_block
        self.mid_resnets = [_ResidualBlock(r, memory_format, use_triton) for r in mid.resnets]
        self.mid_attentions = [_Attention(a, use_triton) for a in mid.attentions]
        if len(self.mid_resnets) != len(self.mid_attentions) + 1:
            raise _unsupported("a mid block without one more residual block than attention blocks")
        self.up_blocks = [_UpBlock(b, memory_format, use_triton, subpixel_upsample) for b in decoder.up_blocks]
        self.norm_out = _Norm(decoder.norm_out, use_triton)
        self.conv_out = _CausalConv(decoder.conv_out, memory_format, out_channels_multiple=8)
        ups = [b.upsampler for b in self.up_blocks if b.upsampler is not None]
        self.temporal_factor = 2 ** sum(u.time_conv is not None for u in ups)
        self.spatial_factor = 2 ** len(ups) * self.patch_size

    def _convs(self):
        convs = [self.post_quant_conv, self.conv_in, self.conv_out]
        convs += [c for r in self.mid_resnets for c in r.convs()]
        return convs + [c for b in self.up_blocks for c in b.convs()]

    def reset(self) -> None:
        for conv in self._convs():
            conv.carried = None

    def output_frames(self, latent_frames: int) -> int:
        return latent_frames * self.temporal_factor - (self.temporal_factor - 1)

    def decode_chunk(self, z: torch.Tensor, first: bool) -> torch.Tensor:
        """Raw latents of consecutive frames [1, C, n, h, w] (the clip's first when `first`) -> decoder output
        [1, out_channels, frames, H, W] before unpatchify and clamping."""
        if z.shape[0] != 1:  # the upsamplers' frame slicing assumes one clip
            raise _unsupported(f"a batch of {z.shape[0]} clips in one decoder call")
        x = self.conv_in(self.post_quant_conv(z.contiguous(memory_format=self.memory_format)))
        x = self.mid_resnets[0](x)
        for attention, resnet in zip(self.mid_attentions, self.mid_resnets[1:]):
            x = resnet(attention(x))
        # The up blocks run inline so that no caller holds a block's input longer than it is needed.
        for block in self.up_blocks:
            block_input = x if block.duplicate is not None else None
            for resnet in block.resnets:
                x = resnet(x)
            if block.upsampler is not None:
                x = block.upsampler(x, first)
            if block_input is not None:
                _add_duplicated(x, block_input, *block.duplicate, first)
                del block_input
        buffer, body = self.conv_out.input_buffer(x)
        self.norm_out(x, silu=True, out=body)
        del x
        return self.conv_out.run(buffer)

    def to_frames(self, out: torch.Tensor) -> torch.Tensor:
        """Decoder output [1, C*p*p, F, H, W] -> frames [F, H*p, W*p, C] float32 in 0..1, as diffusers'
        unpatchify + clamp and `decode_wan_latents` compute them."""
        p = self.patch_size
        _, channels, frames, height, width = out.shape
        colours = channels // (p * p)
        # diffusers' unpatchify: channel c*p*p + q*p + r lands at row h*p + r, column w*p + q
        source = out[0].unflatten(0, (colours, p, p)).permute(3, 4, 2, 5, 1, 0)  # [F, H, r, W, q, c]
        frames_out = torch.empty((frames, height * p, width * p, colours), dtype=torch.float32, device=out.device)
        frames_out.view(frames, height, p, width, p, colours).copy_(source)
        return frames_out.clamp_(-1.0, 1.0).add_(1.0).div_(2.0)


@torch.no_grad()
def decode_wan_latents_fast(vae: nn.Module, raw_latents: torch.Tensor, device: torch.device,
                            chunk_latent_frames: int | None = None, memory_format: str | None = None,
                            use_triton: bool = True, subpixel_upsample: bool = False) -> torch.Tensor:
    """Raw latents [1, C, T, h, w] -> IMAGE frames [F, H, W, 3] float32 0..1 on the CPU, decoded in the
    VAE's dtype on its device. `chunk_latent_frames`: latent frames per decoder call (default by frame
    size, `default_chunk_latent_frames`); `memory_format`: "channels_last" (default on CUDA) or
    "contiguous" (default elsewhere); `use_triton`: the fused norm kernel where it can run;
    `subpixel_upsample`: the upsamplers' 3x3 convs as four 2x2 convs at the small size (2.25x fewer FLOPs
    there, weights summed once in their dtype: not bit-faithful in bf16, so off by default).
    Raises BackendUnavailableError for a VAE it does not handle."""
    if raw_latents.dim() != 5 or raw_latents.shape[0] != 1:
        raise _unsupported(f"latents of shape {tuple(raw_latents.shape)} (it decodes [1, C, T, h, w])")
    parameter = next(vae.parameters())
    device = torch.device(device)
    if memory_format is None:
        memory_format = "channels_last" if device.type == "cuda" else "contiguous"
    formats = {"channels_last": torch.channels_last_3d, "contiguous": torch.contiguous_format}
    if memory_format not in formats:
        raise ValueError(f"memory_format must be one of {sorted(formats)} (got {memory_format!r}).")
    decoder = FastWanDecoder(vae, formats[memory_format], use_triton=use_triton, subpixel_upsample=subpixel_upsample)
    z = raw_latents.to(device, parameter.dtype)
    _, _, frames, height, width = z.shape
    chunk = chunk_latent_frames or default_chunk_latent_frames(height, width, decoder.spatial_factor)
    sink = HostFrames(decoder.output_frames(frames), height * decoder.spatial_factor,
                      width * decoder.spatial_factor, vae.config.out_channels // decoder.patch_size ** 2)
    decoder.reset()
    for index, (start, stop) in enumerate(chunk_bounds(frames, chunk)):
        out = decoder.decode_chunk(z[:, :, start:stop], first=index == 0)
        sink.put(decoder.to_frames(out))
        del out
        sink.drain(keep=1)  # the previous chunk's host copy overlaps this chunk's decode
    decoder.reset()
    return sink.result()
