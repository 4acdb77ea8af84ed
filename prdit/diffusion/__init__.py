"""The IaN diffusion process, its loss and the predictor-corrector sampler."""

from prdit.diffusion.ian import NOISE_STD, TIMESTEPS, angle, loss, q_sample
from prdit.diffusion.respace import timestep_grid
from prdit.diffusion.sampler import (
    SamplerOptions,
    StackedRandomGenerator,
    Trajectory,
    corrector_gamma,
    sample,
    step_plan,
)

__all__ = [
    "loss",
    "sample",
    "SamplerOptions",
    "Trajectory",
    "step_plan",
    "StackedRandomGenerator",
    "q_sample",
    "angle",
    "timestep_grid",
    "corrector_gamma",
    "TIMESTEPS",
    "NOISE_STD",
]
