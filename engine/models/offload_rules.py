"""What a loaded model of any family does around a run under its offload choice (one definition for Wan
and LTX): a transformer stage moves in and out with offload "model"; after the run the VAE leaves the GPU
unless everything stays resident, and the allocator's cache is emptied."""

from __future__ import annotations

import contextlib

import torch

from .. import host
from . import offload


class OffloadRules:
    """Mixin for a loaded-model dataclass with `options` (offload), `device` and `vae`."""

    def stage(self, model: torch.nn.Module):
        """Context manager for one transformer's denoising stage."""
        if self.options.offload == "model":
            return offload.stage_on_device(model, self.options.offload, self.device)
        return contextlib.nullcontext()

    def release_after_run(self) -> None:
        if self.options.offload != "none":
            self.vae.to(host.offload_device())
        host.soft_empty_cache()
