"""Per-update statistics kept on the device during ``train()`` and read back in one transfer, then logged.

An algorithm's ``train()`` (:class:`~sb3_td3_cnnclip.cnnclip.CnnClipMixin`) collects each gradient step's statistics
(losses, Q values, feature norms, group norms) as 0-dim tensors in a dict and hands it to
:meth:`UpdateStatsAccumulator.add`; :meth:`UpdateStatsAccumulator.read` stacks all of them once and returns plain
floats, so an update waits for no host-device transfer of its own.
Values are read as float64: a float32 value converts exactly, so each float is what ``tensor.item()`` would give.
:func:`record_update` then aggregates one update's floats into the SB3 logger.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch as th
from stable_baselines3.common.logger import Logger

#: statistics logged as their mean over the updates that measured them
MEAN_KEYS = ("q_replay", "critic_feature_norm", "critic_dead_features", "actor_saturation", "actor_pre_tanh_abs",
             "actor_feature_norm", "actor_dead_features", "q_policy_gap")  # fmt: skip


class UpdateStatsAccumulator:
    """Collects the statistics of the updates of one ``train()`` call as device tensors until they are read."""

    def __init__(self) -> None:
        self._pending: list[dict[str, th.Tensor | float]] = []

    def add(self, stats: dict[str, th.Tensor | float]) -> None:
        """Keep the statistics of one completed update.

        :param stats: 0-dim tensors (or plain numbers) by key, in the order they were measured
        """
        self._pending.append(stats)

    def read(self) -> list[dict[str, float]]:
        """Read back every pending update's statistics in one transfer and forget them.

        :return: one dict per update, oldest first, with the keys in the order they were written and Python numbers
        """
        pending, self._pending = self._pending, []
        tensors = [value.detach().reshape(()) for stats in pending for value in stats.values()
                   if isinstance(value, th.Tensor)]  # fmt: skip
        # one stack per dtype, converted to float64 at once (not one conversion per value), and one transfer
        by_dtype: dict[th.dtype, list[int]] = {}
        for index, tensor in enumerate(tensors):
            by_dtype.setdefault(tensor.dtype, []).append(index)
        stacks = [th.stack([tensors[index] for index in indices]).double() for indices in by_dtype.values()]
        read = dict(zip((index for indices in by_dtype.values() for index in indices),
                        th.cat(stacks).tolist() if stacks else []))  # fmt: skip
        values = (read[index] for index in range(len(tensors)))
        return [{key: next(values) if isinstance(value, th.Tensor) else value for key, value in stats.items()}
                for stats in pending]  # fmt: skip


def record_update(
    logger: Logger, stats: dict[str, float], group_names: Sequence[str], networks: Sequence[str] = ("critic", "actor")
) -> None:
    """Aggregate one update's statistics into the logger: means with ``record_mean``, maxima and counts by hand.

    :param logger: the model's logger
    :param stats: the update's statistics (see the list of ``update_stats`` keys in ``docs/algorithms.md``, Logged keys)
    :param group_names: the names of the model's parameter groups, e.g. ``"critic_cnn"``
    :param networks: the names of the model's optimizers, whose non-finite skips are counted
    """
    for name in group_names:
        before = stats.get(f"{name}_before", np.nan)
        if not np.isfinite(before):  # absent (no gradient), or a skipped step counted below
            continue
        record_max(logger, f"train/{name}_grad_before", before)
        if f"{name}_after" in stats:
            after = stats[f"{name}_after"]
            record_max(logger, f"train/{name}_grad_after", after)
            logger.record_mean(f"train/{name}_clip_frac", float(after < before))
            if before > 0:
                logger.record_mean(f"train/{name}_clip_ratio", after / before)
    for key in MEAN_KEYS:
        if key in stats:
            logger.record_mean(f"train/{key}", stats[key])
    record_max(logger, "train/q_abs", stats["q_abs_max"], mean=False)
    if "actor_loss" in stats:
        record_max(logger, "train/actor_loss_abs", abs(stats["actor_loss"]), mean=False)
    if "actor_mlp_before" in stats:
        logger.record_mean("train/actor_mlp_zero_grad_frac", float(stats["actor_mlp_before"] == 0.0))
    for network in networks:
        key = f"train/{network}_nonfinite_skips"
        logger.record(key, logger.name_to_value.get(key, 0) + stats.get(f"{network}_skipped", 0.0))


def record_max(logger: Logger, key: str, value: float, mean: bool = True) -> None:
    """Record ``value`` into the mean of ``key`` (optional) and into the running maximum ``key + "_max"``.

    The maximum is NaN once a NaN was recorded (``np.fmax`` and ``max`` would drop it).

    :param logger: the model's logger
    :param key: the logged key
    :param value: this update's value
    :param mean: also record ``value`` into the mean of ``key``
    """
    if mean:
        logger.record_mean(key, value)
    max_key = f"{key}_max"
    logger.record(max_key, float(np.maximum(logger.name_to_value.get(max_key, -np.inf), value)))
