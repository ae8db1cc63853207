"""sb3-contrib's TQC with per-group gradient clipping and honest gradient logs: SAC's update with quantile critics."""

from __future__ import annotations

import torch as th
from sb3_contrib import TQC
from sb3_contrib.common.utils import quantile_huber_loss
from sb3_contrib.tqc.policies import Actor, Critic
from stable_baselines3.common.policies import BaseModel
from stable_baselines3.common.type_aliases import ReplayBufferSamples

from sb3_td3_cnnclip.sac_cnnclip import SoftCnnClipMixin


class TQCCnnClip(SoftCnnClipMixin, TQC):
    """
    TQC (sb3-contrib) whose ``train()`` clips the gradients of four parameter groups (actor CNN / actor MLP / critic
    CNN / critic MLP) with distinct limits and logs each group's total L2 norm before and after clipping, measured
    before ``optimizer.step()`` (:class:`~sb3_td3_cnnclip.cnnclip.CnnClipMixin`, whose docstring lists the keywords
    it adds); the entropy coefficient's optimizer is measured and logged, never clipped
    (:class:`~sb3_td3_cnnclip.sac_cnnclip.SoftCnnClipMixin`). With all four limits ``None``, ``pre_tanh_penalty=0``
    (the default) and ``channels_last=False`` the updates are exactly those of :class:`~sb3_contrib.TQC`, bit for
    bit. Every other parameter is TQC's (see its docstring).

    The critic statistics read the quantiles: ``q_replay`` is the mean of the first critic's quantiles on the replay
    actions, ``q_abs_max`` the largest ``|quantile|`` of any critic; the actor's Q (in the loss and in
    ``q_policy_gap``) is TQC's mean over every critic's quantiles.
    """

    preprocessed_actor_class = Actor
    preprocessed_critic_class = Critic

    def _critic_heads(self, critic: BaseModel, qvalue_input: th.Tensor) -> th.Tensor:
        """TQC's ``Critic.forward`` from ``cat([features, actions])``: quantiles, (batch, n_critics, n_quantiles)."""
        return th.stack(tuple(qf(qvalue_input) for qf in critic.q_networks), dim=1)

    def _actor_q(self, features: th.Tensor, actions: th.Tensor) -> th.Tensor:
        """The Q the actor maximises, from the critic's features: TQC's mean over every critic's quantiles."""
        return self._critic_heads(self.critic, th.cat([features, actions], dim=1)).mean(dim=2).mean(dim=1, keepdim=True)

    def _critic_loss(
        self, replay_data: ReplayBufferSamples, discounts: th.Tensor | float, ent_coef: th.Tensor
    ) -> tuple[th.Tensor, dict[str, th.Tensor]]:
        """TQC's critic loss, and the critic's quantile and feature statistics as 0-dim tensors."""
        with th.no_grad():
            # Select action according to policy
            next_actions, next_log_prob = self._actor_log_prob(replay_data.next_observations)
            # Compute and cut quantiles at the next state
            # batch x nets x quantiles
            next_quantiles = self._critic_forward(self.critic_target, replay_data.next_observations, next_actions)

            # Sort and drop top k quantiles to control overestimation.
            n_dropped = self.top_quantiles_to_drop_per_net * self.critic.n_critics
            n_target_quantiles = self.critic.quantiles_total - n_dropped
            next_quantiles, _ = th.sort(next_quantiles.reshape(len(next_quantiles), -1))
            next_quantiles = next_quantiles[:, :n_target_quantiles]

            # td error + entropy term
            target_quantiles = next_quantiles - ent_coef * next_log_prob.reshape(-1, 1)
            target_quantiles = replay_data.rewards + (1 - replay_data.dones) * discounts * target_quantiles
            # Make target_quantiles broadcastable to (batch_size, n_critics, n_target_quantiles).
            target_quantiles.unsqueeze_(dim=1)

        # Get current Quantile estimates using action from the replay buffer
        current_quantiles = self._critic_forward(self.critic, replay_data.observations, replay_data.actions)
        # Compute critic loss, not summing over the quantile dimension as in the paper.
        critic_loss = quantile_huber_loss(current_quantiles, target_quantiles, sum_over_quantiles=False)
        return critic_loss, self._critic_stats(current_quantiles[:, 0], [current_quantiles], critic_loss)
