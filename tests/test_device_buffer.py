"""DeviceReplayBuffer: SB3's transitions for the same indices, from storage on the device; save/load; bad setups."""

from __future__ import annotations

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import ReplayBuffer

from sb3_td3_cnnclip import TD3CnnClip
from sb3_td3_cnnclip.device_buffer import DeviceReplayBuffer
from sb3_td3_cnnclip.envs.toy import ToyImageEnv

OBS = spaces.Box(0, 255, (4, 12, 12), np.uint8)
CUDA = pytest.mark.skipif(not th.cuda.is_available(), reason="needs CUDA")
ACTIONS = spaces.Box(-1.0, 1.0, (2,), np.float32)


def fill_both(n_envs: int, steps: int) -> tuple[ReplayBuffer, DeviceReplayBuffer]:
    """SB3's buffer and the device buffer, fed the same stream (wrapping around, with time-limit truncations)."""
    buffers = tuple(cls(50, OBS, ACTIONS, "cpu", n_envs=n_envs) for cls in (ReplayBuffer, DeviceReplayBuffer))
    rng = np.random.default_rng(0)
    for step in range(steps):
        obs, next_obs = (rng.integers(0, 256, (n_envs, *OBS.shape), dtype=np.uint8) for _ in range(2))
        action = rng.uniform(-1, 1, (n_envs, 2)).astype(np.float32)
        reward, done = rng.normal(size=n_envs).astype(np.float32), rng.random(n_envs) < 0.3
        infos = [{"TimeLimit.truncated": bool(d and step % 2)} for d in done]
        for buffer in buffers:
            buffer.add(obs, next_obs, action, reward, done, infos)
    return buffers


@pytest.mark.parametrize("steps", [17, 60])
def test_same_indices_give_sb3s_transitions(steps):
    sb3, device = fill_both(n_envs=1, steps=steps)
    assert (device.pos, device.full, device.size()) == (sb3.pos, sb3.full, sb3.size())
    indices = np.random.default_rng(1).integers(0, sb3.size(), 64)
    want, got = sb3._get_samples(indices), device._get_samples(th.as_tensor(indices))
    for field in ("observations", "actions", "next_observations", "dones", "rewards"):
        a, b = getattr(want, field), getattr(got, field)
        assert a.dtype == b.dtype and th.equal(a, b), field
    assert got.dones.sum() > 0 and (got.dones < th.as_tensor(sb3.dones[indices, 0]).reshape(-1, 1)).any()


def test_samples_are_drawn_on_the_device_from_the_filled_part():
    _, device = fill_both(n_envs=3, steps=10)
    th.manual_seed(0)
    batch = device.sample(256)
    assert batch.observations.shape == (256, *OBS.shape) and batch.observations.dtype == th.uint8
    stored = {tuple(device.observations[i, e].flatten()[:8].tolist()) for i in range(10) for e in range(3)}
    assert {tuple(o.flatten()[:8].tolist()) for o in batch.observations} <= stored


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_learns_and_saves_and_loads_with_the_model(device, tmp_path):
    kwargs = {"buffer_size": 300, "learning_starts": 40, "batch_size": 16, "seed": 0, "device": device,
              "policy_kwargs": {"features_extractor_kwargs": {"features_dim": 16}, "net_arch": [32]}}  # fmt: skip
    model = TD3CnnClip("CnnPolicy", ToyImageEnv(), replay_buffer_class=DeviceReplayBuffer, **kwargs)
    model.learn(60)
    assert isinstance(model.replay_buffer, DeviceReplayBuffer) and model._n_updates > 0
    model.save_replay_buffer(tmp_path / "buffer")
    other = TD3CnnClip("CnnPolicy", ToyImageEnv(), replay_buffer_class=DeviceReplayBuffer, **kwargs)
    other.load_replay_buffer(tmp_path / "buffer")
    assert other.replay_buffer.pos == model.replay_buffer.pos == 60
    assert th.equal(other.replay_buffer.observations, model.replay_buffer.observations)
    assert other.replay_buffer.device == other.device and other.replay_buffer.observations.device.type == device
    other.learn(10, reset_num_timesteps=False)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"observation_space": spaces.Dict({"image": OBS})}, "Box observations"),
    ({"optimize_memory_usage": True}, "optimize_memory_usage=True"),
])  # fmt: skip
def test_unsupported_setups_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DeviceReplayBuffer(**{"buffer_size": 10, "observation_space": OBS, "action_space": ACTIONS, **kwargs})


def test_vec_normalize_is_refused_at_sampling():
    _, device = fill_both(n_envs=1, steps=5)
    with pytest.raises(ValueError, match="VecNormalize"):
        device.sample(4, env=object())
