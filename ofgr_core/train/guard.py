"""Numerical guard for training steps: a NaN/Inf loss or gradient never trains silently.

``train.nonfinite: stop`` (default) raises :class:`NonFiniteError` naming the epoch, step and loss component;
the run ends ``failed`` and the last checkpoint written before the bad step stays as it was. ``skip`` drops the
step (no optimizer update) and counts it; a whole epoch of skipped steps still stops the run.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch

from ofgr_core.common.errors import NonFiniteError


def nonfinite_parts(loss: float, parts: Mapping[str, float]) -> list[str]:
    """Names of the non-finite values among the total loss and its components (components first)."""
    bad = [k for k, v in parts.items() if not math.isfinite(v)]
    if not math.isfinite(loss):
        bad.append("loss")
    return bad


def grad_norm(params: Iterable[torch.nn.Parameter]) -> float:
    """Global L2 norm of the gradients (inf/nan when any gradient is non-finite)."""
    grads = [p.grad.detach() for p in params if p.grad is not None]
    if not grads:
        return 0.0
    norms = torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])
    return float(torch.linalg.vector_norm(norms))


def clip_grad_norm(params: list[torch.nn.Parameter], max_norm: float) -> float:
    """``torch.nn.utils.clip_grad_norm_``, bit for bit, returning the norm as a float; the gradients are
    multiplied only when the norm is above ``max_norm`` (below it torch multiplies them by exactly 1.0, a pass
    over every gradient that changes nothing: ~5 % of the demo head's training time in a profile)."""
    utils = torch.nn.utils
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    total = utils.get_total_norm(grads)
    if float(max_norm / (total + 1e-6)) < 1.0:  # torch's clip coefficient, clamped at 1.0 there
        utils.clip_grads_with_norm_(params, max_norm, total)
    return float(total)


def describe(epoch: int, step: int, loss: float, parts: Mapping[str, float], bad: list[str], *, what: str,
             checkpoint: str | None) -> str:
    values = ", ".join(f"{k}={parts[k]}" if k in parts else k for k in bad)
    keep = (f"the last good checkpoint {checkpoint} is kept; `ofgr resume` continues from it"
            if checkpoint else "no checkpoint was written yet")
    return (f"non-finite {what} at epoch {epoch} step {step} ({values}); lower train.lr or loss.arcface.scale, "
            f"set train.grad_clip, or train.nonfinite=skip; {keep}")


def raise_nonfinite(message: str) -> None:
    raise NonFiniteError(message)
