"""FrameStackReplayBuffer against SB3's own buffers on the same streams: every stored and sampled field identical."""

import math
import pickle
import tracemalloc
import warnings

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3 import DDPG, SAC, TD3
from stable_baselines3.common.buffers import DictReplayBuffer, NStepReplayBuffer, ReplayBuffer
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import configure
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecFrameStack
from test_td3_cnnclip import EXACT_TD3

from sb3_td3_cnnclip import FrameStackReplayBuffer, TD3CnnClip
from sb3_td3_cnnclip import buffers as buffers_module
from sb3_td3_cnnclip.buffers import BLOCKS_PER_BUFFER, default_replay_buffer_class
from sb3_td3_cnnclip.callbacks import ExplosionEarlyStopping
from sb3_td3_cnnclip.envs.toy import ToyImageEnv

ACTION_SPACE = spaces.Box(-1.0, 1.0, (2,), np.float32)
#: how the simulated environments stack frames: VecFrameStack's zero padding, gymnasium's FrameStackObservation
#: padding with the first frame, no stacking (a fresh stack every step), and a constant (black) camera
STYLES = ("zeros", "repeat", "none", "constant")


class Stream:
    """Transitions of ``n_envs`` simulated stacked-image environments, passed to ``add()`` the way SB3's
    ``_store_transition`` does: ``next_obs`` is the terminal observation where an episode ended, the following
    ``obs`` the reset one. Random episode lengths, terminations and truncations (``TimeLimit.truncated``).

    Frames have few values (``levels``) so that frames and stacks often coincide by chance.

    :param seed: random seed
    :param n_envs: number of environments
    :param shape: stack shape (``n_stack * channels, h, w``)
    :param n_stack: frames per stack
    :param dict_obs: observe a Dict of the image, a second image and a float vector
    """

    def __init__(self, seed: int, n_envs: int, shape=(4, 5, 5), n_stack: int = 4, dict_obs: bool = False, levels=3):
        self.rng = np.random.default_rng(seed)
        self.n_envs, self.shape, self.n_stack, self.dict_obs, self.levels = n_envs, shape, n_stack, dict_obs, levels
        self.styles = self.rng.choice(STYLES, n_envs, p=[0.4, 0.3, 0.2, 0.1])
        self.mean_length = int(self.rng.integers(1, 12))
        self.image = spaces.Box(0, 255, shape, np.uint8)
        image2 = spaces.Box(0, 255, (2, 5, 5), np.uint8)
        vector = spaces.Box(-1.0, 1.0, (3,), np.float32)
        self.space = spaces.Dict({"image": self.image, "vector": vector, "second": image2}) if dict_obs else self.image
        self.obs = self._stack([self._reset(e) for e in range(n_envs)])

    def _frame(self) -> np.ndarray:
        return self.rng.integers(0, self.levels, (self.shape[0] // self.n_stack, *self.shape[1:]), dtype=np.uint8)

    def _reset(self, env: int) -> np.ndarray:
        first = self._frame()
        padding = {"zeros": np.zeros_like(first), "repeat": first, "constant": first * 0 + 7}.get(self.styles[env])
        if padding is None:
            return self._fresh()
        frames = [padding] * (self.n_stack - 1) + [first if self.styles[env] != "constant" else padding]
        return np.concatenate(frames)

    def _fresh(self) -> np.ndarray:
        return np.concatenate([self._frame() for _ in range(self.n_stack)])

    def _step(self, env: int, stack: np.ndarray) -> np.ndarray:
        if self.styles[env] == "none":
            return self._fresh()
        new = stack[-1:] * 0 + 7 if self.styles[env] == "constant" else self._frame()
        return np.concatenate([stack[len(new) :], new])

    def _stack(self, images: list[np.ndarray]):
        images = np.stack(images)
        if not self.dict_obs:
            return images
        return {
            "image": images,
            "vector": self.rng.uniform(-1, 1, (self.n_envs, 3)).astype(np.float32),
            "second": self.rng.integers(0, 2, (self.n_envs, 2, 5, 5), dtype=np.uint8),
        }

    def step(self) -> tuple:
        """The arguments of one ``add()`` call, and advance the environments."""
        images = self.obs["image"] if self.dict_obs else self.obs
        next_obs = self._stack([self._step(e, images[e]) for e in range(self.n_envs)])
        done = self.rng.random(self.n_envs) < 1 / self.mean_length
        infos = [{"TimeLimit.truncated": bool(d and self.rng.random() < 0.5)} for d in done]
        action = self.rng.uniform(-1, 1, (self.n_envs, 2)).astype(np.float32)
        reward = self.rng.normal(size=self.n_envs).astype(np.float32)
        args = (self.obs, next_obs, action, reward, done.astype(np.float32), infos)
        images = next_obs["image"] if self.dict_obs else next_obs
        following = self._stack([self._reset(e) if d else images[e] for e, d in enumerate(done)])
        if self.dict_obs:  # the keys other than the image are drawn afresh at a reset, and kept otherwise
            for key in ("vector", "second"):
                at_reset = done.reshape(-1, *[1] * (following[key].ndim - 1))
                following[key] = np.where(at_reset, following[key], next_obs[key])
        self.obs = following
        return args


def stored(buffer, name: str, indices: np.ndarray, envs: np.ndarray):
    arrays = getattr(buffer, name)
    if isinstance(arrays, dict):
        return {key: np.asarray(array[indices, envs]) for key, array in arrays.items()}
    return {"": np.asarray(arrays[indices, envs])}


def assert_same_contents(reference, buffer) -> None:
    """Every live slot's observation, next observation, action, reward, done and timeout are identical."""
    assert (buffer.pos, buffer.full) == (reference.pos, reference.full)
    indices = np.repeat(np.arange(reference.size()), reference.n_envs)
    envs = np.tile(np.arange(reference.n_envs), reference.size())
    for name in ("observations", "next_observations"):
        expected, actual = stored(reference, name, indices, envs), stored(buffer, name, indices, envs)
        for key in expected:
            np.testing.assert_array_equal(actual[key], expected[key], err_msg=f"{name} {key}")
    for name in ("actions", "rewards", "dones", "timeouts"):
        size = reference.size()
        np.testing.assert_array_equal(getattr(buffer, name)[:size], getattr(reference, name)[:size], err_msg=name)


def assert_same_samples(reference, buffer, seed: int, batch_size: int = 64) -> None:
    """``sample()`` draws the same indices and returns identical tensors in every field."""
    np.random.seed(seed)
    expected = reference.sample(batch_size)
    np.random.seed(seed)
    actual = buffer.sample(batch_size)
    for name, value in expected._asdict().items():
        other = getattr(actual, name)
        if isinstance(value, dict):
            assert value.keys() == other.keys()
            for key in value:
                assert th.equal(other[key], value[key]), f"{name} {key}"
        elif value is None:
            assert other is None, name
        else:
            assert th.equal(other, value), name


def run_stream(stream: Stream, reference, buffer, steps: int, check_every: int = 1) -> None:
    for step in range(steps):
        args = stream.step()
        reference.add(*args)
        buffer.add(*args)
        if step % check_every == 0 or step == steps - 1:
            assert_same_contents(reference, buffer)
            assert_same_samples(reference, buffer, seed=step)


def buffers(stream: Stream, size: int, n_steps: int = 1, handle_timeout_termination: bool = True, **kwargs):
    common = dict(device="cpu", n_envs=stream.n_envs, handle_timeout_termination=handle_timeout_termination)
    if stream.dict_obs:
        reference = DictReplayBuffer(size, stream.space, ACTION_SPACE, **common)
    elif n_steps > 1:
        reference = NStepReplayBuffer(size, stream.space, ACTION_SPACE, **common, n_steps=n_steps, gamma=0.9)
    else:
        reference = ReplayBuffer(size, stream.space, ACTION_SPACE, **common)
    nstep = dict(n_steps=n_steps, gamma=0.9) if n_steps > 1 else {}
    return reference, FrameStackReplayBuffer(size, stream.space, ACTION_SPACE, **common, **nstep, **kwargs)


@pytest.mark.parametrize("seed", range(12))
def test_random_streams_match_sb3_exactly(seed, monkeypatch):
    """Random episode lengths, truncations, 1-3 envs of mixed stacking styles, blocks of random sizes, the ring
    wrapping many times."""
    rng = np.random.default_rng(1000 + seed)
    n_envs = int(rng.integers(1, 4))
    stream = Stream(seed, n_envs)
    size = int(rng.integers(1, 30)) * n_envs
    timeouts = bool(rng.integers(2))
    monkeypatch.setattr(buffers_module, "BLOCKS_PER_BUFFER", int(rng.integers(1, 9)))
    reference, buffer = buffers(stream, size, handle_timeout_termination=timeouts)
    run_stream(stream, reference, buffer, steps=20 * size // n_envs + 30)


@pytest.mark.parametrize("seed", range(4))
def test_n_step_returns_match_sb3(seed):
    stream = Stream(seed, n_envs=2)
    reference, buffer = buffers(stream, 40, n_steps=3)
    run_stream(stream, reference, buffer, steps=150)
    assert buffer.sample(8).discounts is not None


@pytest.mark.parametrize("seed", range(4))
def test_n_step_returns_of_dict_observations_match_sb3_key_by_key(seed):
    """SB3 has no n-step buffer for Dict observations: each key's samples equal those of SB3's NStepReplayBuffer fed
    that key alone, with the same actions, n-step returns, bootstrap discounts and dones."""
    stream = Stream(seed, n_envs=2, dict_obs=True)
    common = dict(device="cpu", n_envs=2, n_steps=3, gamma=0.9)
    references = {key: NStepReplayBuffer(40, space, ACTION_SPACE, **common)
                  for key, space in stream.space.spaces.items()}
    buffer = FrameStackReplayBuffer(40, stream.space, ACTION_SPACE, **common)
    shortened = False  # whether windows cut short by an episode's end were sampled (a discount above 0.9^3)
    for step in range(150):
        obs, next_obs, *rest = stream.step()
        buffer.add(obs, next_obs, *rest)
        for key, reference in references.items():
            reference.add(obs[key], next_obs[key], *rest)
        np.random.seed(step)
        actual = buffer.sample(16)
        for key, reference in references.items():
            np.random.seed(step)
            expected = reference.sample(16)
            assert th.equal(actual.observations[key], expected.observations), key
            assert th.equal(actual.next_observations[key], expected.next_observations), key
            for name in ("actions", "dones", "rewards", "discounts"):
                assert th.equal(getattr(actual, name), getattr(expected, name)), name
        shortened |= bool((actual.discounts > 0.9**3 + 1e-6).any())
    assert shortened


@pytest.mark.parametrize("seed", range(4))
def test_dict_observations_match_sb3(seed):
    """Both image keys are stacked, the vector key is stored in full."""
    stream = Stream(seed, n_envs=2, dict_obs=True)
    reference, buffer = buffers(stream, 30)
    assert set(buffer.frame_stores) == {"image", "second"}
    assert isinstance(buffer.observations["vector"], np.ndarray)
    run_stream(stream, reference, buffer, steps=120)


def test_multi_channel_frames_with_n_stack():
    """RGB-like frames: 4 frames of 3 channels; n_stack=4 writes one 3-channel frame per continuing step."""
    stream = Stream(0, n_envs=2, shape=(12, 13, 13), n_stack=4, levels=256)
    stream.styles[:] = "zeros"
    stream.mean_length = 1000
    reference, buffer = buffers(stream, 50, n_stack=4)
    run_stream(stream, reference, buffer, steps=120, check_every=10)
    store = buffer.frame_stores[None]
    assert store.frame_shape == (3, 13, 13)
    assert (store.heads == 4 + 120).all()  # one reset stack, then one frame per step


def test_episode_boundary_inside_a_stack_never_mixes_episodes():
    """A reset whose padding frames equal the previous episode's frames would be shared by a buffer that assumed
    continuity from the frame number alone; here the terminal next observation and the reset differ and both are
    kept, including when the ring wraps right at the boundary."""
    space = spaces.Box(0, 255, (3, 4, 4), np.uint8)
    reference = ReplayBuffer(4, space, ACTION_SPACE, "cpu")
    buffer = FrameStackReplayBuffer(4, space, ACTION_SPACE, "cpu")

    def frames(*values: int) -> np.ndarray:
        return np.array(values, dtype=np.uint8).reshape(1, 3, 1, 1).repeat(4, 2).repeat(4, 3)

    episode = [(frames(0, 0, 1), frames(0, 1, 2)), (frames(0, 1, 2), frames(1, 2, 3))]  # ends (terminal 1, 2, 3)
    restart = [(frames(0, 0, 9), frames(0, 9, 2)), (frames(0, 9, 2), frames(9, 2, 3))]  # 2, 3 again, new episode
    for obs, next_obs in episode + restart + episode + restart:
        for target in (reference, buffer):
            target.add(obs, next_obs, np.zeros((1, 2)), np.zeros(1), np.zeros(1), [{}])
        assert_same_contents(reference, buffer)
    assert buffer.next_observations[np.array([1]), np.array([0])][0, :, 0, 0].tolist() == [1, 2, 3]
    assert buffer.next_observations[np.array([3]), np.array([0])][0, :, 0, 0].tolist() == [9, 2, 3]


def test_blocks_follow_the_frames_in_use_and_stay_exact(monkeypatch):
    """Long episodes (one new frame per transition), short ones (a whole stack at each start), long ones again: the
    rings wrap several times, the blocks held follow the frames needed, and blocks freed are reused."""
    monkeypatch.setattr(buffers_module, "BLOCKS_PER_BUFFER", 4)  # blocks of 15 frames, rings of 32 blocks
    stream = Stream(3, n_envs=2)
    stream.styles[:] = "zeros"
    stream.mean_length = 10_000
    reference, buffer = buffers(stream, 120)
    store = buffer.frame_stores[None]
    assert (store.block_frames, store.block_ids.shape) == (15, (2, 32))
    run_stream(stream, reference, buffer, steps=1000, check_every=7)
    # per env 60 transitions of one new frame each and the oldest one's stack: 64 frames, in at most 6 blocks
    assert len(store.blocks) <= 2 * 6 and (store.heads > 2 * 32 * 15).all()
    stream.mean_length = 2
    run_stream(stream, reference, buffer, steps=200, check_every=7)
    allocated = len(store.blocks)
    assert allocated > 2 * 6
    stream.mean_length = 10_000
    run_stream(stream, reference, buffer, steps=600, check_every=7)
    assert len(store.blocks) == allocated


def filled_84x84(size: int, length: int = 100) -> FrameStackReplayBuffer:
    """A FrameStackReplayBuffer of ``size`` (4, 84, 84) transitions, filled 1.5 times with episodes of ``length``."""
    buffer = FrameStackReplayBuffer(size, spaces.Box(0, 255, (4, 84, 84), np.uint8), ACTION_SPACE, "cpu")
    frame = np.zeros((1, 1, 84, 84), np.uint8)
    for step in range(size * 3 // 2):
        frame[:] = step % 251
        if step % length == 0:
            obs = np.concatenate([np.zeros((1, 3, 84, 84), np.uint8), frame], axis=1)
        next_obs = np.concatenate([obs[:, 1:], frame + 1], axis=1)
        done = np.array([step % length == length - 1], np.float32)
        buffer.add(obs, next_obs, np.zeros((1, 2)), np.zeros(1), done, [{"TimeLimit.truncated": bool(done[0])}])
        obs = next_obs
    return buffer


def test_memory_per_transition_at_4x84x84():
    """The issue's goal: at most 7,500 bytes per transition with episodes of 100 steps (SB3: 56,468), and a million
    transitions in at most 7.5 GB. The cost is linear in the size; the fixed part (the last stacks) is measured with a
    second size."""
    small, large = filled_84x84(1000), filled_84x84(2000)
    per_transition = (large.nbytes - small.nbytes) / 1000
    fixed = small.nbytes - 1000 * per_transition
    assert per_transition <= 7_500
    assert fixed + 1_000_000 * per_transition <= 7.5e9
    reference = ReplayBuffer(1000, small.observation_space, ACTION_SPACE, "cpu")
    names = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")
    assert sum(getattr(reference, name).nbytes for name in names) == 56_468 * 1000


def camera_stream(kind: str, steps: int, episode_length: int = 20, seed: int = 0):
    """``add()`` arguments of one 84x84 camera: ``"rgb"`` (3 channels, no frame stacking: the next observation shares
    no frame with the observation, the following observation is the next one), ``"gray4"`` (4 stacked grayscale
    frames, zero-padded at a reset: consecutive observations share 3 frames), ``"unshared"`` (4 frames, each
    observation and next observation drawn afresh: nothing is shared). Episodes end in a truncation."""
    rng = np.random.default_rng(seed)
    pool = rng.integers(0, 256, (64, 84, 84), dtype=np.uint8)
    depth = 3 if kind == "rgb" else 4

    def fresh() -> np.ndarray:
        return pool[rng.integers(len(pool), size=depth)][None]

    def reset() -> np.ndarray:
        if kind == "gray4":
            return np.concatenate([np.zeros((1, 3, 84, 84), np.uint8), fresh()[:, :1]], axis=1)
        return fresh()

    obs = reset()
    for step in range(steps):
        next_obs = np.concatenate([obs[:, 1:], fresh()[:, :1]], axis=1) if kind == "gray4" else fresh()
        done = step % episode_length == episode_length - 1
        yield obs, next_obs, np.zeros((1, 2), np.float32), np.zeros(1, np.float32), np.array([done], np.float32), [
            {"TimeLimit.truncated": done}
        ]
        obs = reset() if done or kind == "unshared" else next_obs


def traced_fill(buffer_class: type[ReplayBuffer], kind: str, size: int) -> tuple[int, int]:
    """Build a buffer of ``size`` transitions and fill it 1.5 times with a camera stream, under tracemalloc.

    :return: the bytes still allocated after the last ``add()`` and the most allocated at once
    """
    shape = (3 if kind == "rgb" else 4, 84, 84)
    transitions = list(camera_stream(kind, size * 3 // 2))
    tracemalloc.start()
    try:
        buffer = buffer_class(size, spaces.Box(0, 255, shape, np.uint8), ACTION_SPACE, "cpu")
        for args in transitions:
            buffer.add(*args)
        return tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("kind", ["rgb", "gray4", "unshared"])
def test_peak_memory_is_at_most_sb3s_and_add_copies_nothing_it_holds(kind):
    """Measured with tracemalloc while the stream fills the buffer 1.5 times: beyond what the buffer holds, ``add()``
    keeps one copy of its arguments at a time as SB3's does (no growth copy of the frames: a growth step is the
    block it keeps), and the peak is at most that of SB3's ReplayBuffer on the same stream. On a stream that shares
    no frame, every frame must be kept as SB3 keeps them; the buffer adds where each stack lives (16 bytes per
    transition) and the bookkeeping of its blocks (at most ``2 * n_stack * 256`` per environment, about 0.2 MB):
    1.5 % at this size, less for larger buffers."""
    size = 300
    stack = (3 if kind == "rgb" else 4) * 84 * 84
    _, sb3_peak = traced_fill(ReplayBuffer, kind, size)
    held, peak = traced_fill(FrameStackReplayBuffer, kind, size)
    assert peak <= held + 2 * stack
    assert peak <= sb3_peak * {"rgb": 0.6, "gray4": 0.2, "unshared": 1.02}[kind]


def test_save_and_load_round_trip(tmp_path):
    stream = Stream(5, n_envs=2)
    reference, buffer = buffers(stream, 30)
    run_stream(stream, reference, buffer, steps=50, check_every=25)
    (tmp_path / "buffer.pkl").write_bytes(pickle.dumps(buffer))
    loaded = pickle.loads((tmp_path / "buffer.pkl").read_bytes())
    assert_same_contents(reference, loaded)
    run_stream(stream, reference, loaded, steps=40, check_every=3)  # adding continues exactly after a load


@pytest.mark.parametrize(
    ("space", "kwargs", "match"),
    [
        (spaces.Box(0, 255, (4, 8, 8), np.uint8), dict(optimize_memory_usage=True), "optimize_memory_usage"),
        (spaces.Box(-1.0, 1.0, (3,), np.float32), {}, "has none"),
        (spaces.Dict({"v": spaces.Box(-1.0, 1.0, (3,), np.float32)}), {}, "has none"),
        (spaces.Box(0, 255, (84, 84, 4), np.uint8), {}, "channel-last"),
        (spaces.Box(0, 255, (4, 8, 8), np.uint8), dict(n_stack=3), "must divide"),
        (spaces.Box(0, 255, (4, 8, 8), np.uint8), dict(n_steps=0), "positive integer"),
    ],
)
def test_bad_configuration_is_rejected(space, kwargs, match):
    with pytest.raises(ValueError, match=match):
        FrameStackReplayBuffer(10, space, ACTION_SPACE, "cpu", **kwargs)


def test_reset_then_refill_matches_sb3():
    stream = Stream(7, n_envs=2)
    reference, buffer = buffers(stream, 20)
    run_stream(stream, reference, buffer, steps=30, check_every=10)
    reference.reset()
    buffer.reset()
    run_stream(stream, reference, buffer, steps=30)


def test_reading_an_empty_slot_or_other_indexing_is_rejected():
    buffer = FrameStackReplayBuffer(10, spaces.Box(0, 255, (4, 8, 8), np.uint8), ACTION_SPACE, "cpu")
    with pytest.raises(IndexError, match="Empty slots"):
        buffer.observations[np.array([3]), np.array([0])]
    with pytest.raises(TypeError, match="view\\[batch_inds, env_indices\\]"):
        buffer.observations[3]


def test_next_observation_before_observation_is_rejected():
    buffer = FrameStackReplayBuffer(10, spaces.Box(0, 255, (4, 8, 8), np.uint8), ACTION_SPACE, "cpu")
    with pytest.raises(RuntimeError, match="before observations"):
        buffer.next_observations[0] = np.zeros((1, 4, 8, 8), np.uint8)


IMAGE = spaces.Box(0, 255, (4, 36, 36), np.uint8)
VECTOR = spaces.Box(-1.0, 1.0, (3,), np.float32)


@pytest.mark.parametrize(
    ("space", "kwargs", "expected"),
    [
        (IMAGE, {}, FrameStackReplayBuffer),
        (spaces.Dict({"image": IMAGE, "vector": VECTOR}), {}, FrameStackReplayBuffer),
        (VECTOR, {}, None),
        (spaces.Dict({"vector": VECTOR}), {}, None),
        (spaces.Box(0, 255, (36, 36, 4), np.uint8), {}, None),  # channel-last: SB3 transposes it for CnnPolicy
        (IMAGE, dict(optimize_memory_usage=True), None),
    ],
)
def test_default_replay_buffer_class(space, kwargs, expected):
    assert default_replay_buffer_class(space, **kwargs) is expected


def test_td3cnnclip_default_buffer_and_models_saved_before_load(tmp_path):
    kwargs = dict(policy_kwargs=dict(features_extractor_kwargs=dict(features_dim=16), net_arch=[16]), buffer_size=50)
    assert isinstance(TD3CnnClip("CnnPolicy", ToyImageEnv(size=36), **kwargs).replay_buffer, FrameStackReplayBuffer)
    dict_model = TD3CnnClip("MultiInputPolicy", ToyImageEnv(size=36, dict_obs=True), buffer_size=50)
    assert isinstance(dict_model.replay_buffer, FrameStackReplayBuffer)
    assert type(TD3CnnClip("MlpPolicy", ToyImageEnv(size=8), buffer_size=50, n_steps=3).replay_buffer) is FrameStackReplayBuffer
    # a model saved with SB3's buffer (the default before) loads with it; a new one with FrameStackReplayBuffer
    TD3CnnClip("CnnPolicy", ToyImageEnv(size=36), replay_buffer_class=ReplayBuffer, **kwargs).save(tmp_path / "old")
    TD3CnnClip("CnnPolicy", ToyImageEnv(size=36), **kwargs).save(tmp_path / "new")
    assert type(TD3CnnClip.load(tmp_path / "old", env=ToyImageEnv(size=36)).replay_buffer) is ReplayBuffer
    assert type(TD3CnnClip.load(tmp_path / "new", env=ToyImageEnv(size=36)).replay_buffer) is FrameStackReplayBuffer
    plain = TD3("CnnPolicy", ToyImageEnv(size=36), **kwargs)
    plain.save(tmp_path / "td3")
    assert type(TD3CnnClip.load(tmp_path / "td3", env=ToyImageEnv(size=36)).replay_buffer) is ReplayBuffer


def stacked_toy_env(n_envs: int = 2, vec_env_cls=DummyVecEnv, **kwargs) -> VecFrameStack:
    fork = dict(start_method="fork") if vec_env_cls is SubprocVecEnv else None
    env = make_vec_env(ToyImageEnv, n_envs, seed=0, env_kwargs=dict(size=36, episode_length=15, **kwargs),
                       vec_env_cls=vec_env_cls, vec_env_kwargs=fork)  # fmt: skip
    return VecFrameStack(env, 4)


def tiny(algo, env, replay_buffer_class, policy="CnnPolicy", **kwargs):
    size = "cnn_output_dim" if policy == "MultiInputPolicy" else "features_dim"
    policy_kwargs = dict(features_extractor_kwargs={size: 16}, net_arch=[16])
    return algo(
        policy, env, buffer_size=60, learning_starts=30, batch_size=8, seed=0, policy_kwargs=policy_kwargs,
        replay_buffer_class=replay_buffer_class, device="cpu", **kwargs,
    )  # fmt: skip


def same_parameters(a, b) -> bool:
    return all(th.equal(x, y) for x, y in zip(a.policy.state_dict().values(), b.policy.state_dict().values()))


@pytest.mark.parametrize("algo", [TD3, SAC, DDPG, TD3CnnClip])
def test_learn_is_identical_to_learning_with_sb3_buffer(algo):
    """Same seed, same stream: the trained weights are bit-identical to those learnt from SB3's ReplayBuffer."""
    models = [tiny(algo, stacked_toy_env(), cls).learn(90) for cls in (ReplayBuffer, FrameStackReplayBuffer)]
    assert isinstance(models[1].replay_buffer, FrameStackReplayBuffer)
    assert models[1].replay_buffer.full  # wrapped around (60 transitions over 2 envs, 90 steps)
    assert same_parameters(*models)


def test_learn_with_subproc_envs_and_dict_observations():
    env = stacked_toy_env(vec_env_cls=SubprocVecEnv, dict_obs=True)
    try:
        models = []
        for cls in (DictReplayBuffer, FrameStackReplayBuffer):
            env.seed(0)
            models.append(tiny(TD3CnnClip, env, cls, policy="MultiInputPolicy").learn(60))
    finally:
        env.close()
    assert same_parameters(*models)


def test_n_step_default_is_frame_stacked_and_learns_as_sb3s_n_step_buffer(tmp_path):
    """TD3CnnClip(n_steps=3) picks FrameStackReplayBuffer with SB3's n-step settings: the same weights as SB3's TD3
    with its NStepReplayBuffer, and no SB3 warning that n_steps is ignored (when building or loading)."""
    reference = tiny(TD3, stacked_toy_env(), None, n_steps=3).learn(70)
    assert type(reference.replay_buffer) is NStepReplayBuffer
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*n_steps.*ignored")
        model = tiny(TD3CnnClip, stacked_toy_env(), None, n_steps=3, **EXACT_TD3).learn(70)
        model.save(tmp_path / "model")
        loaded = TD3CnnClip.load(tmp_path / "model", env=stacked_toy_env())
    assert isinstance(model.replay_buffer, FrameStackReplayBuffer) and model.replay_buffer.n_steps == 3
    assert model.replay_buffer.gamma == reference.replay_buffer.gamma == model.gamma
    assert same_parameters(reference, model)
    assert isinstance(loaded.replay_buffer, FrameStackReplayBuffer) and loaded.replay_buffer.n_steps == 3


def test_learn_with_n_steps():
    models = [
        tiny(TD3, stacked_toy_env(), cls, replay_buffer_kwargs=dict(n_steps=3, gamma=0.99)).learn(70)
        for cls in (NStepReplayBuffer, FrameStackReplayBuffer)
    ]
    assert same_parameters(*models)


def test_model_save_and_load_replay_buffer(tmp_path):
    model = tiny(TD3CnnClip, stacked_toy_env(), FrameStackReplayBuffer)
    model.learn(40)
    model.save_replay_buffer(tmp_path / "buffer.pkl")
    other = tiny(TD3CnnClip, stacked_toy_env(), FrameStackReplayBuffer)
    other.load_replay_buffer(tmp_path / "buffer.pkl")
    assert_same_contents(model.replay_buffer, other.replay_buffer)
    assert_same_samples(model.replay_buffer, other.replay_buffer, seed=0)


class NanReward(ToyImageEnv):
    """The toy env with a NaN reward from step 40 on."""

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        self.total = getattr(self, "total", 0) + 1
        return obs, math.nan if self.total >= 40 else reward, terminated, truncated, info


def test_early_stop_callback_saves_the_buffer(tmp_path):
    env = VecFrameStack(make_vec_env(NanReward, 1, seed=0, env_kwargs=dict(size=36)), 4)
    model = tiny(TD3CnnClip, env, FrameStackReplayBuffer)
    model.set_logger(configure(str(tmp_path), ["json"]))
    callback = ExplosionEarlyStopping(r_max=4.2, save_replay_buffer=True)
    with pytest.warns(RuntimeWarning, match="non-finite loss"):
        model.learn(200, callback=callback)
    loaded = pickle.loads((tmp_path / "replay_buffer.pkl").read_bytes())
    assert isinstance(loaded, FrameStackReplayBuffer)
    assert_same_contents(model.replay_buffer, loaded)
