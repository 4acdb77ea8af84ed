"""Respacing: which of the T training timesteps a sampler with `steps` steps visits."""

from __future__ import annotations

import numpy as np


def timestep_grid(steps: int, timesteps: int = 1000) -> list[int]:
    """Decreasing grid of steps + 1 distinct integers from T (pure noise, b = pi/2) to 0 (data).

    Evenly spaced in t (hence in the angle b). The network never saw t = T; the sampler calls it
    with min(t, T - 1) there, where the input is pure noise either way.
    """
    if not 1 <= steps <= timesteps:
        raise ValueError(f"steps must be in 1..{timesteps} (diffusion.timesteps), got {steps}")
    return [int(v) for v in np.rint(np.linspace(timesteps, 0, steps + 1))]
