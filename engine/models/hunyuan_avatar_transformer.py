"""HunyuanVideo-Avatar's transformer: HunyuanVideo's MM-DiT plus the avatar modules (reference image, audio,
face mask, motion and fps conditioning), built on diffusers' HunyuanVideo building blocks.

Written from the checkpoint's key list (`../shared/reference/hunyuan_avatar_transformer_keys.json`: 946
keys, 12.99 B parameters), the paper (arXiv 2505.20156) and, for facts only, the vendor's
`hymm_sp/modules/models_audio.py`, `audio_adapters.py`, `embed_layers.py`, `helpers.py`,
`sample_inference_audio.py`, `data_kits/audio_dataset.py`, `data_kits/audio_preprocessor.py` and
`diffusion/pipelines/pipeline_hunyuan_video_audio.py` (Tencent-Hunyuan/HunyuanVideo-Avatar). Our module
names are diffusers' for the backbone and the checkpoint's for the avatar modules; `hunyuan_avatar_keys`
converts between the two namings.

Backbone (checkpoint shapes; vendor config "HYVideo-T/2"): 20 double-stream + 40 single-stream blocks,
hidden 3072 = 24 heads x 128, patch 1x2x2, 16 latent channels in and out, a 2-block token refiner on the
LLaVA text states (4096-d), CLIP-L pooled text (768-d) added to the timestep embedding, rope axes
(16, 56, 56) with theta 256 (vendor `--rope-theta` default), no guidance embedding (the checkpoint has no
`guidance_in`: real classifier-free guidance). diffusers' `HunyuanVideoTransformerBlock`,
`HunyuanVideoSingleTransformerBlock`, `HunyuanVideoTokenRefiner`, `HunyuanVideoConditionEmbedding` and
`HunyuanVideoPatchEmbed` compute exactly the vendor's math for these (diffusers converts the original
HunyuanVideo checkpoint onto them; the final layer's (shift, scale) halves are swapped by the key conversion).

Avatar modules — structure and data flow (source in brackets):
- Reference image, two paths [models_audio.py forward; sample_inference_audio.py]. The caller VAE-encodes
  the reference image repeated over the window's pixel frames (vendor: 129 frames -> 33 latent frames), so
  the reference latents have as many frames as the video latents.
  1. `ref_in` (a patch embedding like `img_in`) embeds all reference latent frames; `before_proj`
     (Linear 3072->3072) maps them and the result is ADDED to the video tokens, frame by frame.
  2. The FIRST reference latent frame alone goes through `img_in` (the video patch embedding, not `ref_in`)
     and is PREPENDED to the video tokens as an extra leading frame.
  The sequence is [reference frame | video frames | text]. The reference frame's rotary time position is
  -1, its height/width positions those of a normal frame [helpers.py get_nd_rotary_pos_embed_new,
  concat_dict {'mode': 'timecat', 'bias': -1}]; the video frames keep 0..F-1. The reference frame's tokens
  are dropped after the last single block, before the final layer, so the output has the input's frames.
- Audio [audio_adapters.py AudioProjNet2; audio_preprocessor.py encode_audio]: whisper-tiny encoder,
  all 5 hidden states (embeddings + 4 layers) of 384 channels, a window of 10 whisper frames per video
  frame -> features [B, F_video, 10, 5, 384], flattened per video frame in that (window, layer, channel)
  order to 19200 = `audio_proj.proj1` input; proj1 -> ReLU -> proj2 -> ReLU -> proj3 (1024 -> 4 x 3072)
  -> LayerNorm(3072): 4 tokens per video frame.
  Video frames per latent frame: 4 (the causal VAE's time compression), and F_video = 4 * F - 3: the
  first video frame's tokens are repeated 3 more times in front, giving 4 * F video frames, i.e. 16 audio
  tokens per latent frame [models_audio.py: `audio_feature_all[:, :1].repeat(1, 3, 1, 1)`; pipeline:
  129 audio frames per 33-latent-frame window].
- Face-aware audio adapters `audio_adapter_blocks.0..9` [models_audio.py double_stream_list
  [1, 3, ..., 19]]: one after every other double block, after blocks 1, 3, ..., 19 (the odd-numbered
  ones, counting from 0); none after single blocks. Each is a single-head cross-attention of width 1024
  (PerceiverAttentionCA: `heads=33` is stored but unused; scale 1/sqrt(1024)), per latent frame: the
  frame's video tokens (LayerNorm `norm2`, then `to_q`) attend to that frame's 16 audio tokens
  (LayerNorm `norm1`, then `to_kv`, split into k and v); `to_out` maps back to 3072. No biases; `to_out`
  starts at zero in the vendor's init.
  Face mask gating: the adapter output is multiplied token by token by the face mask and added to the
  video tokens; the reference frame's tokens get nothing. The mask arrives at latent resolution with
  one or F frames (vendor: a box mask around the detected face enlarged 3x, bilinearly resized to the
  latent grid, one frame [B, 1, 1, h, w]; the pipeline scales it by 0.6 for the first 10 steps) and is
  resized with nearest-neighbour interpolation to the token grid (F, H/2, W/2) [models_audio.py].
- Motion and fps [models_audio.py; audio_dataset.py]: `motion_exp` (expression) and `motion_pose` (head
  pose) each embed FOUR scalar values per sample (sinusoidal 256 features -> Linear -> SiLU -> Linear,
  768 wide each); the four 768-d embeddings are concatenated to 3072 and added to the timestep vector.
  The vendor always passes four equal values: expression 30, pose 25. `fps_proj` embeds the frame rate
  (25, or 12.5) the same way to 3072 and adds it too. The sum (timestep + CLIP pooled + motion_exp +
  motion_pose + fps) modulates every block and the final layer; the token refiner sees only the timestep
  (and the pooled text states).
- The released checkpoint has no Audio Emotion Module weights (the paper's AEM): no key for it exists.

Attention: the backbone's joint attention goes through diffusers' `HunyuanVideoAttnProcessor2_0` and its
dispatcher, so `attention.apply_attention_backend` applies. Text masks, as the vendor uses them: the token
refiner gets the mask as given (the vendor's LLaVA mask is not aligned with the states: avatar_encoders),
while the joint attention takes each row's leading `mask.sum()` text tokens (the vendor's flash-attention
valid lengths). Those are cut out rather than masked, so no attention mask ever reaches the blocks: the kernels
that take no mask (SageAttention, FA3) work, and cuDNN stays on its fast path. The
audio adapters use PyTorch SDPA directly: their head is 1024 wide, which cuDNN/Sage/FA3 kernels do not
take, and they attend to only 16 keys per frame.

Not implemented: the vendor pipeline's step cache (on some steps it runs only the last single block on
a cached input) and sequence parallelism; a sampler can add the former around this forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import AttentionMixin
from diffusers.models.embeddings import Timesteps, get_1d_rotary_pos_embed
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import AdaLayerNormContinuous
from diffusers.models.transformers.transformer_hunyuan_video import (
    HunyuanVideoConditionEmbedding,
    HunyuanVideoPatchEmbed,
    HunyuanVideoSingleTransformerBlock,
    HunyuanVideoTokenRefiner,
    HunyuanVideoTransformerBlock,
)
from torch import nn

from ..errors import InvalidInputError

REFERENCE_FRAME_TIME = -1.0  # rotary time position of the prepended reference frame


def adapter_positions(num_layers: int) -> list[int]:
    """Indices of the double blocks followed by an audio adapter: every other one, starting at 1."""
    return list(range(1, num_layers, 2))


class AvatarRotaryPosEmbed(nn.Module):
    """3-axis rotary tables (time, height, width) for [reference frame at time -1, video frames 0..F-1]."""

    def __init__(self, patch_size: int, patch_size_t: int, rope_dim: tuple[int, int, int], theta: float) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.patch_size_t = patch_size_t
        self.rope_dim = tuple(rope_dim)
        self.theta = theta

    def positions(self, frames: int, height: int, width: int, device=None) -> torch.Tensor:
        """[3, (frames + 1) * height * width] positions on the token grid (post-patch sizes), reference first."""
        times = torch.cat([torch.tensor([REFERENCE_FRAME_TIME]), torch.arange(frames, dtype=torch.float32)])
        axes = (times, torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32))
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0)
        return grid.reshape(3, -1).to(device)

    def forward(self, frames: int, height: int, width: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        grid = self.positions(frames, height, width, device)
        tables = [get_1d_rotary_pos_embed(dim, grid[i], self.theta, use_real=True) for i, dim in enumerate(self.rope_dim)]
        return torch.cat([t[0] for t in tables], dim=1), torch.cat([t[1] for t in tables], dim=1)


class ScalarEmbedding(nn.Module):
    """A scalar per row (motion bucket, fps) -> 256 sinusoidal features (cos first, as HunyuanVideo's timestep
    embedding) -> Linear -> SiLU -> Linear. Checkpoint: `<name>.mlp.0` / `<name>.mlp.2`."""

    def __init__(self, dim: int, frequency_dim: int = 256) -> None:
        super().__init__()
        self.time_proj = Timesteps(frequency_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.linear_1 = nn.Linear(frequency_dim, dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        features = self.time_proj(values.reshape(-1)).to(self.linear_1.weight.dtype)
        return self.linear_2(self.act(self.linear_1(features)))


class AudioProjection(nn.Module):
    """Whisper features of each video frame -> `tokens` audio tokens (checkpoint `audio_proj`)."""

    def __init__(self, window: int, layers: int, channels: int, hidden_dim: int, tokens: int, dim: int) -> None:
        super().__init__()
        self.tokens = tokens
        self.dim = dim
        self.proj1 = nn.Linear(window * layers * channels, hidden_dim)
        self.proj2 = nn.Linear(hidden_dim, hidden_dim)
        self.proj3 = nn.Linear(hidden_dim, tokens * dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """[B, F_video, window, layers, channels] -> [B, F_video, tokens, dim]."""
        x = torch.relu(self.proj1(features.flatten(2)))
        x = torch.relu(self.proj2(x))
        return self.norm(self.proj3(x).unflatten(-1, (self.tokens, self.dim)))


class FaceAudioAdapter(nn.Module):
    """Single-head cross-attention from each latent frame's video tokens to that frame's audio tokens
    (checkpoint `audio_adapter_blocks.N`). The caller gates the output with the face mask."""

    def __init__(self, dim: int, inner_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)  # audio tokens
        self.norm2 = nn.LayerNorm(dim)  # video tokens
        self.to_q = nn.Linear(dim, inner_dim, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner_dim, bias=False)
        self.to_out = nn.Linear(inner_dim, dim, bias=False)

    def forward(self, audio_tokens: torch.Tensor, video_tokens: torch.Tensor) -> torch.Tensor:
        """audio [B, F, n, D], video [B, F, hw, D] -> [B, F, hw, D]."""
        batch, frames = video_tokens.shape[:2]
        query = self.to_q(self.norm2(video_tokens)).flatten(0, 1).unsqueeze(1)
        key, value = self.to_kv(self.norm1(audio_tokens)).flatten(0, 1).unsqueeze(1).chunk(2, dim=-1)
        out = F.scaled_dot_product_attention(query, key, value)  # scale 1/sqrt(inner_dim), as the vendor's
        return self.to_out(out.squeeze(1).unflatten(0, (batch, frames)))


class HunyuanAvatarTransformer(ModelMixin, ConfigMixin, AttentionMixin):
    """HunyuanVideo-Avatar transformer. See the module docstring for what each part does and where it is from."""

    _no_split_modules = [
        "HunyuanVideoTransformerBlock",
        "HunyuanVideoSingleTransformerBlock",
        "HunyuanVideoPatchEmbed",
        "HunyuanVideoTokenRefiner",
        "FaceAudioAdapter",
    ]
    # fp8 scope and regional compile: the two block kinds (the vendor's fp8 file quantizes exactly their
    # Linear layers); the adapters, embedders and final layer stay in bf16.
    _repeated_blocks = ["HunyuanVideoTransformerBlock", "HunyuanVideoSingleTransformerBlock"]
    _skip_layerwise_casting_patterns = ["x_embedder", "ref_in", "context_embedder", "norm"]

    @register_to_config
    def __init__(
        self,
        in_channels: int = 16,
        out_channels: int = 16,
        num_attention_heads: int = 24,
        attention_head_dim: int = 128,
        num_layers: int = 20,
        num_single_layers: int = 40,
        num_refiner_layers: int = 2,
        mlp_ratio: float = 4.0,
        patch_size: int = 2,
        patch_size_t: int = 1,
        qk_norm: str = "rms_norm",
        text_embed_dim: int = 4096,
        pooled_projection_dim: int = 768,
        rope_theta: float = 256.0,
        rope_axes_dim: tuple[int, ...] = (16, 56, 56),
        audio_window: int = 10,
        audio_layers: int = 5,
        audio_channels: int = 384,
        audio_hidden_dim: int = 1024,
        audio_tokens_per_frame: int = 4,
        video_frames_per_latent_frame: int = 4,
        adapter_inner_dim: int = 1024,
        motion_values: int = 4,
    ) -> None:
        super().__init__()
        inner_dim = num_attention_heads * attention_head_dim
        if sum(rope_axes_dim) != attention_head_dim:
            raise InvalidInputError(f"rope_axes_dim {tuple(rope_axes_dim)} must add up to attention_head_dim {attention_head_dim}.")
        if inner_dim % motion_values:
            raise InvalidInputError(f"hidden size {inner_dim} must be divisible by motion_values {motion_values}.")
        patch = (patch_size_t, patch_size, patch_size)

        # Backbone (diffusers' HunyuanVideo modules).
        self.x_embedder = HunyuanVideoPatchEmbed(patch, in_channels, inner_dim)
        self.context_embedder = HunyuanVideoTokenRefiner(
            text_embed_dim, num_attention_heads, attention_head_dim, num_layers=num_refiner_layers
        )
        self.time_text_embed = HunyuanVideoConditionEmbedding(inner_dim, pooled_projection_dim, guidance_embeds=False)
        self.rope = AvatarRotaryPosEmbed(patch_size, patch_size_t, tuple(rope_axes_dim), rope_theta)
        self.transformer_blocks = nn.ModuleList(
            [HunyuanVideoTransformerBlock(num_attention_heads, attention_head_dim, mlp_ratio=mlp_ratio, qk_norm=qk_norm)
             for _ in range(num_layers)]
        )
        self.single_transformer_blocks = nn.ModuleList(
            [HunyuanVideoSingleTransformerBlock(num_attention_heads, attention_head_dim, mlp_ratio=mlp_ratio, qk_norm=qk_norm)
             for _ in range(num_single_layers)]
        )
        self.norm_out = AdaLayerNormContinuous(inner_dim, inner_dim, elementwise_affine=False, eps=1e-6)
        self.proj_out = nn.Linear(inner_dim, patch_size_t * patch_size * patch_size * out_channels)

        # Avatar modules (checkpoint names).
        self.ref_in = HunyuanVideoPatchEmbed(patch, in_channels, inner_dim)
        self.before_proj = nn.Linear(inner_dim, inner_dim)
        self.audio_proj = AudioProjection(
            audio_window, audio_layers, audio_channels, audio_hidden_dim, audio_tokens_per_frame, inner_dim
        )
        self.motion_exp = ScalarEmbedding(inner_dim // motion_values)
        self.motion_pose = ScalarEmbedding(inner_dim // motion_values)
        self.fps_proj = ScalarEmbedding(inner_dim)
        self.audio_adapter_blocks = nn.ModuleList(
            [FaceAudioAdapter(inner_dim, adapter_inner_dim) for _ in adapter_positions(num_layers)]
        )
        self._adapter_after = {block: index for index, block in enumerate(adapter_positions(num_layers))}

    # ------------------------------------------------------------------ inputs

    def _motion_embedding(self, embedder: ScalarEmbedding, values: torch.Tensor, batch: int, name: str) -> torch.Tensor:
        count = self.config.motion_values
        values = values.reshape(batch, -1) if values.ndim else values.reshape(1, 1).expand(batch, 1)
        if values.shape[1] == 1:
            values = values.expand(batch, count)  # one value per sample: the vendor repeats it `count` times
        if values.shape != (batch, count):
            raise InvalidInputError(f"{name} must be [B] or [B, {count}] values; got shape {tuple(values.shape)}.")
        return embedder(values).reshape(batch, -1)

    def _audio_tokens(self, audio_features: torch.Tensor, batch: int, frames: int, dtype) -> torch.Tensor:
        """[B, 4F-3, window, layers, channels] -> [B, F, 16, D] (first frame's tokens padded in front)."""
        per_latent = self.config.video_frames_per_latent_frame
        expected = (self.config.audio_window, self.config.audio_layers, self.config.audio_channels)
        video_frames = per_latent * (frames - 1) + 1
        if (audio_features.ndim != 5 or audio_features.shape[0] != batch or audio_features.shape[1] != video_frames
                or tuple(audio_features.shape[2:]) != expected):
            raise InvalidInputError(
                f"audio_features must be [B={batch}, {video_frames}, {', '.join(map(str, expected))}] for {frames} latent "
                f"frames ({per_latent} video frames per latent frame, the first one alone); got "
                f"{tuple(audio_features.shape)}."
            )
        tokens = self.audio_proj(audio_features.to(dtype))
        padded = torch.cat([tokens[:, :1].expand(-1, per_latent - 1, -1, -1), tokens], dim=1)
        return padded.reshape(batch, frames, per_latent * tokens.shape[2], tokens.shape[3])

    def _face_gate(self, face_mask: torch.Tensor, batch: int, grid: tuple[int, int, int], dtype) -> torch.Tensor:
        """Face mask ([B, 1, 1|F, h, w], [B, 1|F, h, w] or [B, h, w]) -> [B, F*H'*W', 1] on the token grid."""
        mask = face_mask
        if mask.ndim == 3:
            mask = mask[:, None, None]
        elif mask.ndim == 4:
            mask = mask[:, None]
        if mask.ndim != 5 or mask.shape[0] != batch or mask.shape[1] != 1 or mask.shape[2] not in (1, grid[0]):
            raise InvalidInputError(
                f"face_mask must be [B={batch}, 1, 1 or {grid[0]} frames, h, w] (or without the channel / frame axes); "
                f"got {tuple(face_mask.shape)}."
            )
        mask = F.interpolate(mask.float(), size=grid, mode="nearest")  # nearest: as the vendor resizes it
        return mask.reshape(batch, -1, 1).to(dtype)

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None,
        pooled_projections: torch.Tensor,
        reference_latents: torch.Tensor,
        audio_features: torch.Tensor,
        face_mask: torch.Tensor,
        motion_exp: torch.Tensor,
        motion_pose: torch.Tensor,
        fps: torch.Tensor,
    ) -> torch.Tensor:
        """One denoising evaluation; returns the flow-matching velocity [B, C_out, F, H, W].

        Shapes (full size: C = 16, D_text = 4096, D_pooled = 768, window 10, layers 5, channels 384):
        - hidden_states: noisy video latents [B, C, F, H, W]; H, W divisible by 2.
        - timestep: [B] (or a scalar) on the 0..1000 scale.
        - encoder_hidden_states: LLaVA text states [B, L, D_text]; encoder_attention_mask [B, L] (1 = token,
          0 = padding) or None (all valid): the token refiner uses it as given, the joint attention the first
          mask.sum() tokens of each row (the vendor's mask, `AvatarTextEmbedding.mask`, means exactly that).
        - pooled_projections: CLIP-L pooled text [B, D_pooled].
        - reference_latents: the reference image's latents [B, C, F, H, W] (vendor: VAE encoding of the image
          repeated over the window's pixel frames) or [B, C, 1, H, W] (the one frame is used for every frame).
        - audio_features: whisper features [B, 4F-3, window, layers, channels] (one row per video frame).
        - face_mask: [B, 1, 1 or F, h, w] (or [B, 1 or F, h, w], [B, h, w]), values in 0..1, any resolution
          (vendor: latent resolution); resized to the token grid.
        - motion_exp, motion_pose: [B] or [B, 4] motion buckets (vendor: 30 and 25); fps: [B] (25 or 12.5).
        Floating inputs are cast to the model's dtype; the batch can hold conditional and unconditional rows.
        """
        batch, _, frames, height, width = hidden_states.shape
        p, p_t = self.config.patch_size, self.config.patch_size_t
        if frames % p_t or height % p or width % p:
            raise InvalidInputError(
                f"latents of {frames}x{height}x{width} (frames x height x width) do not divide into patches of "
                f"{p_t}x{p}x{p}."
            )
        grid = (frames // p_t, height // p, width // p)
        dtype = self.x_embedder.proj.weight.dtype
        if reference_latents.shape[0] != batch or reference_latents.shape[2] not in (1, frames) \
                or reference_latents.shape[1] != hidden_states.shape[1] or reference_latents.shape[3:] != hidden_states.shape[3:]:
            raise InvalidInputError(
                f"reference_latents must be [B, C, 1 or {frames}, {height}, {width}] like the video latents "
                f"{tuple(hidden_states.shape)}; got {tuple(reference_latents.shape)}."
            )
        timestep = timestep.reshape(-1).expand(batch) if timestep.numel() == 1 else timestep.reshape(batch)
        hidden_states = hidden_states.to(dtype)
        reference_latents = reference_latents.to(dtype)
        encoder_hidden_states = encoder_hidden_states.to(dtype)
        if encoder_attention_mask is None:
            encoder_attention_mask = torch.ones(encoder_hidden_states.shape[:2], dtype=torch.bool,
                                                device=encoder_hidden_states.device)
        encoder_attention_mask = encoder_attention_mask.bool()

        # Conditioning vector: timestep + CLIP pooled + motion (expression, pose) + fps.
        temb, _ = self.time_text_embed(timestep, pooled_projections.to(dtype))
        temb = temb + self._motion_embedding(self.motion_exp, motion_exp, batch, "motion_exp")
        temb = temb + self._motion_embedding(self.motion_pose, motion_pose, batch, "motion_pose")
        temb = temb + self.fps_proj(fps.reshape(-1).expand(batch) if fps.numel() == 1 else fps.reshape(batch))

        audio_tokens = self._audio_tokens(audio_features, batch, grid[0], dtype)
        face_gate = self._face_gate(face_mask, batch, grid, dtype)

        # Tokens: [reference frame (img_in) | video (img_in) + before_proj(ref_in(reference))].
        video = self.x_embedder(hidden_states)
        reference = self.before_proj(self.ref_in(reference_latents))
        if reference.shape[1] != video.shape[1]:
            reference = reference.repeat(1, grid[0], 1)
        tokens = torch.cat([self.x_embedder(reference_latents[:, :, :1]), video + reference], dim=1)
        # The token refiner sees the whole text with the mask as given (the vendor's, see the module docstring).
        text = self.context_embedder(encoder_hidden_states, timestep, encoder_attention_mask)
        rotary = self.rope(grid[0], grid[1], grid[2], device=tokens.device)

        # The joint attention takes each row's leading mask.sum() text tokens (the vendor's valid lengths), so the
        # rest are dropped instead of masked: a masked attention falls off the fast kernels (34.3 s against 25.2 s
        # per CFG step at 896x704, 129 frames, H100). Rows of different lengths run one by one.
        lengths = [int(n) for n in encoder_attention_mask.sum(dim=1).tolist()]
        if len(set(lengths)) == 1:
            video = self._joint_blocks(tokens, text[:, :lengths[0]], temb, rotary, audio_tokens, face_gate, grid)
        else:
            video = torch.cat([
                self._joint_blocks(tokens[row:row + 1], text[row:row + 1, :length], temb[row:row + 1], rotary,
                                   audio_tokens[row:row + 1], face_gate[row:row + 1], grid)
                for row, length in enumerate(lengths)])
        video = video.reshape(batch, grid[0], grid[1], grid[2], -1, p_t, p, p)
        return video.permute(0, 4, 1, 5, 2, 6, 3, 7).flatten(6, 7).flatten(4, 5).flatten(2, 3)

    def _joint_blocks(self, tokens, text, temb, rotary, audio_tokens, face_gate, grid) -> torch.Tensor:
        """The double blocks (with the audio adapters after every other one), the single blocks and the final layer,
        on [reference frame | video] tokens and unpadded text; -> the video tokens' output [B, N, C_out * patch]."""
        frame_tokens = grid[1] * grid[2]
        for index, block in enumerate(self.transformer_blocks):
            tokens, text = block(tokens, text, temb, None, rotary)
            adapter = self._adapter_after.get(index)
            if adapter is not None:
                video = tokens[:, frame_tokens:]
                audio_out = self.audio_adapter_blocks[adapter](audio_tokens, video.unflatten(1, (grid[0], frame_tokens)))
                tokens = torch.cat([tokens[:, :frame_tokens], video + audio_out.flatten(1, 2) * face_gate], dim=1)
        for block in self.single_transformer_blocks:
            tokens, text = block(tokens, text, temb, None, rotary)
        return self.proj_out(self.norm_out(tokens[:, frame_tokens:], temb))  # reference frame dropped
