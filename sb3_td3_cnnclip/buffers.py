"""A replay buffer that stores each frame of stacked image observations once and rebuilds the stacks on sampling.

SB3's :class:`~stable_baselines3.common.buffers.ReplayBuffer` stores every observation and next observation in
full: a (4, 84, 84) ``uint8`` transition costs 56,468 bytes, although consecutive stacked observations share all
but one frame. :class:`FrameStackReplayBuffer` keeps, per environment, a ring of single frames and, per transition,
where its observation and its next observation end in that ring; a stack is the ``n_stack`` consecutive frames
ending there.

The sharing is verified, never assumed: ``add()`` compares the new observation with the previous next observation
of the same environment, and the new next observation's older frames with the observation's newer ones
(``next_obs[:-1] == obs[1:]`` along the stack axis). What does not match (an episode start, a terminal observation
that differs from the reset one, an environment that does not stack frames) is written in full. ``sample()`` is
SB3's own code (:class:`~stable_baselines3.common.buffers.ReplayBuffer`,
:class:`~stable_baselines3.common.buffers.DictReplayBuffer` or
:class:`~stable_baselines3.common.buffers.NStepReplayBuffer`) reading the rebuilt stacks, so every sampled field is
byte for byte what SB3's buffer returns for the same indices. The one exception is n-step returns of Dict
observations, which SB3 has no buffer for: they are this module's copy of ``NStepReplayBuffer``'s sampling, each
key's samples equal to those of an ``NStepReplayBuffer`` fed that key alone (tested).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import BaseBuffer, DictReplayBuffer, NStepReplayBuffer, ReplayBuffer
from stable_baselines3.common.preprocessing import is_image_space, is_image_space_channels_first
from stable_baselines3.common.type_aliases import DictReplayBufferSamples, ReplayBufferSamples
from stable_baselines3.common.vec_env import VecNormalize


#: a block of a frame ring holds ``buffer_size / BLOCKS_PER_BUFFER`` frames (rounded up)
BLOCKS_PER_BUFFER = 256


class FrameStore:
    """The stacked image observations of one array (the Box observation, or one key of a Dict), each frame once.

    Frames are numbered per environment from 0 on. Each environment has a ring of frames, frame ``i`` at position
    ``i`` modulo its length: at least ``2 * n_stack`` frames per transition, the most its live transitions can need
    (an observation and a next observation that share no frame), so a frame still needed is never overwritten. The
    ring is held in blocks of ``block_frames`` frames (``buffer_size / BLOCKS_PER_BUFFER``): a block is allocated
    when the ring reaches a part that has none, and reused, by any environment, once it holds no frame still needed.
    The memory follows the frames in use (about one per transition for stacked frames, ``n_stack`` without
    stacking); it never exceeds the rings, the frames of SB3's arrays rounded up to a block; growing allocates one
    block and copies nothing.
    ``obs_refs[pos, e]`` and ``next_refs[pos, e]`` are one past the numbers of the newest frames of the transition's
    two stacks (-1: slot empty).
    Transitions are written in SB3's order (``observations[pos] = obs`` then ``next_observations[pos] = next_obs``,
    all environments at once, ``pos`` advancing around the ring), so frame numbers grow with ``pos`` and the oldest
    live transition holds the oldest frame still needed.

    :param buffer_size: transitions per environment
    :param n_envs: number of environments
    :param stack_shape: the shape of one observation, stack axis first
    :param dtype: the observation dtype
    :param n_stack: frames per observation (``stack_shape[0]`` is ``n_stack`` times the channels of a frame)
    """

    def __init__(
        self, buffer_size: int, n_envs: int, stack_shape: tuple[int, ...], dtype: np.dtype, n_stack: int
    ) -> None:
        self.n_stack = n_stack
        self.stack_shape = (n_envs, *stack_shape)
        self.frame_shape = (stack_shape[0] // n_stack, *stack_shape[1:])
        self.dtype = np.dtype(dtype)
        self.block_frames = math.ceil(buffer_size / BLOCKS_PER_BUFFER)
        n_parts = math.ceil(2 * n_stack * buffer_size / self.block_frames)  # the ring: the most frames it can need
        #: the allocated blocks, shape ``(block_frames, *frame_shape)`` each
        self.blocks: list[np.ndarray] = []
        #: per environment and part of its ring, the index of the block that holds it in ``blocks`` (-1: none)
        self.block_ids = np.full((n_envs, n_parts), -1, dtype=np.int64)
        self.free: list[int] = []  # indices of the blocks that hold no frame still needed
        self.obs_refs = np.full((buffer_size, n_envs), -1, dtype=np.int64)
        self.next_refs = np.full((buffer_size, n_envs), -1, dtype=np.int64)
        #: frames written so far, per environment (the number of the next frame)
        self.heads = np.zeros(n_envs, dtype=np.int64)
        self._last_next: bytes | None = None  # the bytes of the last next observations, until the observations come
        self._obs: bytes | None = None  # the bytes of the observations just set, until their next observations come
        self._first_new = self.heads - n_stack  # the oldest frame of the transition being written, per environment
        self._offsets = np.arange(-n_stack, 0)
        self._stack_bytes = self.dtype.itemsize * math.prod(stack_shape)
        self._starts = range(0, n_envs * self._stack_bytes, self._stack_bytes)  # where each environment's bytes begin
        self.observations = StackedView(self, "obs")
        self.next_observations = StackedView(self, "next")

    @property
    def nbytes(self) -> int:
        """Bytes of all the arrays the store holds."""
        arrays = (*self.blocks, self.block_ids, self.obs_refs, self.next_refs, self.heads)
        return sum(array.nbytes for array in arrays) + len(self._last_next or b"") + len(self._obs or b"")

    def reset(self) -> None:
        """Forget every transition (the blocks are kept, for the frames to come)."""
        self.obs_refs.fill(-1)
        self.next_refs.fill(-1)
        self.block_ids.fill(-1)
        self.free = list(range(len(self.blocks)))
        self._last_next = self._obs = None

    def set_obs(self, pos: int, obs: np.ndarray) -> None:
        """Store the observations of the transitions at ``pos``.

        :param pos: the slot in the buffer
        :param obs: observations, shape ``(n_envs, *stack_shape)``
        """
        obs = self._as_stacks(obs)
        self._first_new = self.heads - self.n_stack  # the last next observations' frames, which obs may continue
        data = memoryview(obs).cast("B")  # bytes compare with memcmp, several times faster than np.array_equal
        for env, start in enumerate(self._starts):
            stack = data[start : start + self._stack_bytes]
            if self._last_next is None or not self._last_next.startswith(stack, start):
                self._append(pos, env, obs[env])
        self.obs_refs[pos] = self.heads
        self._last_next = None  # freed before the copy: add() holds one copy of its arguments at a time
        self._obs = obs.tobytes()

    def set_next(self, pos: int, next_obs: np.ndarray) -> None:
        """Store the next observations of the transitions at ``pos``, right after :meth:`set_obs`.

        A next observation that continues the observation (``next_obs[:-1] == obs[1:]`` in frames) adds its newest
        frame, any other one all of its frames.

        :param pos: the slot in the buffer
        :param next_obs: next observations, shape ``(n_envs, *stack_shape)``
        """
        if self._obs is None:
            raise RuntimeError("next_observations[pos] was set before observations[pos]; set the observation first.")
        next_obs = self._as_stacks(next_obs)
        data = memoryview(next_obs).cast("B")
        stack, frame = self._stack_bytes, self._stack_bytes // self.n_stack
        for env, start in enumerate(self._starts):
            # whether the next observation's older frames are the observation's newer ones
            continues = self._obs.startswith(data[start : start + stack - frame], start + frame)
            self._append(pos, env, next_obs[env, -self.frame_shape[0] :] if continues else next_obs[env])
        self.next_refs[pos] = self.heads
        self._obs = None
        self._last_next = next_obs.tobytes()

    def stacks(self, refs: np.ndarray, env_indices: np.ndarray) -> np.ndarray:
        """Rebuild the stacks whose newest frames are those before ``refs`` of ``env_indices``.

        :param refs: frame numbers, one past the newest frame of each stack, shape ``(batch,)``
        :param env_indices: environments, shape ``(batch,)``
        :return: the stacks, shape ``(batch, *stack_shape)``
        """
        numbers = (refs[:, None] + self._offsets).ravel()
        ids = self.block_ids[env_indices.repeat(self.n_stack), numbers // self.block_frames % self.block_ids.shape[1]]
        frames = np.empty((len(numbers), *self.frame_shape), self.dtype)
        for i, (block, offset) in enumerate(zip(ids.tolist(), (numbers % self.block_frames).tolist())):
            frames[i] = self.blocks[block][offset]  # a frame at a time: faster than a fancy index per block
        return frames.reshape(len(refs), *self.stack_shape[1:])

    def _as_stacks(self, obs: np.ndarray) -> np.ndarray:
        """The observations as a C-contiguous array of the store's dtype and shape ``(n_envs, *stack_shape)``."""
        obs = np.ascontiguousarray(obs)
        if obs.dtype == self.dtype and obs.shape == self.stack_shape:  # SB3's add() passes such arrays
            return obs
        return obs.astype(self.dtype).reshape(self.stack_shape)

    def _append(self, pos: int, env: int, frames: np.ndarray) -> None:
        """Append frames to the ring of an environment, allocating a block for each part of the ring that has none.

        :param pos: the slot being written
        :param env: the environment
        :param frames: the frames, concatenated on the first axis, shape ``(count * channels, *frame_shape[1:])``
        """
        for frame in frames.reshape(-1, *self.frame_shape):
            number = int(self.heads[env])
            part = number // self.block_frames % self.block_ids.shape[1]
            if self.block_ids[env, part] < 0:
                self.block_ids[env, part] = self._take_block(pos)
            self.blocks[self.block_ids[env, part]][number % self.block_frames] = frame
            self.heads[env] = number + 1

    def _take_block(self, pos: int) -> int:
        """A block for a part of a ring: a free one; else, once the blocks that hold no frame still needed are freed,
        one of them; else a new one (its pages are committed as frames are written).

        :param pos: the slot being written
        :return: the index of the block in ``blocks``
        """
        if not self.free:
            self._release(pos)
        if not self.free:
            self.blocks.append(np.empty((self.block_frames, *self.frame_shape), self.dtype))
            return len(self.blocks) - 1
        return self.free.pop()

    def _release(self, pos: int) -> None:
        """Free the blocks, of every environment, that hold no frame still needed (the parts of the rings outside the
        frames from the oldest needed to the newest).

        Needed are the frames of the live transitions and of the transition being written, from the last next
        observations on (its observations may continue them). The oldest live transition is the one after ``pos``
        once the buffer is full, else the first.

        :param pos: the slot being written
        """
        oldest = self._first_new
        following = (pos + 1) % len(self.obs_refs)
        for slot in (following, 0):
            if self.obs_refs[slot, 0] >= 0:
                oldest = np.minimum(oldest, self.obs_refs[slot] - self.n_stack)
                break
        first, last = oldest // self.block_frames, (self.heads - 1) // self.block_frames  # frame number // block
        n_parts = self.block_ids.shape[1]
        behind = np.arange(n_parts) - (first % n_parts)[:, None]  # how far each part is after the oldest one needed
        behind[behind < 0] += n_parts
        dead = (self.block_ids >= 0) & (behind > (last - first)[:, None])
        self.free += self.block_ids[dead].tolist()
        self.block_ids[dead] = -1


class StackedView:
    """The array-like that SB3's buffer code reads and writes as ``observations`` / ``next_observations``.

    ``view[pos] = stacks`` stores the transitions at ``pos`` in the :class:`FrameStore`;
    ``view[batch_inds, env_indices]`` (with an optional trailing ``:``) rebuilds the stacks.

    :param store: the frame store
    :param which: ``"obs"`` or ``"next"``
    """

    def __init__(self, store: FrameStore, which: str) -> None:
        self.store = store
        self.which = which

    def __setitem__(self, pos: int, stacks: np.ndarray) -> None:
        if not isinstance(pos, (int, np.integer)):
            raise TypeError(f"Stacked observations are stored one slot at a time (view[pos] = ...), not at {pos!r}.")
        (self.store.set_obs if self.which == "obs" else self.store.set_next)(int(pos), stacks)

    def __getitem__(self, key: tuple) -> np.ndarray:
        if not (isinstance(key, tuple) and len(key) in (2, 3) and key[2:] in ((), (slice(None),))):
            raise TypeError(f"Stacked observations are read as view[batch_inds, env_indices], not view[{key!r}].")
        batch_inds, env_indices = np.asarray(key[0]), np.asarray(key[1])
        refs = (self.store.obs_refs if self.which == "obs" else self.store.next_refs)[batch_inds, env_indices]
        if (refs < 0).any():
            raise IndexError(f"Empty slots of the replay buffer were read: {batch_inds[refs < 0]}.")
        return self.store.stacks(refs, env_indices)


class FrameStackReplayBuffer(ReplayBuffer):
    """
    Replay buffer that stores each frame of stacked image observations once; a drop-in for SB3's
    :class:`~stable_baselines3.common.buffers.ReplayBuffer` and
    :class:`~stable_baselines3.common.buffers.DictReplayBuffer` (``replay_buffer_class=FrameStackReplayBuffer``)
    whose samples are identical to theirs.

    Stacked are the ``uint8`` image observations (SB3's ``is_image_space``), channel-first, the stack axis being
    the first one: the Box observation, or each image key of a Dict observation (the other keys are stored in
    full, as SB3 does). At (4, 84, 84) with episodes of 100 steps a transition costs about 7,400 bytes instead of
    56,468; without frame stacking about half of SB3's (the next observation is the following one). On any stream
    the frames held are at most those of SB3's arrays (rounded up to a block): a stream that shares no frame costs
    SB3's memory plus 16 bytes per transition (where the stacks are) and a table of blocks. The buffer grows by one
    block of ``buffer_size / BLOCKS_PER_BUFFER`` frames at a time and copies nothing
    (``benchmarks/results/replay_memory.md``).

    :param buffer_size: Max number of element in the buffer
    :param observation_space: Observation space (an image Box, or a Dict with at least one image key)
    :param action_space: Action space
    :param device: PyTorch device
    :param n_envs: Number of parallel environments
    :param optimize_memory_usage: must be False (this buffer already stores each frame once)
    :param handle_timeout_termination: Handle timeout termination (due to timelimit)
        separately and treat the task as infinite horizon task.
        https://github.com/DLR-RM/stable-baselines3/issues/284
    :param n_stack: frames per observation; the first axis of an image holds ``n_stack`` frames of equal channels.
        ``None``: one channel per frame (``VecFrameStack`` of grayscale frames). With the wrong value the buffer stays
        exact but saves less.
    :param n_steps: n-step returns as SB3's ``NStepReplayBuffer`` computes them (1: one-step transitions), for Dict
        observations too (which SB3's does not take)
    :param gamma: discount factor of the n-step returns
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
        n_stack: int | None = None,
        n_steps: int = 1,
        gamma: float = 0.99,
    ) -> None:
        BaseBuffer.__init__(self, buffer_size, observation_space, action_space, device, n_envs=n_envs)
        if optimize_memory_usage:
            raise ValueError(
                "FrameStackReplayBuffer already stores each frame once; optimize_memory_usage=True is not supported "
                "(it also changes TD3's targets on truncation). Pass optimize_memory_usage=False."
            )
        if n_steps < 1 or int(n_steps) != n_steps:
            raise ValueError(f"n_steps={n_steps!r} must be a positive integer (1: one-step transitions).")
        self.buffer_size = max(buffer_size // n_envs, 1)
        self.optimize_memory_usage = False
        self.handle_timeout_termination = handle_timeout_termination
        self.n_steps = int(n_steps)
        self.gamma = gamma

        keyed = observation_space.spaces if isinstance(observation_space, spaces.Dict) else {None: observation_space}
        #: one frame store per stacked image array (key ``None``: the Box observation)
        self.frame_stores = {
            key: FrameStore(self.buffer_size, n_envs, space.shape, space.dtype, _n_stack(key, space, n_stack))
            for key, space in keyed.items()
            if is_image_space(space, check_channels=False)
        }
        if not self.frame_stores:
            raise ValueError(
                f"FrameStackReplayBuffer stacks uint8 image observations (SB3's is_image_space), but the observation "
                f"space {observation_space} has none; use SB3's ReplayBuffer / DictReplayBuffer."
            )
        if isinstance(observation_space, spaces.Dict):
            self.observations: Any = {}
            self.next_observations: Any = {}
            for key, space in keyed.items():
                store = self.frame_stores.get(key)
                shape = (self.buffer_size, n_envs, *self.obs_shape[key])  # type: ignore[index]
                self.observations[key] = store.observations if store else np.zeros(shape, dtype=space.dtype)
                self.next_observations[key] = store.next_observations if store else np.zeros(shape, dtype=space.dtype)
        else:
            self.observations = self.frame_stores[None].observations
            self.next_observations = self.frame_stores[None].next_observations

        self.actions = np.zeros(
            (self.buffer_size, self.n_envs, self.action_dim), dtype=self._maybe_cast_dtype(action_space.dtype)
        )
        self.rewards = np.zeros((self.buffer_size, self.n_envs), dtype=np.float32)
        self.dones = np.zeros((self.buffer_size, self.n_envs), dtype=np.float32)
        self.timeouts = np.zeros((self.buffer_size, self.n_envs), dtype=np.float32)

    @property
    def nbytes(self) -> int:
        """Bytes of every array the buffer holds (frames, frame numbers, plain observations, actions, rewards...)."""
        plain = [
            array
            for arrays in (self.observations, self.next_observations)
            if isinstance(arrays, dict)
            for array in arrays.values()
            if isinstance(array, np.ndarray)
        ]
        others = (self.actions, self.rewards, self.dones, self.timeouts)
        return sum(store.nbytes for store in self.frame_stores.values()) + sum(a.nbytes for a in (*plain, *others))

    def reset(self) -> None:
        super().reset()
        for store in self.frame_stores.values():
            store.reset()

    def add(  # type: ignore[override]
        self,
        obs: np.ndarray | dict[str, np.ndarray],
        next_obs: np.ndarray | dict[str, np.ndarray],
        action: np.ndarray,
        reward: np.ndarray,
        done: np.ndarray,
        infos: list[dict[str, Any]],
    ) -> None:
        parent = DictReplayBuffer if isinstance(self.observation_space, spaces.Dict) else ReplayBuffer
        parent.add(self, obs, next_obs, action, reward, done, infos)  # type: ignore[arg-type]

    def _get_samples(  # type: ignore[override]
        self, batch_inds: np.ndarray, env: VecNormalize | None = None
    ) -> ReplayBufferSamples | DictReplayBufferSamples:
        if isinstance(self.observation_space, spaces.Dict):
            if self.n_steps > 1:
                return self._n_step_dict_samples(batch_inds, env)
            return DictReplayBuffer._get_samples(self, batch_inds, env)  # type: ignore[arg-type]
        if self.n_steps > 1:
            return NStepReplayBuffer._get_samples(self, batch_inds, env)  # type: ignore[arg-type]
        return ReplayBuffer._get_samples(self, batch_inds, env)

    def _n_step_dict_samples(self, batch_inds: np.ndarray, env: VecNormalize | None) -> DictReplayBufferSamples:
        """SB3's ``NStepReplayBuffer._get_samples`` (stable-baselines3 2.9) for Dict observations: the same returns,
        bootstrap discounts and dones, from the same draws of the random generator, each observation key gathered as
        ``DictReplayBuffer`` gathers it (the next observations at the last transition of each n-step window)."""
        env_indices = np.random.randint(0, self.n_envs, size=batch_inds.shape)
        # the newest transition ends a window (SB3: the slot after it holds an older episode once the buffer is full)
        last_valid = self.pos - 1
        saved_timeouts = self.timeouts[last_valid].copy()
        self.timeouts[last_valid] = np.logical_or(saved_timeouts, np.logical_not(self.dones[last_valid]))
        windows = (batch_inds[:, None] + np.arange(self.n_steps).reshape(1, -1)) % self.buffer_size
        columns = env_indices[:, None]
        ended = np.logical_or(self.dones[windows, columns], self.timeouts[windows, columns])
        end = np.where(ended.any(axis=1), ended.argmax(axis=1), self.n_steps - 1)
        mask = np.arange(self.n_steps).reshape(1, -1) <= end[:, None]
        discounts = self.gamma ** mask.sum(axis=1, keepdims=True).astype(np.float32)
        step_discounts = self.gamma ** np.arange(self.n_steps, dtype=np.float32).reshape(1, -1)
        rewards = self._normalize_reward(self.rewards[windows, columns], env)
        returns = (rewards * step_discounts * mask).sum(axis=1, keepdims=True)
        last = (batch_inds + end) % self.buffer_size
        dones = self.dones[last, env_indices][:, None].astype(np.float32)
        dones = dones * (1.0 - self.timeouts[last, env_indices][:, None].astype(np.float32))
        self.timeouts[last_valid] = saved_timeouts
        observations = self._normalize_obs(
            {key: value[batch_inds, env_indices, :] for key, value in self.observations.items()}, env)
        next_observations = self._normalize_obs(
            {key: value[last, env_indices, :] for key, value in self.next_observations.items()}, env)
        return DictReplayBufferSamples(
            observations={key: self.to_torch(value) for key, value in observations.items()},
            actions=self.to_torch(self.actions[batch_inds, env_indices]),
            next_observations={key: self.to_torch(value) for key, value in next_observations.items()},
            dones=self.to_torch(dones),
            rewards=self.to_torch(returns),
            discounts=self.to_torch(discounts),
        )


def default_replay_buffer_class(
    observation_space: spaces.Space, optimize_memory_usage: bool = False
) -> type[ReplayBuffer] | None:
    """The replay buffer class ``TD3CnnClip`` picks when given none: :class:`FrameStackReplayBuffer` for
    channel-first ``uint8`` image observations (a Box, or a Dict with at least one image key, with n-step returns
    for either), else ``None`` (SB3's own choice: ``ReplayBuffer``, ``DictReplayBuffer``, or
    ``NStepReplayBuffer`` for ``n_steps > 1``; ``optimize_memory_usage=True`` keeps SB3's buffer as well). With
    ``n_steps > 1`` the caller passes ``n_steps`` and ``gamma`` to the buffer, as SB3 does for its own.

    :param observation_space: the algorithm's observation space
    :param optimize_memory_usage: the algorithm's ``optimize_memory_usage``
    :return: the class, or ``None``
    """
    keyed = observation_space.spaces if isinstance(observation_space, spaces.Dict) else {None: observation_space}
    images = [space for space in keyed.values() if is_image_space(space, check_channels=False)]
    stackable = bool(images) and all(is_image_space_channels_first(space) for space in images)
    return FrameStackReplayBuffer if stackable and not optimize_memory_usage else None


def _n_stack(key: str | None, space: spaces.Box, n_stack: int | None) -> int:
    """The frames per observation of an image space, checked against its shape.

    :param key: the Dict key (``None``: the Box observation), for the error message
    :param space: the image space
    :param n_stack: frames per observation (``None``: one channel per frame)
    :return: the number of frames
    """
    where = "the observation" if key is None else f"observation key {key!r}"
    if not is_image_space_channels_first(space):
        raise ValueError(
            f"{where} has shape {space.shape}, channel-last; FrameStackReplayBuffer stacks on the first axis. "
            "Transpose the images to channel-first (VecTransposeImage; SB3 does it for CnnPolicy)."
        )
    if n_stack is None:
        return space.shape[0]
    if n_stack < 1 or space.shape[0] % n_stack:
        raise ValueError(f"n_stack={n_stack!r} must divide the first axis of {where}, shape {space.shape}.")
    return n_stack

