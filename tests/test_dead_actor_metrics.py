"""The dead-actor statistics of TD3CnnClip, checked on an actor whose pre-tanh (hence saturation) is set by hand."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch as th
from stable_baselines3.common.logger import configure

from sb3_td3_cnnclip import TD3CnnClip
from sb3_td3_cnnclip.envs.toy import ToyImageEnv

BATCH = 8


def model_with_pre_tanh(bias: list[float], policy: str = "CnnPolicy", **kwargs: Any) -> TD3CnnClip:
    """A model with a filled buffer whose actor's last Linear outputs ``bias`` for every observation.

    :param bias: the pre-tanh value of each action dimension
    :param policy: the policy (a NatureCNN one)
    :param kwargs: more TD3CnnClip keywords (``pre_tanh_penalty`` is 0, TD3's actor loss, unless given)
    :return: the model (``policy_delay=1``: every gradient step updates the actor)
    """
    env = ToyImageEnv(size=36, channels=1)
    model = TD3CnnClip(policy, env, buffer_size=32, policy_delay=1, seed=0, **{"pre_tanh_penalty": 0.0, **kwargs})
    model.set_logger(configure(None, []))
    space = env.observation_space
    for _ in range(32):
        action = env.action_space.sample()[None]
        model.replay_buffer.add(space.sample()[None], space.sample()[None], action, np.zeros(1), np.zeros(1), [{}])
    last = model.actor.mu[-2]
    with th.no_grad():
        last.weight.zero_()
        last.bias.copy_(th.tensor(bias))
    return model


def replayed_batch_observations(model: TD3CnnClip) -> th.Tensor:
    """The observations ``train()`` samples next when numpy is seeded with 0 (the buffer samples with numpy)."""
    np.random.seed(0)
    return model.replay_buffer.sample(BATCH).observations


@pytest.mark.parametrize(
    ("bias", "saturation"),
    [([0.0, 0.0], 0.0), ([5.0, 0.2], 0.5), ([-4.0, 0.1], 0.5), ([20.0, -20.0], 1.0)],
)
def test_saturation_pre_tanh_and_feature_norm(bias: list[float], saturation: float) -> None:
    model = model_with_pre_tanh(bias)
    obs = replayed_batch_observations(model)
    with th.no_grad():
        expected_norm = model.actor.features_extractor(obs.float() / 255.0).norm(dim=1).mean().item()
    np.random.seed(0)
    model.train(1, BATCH)
    stats = model.update_stats[-1]
    # tanh(5) = 0.99991 and tanh(4) = 0.99933 lie within 1e-3 of a bound; tanh(0.2), tanh(0.1) and 0 do not
    assert stats["actor_saturation"] == saturation
    assert stats["actor_pre_tanh_abs"] == pytest.approx(np.mean(np.abs(bias)), rel=1e-6)
    assert stats["actor_feature_norm"] == pytest.approx(expected_norm, rel=1e-5)
    assert stats["actor_feature_norm"] > 0


@pytest.mark.parametrize("policy", ["CnnPolicy", "BoundedCnnPolicy", "TrunkCnnPolicy"])
@pytest.mark.parametrize("killed", [0, 3, 100])
def test_dead_features_count_the_units_zero_on_the_whole_batch(killed: int, policy: str) -> None:
    model = model_with_pre_tanh([0.0, 0.0], policy)
    for network in (model.actor, model.critic):  # NatureCNN's last layer: Linear then ReLU; a bias of -1e6 kills it
        with th.no_grad():
            network.features_extractor.linear[0].bias[:killed] = -1e6
    obs = replayed_batch_observations(model)
    with th.no_grad():  # NatureCNN's units on the batch (before any LayerNorm), before the update changes them
        units = {name: network.features_extractor.linear(network.features_extractor.cnn(obs.float() / 255.0))
                 for name, network in (("actor", model.actor), ("critic", model.critic))}  # fmt: skip
    np.random.seed(0)
    model.train(1, BATCH)
    stats = model.update_stats[-1]
    for name in ("actor", "critic"):
        assert stats[f"{name}_dead_features"] == pytest.approx((units[name] == 0).all(dim=0).float().mean().item())
        if policy == "TrunkCnnPolicy":  # no ReLU: a unit with a bias of -1e6 is very negative, not 0
            assert stats[f"{name}_dead_features"] == 0
        else:  # the killed units, and any unit the batch never activates
            assert stats[f"{name}_dead_features"] >= killed / 512
    assert model.logger.name_to_value["train/actor_dead_features"] == pytest.approx(stats["actor_dead_features"])


def test_fully_saturated_actor_has_exactly_zero_gradient() -> None:
    # tanh(±20) is exactly ±1 in float32, so tanh' = 0 and no gradient reaches the actor: the dead actor
    model = model_with_pre_tanh([20.0, -20.0])
    model.train(2, BATCH)
    for stats in model.update_stats:
        assert stats["actor_saturation"] == 1.0
        assert stats["actor_mlp_before"] == 0.0
        assert stats["actor_cnn_before"] == 0.0
        assert stats["critic_mlp_before"] > 0  # the critic still learns
    assert model.logger.name_to_value["train/actor_mlp_zero_grad_frac"] == 1.0
    assert model.logger.name_to_value["train/actor_saturation"] == 1.0


def test_partly_saturated_actor_still_has_a_gradient() -> None:
    model = model_with_pre_tanh([20.0, 0.2])  # one dimension dead, the other alive
    model.train(1, BATCH)
    stats = model.update_stats[-1]
    assert stats["actor_saturation"] == 0.5
    assert stats["actor_mlp_before"] > 0
    assert model.logger.name_to_value["train/actor_mlp_zero_grad_frac"] == 0.0


def test_pre_tanh_penalty_gives_a_dead_actor_its_gradient_back() -> None:
    # Exactly saturated: the Q term's gradient is 0, only coef * mean(pre_tanh ** 2) has one. With the last Linear's
    # weights at 0 it reaches that layer only: d/d(bias_j) = 2 coef b_j / A, d/d(W_ji) = 2 coef b_j / (B A) sum_n h_ni.
    coef = 0.5
    model = model_with_pre_tanh([20.0, -20.0], pre_tanh_penalty=coef)
    bias = th.tensor([20.0, -20.0], device=model.device)
    obs = replayed_batch_observations(model)
    with th.no_grad():
        hidden = model.actor.mu[:-2](model.actor.features_extractor(obs.float() / 255.0))
    grad_bias = 2 * coef * bias / len(bias)
    grad_weight = th.outer(grad_bias, hidden.sum(dim=0)) / BATCH
    expected = th.cat([grad_bias, grad_weight.flatten()]).norm().item()
    np.random.seed(0)
    model.train(1, BATCH)
    stats = model.update_stats[-1]
    assert stats["actor_saturation"] == 1.0
    assert stats["actor_mlp_before"] == pytest.approx(expected, rel=1e-5)
    assert stats["actor_cnn_before"] == 0.0  # the zero weights block the path to the CNN
    assert (model.actor.mu[-2].bias.abs() < 20.0).all()  # the step pulled the pre-tanh back from the bound
