"""HunyuanVideo-Avatar's noise schedule and guidance schedule, as the vendor samples.

Sigmas (vendor `hymm_sp/diffusion/schedulers/scheduling_flow_match_discrete.py`, built with
`shift=--flow-shift-eval-video 5.0, reverse=True, solver="euler"` in `hymm_sp/diffusion/__init__.py`; 50 steps
and shift 5 from `scripts/run_sample_batch_sp.sh` / `run_single_audio.sh`):
    s_i = 1 - i / N, i = 0..N (torch.linspace(1, 0, N + 1))
    sigma_i = shift * s_i / (1 + (shift - 1) * s_i)
    timestep_i = 1000 * sigma_i, i = 0..N-1 (what the transformer's timestep embedding gets)
    Euler: x_{i+1} = x_i + (sigma_{i+1} - sigma_i) * v_i (v = the transformer's velocity prediction)

Guidance (vendor `hymm_sp/diffusion/pipelines/pipeline_hunyuan_video_audio.py`, denoising loop; `--cfg-scale
7.5` in the scripts). Guidance is on when cfg_scale > 1; then every transformer call is a pair of branches,
combined as uncond + g_i * (cond - uncond):
- Steps i < 10 (text + audio guidance): g_i = (1 - i / N) * (cfg_scale - 2) + 2 (7.5 -> 6.51 over steps 0..9).
  The conditional branch gets the prompt (LLaVA states of prompt + reference image, CLIP-L pooled prompt) and
  the audio features; the unconditional branch gets the NEGATIVE prompt (LLaVA states of the negative prompt
  with the SAME reference image, CLIP-L pooled negative prompt) and all-zero audio features. Both branches get
  the face mask multiplied by 0.6, and the same reference latents, motion and fps values. (The vendor also
  encodes a black reference video as "uncond_ref_latents" but never passes it to the model.)
- Steps i >= 10 (audio-only guidance): g_i = (1 - i / N) * (6.5 - 3.5) + 3.5 (5.9 -> 3.56), fixed numbers
  that do not depend on cfg_scale. Both branches get the POSITIVE prompt; the unconditional branch gets
  all-zero audio; the face mask is used at full strength in both.
- cfg_scale <= 1: one branch per call (prompt, audio, face mask at full strength), no guidance.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InvalidInputError

DEFAULT_STEPS = 50
DEFAULT_FLOW_SHIFT = 5.0
DEFAULT_CFG_SCALE = 7.5
TEXT_GUIDANCE_STEPS = 10          # steps (from the start) with text + audio guidance
TEXT_GUIDANCE_FLOOR = 2.0         # the text phase's scale falls from cfg_scale towards this
AUDIO_GUIDANCE_START = 6.5        # audio phase: (1 - i/N) * (start - end) + end
AUDIO_GUIDANCE_END = 3.5
TEXT_PHASE_FACE_MASK_SCALE = 0.6  # the face mask is weakened while the text is guided
NUM_TRAIN_TIMESTEPS = 1000


def flow_sigmas(steps: int = DEFAULT_STEPS, shift: float = DEFAULT_FLOW_SHIFT) -> torch.Tensor:
    """[steps + 1] float32 sigmas from 1 to 0, shifted towards high noise (the vendor's FlowMatchDiscreteScheduler)."""
    if steps < 1:
        raise InvalidInputError(f"steps must be at least 1 (got {steps}).")
    if shift <= 0:
        raise InvalidInputError(f"flow shift must be positive (got {shift}).")
    s = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float32)  # float32 throughout: bit-equal to the vendor's
    return (shift * s) / (1.0 + (shift - 1.0) * s)


def flow_timesteps(sigmas: torch.Tensor) -> torch.Tensor:
    """[steps] transformer timesteps (0..1000) for the sigmas of a schedule (all but the final 0)."""
    return sigmas[:-1] * NUM_TRAIN_TIMESTEPS


def euler_step(latents: torch.Tensor, velocity: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """One flow-matching Euler step, in float32 like the vendor's scheduler."""
    return latents.float() + (float(sigma_next) - float(sigma)) * velocity.float()


@dataclass(frozen=True)
class GuidanceStep:
    """What one denoising step does: guided or not, by how much, and what each branch is given."""
    guided: bool            # two branches (uncond, cond) or one
    scale: float            # g_i in uncond + g_i * (cond - uncond); 1.0 when not guided
    uncond_prompt: str      # "negative" (text + audio phase) or "positive" (audio-only phase)
    face_mask_scale: float  # multiplies the face mask in both branches
    phase: str              # "text+audio", "audio" or "none"


def guidance_for_step(step: int, steps: int = DEFAULT_STEPS, cfg_scale: float = DEFAULT_CFG_SCALE,
                      text_guidance_steps: int = TEXT_GUIDANCE_STEPS,
                      audio_guidance: tuple[float, float] = (AUDIO_GUIDANCE_START, AUDIO_GUIDANCE_END)) -> GuidanceStep:
    """The vendor's guidance for step `step` (0-based) of `steps`; the unconditional audio is always zeros."""
    if not 0 <= step < steps:
        raise InvalidInputError(f"step {step} is outside 0..{steps - 1}.")
    if cfg_scale <= 1.0:
        return GuidanceStep(guided=False, scale=1.0, uncond_prompt="negative", face_mask_scale=1.0, phase="none")
    progress = 1.0 - step / steps
    if step < text_guidance_steps:
        scale = progress * (cfg_scale - TEXT_GUIDANCE_FLOOR) + TEXT_GUIDANCE_FLOOR
        return GuidanceStep(guided=True, scale=scale, uncond_prompt="negative",
                            face_mask_scale=TEXT_PHASE_FACE_MASK_SCALE, phase="text+audio")
    start, end = audio_guidance
    return GuidanceStep(guided=True, scale=progress * (start - end) + end, uncond_prompt="positive",
                        face_mask_scale=1.0, phase="audio")


def apply_guidance(uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: uncond + scale * (cond - uncond)."""
    return uncond + scale * (cond - uncond)
