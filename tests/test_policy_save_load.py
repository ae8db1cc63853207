"""A policy of the package's algorithms saved alone with SB3's policy API (``policy.save`` then ``type(policy).load``)
reloads and acts as the original, for every option that changes the policy's modules (the policy class, the
critic-trained encoder, the convolutions' memory layout)."""

import numpy as np
import pytest
import torch as th

from sb3_td3_cnnclip import DDPGCnnClip, SACCnnClip, TD3CnnClip, TQCCnnClip
from sb3_td3_cnnclip.envs.toy import ToyImageEnv

SMALL = {"net_arch": [16], "features_extractor_kwargs": {"features_dim": 16}}
SMALL_DICT = {"net_arch": [16], "features_extractor_kwargs": {"cnn_output_dim": 16}}


@pytest.mark.parametrize(
    ("algo", "policy", "kwargs"),
    [
        (TD3CnnClip, "CnnPolicy", {"channels_last": False}),
        (TD3CnnClip, "CnnPolicy", {"channels_last": True}),
        (TD3CnnClip, "CnnPolicy", {"critic_trained_encoder": True, "channels_last": False}),
        (TD3CnnClip, "CnnPolicy", {"critic_trained_encoder": True, "channels_last": True}),
        (TD3CnnClip, "BoundedCnnPolicy", {"critic_trained_encoder": True}),
        (TD3CnnClip, "TrunkCnnPolicy", {}),
        (TD3CnnClip, "MultiInputPolicy", {"critic_trained_encoder": True}),
        (TD3CnnClip, "BoundedMultiInputPolicy", {"critic_trained_encoder": True}),
        (DDPGCnnClip, "CnnPolicy", {"critic_trained_encoder": True}),
        (SACCnnClip, "CnnPolicy", {"critic_trained_encoder": True}),
        (TQCCnnClip, "CnnPolicy", {"critic_trained_encoder": True}),
    ],
)
def test_policy_saved_alone_reloads_and_predicts_the_same_actions(tmp_path, algo, policy, kwargs):
    dict_obs = "MultiInput" in policy
    env = ToyImageEnv(dict_obs=dict_obs)
    policy_kwargs = SMALL_DICT if dict_obs else SMALL
    model = algo(policy, env, policy_kwargs=policy_kwargs, buffer_size=200, learning_starts=30, batch_size=8, seed=0,
                 device="cpu", **kwargs)  # fmt: skip
    model.learn(60)  # the encoders move away from their initial weights
    model.policy.save(tmp_path / "policy.pth")
    loaded = type(model.policy).load(tmp_path / "policy.pth", device="cpu")
    env.observation_space.seed(1)
    samples = [env.observation_space.sample() for _ in range(32)]
    observations = {k: np.stack([s[k] for s in samples]) for k in samples[0]} if dict_obs else np.stack(samples)
    expected, _ = model.predict(observations, deterministic=True)
    actual, _ = loaded.predict(observations, deterministic=True)
    assert np.abs(expected).max() > 0.01  # actions that tell networks apart
    if model._channels_last_active:  # the same weights in another memory layout sum in another order
        np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5)
        loaded.to(memory_format=th.channels_last)
        actual, _ = loaded.predict(observations, deterministic=True)
    np.testing.assert_array_equal(actual, expected)
