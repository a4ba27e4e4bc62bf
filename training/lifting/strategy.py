"""Densification: gsplat's DefaultStrategy (3DGS rules), with its opacity reset repaired.

gsplat 1.5.3 guards the reset with ``step % self.reset_every == 0 & step > 0``, which Python
parses as the chained comparison ``step % reset_every == (0 & step) > 0``: always false, so
opacities are never reset. :class:`OpacityResetStrategy` runs the reset on schedule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gsplat.strategy import DefaultStrategy
from gsplat.strategy.ops import reset_opa


def reset_is_due(step: int, reset_every: int, refine_stop_iter: int) -> bool:
    """3DGS resets opacities every ``reset_every`` steps while densification runs."""
    return 0 < step < refine_stop_iter and step % reset_every == 0


@dataclass
class OpacityResetStrategy(DefaultStrategy):
    """gsplat's DefaultStrategy whose periodic opacity reset actually runs."""

    resets_done: int = 0

    def step_post_backward(self, params, optimizers, state: dict[str, Any], step: int,
                           info: dict[str, Any], packed: bool = False) -> None:
        super().step_post_backward(params, optimizers, state, step, info, packed=packed)
        if reset_is_due(step, self.reset_every, self.refine_stop_iter):
            reset_opa(params=params, optimizers=optimizers, state=state,
                      value=self.prune_opa * 2.0)
            self.resets_done += 1
