"""The samplers a Wan node offers, built as diffusers flow-matching schedulers with a flow shift."""

from __future__ import annotations

from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

from ..errors import InvalidInputError

SCHEDULERS = ("unipc", "euler", "dpm++")


def make_flow_scheduler(name: str, flow_shift: float):
    """A fresh scheduler (they hold per-run state, so one per run)."""
    if name == "unipc":
        return UniPCMultistepScheduler(
            num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True,
            flow_shift=flow_shift, solver_order=2,
        )
    if name == "euler":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=flow_shift)
    if name == "dpm++":
        return DPMSolverMultistepScheduler(
            num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True,
            flow_shift=flow_shift, algorithm_type="dpmsolver++", solver_order=2,
        )
    raise InvalidInputError(f"Unknown scheduler '{name}'. Choose one of: {', '.join(SCHEDULERS)}.")
