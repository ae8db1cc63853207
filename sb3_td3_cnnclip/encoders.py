"""Bounded image encoders: SB3's NatureCNN with LayerNorm + tanh on its output, so features stay in [-1, 1].

Unbounded CNN features are what kills a TD3 actor on images: their norm grows within a few updates, the actor's
pre-tanh follows, every action sits on a bound and the actor's gradient is exactly zero (see ``docs/algorithms.md``,
"Preventing a dead actor"). Normalising the encoder's output and squashing it (as SAC-AE and DrQ do) bounds the
features whatever the weights or the input.
"""

from __future__ import annotations

import gymnasium as gym
import torch as th
from gymnasium import spaces
from stable_baselines3.common.torch_layers import CombinedExtractor, NatureCNN
from torch import nn


def bounded_head(features_dim: int) -> nn.Sequential:
    """LayerNorm then tanh: maps any finite feature vector into [-1, 1].

    :param features_dim: size of the features to bound
    :return: the head module
    """
    return nn.Sequential(nn.LayerNorm(features_dim), nn.Tanh())


class BoundedNatureCNN(NatureCNN):
    """
    SB3's :class:`~stable_baselines3.common.torch_layers.NatureCNN` followed by LayerNorm and tanh.

    Use it as ``policy_kwargs=dict(features_extractor_class=BoundedNatureCNN)`` or through the
    ``"BoundedCnnPolicy"`` alias of :class:`~sb3_td3_cnnclip.TD3CnnClip`.

    :param observation_space: the image space (channel-first, uint8 in [0, 255] unless ``normalized_image``)
    :param features_dim: number of features
    :param normalized_image: the images are already normalised (disables NatureCNN's dtype and bounds checks)
    """

    def __init__(self, observation_space: gym.Space, features_dim: int = 512, normalized_image: bool = False) -> None:
        super().__init__(observation_space, features_dim, normalized_image)
        self.head = bounded_head(features_dim)

    def forward(self, observations: th.Tensor) -> th.Tensor:
        return self.head(super().forward(observations))


class TrunkNatureCNN(BoundedNatureCNN):
    """
    :class:`BoundedNatureCNN` without the ReLU after NatureCNN's linear layer: convolutions, then DrQ-v2's trunk
    (Linear -> LayerNorm -> tanh). With the ReLU, a feature whose linear output is negative on every image is 0
    whatever the input and gets no gradient (late in a driving run, half of NatureCNN's 512 features are);
    without it, every feature varies with the input and keeps its gradient.

    Use it as ``policy_kwargs=dict(features_extractor_class=TrunkNatureCNN)`` or through the ``"TrunkCnnPolicy"``
    alias of :class:`~sb3_td3_cnnclip.TD3CnnClip`.

    :param observation_space: the image space (channel-first, uint8 in [0, 255] unless ``normalized_image``)
    :param features_dim: number of features
    :param normalized_image: the images are already normalised (disables NatureCNN's dtype and bounds checks)
    """

    def __init__(self, observation_space: gym.Space, features_dim: int = 512, normalized_image: bool = False) -> None:
        super().__init__(observation_space, features_dim, normalized_image)
        self.linear = self.linear[:1]  # NatureCNN's Linear, without its ReLU (same parameter names)


class BoundedCombinedExtractor(CombinedExtractor):
    """
    SB3's :class:`~stable_baselines3.common.torch_layers.CombinedExtractor` (Dict observations) whose image
    encoders are bounded like :class:`BoundedNatureCNN`; vector entries are flattened as in SB3.

    :param observation_space: the Dict observation space
    :param cnn_output_dim: number of features of each image encoder
    :param normalized_image: the images are already normalised (disables NatureCNN's dtype and bounds checks)
    """

    def __init__(
        self, observation_space: spaces.Dict, cnn_output_dim: int = 256, normalized_image: bool = False
    ) -> None:
        super().__init__(observation_space, cnn_output_dim, normalized_image)
        for key, extractor in list(self.extractors.items()):
            if isinstance(extractor, NatureCNN):
                self.extractors[key] = nn.Sequential(extractor, bounded_head(cnn_output_dim))
