"""PrivilegedCriticPolicy: the actor reads only the camera, the critics only the state; TD3CnnClip trains, clips,
saves and loads it, with n-step returns from its Dict observations."""

from __future__ import annotations

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.torch_layers import FlattenExtractor, NatureCNN
from test_update_speed import assert_same_updates_within_rounding

from sb3_td3_cnnclip import DDPGCnnClip, TD3CnnClip
from sb3_td3_cnnclip.buffers import FrameStackReplayBuffer
from sb3_td3_cnnclip.cnnclip import CnnClipMixin
from sb3_td3_cnnclip.envs.toy import ToyImageEnv
from sb3_td3_cnnclip.policies import ObservationKey, PrivilegedCriticPolicy


class PrivilegedToy(ToyImageEnv):
    """ToyImageEnv observing ``Dict(image, state)``, as ``CarlaScenario`` envs with ``observation="privileged"``."""

    def __init__(self) -> None:
        super().__init__(size=36, channels=2)
        self.observation_space = spaces.Dict(
            {"image": self.observation_space, "state": spaces.Box(-5.0, 5.0, (7,), np.float32)}
        )


def model(**kwargs) -> TD3CnnClip:
    return TD3CnnClip("PrivilegedCriticPolicy", PrivilegedToy(),
                      **{"buffer_size": 200, "learning_starts": 20, "batch_size": 8, "seed": 0, **kwargs})  # fmt: skip


def batch(space: spaces.Dict, seed: int) -> dict[str, np.ndarray]:
    space.seed(seed)
    samples = [space.sample() for _ in range(4)]
    return {key: np.stack([s[key] for s in samples]) for key in space.spaces}


def test_the_actor_reads_only_the_image_and_the_critics_only_the_state() -> None:
    policy = model().policy
    assert type(policy) is PrivilegedCriticPolicy
    assert isinstance(policy.actor.features_extractor, ObservationKey)
    assert type(policy.actor.features_extractor.extractor) is NatureCNN
    assert type(policy.critic.features_extractor.extractor) is FlattenExtractor
    assert not any(True for _ in policy.critic.features_extractor.parameters())  # no critic CNN
    one, other = batch(policy.observation_space, 0), batch(policy.observation_space, 1)
    actions = th.zeros(4, 2)
    with th.no_grad():
        new_state = {"image": one["image"], "state": other["state"]}
        new_image = {"image": other["image"], "state": one["state"]}
        one, new_state, new_image = (policy.obs_to_tensor(obs)[0] for obs in (one, new_state, new_image))
        assert th.equal(policy.actor(one), policy.actor(new_state))
        assert not th.equal(policy.actor(one), policy.actor(new_image))
        q = policy.critic.q1_forward(one, actions)
        assert th.equal(q, policy.critic.q1_forward(new_image, actions))
        assert not th.equal(q, policy.critic.q1_forward(new_state, actions))


def test_trains_with_n_step_returns_clips_the_actor_cnn_and_reloads(tmp_path) -> None:
    agent = model(n_steps=3, actor_cnn_max_grad_norm=1e-3, critic_mlp_max_grad_norm=1e-3).learn(60)
    assert isinstance(agent.replay_buffer, FrameStackReplayBuffer) and agent.replay_buffer.n_steps == 3
    assert sorted(group.name for group in agent._groups) == ["actor_cnn", "actor_mlp", "critic_mlp"]
    actor_updates = [stats for stats in agent.update_stats if "actor_cnn_before" in stats]
    assert len(agent.update_stats) == 40 and len(actor_updates) == 20  # one actor update per 2 (policy delay)
    for group, updates in (("actor_cnn", actor_updates), ("critic_mlp", agent.update_stats)):
        for stats in updates:  # tiny limits: every update clips
            assert stats[f"{group}_before"] > 1e-3 >= stats[f"{group}_after"]
    agent.save(tmp_path / "privileged")
    loaded = TD3CnnClip.load(tmp_path / "privileged")
    assert type(loaded.policy) is PrivilegedCriticPolicy
    observation = PrivilegedToy().observation_space.sample()
    np.testing.assert_array_equal(loaded.predict(observation, deterministic=True)[0],
                                  agent.predict(observation, deterministic=True)[0])


@pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_the_fast_path_updates_it_as_the_default_path_does(compiled, monkeypatch) -> None:
    """``compile_update=True`` on Dict observations: the default path's updates within rounding (the fused Adam
    against SB3's), with the loss functions through torch.compile (slow: a compilation) or left eager."""
    if not compiled:
        monkeypatch.setattr(CnnClipMixin, "_compiled", lambda self, loss_fn: loss_fn)
    limits = {"actor_cnn_max_grad_norm": 0.05, "critic_mlp_max_grad_norm": 0.1}
    default, fast = (model(learning_starts=40, compile_update=on, **limits) for on in (False, True))
    assert_same_updates_within_rounding(default, fast)
    for group in limits:  # both limits fire
        name = group.removesuffix("_max_grad_norm")
        assert any(s[f"{name}_after"] < s[f"{name}_before"] for s in fast.update_stats if f"{name}_before" in s)


def test_ddpg_takes_it_with_one_critic() -> None:
    agent = DDPGCnnClip("PrivilegedCriticPolicy", PrivilegedToy(), buffer_size=100, learning_starts=20, batch_size=8,
                        n_steps=3, seed=0).learn(30)  # fmt: skip
    assert len(agent.critic.q_networks) == 1 and agent._n_updates == 10
    assert type(agent.critic.features_extractor.extractor) is FlattenExtractor


def test_bad_observations_a_shared_extractor_and_a_critic_trained_encoder_are_refused() -> None:
    with pytest.raises(ValueError, match=r"observes Dict\(image=\.\.\., state=\.\.\.\).*observation='privileged'"):
        TD3CnnClip("PrivilegedCriticPolicy", ToyImageEnv(size=36, dict_obs=True), buffer_size=10)
    with pytest.raises(ValueError, match="cannot share a features extractor"):
        model(policy_kwargs={"share_features_extractor": True})
    with pytest.raises(ValueError, match="PrivilegedCriticPolicy's critics read the state and have none"):
        model(critic_trained_encoder=True)
