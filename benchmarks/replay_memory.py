"""Replay buffer memory and speed for 4x84x84 uint8 observations: SB3's ``ReplayBuffer`` (with and without
``optimize_memory_usage``) against ``FrameStackReplayBuffer``, side by side in one run.

The three buffers, ``--probe-size`` transitions each, receive the same stream: ``--n-envs`` environments (each
value in turn) stacking 4 frames like ``VecFrameStack`` (zero padding at a reset), episodes of ``--episode-length``
steps ending in a truncation (the terminal observation as next observation, SB3's way), out of phase between the
environments, frames drawn from a pool of random images.
The stream runs ``1.5 x`` the capacity, so the ring has wrapped.

- Bytes: the ``nbytes`` of every array a full buffer holds (SB3: observations, next observations unless
  ``optimize_memory_usage``, actions, rewards, dones, timeouts; ``FrameStackReplayBuffer.nbytes``: frames, frame
  numbers, the last next observations, actions, rewards, dones, timeouts), for buffers of the probe size and of
  twice that, filled the same way: bytes per transition = the difference / the probe size, fixed bytes = the rest
  (0 for SB3; a margin of frames and the last stacks for the frame store), extrapolated to ``--sizes`` (SB3's
  default ``buffer_size`` is 1,000,000).
- ``add()``: seconds per call, timed over blocks of ``--block`` calls once the ring has wrapped (the first pass
  also commits the pages of ``np.zeros`` arrays, for SB3 and for the frame store alike), the buffers taking the same
  block in turn, their order rotating; median of the paired ratios against SB3's ``ReplayBuffer``.
- ``sample(256)``: rounds of ``--sample-calls`` calls per buffer, alternated, ``--rounds`` rounds; median of the
  paired ratios against SB3's ``ReplayBuffer``.

Run: ``python benchmarks/replay_memory.py``
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import time
from typing import Any

import numpy as np
from common import (
    add_common_args, describe_line, markdown_table, median_ratio, run_description, set_threads, write_results,
)  # fmt: skip
from gymnasium import spaces
from stable_baselines3 import TD3
from stable_baselines3.common.buffers import ReplayBuffer

from sb3_td3_cnnclip.buffers import FrameStackReplayBuffer

#: SB3's default TD3 ``buffer_size``, read from its signature
SB3_DEFAULT_BUFFER_SIZE: int = inspect.signature(TD3).parameters["buffer_size"].default

#: the arrays an SB3 ReplayBuffer may hold
SB3_ARRAYS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")

#: the variants, in table order
VARIANTS = ("ReplayBuffer", "ReplayBuffer(optimize_memory_usage=True)", "FrameStackReplayBuffer")


def make_buffers(size: int, observation_space: spaces.Box, n_envs: int) -> dict[str, ReplayBuffer]:
    """The three buffers of the comparison.

    :param size: capacity in transitions (all envs together, as SB3 counts it)
    :param observation_space: the observation space
    :param n_envs: number of environments
    :return: the buffers by variant name
    """
    action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
    common = dict(buffer_size=size, observation_space=observation_space, action_space=action_space, device="cpu",
                  n_envs=n_envs)  # fmt: skip
    return {
        VARIANTS[0]: ReplayBuffer(**common),
        VARIANTS[1]: ReplayBuffer(**common, optimize_memory_usage=True, handle_timeout_termination=False),
        VARIANTS[2]: FrameStackReplayBuffer(**common),
    }


def buffer_nbytes(buffer: ReplayBuffer) -> int:
    """Bytes of every array the buffer holds.

    :param buffer: an SB3 ReplayBuffer or a FrameStackReplayBuffer
    :return: the bytes
    """
    if isinstance(buffer, FrameStackReplayBuffer):
        return buffer.nbytes
    return sum(getattr(buffer, name).nbytes for name in SB3_ARRAYS if getattr(buffer, name, None) is not None)


def stream(n_envs: int, shape: tuple[int, ...], episode_length: int, steps: int, seed: int = 0):
    """Yield the arguments of ``add()`` for ``steps`` steps of ``n_envs`` frame-stacking environments.

    Every env runs episodes of ``episode_length`` steps (the envs out of phase); an episode ends in a truncation.

    :param n_envs: number of environments
    :param shape: the stack shape, frames on the first axis
    :param episode_length: steps per episode
    :param steps: number of ``add()`` calls
    :param seed: seed of the frame pool
    """
    rng = np.random.default_rng(seed)
    pool = rng.integers(0, 256, (97, 1, *shape[1:]), dtype=np.uint8)
    obs = np.zeros((n_envs, *shape), np.uint8)
    phase = np.arange(n_envs) * episode_length // n_envs
    action = np.zeros((n_envs, 2), np.float32)
    reward = np.zeros(n_envs, np.float32)
    for step in range(steps):
        starting = (step + phase) % episode_length == 0
        obs[starting] = 0
        obs[starting, -1:] = pool[step % len(pool)]
        next_obs = np.concatenate([obs[:, 1:], pool[(step * 7 + np.arange(n_envs)) % len(pool)]], axis=1)
        done = (step + phase) % episode_length == episode_length - 1
        infos = [{"TimeLimit.truncated": bool(d)} for d in done]
        yield obs, next_obs, action, reward, done.astype(np.float32), infos
        obs = next_obs


def measure(args: argparse.Namespace, n_envs: int) -> dict[str, Any]:
    """Fill the three buffers side by side, then time ``add()`` and ``sample()``.

    :param args: the flags
    :param n_envs: number of environments
    :return: per variant: bytes per transition, GB at each size, seconds per add and per sample
    """
    observation_space = spaces.Box(0, 255, tuple(args.shape), np.uint8)
    buffers = make_buffers(args.probe_size, observation_space, n_envs)
    names = list(buffers)
    add_times: dict[str, list[float]] = {name: [] for name in names}
    per_env = args.probe_size // n_envs
    transitions = stream(n_envs, tuple(args.shape), args.episode_length, per_env * 3 // 2)
    for block_index in range(per_env * 3 // 2 // args.block):
        block = [next(transitions) for _ in range(args.block)]
        shift = block_index % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            for transition in block:
                buffers[name].add(*transition)
            if block_index * args.block >= per_env:  # the ring has wrapped: no first-touch page faults
                add_times[name].append((time.perf_counter() - start) / args.block)
    sample_times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(args.rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            for _ in range(args.sample_calls):
                buffers[name].sample(args.batch_size)
            sample_times[name].append((time.perf_counter() - start) / args.sample_calls)
    # The bytes of each buffer at the probe size and at twice that (filled the same way): the slope is the cost of a
    # transition, the rest a fixed cost (SB3's arrays have none; the frame store has a margin and the last stacks).
    larger = make_buffers(2 * args.probe_size, observation_space, n_envs)
    for transition in stream(n_envs, tuple(args.shape), args.episode_length, per_env * 3):
        larger[VARIANTS[2]].add(*transition)
    reference = VARIANTS[0]
    reference_per_transition = buffer_nbytes(buffers[reference]) / args.probe_size
    rows = {}
    for name, buffer in buffers.items():
        per_transition = (buffer_nbytes(larger[name]) - buffer_nbytes(buffer)) / args.probe_size
        fixed = buffer_nbytes(buffer) - per_transition * args.probe_size
        rows[name] = {
            "bytes_per_transition": per_transition,
            "fixed_bytes": fixed,
            "memory_ratio_vs_replay_buffer": per_transition / reference_per_transition,
            "gb_at_size": {str(size): (fixed + per_transition * size) / 1e9 for size in args.sizes},
            "add_us_median": statistics.median(add_times[name]) * 1e6,
            "add_ratio_vs_replay_buffer": median_ratio(add_times[name], add_times[reference]),
            "sample_ms_median": statistics.median(sample_times[name]) * 1e3,
            "sample_ratio_vs_replay_buffer": median_ratio(sample_times[name], sample_times[reference]),
        }
    del larger
    rows[VARIANTS[2]]["frames_per_env"] = len(buffers[VARIANTS[2]].frame_stores[None].frames)
    return rows


def to_markdown(results: dict[str, Any]) -> str:
    """Summarise the results as a Markdown table.

    :param results: the results of :func:`main`
    :return: the Markdown text
    """
    flags = results["run"]["flags"]
    sizes = flags["sizes"]
    headers = ["buffer", "bytes/transition", "vs ReplayBuffer", "fixed MB", *(f"GB at {s:,}" for s in sizes),
               "add() µs", "add() ratio", "sample(256) ms", "sample ratio"]  # fmt: skip
    lines = [
        f"# Replay buffer memory and speed, observations {tuple(flags['shape'])} uint8, 2 float32 actions",
        "",
        describe_line(results["run"]),
        f"Episodes of {flags['episode_length']} steps ending in a truncation, buffers of {flags['probe_size']:,} "
        f"transitions filled 1.5 times. SB3's default buffer_size is {results['sb3_default_buffer_size']:,}. "
        "GB = 1e9 bytes, for a full buffer. add(): after the ring wrapped, median of blocks of "
        f"{flags['block']} calls; sample(): median of {flags['rounds']} rounds of {flags['sample_calls']} calls; "
        "ratios against ReplayBuffer measured in the same run, calls alternated.",
    ]
    for n_envs, variants in results["n_envs"].items():
        rows = [
            [name, int(round(v["bytes_per_transition"])), v["memory_ratio_vs_replay_buffer"], v["fixed_bytes"] / 1e6,
             *(v["gb_at_size"][str(s)] for s in sizes), v["add_us_median"], v["add_ratio_vs_replay_buffer"],
             v["sample_ms_median"], v["sample_ratio_vs_replay_buffer"]]  # fmt: skip
            for name, v in variants.items()
        ]
        lines += ["", f"## {n_envs} env(s)", "", markdown_table(headers, rows)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--probe-size", type=int, default=8000, help="capacity of the buffers actually built")
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[1_000_000, 200_000, 100_000, 50_000], help="capacities to report"
    )
    parser.add_argument("--shape", type=int, nargs=3, default=[4, 84, 84], help="observation shape (uint8)")
    parser.add_argument("--episode-length", type=int, default=100, help="steps per episode of the stream")
    parser.add_argument("--n-envs", type=int, nargs="+", default=[1, 4], help="environments adding to the buffers")
    parser.add_argument("--block", type=int, default=20, help="add() calls timed together, per buffer in turn")
    parser.add_argument("--batch-size", type=int, default=256, help="sample() batch size")
    parser.add_argument("--rounds", type=int, default=30, help="rounds of sample() calls")
    parser.add_argument("--sample-calls", type=int, default=10, help="sample() calls per buffer per round")
    add_common_args(parser, threads=1)
    args = parser.parse_args()
    set_threads(args.threads)
    results = {
        "run": run_description(args),
        "observation_shape": args.shape,
        "sb3_default_buffer_size": SB3_DEFAULT_BUFFER_SIZE,
        "n_envs": {str(n_envs): measure(args, n_envs) for n_envs in args.n_envs},
    }
    json_path, md_path = write_results(args.output_dir, "replay_memory", results, to_markdown(results))
    print(to_markdown(results))
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
