"""TD3 policies whose image encoders are bounded (:mod:`sb3_td3_cnnclip.encoders`), the asymmetric actor-critic
whose critics learn from the simulator's state, and the DrQ-v2 encoder arrangement.

The bounded policies are available in :class:`~sb3_td3_cnnclip.TD3CnnClip` as ``"BoundedCnnPolicy"`` and
``"BoundedMultiInputPolicy"``, the asymmetric one as ``"PrivilegedCriticPolicy"``; :func:`use_critic_encoder` is
``TD3CnnClip(critic_trained_encoder=True)``.
"""

from __future__ import annotations

from typing import Any

import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import BasePolicy, ContinuousCritic
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, FlattenExtractor, NatureCNN
from stable_baselines3.common.type_aliases import Schedule
from stable_baselines3.td3.policies import Actor, CnnPolicy, MultiInputPolicy, TD3Policy
from torch import nn

from sb3_td3_cnnclip.encoders import BoundedCombinedExtractor, BoundedNatureCNN, TrunkNatureCNN


class BoundedCnnPolicy(CnnPolicy):
    """
    SB3's TD3 ``CnnPolicy`` with :class:`~sb3_td3_cnnclip.encoders.BoundedNatureCNN` as its default features
    extractor and the same default network (``[256, 256]``) as ``CnnPolicy``.

    :param observation_space: observation space (images)
    :param action_space: action space
    :param lr_schedule: learning rate schedule
    :param net_arch: sizes of the actor's and critic's hidden layers (``None``: ``[256, 256]``)
    :param features_extractor_class: features extractor
    :param kwargs: every other keyword of :class:`~stable_baselines3.td3.policies.CnnPolicy`
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Box,
        lr_schedule: Schedule,
        *,
        net_arch: list[int] | dict[str, list[int]] | None = None,
        features_extractor_class: type[BaseFeaturesExtractor] = BoundedNatureCNN,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            # TD3Policy chooses [256, 256] only when the extractor is NatureCNN itself
            net_arch=[256, 256] if net_arch is None else net_arch,
            features_extractor_class=features_extractor_class,
            **kwargs,
        )


class TrunkCnnPolicy(BoundedCnnPolicy):
    """
    :class:`BoundedCnnPolicy` with :class:`~sb3_td3_cnnclip.encoders.TrunkNatureCNN` as its default features
    extractor: NatureCNN's convolutions, then Linear -> LayerNorm -> tanh, no feature that can die.

    :param observation_space: observation space (images)
    :param action_space: action space
    :param lr_schedule: learning rate schedule
    :param features_extractor_class: features extractor
    :param kwargs: every other keyword of :class:`BoundedCnnPolicy`
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Box,
        lr_schedule: Schedule,
        *,
        features_extractor_class: type[BaseFeaturesExtractor] = TrunkNatureCNN,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            observation_space, action_space, lr_schedule, features_extractor_class=features_extractor_class, **kwargs
        )


class BoundedMultiInputPolicy(MultiInputPolicy):
    """
    SB3's TD3 ``MultiInputPolicy`` (Dict observations) with
    :class:`~sb3_td3_cnnclip.encoders.BoundedCombinedExtractor` as its default features extractor.

    :param observation_space: observation space (a Dict)
    :param action_space: action space
    :param lr_schedule: learning rate schedule
    :param features_extractor_class: features extractor
    :param kwargs: every other keyword of :class:`~stable_baselines3.td3.policies.MultiInputPolicy`
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        action_space: spaces.Box,
        lr_schedule: Schedule,
        *,
        features_extractor_class: type[BaseFeaturesExtractor] = BoundedCombinedExtractor,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            observation_space, action_space, lr_schedule, features_extractor_class=features_extractor_class, **kwargs
        )


class ObservationKey(BaseFeaturesExtractor):
    """The features of one entry of a Dict observation, computed by an extractor of that entry's space.

    :param observation_space: the Dict observation space
    :param key: the entry read
    :param extractor_class: the features extractor of the entry's space
    :param extractor_kwargs: its keyword arguments
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        key: str,
        extractor_class: type[BaseFeaturesExtractor],
        extractor_kwargs: dict[str, Any] | None = None,
    ) -> None:
        extractor = extractor_class(observation_space[key], **(extractor_kwargs or {}))
        super().__init__(observation_space, extractor.features_dim)
        self.key = key
        #: the space of the entry read
        self.entry_space = observation_space[key]
        self.extractor = extractor

    def forward(self, observations: dict[str, th.Tensor]) -> th.Tensor:
        return self.extractor(observations[self.key])


class PrivilegedCriticPolicy(TD3Policy):
    """
    The asymmetric actor-critic (Pinto et al., 2018) for TD3: the actor drives from the camera, the critics learn
    from the simulator's privileged state.

    Observations are ``Dict(image=<frame stack>, state=<vector>)``: the ``CarlaScenario`` envs with
    ``observation="privileged"``. The actor and its target read only ``image``, through ``features_extractor_class``
    (``NatureCNN``, as ``CnnPolicy``'s actor); the critics and their targets read only ``state``, flattened (no CNN:
    their updates cost a fraction of an image critic's). A trained actor needs only the camera; the state is needed
    while training, where the simulator has it. With the default ``net_arch`` both networks have ``CnnPolicy``'s
    hidden layers, ``[256, 256]``.

    :param observation_space: a Dict with the entries ``"image"`` and ``"state"``
    :param action_space: action space
    :param lr_schedule: learning rate schedule
    :param net_arch: sizes of the actor's and critic's hidden layers (``None``: ``[256, 256]``)
    :param features_extractor_class: the actor's extractor of ``image`` (its ``features_extractor_kwargs``, among
        ``kwargs``, go to it too)
    :param share_features_extractor: must be False: the actor and the critics read different entries
    :param kwargs: every other keyword of :class:`~stable_baselines3.td3.policies.TD3Policy`
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        action_space: spaces.Box,
        lr_schedule: Schedule,
        *,
        net_arch: list[int] | dict[str, list[int]] | None = None,
        features_extractor_class: type[BaseFeaturesExtractor] = NatureCNN,
        share_features_extractor: bool = False,
        **kwargs: Any,
    ) -> None:
        if not isinstance(observation_space, spaces.Dict) or set(observation_space.spaces) != {"image", "state"}:
            raise ValueError(
                f"PrivilegedCriticPolicy observes Dict(image=..., state=...), not {observation_space}: make the env "
                "with observation='privileged' (e.g. gymnasium.make('CarlaScenario0-v0', observation='privileged'))."
            )
        if share_features_extractor:
            raise ValueError("PrivilegedCriticPolicy cannot share a features extractor: its actor reads the image and "
                             "its critics the state. Use share_features_extractor=False.")  # fmt: skip
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            net_arch=[256, 256] if net_arch is None else net_arch,
            features_extractor_class=features_extractor_class,
            share_features_extractor=False,
            **kwargs,
        )

    def make_actor(self, features_extractor: BaseFeaturesExtractor | None = None) -> Actor:
        """An actor reading ``image`` (through a new extractor when ``features_extractor`` is ``None``).

        :param features_extractor: the extractor to use; ``None`` builds one
        """
        if features_extractor is None:
            features_extractor = ObservationKey(
                self.observation_space, "image", self.features_extractor_class, self.features_extractor_kwargs
            )
        return super().make_actor(features_extractor)

    def make_critic(self, features_extractor: BaseFeaturesExtractor | None = None) -> ContinuousCritic:
        """Critics reading ``state``, flattened (through a new extractor when ``features_extractor`` is ``None``).

        :param features_extractor: the extractor to use; ``None`` builds one
        """
        if features_extractor is None:
            features_extractor = ObservationKey(self.observation_space, "state", FlattenExtractor)
        return super().make_critic(features_extractor)


class DetachedEncoder(nn.Module):
    """The features of another network's encoder, computed without gradient, and without owning its parameters.

    The encoder is held outside the module tree, so ``parameters()`` and an optimizer built on the owner see none of
    it: the network that registers the encoder trains, loads and moves it. ``state_dict()`` holds a copy of the
    encoder's state under this module's keys, where a standard SB3 actor holds its own encoder (as with SB3's
    ``share_features_extractor=True``): a policy saved alone (``policy.save``) reloads with ``type(policy).load``
    as the standard policy of its class, which acts the same. Loading skips that copy.

    :param encoder: the encoder to read
    """

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self._encoder = (encoder,)  # a tuple, so that nn.Module does not register it as a submodule

    @property
    def encoder(self) -> nn.Module:
        """The encoder read (owned by another network)."""
        return self._encoder[0]

    def forward(self, observations: th.Tensor) -> th.Tensor:
        with th.no_grad():
            return self.encoder(observations)

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        destination.update(self.encoder.state_dict(prefix=prefix, keep_vars=keep_vars))

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        """Load nothing: the encoder's owner loads the encoder; the keys under ``prefix`` are a copy of its state."""


def use_critic_encoder(policy: BasePolicy) -> None:
    """Give an actor-critic policy the DrQ-v2 encoder arrangement: one image encoder, trained by the critic's loss only.

    The actor reads the critic's encoder through a :class:`DetachedEncoder` (its loss never reaches the encoder),
    the target actor (TD3's; SAC has none) reads the target critic's, and the actor's optimizer is rebuilt on the
    actor's own parameters (its MLP). The actor's encoder, built by SB3, is dropped. This is the opposite of SB3's
    ``share_features_extractor=True``, where the actor's loss trains the shared encoder and the critic's does not.

    :param policy: a TD3, SAC or TQC policy with separate actor and critic encoders
        (``share_features_extractor=False``)
    """
    if policy.share_features_extractor:
        raise ValueError(
            "critic_trained_encoder=True needs share_features_extractor=False in policy_kwargs: with a shared "
            "features extractor SB3 trains the encoder with the actor's loss, the opposite arrangement."
        )
    if isinstance(policy, PrivilegedCriticPolicy):
        raise ValueError(
            "critic_trained_encoder=True trains the critic's image encoder, but PrivilegedCriticPolicy's critics read "
            "the state and have none. Use critic_trained_encoder=False."
        )
    if not any(True for _ in policy.critic.features_extractor.parameters()):
        raise ValueError(
            f"critic_trained_encoder=True needs a features extractor with parameters (an image encoder); "
            f"{type(policy.critic.features_extractor).__name__} has none. Use critic_trained_encoder=False."
        )
    policy.actor.features_extractor = DetachedEncoder(policy.critic.features_extractor)
    if hasattr(policy, "actor_target"):
        policy.actor_target.features_extractor = DetachedEncoder(policy.critic_target.features_extractor)
    policy.actor.optimizer = policy.optimizer_class(
        policy.actor.parameters(), lr=policy.actor.optimizer.param_groups[0]["lr"], **policy.optimizer_kwargs
    )
