"""TD3 with per-group gradient clipping (actor CNN / actor MLP / critic CNN / critic MLP) and honest gradient logs."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch as th
from stable_baselines3 import TD3
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, ReplayBufferSamples, Schedule
from stable_baselines3.common.utils import get_parameters_by_name
from stable_baselines3.td3.policies import Actor, TD3Policy
from torch import nn
from torch.nn import functional as F

from sb3_td3_cnnclip.cnnclip import CnnClipMixin, polyak_update
from sb3_td3_cnnclip.policies import BoundedCnnPolicy, BoundedMultiInputPolicy, PrivilegedCriticPolicy, TrunkCnnPolicy


class TD3CnnClip(CnnClipMixin, TD3):
    """
    TD3 whose ``train()`` clips the gradients of four parameter groups with distinct limits and logs each group's
    total L2 norm before and after clipping, measured before ``optimizer.step()``
    (:class:`~sb3_td3_cnnclip.cnnclip.CnnClipMixin`, whose docstring lists the keywords it adds). With all four
    limits ``None``, ``pre_tanh_penalty=0`` and ``channels_last=False`` the updates are exactly those of
    :class:`~stable_baselines3.TD3`, bit for bit. Every other parameter is TD3's (see its docstring).

    :param learning_rate: learning rate of both optimizers (TD3's default)
    :param buffer_size: replay buffer capacity. TD3's default (1_000_000) of 4x84x84 ``uint8`` transitions takes
        56 GB in SB3's buffer; 200_000 take 1.5 GB in the :class:`~sb3_td3_cnnclip.buffers.FrameStackReplayBuffer`
        that ``TD3CnnClip`` uses for image observations when ``replay_buffer_class`` is ``None`` (see
        :func:`~sb3_td3_cnnclip.buffers.default_replay_buffer_class`; its samples are SB3's).
    :param pre_tanh_penalty: coefficient of ``mean(pre_tanh ** 2)`` added to the actor loss (the pre-tanh is the
        input of the final ``tanh`` of ``actor.mu``). The default (``default_pre_tanh_penalty``, 0.01) kept the actor
        alive on every seed measured, where TD3 on images saturated its tanh and stopped learning
        (``benchmarks/results/dead_actor.md``). 0.0 is TD3's actor loss.
    :param compile_update: the fast path: run the critic and actor losses (forward and backward) through
        ``torch.compile`` and decide the skip of a non-finite step on the device, so that a gradient step reads
        nothing back to the host (see :class:`~sb3_td3_cnnclip.cnnclip.CnnClipMixin`). False is TD3.
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        **TD3.policy_aliases,
        "BoundedCnnPolicy": BoundedCnnPolicy,
        "BoundedMultiInputPolicy": BoundedMultiInputPolicy,
        "PrivilegedCriticPolicy": PrivilegedCriticPolicy,
        "TrunkCnnPolicy": TrunkCnnPolicy,
    }
    default_pre_tanh_penalty = 0.01
    preprocessed_actor_class = Actor

    def __init__(
        self,
        policy: str | type[TD3Policy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 1e-3,
        buffer_size: int = 200_000,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        super().__init__(policy, env, learning_rate, buffer_size, *args, **kwargs)

    def _setup_model(self) -> None:
        super()._setup_model()
        self._critic_loss_fn, self._actor_loss_fn = self._critic_loss, self._actor_loss
        if self.compile_update:
            self._critic_loss_fn, self._actor_loss_fn = map(self._compiled, (self._critic_loss, self._actor_loss))

    def _use_critic_encoder(self) -> None:
        super()._use_critic_encoder()
        # the actors now read the critics' encoders: their batch-norm statistics are those the actors still own
        self.actor_batch_norm_stats = get_parameters_by_name(self.actor, ["running_"])
        self.actor_batch_norm_stats_target = get_parameters_by_name(self.actor_target, ["running_"])

    def _pre_tanh_module(self) -> tuple[nn.Module, bool] | None:
        """The final ``nn.Tanh`` of ``actor.mu`` (SB3's TD3 actors end with one): its input is the pre-tanh."""
        last = self.actor.mu[-1] if isinstance(self.actor.mu, nn.Sequential) else None
        return (last, True) if isinstance(last, nn.Tanh) else None

    def _actor_forward(self, actor: Actor, observations: th.Tensor | dict[str, th.Tensor]) -> th.Tensor:
        """``actor(observations)`` for a batch from :meth:`_prepare_batch` (SB3's ``Actor.forward``)."""
        if not self._preprocess_once:
            return actor(observations)
        return actor.mu(self._features(actor, observations))

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_critic_loss_fn", "_actor_loss_fn"]

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        # Switch to train mode (this affects batch norm / dropout)
        self.policy.set_training_mode(True)

        # Update learning rate according to lr schedule
        self._update_learning_rate([self.actor.optimizer, self.critic.optimizer])

        try:
            for _ in range(gradient_steps):
                self._n_updates += 1
                stats: dict[str, th.Tensor | float] = {"n_updates": self._n_updates}
                # Sample replay buffer (for n-step replay, discounts are gamma**n_steps when no early termination)
                replay_data, discounts = self._sample_batch(batch_size)
                # Target policy noise, drawn here so that a compiled update draws the same numbers
                noise = replay_data.actions.clone().data.normal_(0, self.target_policy_noise)

                critic_loss, critic_stats = self._critic_loss_fn(replay_data, discounts, noise)
                stats.update(critic_stats)

                # Optimize the critics: measure and clip right after the critic's own backward
                self.critic.optimizer.zero_grad()
                critic_loss.backward()
                self._clip_and_step("critic", self.critic.optimizer, self._critic_groups, stats)
                # The actor's backward reaches the first Q-network: let it write fresh gradients there instead of
                # adding to the critic's (which a compiled update on CUDA keeps in CUDA-graph memory that the
                # actor's graphs reuse). The critic's next step starts from zero gradients either way.
                self.critic.optimizer.zero_grad()

                # Delayed policy updates
                if self._n_updates % self.policy_delay == 0:
                    actor_loss, actor_stats = self._actor_loss_fn(replay_data.observations, replay_data.actions)
                    stats.update(actor_stats)

                    # Optimize the actor
                    self.actor.optimizer.zero_grad()
                    actor_loss.backward()
                    self._clip_and_step("actor", self.actor.optimizer, self._actor_groups, stats)

                    polyak_update(self.critic.parameters(), self.critic_target.parameters(), self.tau)
                    polyak_update(self.actor.parameters(), self.actor_target.parameters(), self.tau)
                    # Copy running stats, see GH issue #996
                    polyak_update(self.critic_batch_norm_stats, self.critic_batch_norm_stats_target, 1.0)
                    polyak_update(self.actor_batch_norm_stats, self.actor_batch_norm_stats_target, 1.0)
                self._stats.add(stats)
        finally:  # one transfer for the whole call; also keeps the updates completed before an exception
            updates = self._read_update_stats(gradient_steps)
        self._raise_on_skipped_steps(updates)  # compile_update=True decides the skips on the device

        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        actor_losses = [s["actor_loss"] for s in updates if "actor_loss" in s]
        if len(actor_losses) > 0:
            self.logger.record("train/actor_loss", np.mean(actor_losses))
        self.logger.record("train/critic_loss", np.mean([s["critic_loss"] for s in updates]))

    def _critic_loss(
        self, replay_data: ReplayBufferSamples, discounts: th.Tensor | float, noise: th.Tensor
    ) -> tuple[th.Tensor, dict[str, th.Tensor]]:
        """TD3's critic loss, and the critic's Q and feature statistics as 0-dim tensors."""
        with th.no_grad():
            # Select action according to policy and add clipped noise
            noise = noise.clamp(-self.target_noise_clip, self.target_noise_clip)
            next_actions = (self._actor_forward(self.actor_target, replay_data.next_observations) + noise).clamp(-1, 1)

            # Compute the next Q-values: min over all critics targets
            next_q_values = self._critic_forward(self.critic_target, replay_data.next_observations, next_actions)
            next_q_values = th.cat(next_q_values, dim=1)
            next_q_values, _ = th.min(next_q_values, dim=1, keepdim=True)
            target_q_values = replay_data.rewards + (1 - replay_data.dones) * discounts * next_q_values

        # Get current Q-values estimates for each critic network
        current_q_values = self._critic_forward(self.critic, replay_data.observations, replay_data.actions)
        critic_loss = sum(F.mse_loss(current_q, target_q_values) for current_q in current_q_values)
        assert isinstance(critic_loss, th.Tensor)
        # Q on replay actions of the first critic, which the actor loss uses
        return critic_loss, self._critic_stats(current_q_values[0], current_q_values, critic_loss)

    def _actor_loss(self, observations: th.Tensor, replay_actions: th.Tensor) -> tuple[th.Tensor, dict[str, th.Tensor]]:
        """TD3's actor loss (plus the pre-tanh penalty), and the actor's output statistics as 0-dim tensors.

        The critic's features are computed without a backward graph, as in SB3's ``q1_forward``: the actor's
        backward reaches the first Q-network but never the critic's CNN.
        """
        actions_pi = self._actor_forward(self.actor, observations)
        # = critic.q1_forward(obs, actions_pi), with its features kept to compare Q on the replay actions
        with th.no_grad():
            features = self._features(self.critic, observations)
        q_pi = self.critic.q_networks[0](th.cat([features, actions_pi], dim=1))
        actor_loss = -q_pi.mean()
        stats = self._actor_stats(actions_pi)
        with th.no_grad():
            # Q1 on the policy's actions minus Q1 on the replay actions, from the same critic weights
            q_replay = self.critic.q_networks[0](th.cat([features, replay_actions], dim=1))
            stats["q_policy_gap"] = q_pi.mean() - q_replay.mean()
        if self.pre_tanh_penalty > 0:
            actor_loss = actor_loss + self._pre_tanh_penalty_loss()
        stats["actor_loss"] = actor_loss.detach()
        return actor_loss, stats
