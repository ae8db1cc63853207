"""Early stopping on divergence, from the statistics :class:`~sb3_td3_cnnclip.TD3CnnClip` keeps of every update.

The callback adds no forward pass: it reads the entries of ``model.update_stats`` newer than the last one it saw
(with plain SB3 algorithms, the losses the algorithm logged), all of them: an update that left ``update_stats``
before it was checked raises a ``RuntimeError``. Each check is a condition on one update, either
immediate (one bad update stops training) or persistent (``window`` consecutive bad updates of that statistic).
The checks run at the start of each rollout, i.e. right after ``train()`` and before the policy acts again.
"""

from __future__ import annotations

import copy
import json
import math
import os
import warnings
from typing import Any

from stable_baselines3.common.callbacks import BaseCallback

#: what the dead-actor check does when it fires
DEAD_ACTOR_ACTIONS = ("stop", "warn", "off")

#: checks that need ``TD3CnnClip.update_stats`` (skipped, with one notice, for other algorithms)
STATS_CHECKS = ("nonfinite_grad", "grad_norm", "feature_norm", "feature_growth", "q_gap", "dead_actor")

#: checks measured against the Q bound ``r_max / (1 - gamma)``
Q_BOUND_CHECKS = ("q_bound", "q_gap")

GRAD_GROUPS = ("critic_cnn", "critic_mlp", "actor_cnn", "actor_mlp")

#: the model's counters that belong to its weights, kept with each snapshot (name in explosion.json: attribute)
SNAPSHOT_COUNTERS = {
    "num_timesteps": "num_timesteps", "n_updates": "_n_updates", "progress_remaining": "_current_progress_remaining",
}  # fmt: skip

FIXES = (
    "use a bounded encoder (policy='BoundedCnnPolicy', or policy_kwargs=dict(features_extractor_class="
    "BoundedNatureCNN) from sb3_td3_cnnclip.encoders) and/or a lower learning rate"
)
NONFINITE_FIXES = "lower the learning rate or the reward scale, and check the env for NaN rewards or observations"


def _check_positive(name: str, value: float | None) -> float | None:
    """Validate a threshold: ``None`` (check off) or a positive finite number."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}={value!r} must be a positive finite number, or None to switch that check off.")
    return float(value)


class ExplosionEarlyStopping(BaseCallback):
    """
    Stop training when it diverges, say why, and keep the model as it was at the last healthy check.

    Checks (the key of each in ``alerts/<check>``), each switched off by ``None`` (``False`` for the booleans):

    - ``nonfinite_loss`` (immediate): the actor or critic loss is NaN or infinite.
    - ``nonfinite_grad`` (persistent): every optimizer step of a network was skipped for a non-finite gradient.
    - ``actor_loss`` (immediate): ``|actor loss| > max_abs_actor_loss``.
    - ``q_bound`` (immediate): ``max |Q|`` on the batch (and ``|actor loss|``, which is ``-Q`` on the policy's
      actions) above ``q_bound_factor * r_max / (1 - gamma)``, which no true return can exceed.
    - ``grad_norm`` (persistent): a group's gradient norm before clipping above ``grad_norm_factor`` times its
      clipping limit (groups without a limit are not checked).
    - ``feature_norm`` (immediate): the actor's or critic's mean CNN feature norm above ``max_feature_norm``.
    - ``feature_growth`` (immediate): a CNN feature norm grown by ``feature_growth`` times over ``window`` updates.
    - ``q_gap`` (persistent): ``Q(s, pi(s)) - Q(s, a_replay)`` above ``q_gap_fraction`` times the Q bound: the
      actor exploits the critic's errors.
    - ``dead_actor`` (persistent, actor updates): the actor-MLP gradient is exactly zero or the fraction of
      saturated action elements is above ``saturation_threshold``; stops or warns according to ``dead_actor``.

    Persistent checks fire after ``window`` consecutive bad updates of that statistic (actor statistics exist only
    on actor updates). Only ``nonfinite_loss``, ``actor_loss`` and ``q_bound`` (from ``|actor loss|``; for SAC it
    includes the entropy term) work with plain SB3 algorithms, which log only their losses; the others are skipped
    with one warning. ``q_bound`` and ``q_gap`` need ``r_max``: without it and without an env attribute
    ``max_abs_reward`` they are skipped with one warning.

    The checks run at the start of each rollout (right after ``train()``) and at the end of training. On a trigger
    the callback rolls the model back to the last healthy state and saves it to ``<log_dir>/last_healthy.zip``
    (loadable with ``TD3CnnClip.load``, with the counters of the snapshot: ``num_timesteps``, ``_n_updates`` and
    ``_current_progress_remaining``, so a resumed run continues the learning-rate schedule and the policy-delay
    phase of those weights; the model ``learn()`` returns keeps the counters of the trigger), writes
    ``explosion.json`` in ``log_dir`` (checks, reason, timesteps, the checkpoint's counters), warns with the reason, records ``alerts/<check>`` and ``alerts/reason`` (TensorBoard
    text), dumps the logger, and returns ``False`` at the next env step, which SB3 takes before it can stop. The
    rollback makes that step and the model ``learn()`` returns usable: diverged weights are often NaN, and then
    SAC's action distribution or a driving env's action check would raise before training could stop.

    Keeping the last healthy model: every ``snapshot_freq`` gradient steps, when no check sees a bad value (no
    persistent check on a streak), the callback deep-copies ``model.get_parameters()`` (weights, target networks
    and optimizer states) in memory; it writes a file only on a trigger. Measured on TD3 ``CnnPolicy`` with 4x84x84
    observations (7.9 M parameters, one CPU thread): a copy takes 35 ms and about 64 MB of memory, a third of one
    gradient step (115 ms), so 0.06 % of the training time at ``snapshot_freq=500``; ``model.save()`` instead takes
    190 ms and writes 64 MB to disk each time.

    ``alerts/<check>`` counts how often each enabled check fired (0 on a healthy run) and is recorded at the
    start of training, at the end of every rollout, when a check fires and at the end of training, so the logger's
    dumps show it; a check can fire after the last dump of ``learn()`` (on its last ``train()``): dump once more
    after ``learn()`` (``model.dump_logs()``, as the CLI does) so the last counts reach the logs.

    :param nonfinite_loss: check that the losses are finite
    :param nonfinite_grad: check that not every optimizer step of a network is skipped for a non-finite gradient
        over ``window`` updates (``TD3CnnClip`` only)
    :param max_abs_actor_loss: threshold of ``|actor loss|`` (default 1e6)
    :param q_bound_factor: multiple of the Q bound ``r_max / (1 - gamma)`` that Q estimates must stay under
        (default 1.5)
    :param r_max: bound on ``|reward|`` per step; ``None``: the largest ``max_abs_reward`` attribute of the envs
    :param grad_norm_factor: multiple of a group's clipping limit its pre-clip gradient norm must not exceed for
        ``window`` consecutive updates (default 10)
    :param max_feature_norm: threshold of the mean per-sample CNN feature norm (default 1e3)
    :param feature_growth: factor by which a CNN feature norm may grow over ``window`` updates (default 100)
    :param q_gap_fraction: fraction of the Q bound that ``q_policy_gap`` must not exceed for ``window``
        consecutive actor updates (default 0.5)
    :param dead_actor: ``"stop"``, ``"warn"`` (warn once, keep counting in ``alerts/dead_actor``) or ``"off"``
    :param saturation_threshold: fraction of saturated action elements (within 1e-3 of a bound) that counts as a
        saturated actor update (default 0.9)
    :param window: consecutive updates a persistent condition must hold, and the span of ``feature_growth``
        (default 50)
    :param snapshot_freq: gradient steps between in-memory copies of the last healthy model (default 500)
    :param save_replay_buffer: also save the replay buffer (as at the trigger) to ``<log_dir>/replay_buffer.pkl``
    :param log_dir: directory of ``explosion.json`` and the checkpoint; ``None``: the logger's directory
    :param verbose: 1 to print each snapshot
    """

    def __init__(
        self,
        nonfinite_loss: bool = True,
        nonfinite_grad: bool = True,
        max_abs_actor_loss: float | None = 1e6,
        q_bound_factor: float | None = 1.5,
        r_max: float | None = None,
        grad_norm_factor: float | None = 10.0,
        max_feature_norm: float | None = 1e3,
        feature_growth: float | None = 100.0,
        q_gap_fraction: float | None = 0.5,
        dead_actor: str = "stop",
        saturation_threshold: float = 0.9,
        window: int = 50,
        snapshot_freq: int = 500,
        save_replay_buffer: bool = False,
        log_dir: str | None = None,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose)
        if dead_actor not in DEAD_ACTOR_ACTIONS:
            raise ValueError(f"dead_actor={dead_actor!r} is unknown; choose one of {DEAD_ACTOR_ACTIONS}.")
        if not 0 < saturation_threshold <= 1:
            raise ValueError(f"saturation_threshold={saturation_threshold!r} must be in (0, 1].")
        for name, value in (("window", window), ("snapshot_freq", snapshot_freq)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer.")
        self.max_abs_actor_loss = _check_positive("max_abs_actor_loss", max_abs_actor_loss)
        self.q_bound_factor = _check_positive("q_bound_factor", q_bound_factor)
        self.r_max = _check_positive("r_max", r_max)
        self.grad_norm_factor = _check_positive("grad_norm_factor", grad_norm_factor)
        self.max_feature_norm = _check_positive("max_feature_norm", max_feature_norm)
        self.feature_growth = _check_positive("feature_growth", feature_growth)
        self.q_gap_fraction = _check_positive("q_gap_fraction", q_gap_fraction)
        self.dead_actor = dead_actor
        self.saturation_threshold = saturation_threshold
        self.window = window
        self.snapshot_freq = snapshot_freq
        self.save_replay_buffer = save_replay_buffer
        self.log_dir = log_dir
        requested = {
            "nonfinite_loss": nonfinite_loss,
            "nonfinite_grad": nonfinite_grad,
            "actor_loss": max_abs_actor_loss is not None,
            "q_bound": q_bound_factor is not None,
            "grad_norm": grad_norm_factor is not None,
            "feature_norm": max_feature_norm is not None,
            "feature_growth": feature_growth is not None,
            "q_gap": q_gap_fraction is not None,
            "dead_actor": dead_actor != "off",
        }
        #: the checks that run (set at training start: some need TD3CnnClip or r_max)
        self.checks = [check for check, on in requested.items() if on]
        #: how often each check fired
        self.alerts = dict.fromkeys(self.checks, 0)
        #: the checks that stopped training, and why (empty / ``None`` while training is healthy)
        self.triggered: list[str] = []
        self.reason: str | None = None
        self.q_bound = math.nan
        self._last_update = 0
        self._streaks: dict[str, int] = {}
        self._dead_counts = [0, 0]  # zero-gradient and saturated actor updates in the current dead-actor streak
        self._feature_history: dict[str, list[float]] = {}
        self._snapshot: dict[str, Any] | None = None
        self._snapshot_at: dict[str, float] = {}

    def _init_callback(self) -> None:
        if self.log_dir is None:
            self.log_dir = self.logger.get_dir()
            if self.log_dir is None:
                raise ValueError("ExplosionEarlyStopping needs a directory: pass log_dir=..., or a logger with one.")
        os.makedirs(self.log_dir, exist_ok=True)
        if self.save_replay_buffer and not hasattr(self.model, "save_replay_buffer"):
            raise ValueError(f"save_replay_buffer=True, but {type(self.model).__name__} has no replay buffer.")
        if not hasattr(self.model, "update_stats"):
            self._skip(STATS_CHECKS, f"{type(self.model).__name__} keeps no per-update statistics (use TD3CnnClip)")
        if self.r_max is None and self.training_env.has_attr("max_abs_reward"):
            self.r_max = float(max(self.training_env.get_attr("max_abs_reward")))
        if self.r_max is None:
            self._skip(Q_BOUND_CHECKS, "r_max is unknown (pass r_max=..., or give the env a max_abs_reward attribute)")
        else:
            self.q_bound = self.r_max / (1.0 - self.model.gamma)

    def _skip(self, checks: tuple[str, ...], why: str) -> None:
        """Switch ``checks`` off with one warning naming those that were on."""
        skipped = [check for check in checks if check in self.checks]
        if skipped:
            warnings.warn(f"ExplosionEarlyStopping skips the checks {skipped}: {why}.", UserWarning, stacklevel=3)
            self.checks = [check for check in self.checks if check not in skipped]
            self.alerts = {check: self.alerts[check] for check in self.checks}

    def _on_training_start(self) -> None:
        self.triggered, self.reason = [], None  # a callback can serve several learn() calls
        self._streaks, self._dead_counts, self._feature_history = {}, [0, 0], {}
        self._last_update = self.model._n_updates
        self._take_snapshot()
        self._record_alerts()

    def _on_rollout_start(self) -> None:
        self._check_new_updates()

    def _on_rollout_end(self) -> None:
        self._record_alerts()

    def _on_training_end(self) -> None:
        self._check_new_updates()  # the last train() of learn() runs after the last rollout
        self._record_alerts()  # the final counts, for the dump after learn() (the CLI's, or model.dump_logs())

    def _on_step(self) -> bool:
        return not self.triggered

    def _check_new_updates(self) -> None:
        """Check the updates done since the last call; stop on a trigger, else keep a snapshot when one is due."""
        if self.triggered:
            return
        for stats in self._new_stats():
            found = self._check(stats)
            for check, _ in found:
                self.alerts[check] += 1
            if found:
                self._record_alerts()
            stopping = [(check, msg) for check, msg in found if check != "dead_actor" or self.dead_actor == "stop"]
            if stopping:
                self._stop(stopping, stats["n_updates"])
                return
            if found:  # a dead actor in "warn" mode
                if self.alerts["dead_actor"] == 1:
                    warnings.warn(f"ExplosionEarlyStopping: {found[0][1]}", RuntimeWarning, stacklevel=2)
                self._streaks["dead_actor"] = 0
                self._dead_counts = [0, 0]
        healthy = not any(self._streaks.values())
        if healthy and self.model._n_updates - self._snapshot_at["n_updates"] >= self.snapshot_freq:
            self._take_snapshot()

    def _new_stats(self) -> list[dict[str, float]]:
        """The statistics of the updates done since the last call, oldest first."""
        n_updates = self.model._n_updates
        if n_updates == self._last_update:
            return []
        if hasattr(self.model, "update_stats"):
            new = []
            for stats in reversed(self.model.update_stats):
                if stats["n_updates"] <= self._last_update:
                    break
                new.append(stats)
            new.reverse()
            # Updates after the newest entry never finished (an exception inside train(), e.g. Ctrl-C): they have no
            # statistics to check. Only a gap before a stored entry means statistics were evicted unchecked.
            if new and new[0]["n_updates"] != self._last_update + 1:
                first = new[0]["n_updates"]
                raise RuntimeError(
                    f"Updates {self._last_update + 1} to {first - 1} left model.update_stats before they were checked: "
                    f"more gradient steps ran between two checks than stats_history={self.model.stats_history} holds "
                    "(train() called outside learn()?); raise stats_history, or check after each train() call."
                )
        else:  # plain SB3: the losses the last train() logged (name_to_value is a defaultdict: test membership)
            logged = self.logger.name_to_value
            losses = {key: logged[f"train/{key}"] for key in ("actor_loss", "critic_loss") if f"train/{key}" in logged}
            new = [{"n_updates": n_updates, **losses}]
        self._last_update = n_updates
        return new

    def _persistent(self, key: str, bad: bool) -> bool:
        """Count consecutive bad updates of ``key``; ``True`` once they reach ``window``."""
        self._streaks[key] = self._streaks.get(key, 0) + 1 if bad else 0
        return self._streaks[key] >= self.window

    def _check(self, stats: dict[str, float]) -> list[tuple[str, str]]:
        """Run every enabled check on one update's statistics; return ``(check, reason)`` for those that fire."""
        found = [
            *self._check_losses(stats),
            *self._check_nonfinite_grads(stats),
            *self._check_grad_norms(stats),
            *self._check_features(stats),
            *self._check_q_gap(stats),
            *self._check_dead_actor(stats),
        ]
        return [(check, f"update {stats['n_updates']}: {reason}") for check, reason in found]

    def _check_losses(self, stats: dict[str, float]) -> list[tuple[str, str]]:
        """Immediate checks on the losses and on Q: ``nonfinite_loss``, ``actor_loss``, ``q_bound``."""
        found = []
        if "nonfinite_loss" in self.checks:
            bad = {key: stats[key] for key in ("critic_loss", "actor_loss") if key in stats}
            bad = {key: value for key, value in bad.items() if not math.isfinite(value)}
            if bad:
                found.append(("nonfinite_loss", f"non-finite loss {bad}: {NONFINITE_FIXES}"))
        actor_loss = abs(stats.get("actor_loss", 0.0))
        if "actor_loss" in self.checks and actor_loss > self.max_abs_actor_loss:
            found.append((
                "actor_loss",
                f"|actor loss| = {actor_loss:.3g} > {self.max_abs_actor_loss:.3g}: the critic's Q on the actor's "
                f"actions diverged; {FIXES}",
            ))  # fmt: skip
        q = max(stats.get("q_abs_max", 0.0), actor_loss)
        limit = self.q_bound_factor * self.q_bound if "q_bound" in self.checks else math.inf
        if q > limit:
            found.append((
                "q_bound",
                f"|Q| = {q:.3g} exceeds {self.q_bound_factor} x r_max/(1-gamma) = {limit:.3g} "
                f"(r_max={self.r_max:.3g}, gamma={self.model.gamma}), more than any return: the critic diverged; "
                f"lower the critic's learning rate or the reward scale, or {FIXES}",
            ))  # fmt: skip
        return found

    def _check_nonfinite_grads(self, stats: dict[str, float]) -> list[tuple[str, str]]:
        """Every optimizer step of a network skipped for a non-finite gradient, ``window`` times in a row."""
        if "nonfinite_grad" not in self.checks:
            return []
        found = []
        for network in ("critic", "actor") if "actor_loss" in stats else ("critic",):
            if self._persistent(f"nonfinite_grad/{network}", f"{network}_skipped" in stats):
                found.append((
                    "nonfinite_grad",
                    f"the {network}'s gradient was NaN or infinite on each of its last {self.window} updates (every "
                    f"step skipped): {NONFINITE_FIXES}",
                ))  # fmt: skip
        return found

    def _check_grad_norms(self, stats: dict[str, float]) -> list[tuple[str, str]]:
        """Pre-clip gradient norms far above their clipping limits, ``window`` times in a row."""
        if "grad_norm" not in self.checks:
            return []
        found = []
        for group in GRAD_GROUPS:
            limit = getattr(self.model, f"{group}_max_grad_norm", None)
            norm = stats.get(f"{group}_before")
            if limit is None or norm is None:
                continue
            if self._persistent(f"grad_norm/{group}", norm > self.grad_norm_factor * limit):
                found.append((
                    "grad_norm",
                    f"{group} gradient norm before clipping above {self.grad_norm_factor} x its limit {limit} on "
                    f"each of its last {self.window} updates (latest {norm:.3g}): lower the learning rate or the "
                    "reward scale",
                ))  # fmt: skip
        return found

    def _check_features(self, stats: dict[str, float]) -> list[tuple[str, str]]:
        """A CNN feature norm too large (``feature_norm``), or grown too fast over ``window`` updates."""
        found = []
        for network in ("critic", "actor"):
            norm = stats.get(f"{network}_feature_norm")
            if norm is None:
                continue
            if "feature_norm" in self.checks and norm > self.max_feature_norm:
                found.append((
                    "feature_norm",
                    f"{network} CNN feature norm {norm:.3g} > {self.max_feature_norm:.3g}: the encoder's output is "
                    f"unbounded; {FIXES}",
                ))  # fmt: skip
            if "feature_growth" in self.checks:
                history = self._feature_history.setdefault(network, [])
                history.append(norm)
                del history[: -self.window - 1]
                if len(history) > self.window and norm > self.feature_growth * history[0]:
                    found.append((
                        "feature_growth",
                        f"{network} CNN feature norm grew {norm / history[0]:.3g}x in {self.window} updates "
                        f"({history[0]:.3g} -> {norm:.3g}): the encoder's output is unbounded; {FIXES}",
                    ))  # fmt: skip
        return found

    def _check_q_gap(self, stats: dict[str, float]) -> list[tuple[str, str]]:
        """Q on the policy's actions far above Q on replay actions, ``window`` actor updates in a row."""
        gap = stats.get("q_policy_gap")
        if "q_gap" not in self.checks or gap is None:
            return []
        limit = self.q_gap_fraction * self.q_bound
        if not self._persistent("q_gap", gap > limit):
            return []
        return [(
            "q_gap",
            f"Q(s, pi(s)) - Q(s, a_replay) above {limit:.3g} ({self.q_gap_fraction} x the Q bound) on each of the last "
            f"{self.window} actor updates (latest {gap:.3g}): the actor exploits the critic's errors; lower the "
            "actor's learning rate or raise policy_delay",
        )]  # fmt: skip

    def _check_dead_actor(self, stats: dict[str, float]) -> list[tuple[str, str]]:
        """Zero actor-MLP gradient or saturated actions on ``window`` actor updates in a row."""
        if "dead_actor" not in self.checks or "actor_mlp_before" not in stats:
            return []
        zero = stats["actor_mlp_before"] == 0.0
        saturated = stats["actor_saturation"] > self.saturation_threshold
        if zero or saturated:
            self._dead_counts[0] += zero
            self._dead_counts[1] += saturated
        else:
            self._dead_counts = [0, 0]
        if not self._persistent("dead_actor", zero or saturated):
            return []
        n_zero, n_saturated = self._dead_counts
        if n_zero and n_saturated:
            seen = "saturated actions and a zero gradient: the actor's output tanh saturated, so its gradient vanished"
        elif n_zero:
            seen = "a zero gradient without saturated actions: the critic's gradient with respect to the action is 0"
        else:
            seen = "saturated actions (the gradient is not yet exactly zero)"
        return [(
            "dead_actor",
            f"dead actor: over its last {self._streaks['dead_actor']} actor updates the actor-MLP gradient was "
            f"exactly zero on {n_zero} and more than {self.saturation_threshold:.0%} of the action elements were "
            f"saturated on {n_saturated} (latest saturation {stats['actor_saturation']:.2f}), i.e. {seen}; "
            f"{self._dead_actor_fix()}",
        )]  # fmt: skip

    def _dead_actor_fix(self) -> str:
        """What to change against a dead actor: the pre-tanh penalty, measured to keep the actor alive."""
        penalty = self.model.pre_tanh_penalty
        first = (
            f"raise TD3CnnClip's pre_tanh_penalty (now {penalty:g})" if penalty > 0 else
            "set TD3CnnClip's pre_tanh_penalty=0.01 (its default), which kept the actor alive on every seed of "
            "benchmarks/results/dead_actor.md where a bounded encoder alone did not"
        )  # fmt: skip
        return f"{first}, and/or lower the actor's learning rate (actor_lr_scale)"

    def _take_snapshot(self) -> None:
        """Copy the weights and optimizer states in memory: the last healthy model."""
        self._snapshot = copy.deepcopy(self.model.get_parameters())
        self._snapshot_at = self._counters()
        if self.verbose >= 1:
            print(f"ExplosionEarlyStopping: healthy snapshot at update {self.model._n_updates}")

    def _counters(self) -> dict[str, float]:
        """The model's :data:`SNAPSHOT_COUNTERS` now."""
        return {name: getattr(self.model, attribute) for name, attribute in SNAPSHOT_COUNTERS.items()}

    def _set_counters(self, counters: dict[str, float]) -> None:
        """Set the model's :data:`SNAPSHOT_COUNTERS` to ``counters`` (as returned by :meth:`_counters`)."""
        for name, attribute in SNAPSHOT_COUNTERS.items():
            setattr(self.model, attribute, counters[name])

    def _record_alerts(self) -> None:
        for check in self.checks:
            self.logger.record(f"alerts/{check}", self.alerts[check])

    def _stop(self, found: list[tuple[str, str]], n_updates: int) -> None:
        """Roll back to and save the last healthy model, write the report, warn and log; ``_on_step`` then stops."""
        self.triggered = [check for check, _ in found]
        self.reason = "; ".join(reason for _, reason in found)
        checkpoint = os.path.join(self.log_dir, "last_healthy.zip")
        self.model.set_parameters(self._snapshot, exact_match=True)
        at_trigger = self._counters()
        self._set_counters(self._snapshot_at)  # the checkpoint resumes with the weights' schedule and delay phase
        try:
            self.model.save(checkpoint)
        finally:
            self._set_counters(at_trigger)
        replay_buffer = None
        if self.save_replay_buffer:
            replay_buffer = os.path.join(self.log_dir, "replay_buffer.pkl")
            self.model.save_replay_buffer(replay_buffer)
        report = {
            "checks": self.triggered,
            "reason": self.reason,
            "num_timesteps": self.num_timesteps,
            "n_updates": n_updates,
            "alerts": self.alerts,
            "last_healthy": {"path": checkpoint, **self._snapshot_at},
            "replay_buffer": replay_buffer,
        }
        report_path = os.path.join(self.log_dir, "explosion.json")
        with open(report_path, "w") as file:
            json.dump(report, file, indent=2)
        warnings.warn(
            f"ExplosionEarlyStopping stopped training at timestep {self.num_timesteps}: {self.reason}. The model of "
            f"update {self._snapshot_at['n_updates']} (last healthy check) is saved to {checkpoint}; details in "
            f"{report_path}.",
            RuntimeWarning,
            stacklevel=3,
        )
        self._record_alerts()
        self.logger.record("alerts/reason", self.reason, exclude=("stdout", "log", "csv"))
        self.logger.dump(self.num_timesteps)
