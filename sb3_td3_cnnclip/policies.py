"""TD3 policies whose image encoders are bounded (:mod:`sb3_td3_cnnclip.encoders`).

Available in :class:`~sb3_td3_cnnclip.TD3CnnClip` as ``"BoundedCnnPolicy"`` and ``"BoundedMultiInputPolicy"``.
"""

from __future__ import annotations

from typing import Any

from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.type_aliases import Schedule
from stable_baselines3.td3.policies import CnnPolicy, MultiInputPolicy

from sb3_td3_cnnclip.encoders import BoundedCombinedExtractor, BoundedNatureCNN


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
