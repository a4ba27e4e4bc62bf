"""Densification: gsplat's DefaultStrategy (3DGS rules), with its opacity reset repaired.

gsplat 1.5.3 guards the reset with ``step % self.reset_every == 0 & step > 0``, which Python
parses as the chained comparison ``step % reset_every == (0 & step) > 0``: always false, so
opacities are never reset (1.5.0-1.5.2 reset at step 0 as well; the fix landed after 1.5.3,
hence the pin ``gsplat>=1.5.3,<1.6``). :class:`OpacityResetStrategy` resets on 3DGS's
schedule, but first asks gsplat's own strategy, once, whether it resets; a gsplat that does
is left to do it alone.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
from gsplat.strategy import DefaultStrategy
from gsplat.strategy.ops import reset_opa


def reset_is_due(step: int, reset_every: int, refine_stop_iter: int) -> bool:
    """3DGS resets opacities every ``reset_every`` steps while densification runs."""
    return 0 < step < refine_stop_iter and step % reset_every == 0


def _probe_scene() -> tuple[torch.nn.ParameterDict, dict, dict]:
    """One Gaussian with every gsplat field, opacity 0.9, and a zero screen-space gradient."""
    params = torch.nn.ParameterDict({
        "means": torch.nn.Parameter(torch.zeros(1, 3)),
        "scales": torch.nn.Parameter(torch.full((1, 3), -3.0)),
        "quats": torch.nn.Parameter(torch.tensor([[1.0, 0.0, 0.0, 0.0]])),
        "opacities": torch.nn.Parameter(torch.logit(torch.tensor([0.9]))),
    })
    optimizers = {k: torch.optim.Adam([p], lr=0.0) for k, p in params.items()}
    means2d = torch.zeros(1, 1, 2, requires_grad=True)
    means2d.grad = torch.zeros_like(means2d)
    info = {"means2d": means2d, "width": 8, "height": 8, "n_cameras": 1,
            "radii": torch.ones(1, 1, 2, dtype=torch.int32), "gaussian_ids": None}
    return params, optimizers, info


@functools.cache
def gsplat_resets_opacity() -> bool:
    """Whether gsplat's DefaultStrategy resets opacities at its ``reset_every`` step."""
    probe = DefaultStrategy(refine_start_iter=10**6, refine_stop_iter=100, reset_every=2,
                            verbose=False)
    params, optimizers, info = _probe_scene()
    state = probe.initialize_state(scene_scale=1.0)
    before = params["opacities"].detach().clone()
    DefaultStrategy.step_post_backward(probe, params, optimizers, state, step=2, info=info)
    return not torch.equal(params["opacities"].detach(), before)


@dataclass
class OpacityResetStrategy(DefaultStrategy):
    """gsplat's DefaultStrategy whose periodic opacity reset actually runs (once)."""

    resets_done: int = 0

    def step_post_backward(self, params, optimizers, state: dict[str, Any], step: int,
                           info: dict[str, Any], packed: bool = False) -> None:
        super().step_post_backward(params, optimizers, state, step, info, packed=packed)
        if not reset_is_due(step, self.reset_every, self.refine_stop_iter):
            return
        if not gsplat_resets_opacity():
            reset_opa(params=params, optimizers=optimizers, state=state,
                      value=self.prune_opa * 2.0)
        self.resets_done += 1
