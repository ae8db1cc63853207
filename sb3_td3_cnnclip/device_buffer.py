"""A replay buffer stored on the model's device, so a sampled batch never crosses the host-device bus.

:class:`DeviceReplayBuffer` is SB3's :class:`~stable_baselines3.common.buffers.ReplayBuffer` with its arrays as
torch tensors on ``device`` (observations keep their dtype: ``uint8`` images stay ``uint8``) and its indices drawn
there with ``torch.randint``. ``add()`` copies one transition per env step to the device; ``sample()`` gathers on
the device. For the same indices it returns exactly the transitions SB3's buffer returns. Pass it as
``replay_buffer_class=DeviceReplayBuffer``; its memory is SB3's layout (about 56 kB per 4x84x84 transition), on the
device.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import BaseBuffer, ReplayBuffer
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from stable_baselines3.common.utils import get_device
from stable_baselines3.common.vec_env import VecNormalize

#: the tensors that hold the stored transitions
STORAGE = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")


class DeviceReplayBuffer(ReplayBuffer):
    """SB3's replay buffer with its storage and its index sampling on ``device``.

    :param buffer_size: maximum number of transitions (over all envs)
    :param observation_space: a ``Box`` observation space (``Dict`` spaces are not supported)
    :param action_space: the action space
    :param device: where the transitions are stored and sampled
    :param n_envs: number of parallel environments
    :param optimize_memory_usage: must be False (use :class:`~sb3_td3_cnnclip.buffers.FrameStackReplayBuffer` to
        save memory)
    :param handle_timeout_termination: treat time-limit truncations as non-terminal, as SB3 does
    """

    def __init__(
        self,
        buffer_size: int,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        device: th.device | str = "auto",
        n_envs: int = 1,
        optimize_memory_usage: bool = False,
        handle_timeout_termination: bool = True,
    ) -> None:
        if not isinstance(observation_space, spaces.Box):
            raise ValueError(
                f"DeviceReplayBuffer stores Box observations; got {observation_space}. Use replay_buffer_class=None "
                "(SB3's DictReplayBuffer) for Dict observations."
            )
        if optimize_memory_usage:
            raise ValueError(
                "DeviceReplayBuffer does not support optimize_memory_usage=True; pass False (or use "
                "FrameStackReplayBuffer, which stores each frame once)."
            )
        BaseBuffer.__init__(self, buffer_size, observation_space, action_space, device, n_envs=n_envs)
        self.buffer_size = max(buffer_size // n_envs, 1)
        self.optimize_memory_usage = False
        self.handle_timeout_termination = handle_timeout_termination
        obs_dtype = th.from_numpy(np.zeros(0, dtype=observation_space.dtype)).dtype
        action_dtype = th.from_numpy(np.zeros(0, dtype=self._maybe_cast_dtype(action_space.dtype))).dtype
        shape = (self.buffer_size, self.n_envs)
        self.observations = th.zeros((*shape, *self.obs_shape), dtype=obs_dtype, device=self.device)
        self.next_observations = th.zeros_like(self.observations)
        self.actions = th.zeros((*shape, self.action_dim), dtype=action_dtype, device=self.device)
        self.rewards, self.dones, self.timeouts = (th.zeros(shape, device=self.device) for _ in range(3))

    @property
    def device(self) -> th.device:
        """The device of the storage; setting it (as SB3's ``load_replay_buffer`` does) moves the transitions."""
        return self._device

    @device.setter
    def device(self, device: th.device | str) -> None:
        self._device = get_device(device)
        for name in STORAGE:
            if isinstance(getattr(self, name, None), th.Tensor):
                setattr(self, name, getattr(self, name).to(self._device))

    def add(
        self,
        obs: np.ndarray,
        next_obs: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray,
        done: np.ndarray,
        infos: list[dict[str, Any]],
    ) -> None:
        timeouts = [info.get("TimeLimit.truncated", False) for info in infos]
        timeouts = timeouts if self.handle_timeout_termination else 0.0
        for name, value in (("observations", obs), ("next_observations", next_obs), ("rewards", reward),
                            ("dones", done), ("timeouts", timeouts),
                            ("actions", np.asarray(action).reshape((self.n_envs, self.action_dim)))):  # fmt: skip
            storage = getattr(self, name)
            storage[self.pos] = th.as_tensor(np.asarray(value), dtype=storage.dtype).to(self.device)
        self.pos += 1
        if self.pos == self.buffer_size:
            self.full = True
            self.pos = 0

    def sample(self, batch_size: int, env: VecNormalize | None = None) -> ReplayBufferSamples:
        upper_bound = self.buffer_size if self.full else self.pos
        return self._get_samples(th.randint(0, upper_bound, (batch_size,), device=self.device), env=env)

    def _get_samples(self, batch_inds: np.ndarray | th.Tensor, env: VecNormalize | None = None) -> ReplayBufferSamples:
        if env is not None:
            raise ValueError(
                "DeviceReplayBuffer cannot normalize with a VecNormalize env (it normalizes numpy arrays on the host); "
                "use replay_buffer_class=None with VecNormalize."
            )
        batch_inds = th.as_tensor(batch_inds, device=self.device)
        env_indices = th.randint(0, self.n_envs, (len(batch_inds),), device=self.device)
        return ReplayBufferSamples(
            observations=self.observations[batch_inds, env_indices],
            actions=self.actions[batch_inds, env_indices],
            next_observations=self.next_observations[batch_inds, env_indices],
            # Only use dones that are not due to timeouts
            dones=(self.dones[batch_inds, env_indices] * (1 - self.timeouts[batch_inds, env_indices])).reshape(-1, 1),
            rewards=self.rewards[batch_inds, env_indices].reshape(-1, 1),
        )
