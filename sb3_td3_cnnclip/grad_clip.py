"""Parameter groups and the measure / clip / step of one optimizer, with exact L2 norms.

A group's norm is one total L2 norm over the gradients of its parameters, with float32 partial norms of short
chunks combined in float64 (:func:`group_norm`). Clipping scales by :func:`torch.nn.utils.clip_grads_with_norm_`'s
factor from that very norm, so what is logged is what was clipped, and the norm after clipping is measured again on
the rescaled gradients.

Why chunks and a margin: ``torch.nn.utils.get_total_norm`` reduces each tensor in float32, which was measured
off by up to 8e-5 (relative) on a NatureCNN-sized group (1.6M parameters), and rescaling float32 gradients rounds
each element; together they left about half of all clipped norms a few ulps *above* the limit. Chunked norms are
within 2e-8 of the float64 norm at a tenth of the cost of converting to float64, and the clip aims at
``limit * (1 - CLIP_MARGIN)``, so that every logged AFTER norm is <= the limit.

:func:`clip_and_step` reads the norms on the host (one wait for the device per step), decides there whether the step
is finite and which groups to clip, and clips only those; :func:`clip_and_step_on_device` clips every group with a
limit branch-free and leaves the skip to a fused optimizer's ``found_inf``, for a step without any wait.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch as th
from torch import nn

#: relative margin below the limit that the clip aims at, larger than float32 rounding of the rescaled gradients
CLIP_MARGIN = 1e-6

#: elements per float32 partial norm in :func:`group_norm`
NORM_CHUNK = 1024

#: what to do when a gradient is NaN or infinite
NONFINITE_ACTIONS = ("skip", "raise")


class NonFiniteGradientError(FloatingPointError):
    """A gradient was NaN or infinite and ``on_nonfinite_grad="raise"`` was set."""


def check_max_norm(name: str, value: float | None) -> float | None:
    """Validate a gradient-norm limit: ``None`` (no clipping) or a positive finite number.

    :param name: the keyword the value came from, named in the error
    :param value: the limit to check
    :return: the limit as a float, or ``None``
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"{name}={value!r} is not a valid gradient-norm limit: use a positive finite number, or None to measure "
            "that group without clipping it."
        )
    return float(value)


def group_norm(grads: list[th.Tensor]) -> th.Tensor:
    """Total L2 norm of a list of gradients, within 1e-7 (relative) of the float64 norm.

    On CUDA one fused ``torch._foreach_norm`` accumulating in float64; elsewhere float32 norms of
    ``NORM_CHUNK``-element chunks combined in float64 (on the CPU ``_foreach_norm`` in float64 casts each tensor
    first and was measured 6x slower than the chunks on a NatureCNN-sized group).

    :param grads: the gradients (one device)
    :return: ``sqrt(sum of the squares of every element)`` as a 0-dim float64 tensor
    """
    if grads[0].is_cuda:
        return foreach_group_norm(grads)
    partial = []
    for grad in grads:
        flat = grad.reshape(-1)
        whole = flat.numel() - flat.numel() % NORM_CHUNK
        partial.append(th.linalg.vector_norm(flat[:whole].view(-1, NORM_CHUNK), dim=1))
        partial.append(th.linalg.vector_norm(flat[whole:]).reshape(1))
    return th.linalg.vector_norm(th.cat(partial).double())


def foreach_group_norm(grads: list[th.Tensor]) -> th.Tensor:
    """:func:`group_norm` on CUDA: one fused ``torch._foreach_norm`` accumulating in float64.

    :param grads: the gradients (one device)
    :return: the total L2 norm as a 0-dim float64 tensor
    """
    return th.linalg.vector_norm(th.stack(th._foreach_norm(grads, 2, dtype=th.float64)))


def _clip_coefficient(target: float, norm: float | th.Tensor) -> float | th.Tensor:
    """The factor that scales gradients of total norm ``norm`` to ``target``
    (:func:`torch.nn.utils.clip_grads_with_norm_`'s, with its epsilon)."""
    return target / (norm + 1e-6)


def _float64_norm(grads: list[th.Tensor]) -> th.Tensor:
    """Total L2 norm of a list of gradients computed in float64 (slow; for what overflows in float32)."""
    return th.linalg.vector_norm(th.cat([grad.reshape(-1).double() for grad in grads]))


@dataclass
class ParamGroup:
    """The parameters of one part of a network that are clipped together.

    :param name: the group's name in logged keys, beginning with its network's name, e.g. ``"actor_cnn"``
    :param params: the parameters (those the optimizer updates that belong to the group)
    :param max_norm: the limit of the group's total L2 gradient norm, ``None`` for no clipping
    """

    name: str
    params: list[nn.Parameter]
    max_norm: float | None

    @property
    def clip_target(self) -> float | None:
        """The norm a clipped gradient is scaled to: ``max_norm * (1 - CLIP_MARGIN)`` (``None`` without a limit)."""
        return None if self.max_norm is None else self.max_norm * (1 - CLIP_MARGIN)


def split_cnn_mlp(
    prefix: str,
    optimizer: th.optim.Optimizer,
    features_extractor: nn.Module,
    cnn_max_norm: float | None,
    mlp_max_norm: float | None,
) -> list[ParamGroup]:
    """Split the parameters an optimizer updates into a CNN group (the features extractor's) and an MLP group (the rest).

    Grouping is by module, not by policy name, so it works for ``CnnPolicy``, ``MultiInputPolicy``
    (the image CNN inside ``CombinedExtractor``) and custom extractors. A group with no parameter is dropped:
    ``MlpPolicy``'s ``FlattenExtractor`` has none, and with ``share_features_extractor=True`` the critic's optimizer
    does not update the shared CNN (the actor's loss trains it).

    :param prefix: ``"actor"`` or ``"critic"``
    :param optimizer: the network's optimizer
    :param features_extractor: the network's features extractor
    :param cnn_max_norm: limit of the CNN group
    :param mlp_max_norm: limit of the MLP group
    :return: the non-empty groups
    """
    cnn_ids = {id(p) for p in features_extractor.parameters()}
    params = [p for group in optimizer.param_groups for p in group["params"]]
    cnn = [p for p in params if id(p) in cnn_ids]
    mlp = [p for p in params if id(p) not in cnn_ids]
    groups = [ParamGroup(f"{prefix}_cnn", cnn, cnn_max_norm), ParamGroup(f"{prefix}_mlp", mlp, mlp_max_norm)]
    return [group for group in groups if group.params]


def clip_and_step(
    optimizer: th.optim.Optimizer, groups: list[ParamGroup], on_nonfinite_grad: str = "skip"
) -> tuple[dict[str, tuple[float, float | th.Tensor | None]], bool]:
    """Measure each group's gradient norm, clip the groups above their limits and measure those again, then step.

    Called after ``loss.backward()``; everything is measured before ``optimizer.step()``.
    When any group's norm is NaN or infinite the step is skipped and the gradients are zeroed
    (or :class:`NonFiniteGradientError` is raised), so a bad gradient never reaches the weights.
    The step's one host-device transfer reads every group's norm at once; from those the host decides whether to
    step and which groups to clip, so a group under its limit costs no further kernel (its gradient is left bit for
    bit as it was, and its norm after is its norm before).

    :param optimizer: the optimizer to step
    :param groups: the groups whose parameters the optimizer updates
    :param on_nonfinite_grad: ``"skip"`` or ``"raise"``
    :return: for each group name ``(norm before, norm after)``: before as a float, after as a float (the same, for a
        group under its limit), a 0-dim float64 tensor measured on the clipped gradients (read with the other
        statistics), or ``None`` on a skipped step; groups without any gradient are absent. And whether the step was
        taken.
    """
    grads = _grads(groups)
    norms = [group_norm(g) for g in grads.values()]
    before = dict(zip(grads, th.stack(norms).tolist() if norms else []))  # the step's one wait for the device
    if not all(map(math.isfinite, before.values())):
        # float32 chunk norms overflow for elements above ~1e19: measure such a group again in float64
        before = {name: norm if math.isfinite(norm) else _float64_norm(grads[name]).item()
                  for name, norm in before.items()}  # fmt: skip
        if not all(map(math.isfinite, before.values())):
            if on_nonfinite_grad == "raise":
                raise NonFiniteGradientError(
                    f"Non-finite gradient norm(s) {before}; lower the learning rate or reward scale, "
                    'or pass on_nonfinite_grad="skip" to skip such steps.'
                )
            optimizer.zero_grad()
            return {name: (norm, None) for name, norm in before.items()}, False
    stats: dict[str, tuple[float, float | th.Tensor | None]] = {}
    for group in groups:
        if group.name not in before:
            continue
        norm, target = before[group.name], group.clip_target
        if target is None or norm <= target:
            stats[group.name] = (norm, norm)
            continue
        th._foreach_mul_(grads[group.name], _clip_coefficient(target, norm))
        stats[group.name] = (norm, group_norm(grads[group.name]))
    optimizer.step()
    return stats, True


def clip_and_step_on_device(
    optimizer: th.optim.Optimizer, groups: list[ParamGroup]
) -> tuple[dict[str, tuple[th.Tensor, th.Tensor]], th.Tensor]:
    """:func:`clip_and_step` whose skip of a non-finite step is decided on the device: no host-device transfer.

    The optimizer must be one of torch's fused ones (``fused=True``: Adam, AdamW, SGD, Adagrad): their step reads
    ``optimizer.found_inf`` (as :class:`torch.amp.GradScaler` sets it) and, where it is 1, leaves the parameters and
    the optimizer's state (its step count included) as they were. The gradients of a skipped step are left as they
    are, for the next ``zero_grad()``; the caller reads ``found_inf`` later, with the statistics, and acts on it.

    One difference from :func:`clip_and_step`: a norm that overflows float32 is not measured again in float64 (that
    decision would need the host). On CUDA, :func:`group_norm` accumulates in float64 and cannot overflow; on the CPU
    a gradient with an element above about 1e19 has an infinite norm there, and its step is skipped as non-finite.

    :param optimizer: the fused optimizer to step
    :param groups: the groups whose parameters the optimizer updates
    :return: for each group name ``(norm before, norm after)`` as 0-dim float64 tensors (on a skipped step after is
        meaningless; groups without any gradient are absent), and ``found_inf``: a 0-dim float32 tensor, 1.0 where
        the step was skipped and 0.0 where it was taken
    """
    grads = _grads(groups)
    before = {name: group_norm(g) for name, g in grads.items()}
    norms = th.stack(list(before.values())) if before else th.zeros(1, dtype=th.float64)
    found_inf = (~norms.isfinite().all()).float()
    stats = _clip_on_device(groups, grads, before)
    optimizer.found_inf = found_inf
    try:
        optimizer.step()
    finally:  # as GradScaler: a later step() that is not this function's must not read it
        del optimizer.found_inf
    return stats, found_inf


def _grads(groups: list[ParamGroup]) -> dict[str, list[th.Tensor]]:
    """The gradients of each group that has any, by group name."""
    grads = {group.name: [p.grad for p in group.params if p.grad is not None] for group in groups}
    return {name: g for name, g in grads.items() if g}


def _clip_on_device(
    groups: list[ParamGroup], grads: dict[str, list[th.Tensor]], before: dict[str, th.Tensor]
) -> dict[str, tuple[th.Tensor, th.Tensor]]:
    """Clip each group with a gradient and a limit from its norm ``before``, without a branch on the host: a group
    under its limit is multiplied by exactly 1.0; measure the clipped ones again.

    :return: ``(norm before, norm after)`` by group name
    """
    stats = {}
    for group in groups:
        if group.name not in before:
            continue
        norm = after = before[group.name]
        target = group.clip_target
        if target is not None:
            clipped = norm > target
            th._foreach_mul_(grads[group.name], th.where(clipped, _clip_coefficient(target, norm), 1.0))
            after = th.where(clipped, group_norm(grads[group.name]), norm)
        stats[group.name] = (norm, after)
    return stats
