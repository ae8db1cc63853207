"""SAC with per-group gradient clipping and honest gradient logs; the update it shares with sb3-contrib's TQC."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch as th
from stable_baselines3 import SAC
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, ReplayBufferSamples, Schedule
from stable_baselines3.sac.policies import LOG_STD_MAX, LOG_STD_MIN, Actor
from torch import nn
from torch.nn import functional as F

from sb3_td3_cnnclip.cnnclip import CnnClipMixin, polyak_update
from sb3_td3_cnnclip.grad_clip import ParamGroup


class SoftCnnClipMixin(CnnClipMixin):
    """
    The update of a soft actor-critic (SB3's SAC, sb3-contrib's TQC) on top of :class:`CnnClipMixin`: SAC's
    ``train()`` with one clip-and-step per network, the squashed-Gaussian actor run from a batch preprocessed once,
    and the entropy coefficient's optimizer (``ent_coef="auto"``) measured and logged as the group ``ent_coef``
    (``ent_coef_before``), never clipped: it has one parameter and no limit. A non-finite gradient skips its step
    like any other network's (``nonfinite_skips["ent_coef"]``).

    The actor's dead-actor signals are those of its deterministic action ``tanh(mean)``: ``actor_saturation`` is the
    fraction of its elements within ``SATURATION_EPS`` of a bound, ``actor_pre_tanh_abs`` the mean ``|mean|``
    (``actor.mu``'s output), which ``pre_tanh_penalty`` penalises. ``q_policy_gap`` is the actor loss's Q on the
    sampled actions minus the same Q on the replay actions. ``compile_update=True`` is not available (the update
    samples its actions inside the networks' forward; only TD3's and DDPG's losses are compiled).

    :param learning_rate: learning rate of the three optimizers (SAC's default)
    :param buffer_size: replay buffer capacity (200_000, as :class:`~sb3_td3_cnnclip.TD3CnnClip`, where SAC's
        1_000_000 image transitions would not fit a laptop)
    :param pre_tanh_penalty: defaults to 0.0 (the base algorithm's actor loss): the measurement that set
        TD3CnnClip's default was made on TD3 and is not carried over to another algorithm without one of its own
    """

    def __init__(
        self,
        policy: str | type[BasePolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 3e-4,
        buffer_size: int = 200_000,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        super().__init__(policy, env, learning_rate, buffer_size, *args, **kwargs)

    def _check_compile_update(self) -> None:
        if self.compile_update is True:
            raise ValueError(
                f"compile_update=True is not available for {type(self).__name__}: its actions are sampled inside the "
                "actor's forward, which the compiled path does not cover (TD3CnnClip and DDPGCnnClip have it). "
                "Use compile_update=False."
            )
        super()._check_compile_update()

    def _pre_tanh_module(self) -> tuple[nn.Module, bool] | None:
        """``actor.mu``: its output is the mean action before the squashing tanh."""
        return self.actor.mu, False

    def _build_groups(self) -> None:
        super()._build_groups()
        #: the learned entropy coefficient's one parameter: measured, never clipped
        self._ent_coef_groups = []
        if self.ent_coef_optimizer is not None:
            self._ent_coef_groups = [ParamGroup("ent_coef", [self.log_ent_coef], None)]
            self.nonfinite_skips.setdefault("ent_coef", 0)
        self._groups += self._ent_coef_groups

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_ent_coef_groups"]

    def _actor_log_prob(self, observations: th.Tensor | dict[str, th.Tensor]) -> tuple[th.Tensor, th.Tensor]:
        """``actor.action_log_prob(observations)`` for a batch from :meth:`_prepare_batch` (SB3's
        ``get_action_dist_params`` from the features on)."""
        if not self._preprocess_once:
            return self.actor.action_log_prob(observations)
        latent_pi = self.actor.latent_pi(self._features(self.actor, observations))
        mean_actions = self.actor.mu(latent_pi)
        if self.actor.use_sde:
            return self.actor.action_dist.log_prob_from_params(mean_actions, self.actor.log_std, latent_sde=latent_pi)
        log_std = th.clamp(self.actor.log_std(latent_pi), LOG_STD_MIN, LOG_STD_MAX)
        return self.actor.action_dist.log_prob_from_params(mean_actions, log_std)

    def _actor_q(self, features: th.Tensor, actions: th.Tensor) -> th.Tensor:
        """The Q the actor maximises, from the critic's features: SAC's min over the critics."""
        q_values = th.cat(self._critic_heads(self.critic, th.cat([features, actions], dim=1)), dim=1)
        min_qf, _ = th.min(q_values, dim=1, keepdim=True)
        return min_qf

    def train(self, gradient_steps: int, batch_size: int = 64) -> None:
        """SAC's update (TQC's with its own critic loss), with each network's gradient groups measured, clipped and
        stepped, and the entropy coefficient's gradient measured (never clipped).

        :param gradient_steps: gradient steps to take
        :param batch_size: minibatch size of each step
        """
        # Switch to train mode (this affects batch norm / dropout)
        self.policy.set_training_mode(True)
        # Update optimizers learning rate
        optimizers = [self.actor.optimizer, self.critic.optimizer]
        if self.ent_coef_optimizer is not None:
            optimizers += [self.ent_coef_optimizer]

        # Update learning rate according to lr schedule
        self._update_learning_rate(optimizers)

        try:
            for gradient_step in range(gradient_steps):
                self._n_updates += 1
                stats: dict[str, th.Tensor | float] = {"n_updates": self._n_updates}
                # Sample replay buffer (for n-step replay, discounts are gamma**n_steps when no early termination)
                replay_data, discounts = self._sample_batch(batch_size)

                # We need to sample because `log_std` may have changed between two gradient steps
                if self.use_sde:
                    self.actor.reset_noise()

                # Action by the current actor for the sampled state
                actions_pi, log_prob = self._actor_log_prob(replay_data.observations)
                log_prob = log_prob.reshape(-1, 1)
                # The statistics and the penalty of this forward's mean action (the next forward overwrites them)
                stats.update(self._actor_stats(self._pre_tanh.value.detach().tanh()))
                penalty = self._pre_tanh_penalty_loss() if self.pre_tanh_penalty > 0 else None

                if self.ent_coef_optimizer is not None and self.log_ent_coef is not None:
                    # Important: detach the variable from the graph
                    # so we don't change it with other losses
                    # see https://github.com/rail-berkeley/softlearning/issues/60
                    ent_coef = th.exp(self.log_ent_coef.detach())
                    ent_coef_loss = -(self.log_ent_coef * (log_prob + self.target_entropy).detach()).mean()
                    stats["ent_coef_loss"] = ent_coef_loss.detach()

                    # Optimize entropy coefficient, also called entropy temperature or alpha in the paper:
                    # measured, never clipped
                    self.ent_coef_optimizer.zero_grad()
                    ent_coef_loss.backward()
                    self._clip_and_step("ent_coef", self.ent_coef_optimizer, self._ent_coef_groups, stats)
                else:
                    ent_coef = self.ent_coef_tensor
                stats["ent_coef"] = ent_coef

                critic_loss, critic_stats = self._critic_loss(replay_data, discounts, ent_coef)
                stats.update(critic_stats)

                # Optimize the critic: measure and clip right after the critic's own backward
                self.critic.optimizer.zero_grad()
                critic_loss.backward()
                self._clip_and_step("critic", self.critic.optimizer, self._critic_groups, stats)

                actor_loss, actor_stats = self._actor_loss(replay_data, actions_pi, log_prob, ent_coef, penalty)
                stats.update(actor_stats)

                # Optimize the actor
                self.actor.optimizer.zero_grad()
                actor_loss.backward()
                self._clip_and_step("actor", self.actor.optimizer, self._actor_groups, stats)

                # Update target networks
                if gradient_step % self.target_update_interval == 0:
                    polyak_update(self.critic.parameters(), self.critic_target.parameters(), self.tau)
                    # Copy running stats, see GH issue #996
                    polyak_update(self.batch_norm_stats, self.batch_norm_stats_target, 1.0)
                self._stats.add(stats)
        finally:  # one transfer for the whole call; also keeps the updates completed before an exception
            updates = self._read_update_stats(gradient_steps)

        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/ent_coef", np.mean([s["ent_coef"] for s in updates]))
        self.logger.record("train/actor_loss", np.mean([s["actor_loss"] for s in updates]))
        self.logger.record("train/critic_loss", np.mean([s["critic_loss"] for s in updates]))
        ent_coef_losses = [s["ent_coef_loss"] for s in updates if "ent_coef_loss" in s]
        if len(ent_coef_losses) > 0:
            self.logger.record("train/ent_coef_loss", np.mean(ent_coef_losses))

    def _critic_loss(
        self, replay_data: ReplayBufferSamples, discounts: th.Tensor | float, ent_coef: th.Tensor
    ) -> tuple[th.Tensor, dict[str, th.Tensor]]:
        """SAC's critic loss, and the critic's Q and feature statistics as 0-dim tensors."""
        with th.no_grad():
            # Select action according to policy
            next_actions, next_log_prob = self._actor_log_prob(replay_data.next_observations)
            # Compute the next Q values: min over all critics targets
            next_q_values = self._critic_forward(self.critic_target, replay_data.next_observations, next_actions)
            next_q_values = th.cat(next_q_values, dim=1)
            next_q_values, _ = th.min(next_q_values, dim=1, keepdim=True)
            # add entropy term
            next_q_values = next_q_values - ent_coef * next_log_prob.reshape(-1, 1)
            # td error + entropy term
            target_q_values = replay_data.rewards + (1 - replay_data.dones) * discounts * next_q_values

        # Get current Q-values estimates for each critic network
        # using action from the replay buffer
        current_q_values = self._critic_forward(self.critic, replay_data.observations, replay_data.actions)
        critic_loss = 0.5 * sum(F.mse_loss(current_q, target_q_values) for current_q in current_q_values)
        assert isinstance(critic_loss, th.Tensor)
        return critic_loss, self._critic_stats(current_q_values[0], current_q_values, critic_loss)

    def _actor_loss(
        self,
        replay_data: ReplayBufferSamples,
        actions_pi: th.Tensor,
        log_prob: th.Tensor,
        ent_coef: th.Tensor,
        penalty: th.Tensor | None,
    ) -> tuple[th.Tensor, dict[str, th.Tensor]]:
        """SAC's actor loss (plus the pre-tanh penalty, when given), with the critic's features computed without a
        backward graph (the actor's backward never reaches the critic's CNN), and ``q_policy_gap`` and the loss as
        0-dim tensors.

        :param replay_data: the batch
        :param actions_pi: the actions the actor sampled for the batch's observations
        :param log_prob: their log-probabilities, shape ``(batch, 1)``
        :param ent_coef: the entropy coefficient
        :param penalty: the pre-tanh penalty of the actor's forward, or ``None``
        """
        with th.no_grad():
            features = self._features(self.critic, replay_data.observations)
        q_pi = self._actor_q(features, actions_pi)
        actor_loss = (ent_coef * log_prob - q_pi).mean()
        if penalty is not None:
            actor_loss = actor_loss + penalty
        with th.no_grad():  # the same Q on the replay actions, from the same critic weights
            q_policy_gap = q_pi.mean() - self._actor_q(features, replay_data.actions).mean()
        return actor_loss, {"q_policy_gap": q_policy_gap, "actor_loss": actor_loss.detach()}


class SACCnnClip(SoftCnnClipMixin, SAC):
    """
    SAC whose ``train()`` clips the gradients of four parameter groups (actor CNN / actor MLP / critic CNN / critic
    MLP) with distinct limits and logs each group's total L2 norm before and after clipping, measured before
    ``optimizer.step()`` (:class:`~sb3_td3_cnnclip.cnnclip.CnnClipMixin`, whose docstring lists the keywords it
    adds); the entropy coefficient's optimizer is measured and logged, never clipped
    (:class:`SoftCnnClipMixin`). With all four limits ``None``, ``pre_tanh_penalty=0`` (the default) and
    ``channels_last=False`` the updates are exactly those of :class:`~stable_baselines3.SAC`, bit for bit. Every
    other parameter is SAC's (see its docstring).
    """

    preprocessed_actor_class = Actor
