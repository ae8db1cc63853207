"""Bounded encoders: features in [-1, 1] for any input and any weights, policy aliases, save/load."""

from __future__ import annotations

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3 import TD3
from stable_baselines3.common.torch_layers import NatureCNN
from torch.nn import functional as F

from sb3_td3_cnnclip import TD3CnnClip
from sb3_td3_cnnclip.encoders import BoundedCombinedExtractor, BoundedNatureCNN, TrunkNatureCNN
from sb3_td3_cnnclip.envs.toy import ToyImageEnv
from sb3_td3_cnnclip.policies import BoundedCnnPolicy, BoundedMultiInputPolicy, TrunkCnnPolicy

IMAGE = spaces.Box(0, 255, (2, 36, 36), np.uint8)


def extreme_inputs() -> list[th.Tensor]:
    """Random, all-0, all-255 uint8 images as floats, scaled (as a policy feeds them) and unscaled."""
    images = [th.randint(0, 256, (3, 2, 36, 36)), th.zeros(3, 2, 36, 36), th.full((3, 2, 36, 36), 255)]
    return [image.float() / scale for image in images for scale in (255.0, 1.0)]


def test_bounded_nature_cnn_is_nature_cnn_then_layer_norm_and_tanh() -> None:
    th.manual_seed(0)
    encoder = BoundedNatureCNN(IMAGE, features_dim=16)
    x = th.randint(0, 256, (4, 2, 36, 36)).float() / 255
    expected = th.tanh(F.layer_norm(NatureCNN.forward(encoder, x), (16,)))
    assert th.allclose(encoder(x), expected, atol=1e-6)
    assert encoder.features_dim == 16


def test_trunk_nature_cnn_is_convolutions_then_linear_layer_norm_and_tanh() -> None:
    th.manual_seed(0)
    encoder = TrunkNatureCNN(IMAGE, features_dim=16)
    x = th.randint(0, 256, (4, 2, 36, 36)).float() / 255
    weights = encoder.state_dict()
    units = F.linear(encoder.cnn(x), weights["linear.0.weight"], weights["linear.0.bias"])
    assert (units < 0).any()  # NatureCNN's ReLU would zero these: the trunk keeps them
    assert th.allclose(encoder(x), th.tanh(F.layer_norm(units, (16,))), atol=1e-6)
    # the parameters of BoundedNatureCNN, under the same names (the split into CNN and MLP groups is the same)
    assert encoder.state_dict().keys() == BoundedNatureCNN(IMAGE, features_dim=16).state_dict().keys()


@pytest.mark.parametrize("encoder_class", [BoundedNatureCNN, TrunkNatureCNN])
@pytest.mark.parametrize("weight_scale", [1.0, 1e3])
def test_bounded_nature_cnn_output_bounded_for_any_input(weight_scale: float, encoder_class: type[NatureCNN]) -> None:
    th.manual_seed(0)
    encoder = encoder_class(IMAGE, features_dim=16)
    with th.no_grad():
        for param in encoder.parameters():
            param.mul_(weight_scale)
        encoder.head[0].weight.fill_(weight_scale)  # the LayerNorm's gain: pushes everything into tanh's tails
        unbounded = NatureCNN.forward(encoder, extreme_inputs()[0]).abs().max()
        for x in extreme_inputs():
            features = encoder(x)
            assert features.shape == (3, 16)
            assert th.isfinite(features).all()
            assert features.abs().max() <= 1.0
    if weight_scale > 1:  # the bound is the head's doing: NatureCNN's own output is far outside [-1, 1]
        assert unbounded > 1e3


def test_bounded_combined_extractor_bounds_images_and_passes_vectors() -> None:
    th.manual_seed(0)
    space = spaces.Dict({"image": IMAGE, "vector": spaces.Box(-5.0, 5.0, (3,), np.float32)})
    extractor = BoundedCombinedExtractor(space, cnn_output_dim=8)
    assert extractor.features_dim == 8 + 3
    with th.no_grad():
        for param in extractor.parameters():
            param.mul_(1e3)
        vector = th.tensor([[-5.0, 0.5, 5.0]] * 3)
        for image in extreme_inputs():
            features = extractor({"image": image, "vector": vector})
            assert features[:, :8].abs().max() <= 1.0
            assert th.equal(features[:, 8:], vector)


@pytest.mark.parametrize(
    ("alias", "policy_class", "encoder_class"),
    [("BoundedCnnPolicy", BoundedCnnPolicy, BoundedNatureCNN), ("TrunkCnnPolicy", TrunkCnnPolicy, TrunkNatureCNN)],
)
def test_bounded_cnn_policy_alias(alias: str, policy_class: type, encoder_class: type[NatureCNN]) -> None:
    env = ToyImageEnv(size=36, channels=1)
    bounded = TD3CnnClip(alias, env, buffer_size=10, seed=0)
    plain = TD3CnnClip("CnnPolicy", env, buffer_size=10, seed=0)
    assert type(bounded.policy) is policy_class
    for network in (bounded.actor, bounded.actor_target, bounded.critic, bounded.critic_target):
        assert type(network.features_extractor) is encoder_class
    assert type(plain.actor.features_extractor) is NatureCNN  # the default policy is untouched
    # same networks after the extractor as CnnPolicy's default ([256, 256])
    shapes = [tuple(p.shape) for p in bounded.actor.mu.parameters()]
    assert shapes == [tuple(p.shape) for p in plain.actor.mu.parameters()]
    assert bounded.policy.net_arch == plain.policy.net_arch == [256, 256]


def test_bounded_multi_input_policy_alias() -> None:
    model = TD3CnnClip("BoundedMultiInputPolicy", ToyImageEnv(size=36, dict_obs=True), buffer_size=10, seed=0)
    assert isinstance(model.policy, BoundedMultiInputPolicy)
    assert type(model.critic.features_extractor) is BoundedCombinedExtractor


def test_features_extractor_class_in_plain_td3() -> None:
    model = TD3("CnnPolicy", ToyImageEnv(size=36), buffer_size=10, policy_kwargs={"features_extractor_class": BoundedNatureCNN})
    assert type(model.actor.features_extractor) is BoundedNatureCNN


@pytest.mark.parametrize(
    ("alias", "policy_class", "encoder_class"),
    [("BoundedCnnPolicy", BoundedCnnPolicy, BoundedNatureCNN), ("TrunkCnnPolicy", TrunkCnnPolicy, TrunkNatureCNN)],
)
def test_save_load_keeps_the_bounded_encoder(tmp_path, alias: str, policy_class: type, encoder_class: type) -> None:
    env = ToyImageEnv(size=36, channels=1)
    model = TD3CnnClip(alias, env, buffer_size=50, learning_starts=10, batch_size=4, seed=0)
    model.learn(14)  # a few updates, so the weights are not the initial ones
    model.save(tmp_path / "model.zip")
    loaded = TD3CnnClip.load(tmp_path / "model.zip")
    assert type(loaded.policy) is policy_class
    assert type(loaded.actor.features_extractor) is encoder_class
    obs = np.stack([env.observation_space.sample() for _ in range(5)])
    obs_tensor = th.as_tensor(obs, device=model.device).float() / 255
    with th.no_grad():
        assert th.equal(loaded.actor.features_extractor(obs_tensor), model.actor.features_extractor(obs_tensor))
    np.testing.assert_array_equal(loaded.predict(obs)[0], model.predict(obs)[0])
