"""Exponential moving average of the trained parameters, kept as a full module for eval and saving."""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn


class EMA:
    """EMA copy of `model` whose frozen parameters are shared with it (no second copy in memory)."""

    def __init__(self, model: nn.Module, decay: float, trained: Iterable[str]) -> None:
        self.decay = decay
        self.trained = sorted(trained)
        params = dict(model.named_parameters())
        shared = {id(p): p for name, p in params.items() if name not in set(self.trained)}
        self.module = copy.deepcopy(model, memo=dict(shared)).eval().requires_grad_(False)
        ema_params = dict(self.module.named_parameters())
        self._pairs = [(ema_params[n], params[n]) for n in self.trained]

    @torch.no_grad()
    def update(self) -> None:
        """ema <- decay * ema + (1 - decay) * param, for the trained parameters only."""
        ema, src = zip(*self._pairs) if self._pairs else ((), ())
        if ema:
            torch._foreach_lerp_(list(ema), list(src), 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: e.detach().clone() for n, (e, _) in zip(self.trained, self._pairs)}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.trained) - set(state)
        if missing:
            raise KeyError(f"EMA state lacks {len(missing)} trained parameters, e.g. {sorted(missing)[0]}")
        for n, (e, _) in zip(self.trained, self._pairs):
            e.copy_(state[n])
