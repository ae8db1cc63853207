"""Replay buffer memory and speed on three camera streams of 84x84 ``uint8`` images: SB3's ``ReplayBuffer`` (with
and without ``optimize_memory_usage``) against ``FrameStackReplayBuffer``, side by side in one run.

The streams (``--n-envs`` environments, episodes of ``--episode-length`` steps ending in a truncation, the terminal
observation as next observation, SB3's way, out of phase between the environments, frames drawn from a pool of
random images), each run for ``1.5 x`` the capacity, so the ring has wrapped:

- ``gray4``: 4 stacked grayscale frames like ``VecFrameStack`` (zero padding at a reset): consecutive observations
  share 3 frames;
- ``rgb``: one RGB image (3, 84, 84), no frame stacking: the next observation shares no frame with the observation
  (the following observation is the next one);
- ``unshared``: 4 frames, every observation and next observation drawn afresh: no frame is shared anywhere.

``optimize_memory_usage=True`` takes next observations from the following slot (SB3 requires
``handle_timeout_termination=False`` with it): on ``rgb`` and ``unshared`` it does not keep what the others keep.

- Memory (tracemalloc, one env, each buffer built and filled alone): the bytes allocated after the fill (held) and
  the most allocated at once (peak).
- Bytes per transition: the ``nbytes`` of every array a full buffer holds, for buffers of the probe size and of twice
  that, filled the same way: bytes per transition = the difference / the probe size, fixed bytes = the rest,
  extrapolated to ``--sizes`` (SB3's default ``buffer_size`` is 1,000,000).
- ``add()``: the CPU time of every call (``time.thread_time``, about 1 µs of it the clock itself: on a shared
  machine a call's wall time also counts the other processes that preempt it), the buffers taking the same block of
  ``--block`` calls in turn, their order rotating, the least of ``--repeats`` fills for each call (a stall that
  the buffer causes recurs at the same call, a hiccup of the machine does not): the slowest call of the whole fill
  (first pass included: it commits the pages of new arrays, and a buffer that grew by copying would stall there),
  and the median once the ring has wrapped, with the median of the paired ratios of block means against SB3's
  ``ReplayBuffer``.
- ``sample(256)``: rounds of ``--sample-calls`` calls per buffer, alternated, ``--rounds`` rounds; median of the
  paired ratios against SB3's ``ReplayBuffer``.

Run: ``python benchmarks/replay_memory.py``
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import time
import tracemalloc
from collections.abc import Iterator
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

#: the streams: frames per observation, and whether consecutive observations share frames (see the docstring)
STREAMS = {"gray4": 4, "rgb": 3, "unshared": 4}


def make_buffer(variant: str, size: int, kind: str, n_envs: int) -> ReplayBuffer:
    """One buffer of the comparison.

    :param variant: one of ``VARIANTS``
    :param size: capacity in transitions (all envs together, as SB3 counts it)
    :param kind: the stream, a key of ``STREAMS`` (it sets the observation shape)
    :param n_envs: number of environments
    :return: the buffer
    """
    observation_space = spaces.Box(0, 255, (STREAMS[kind], 84, 84), np.uint8)
    action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
    common = dict(buffer_size=size, observation_space=observation_space, action_space=action_space, device="cpu",
                  n_envs=n_envs)  # fmt: skip
    if variant == VARIANTS[1]:
        return ReplayBuffer(**common, optimize_memory_usage=True, handle_timeout_termination=False)
    return (FrameStackReplayBuffer if variant == VARIANTS[2] else ReplayBuffer)(**common)


def buffer_nbytes(buffer: ReplayBuffer) -> int:
    """Bytes of every array the buffer holds.

    :param buffer: an SB3 ReplayBuffer or a FrameStackReplayBuffer
    :return: the bytes
    """
    if isinstance(buffer, FrameStackReplayBuffer):
        return buffer.nbytes
    return sum(getattr(buffer, name).nbytes for name in SB3_ARRAYS if getattr(buffer, name, None) is not None)


def stream(kind: str, n_envs: int, episode_length: int, steps: int, pool: np.ndarray) -> Iterator[tuple]:
    """Yield the arguments of ``add()`` for ``steps`` steps of ``n_envs`` camera environments.

    :param kind: the stream, a key of ``STREAMS``
    :param n_envs: number of environments
    :param episode_length: steps per episode (the envs out of phase); an episode ends in a truncation
    :param steps: number of ``add()`` calls
    :param pool: the frames drawn from, shape ``(frames, 1, 84, 84)``
    """
    depth = STREAMS[kind]
    phase = np.arange(n_envs) * episode_length // n_envs
    action = np.zeros((n_envs, 2), np.float32)
    reward = np.zeros(n_envs, np.float32)
    drawn = 0

    def fresh(frames: int) -> np.ndarray:  # (n_envs, frames, 84, 84), the next frames of the pool
        nonlocal drawn
        drawn += n_envs * frames
        return pool[np.arange(drawn - n_envs * frames, drawn) % len(pool)].reshape(n_envs, frames, 84, 84)

    obs = fresh(depth)
    for step in range(steps):
        starting = (step + phase) % episode_length == 0
        if kind == "unshared":
            obs = fresh(depth)
        elif starting.any():  # a reset: a new observation, zero-padded when stacked
            obs[starting] = fresh(depth)[starting]
            obs[starting, : depth - 1] *= kind != "gray4"
        next_obs = np.concatenate([obs[:, 1:], fresh(1)], axis=1) if kind == "gray4" else fresh(depth)
        done = (step + phase) % episode_length == episode_length - 1
        infos = [{"TimeLimit.truncated": bool(d)} for d in done]
        yield obs, next_obs, action, reward, done.astype(np.float32), infos
        obs = next_obs.copy()


def traced_memory(args: argparse.Namespace, kind: str, variant: str, pool: np.ndarray) -> dict[str, float]:
    """Build and fill one buffer alone (one env) under tracemalloc.

    :param args: the flags
    :param kind: the stream
    :param variant: the buffer
    :param pool: the frames of the stream
    :return: the bytes held after the fill and the peak, in MB
    """
    tracemalloc.start()
    try:
        buffer = make_buffer(variant, args.probe_size, kind, 1)
        for transition in stream(kind, 1, args.episode_length, args.probe_size * 3 // 2, pool):
            buffer.add(*transition)
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return {"held_mb": held / 1e6, "peak_mb": peak / 1e6}


def timed_fill(args: argparse.Namespace, kind: str, n_envs: int, pool: np.ndarray) -> tuple[dict, dict]:
    """Build the three buffers and fill them side by side, timing every ``add()`` call.

    :param args: the flags
    :param kind: the stream
    :param n_envs: number of environments
    :param pool: the frames of the stream
    :return: the buffers, and the CPU seconds of their ``add()`` calls, by variant
    """
    buffers = {name: make_buffer(name, args.probe_size, kind, n_envs) for name in VARIANTS}
    names = list(buffers)
    calls: dict[str, list[float]] = {name: [] for name in names}
    steps = args.probe_size // n_envs * 3 // 2
    transitions = stream(kind, n_envs, args.episode_length, steps, pool)
    for block_index in range(steps // args.block):
        block = [next(transitions) for _ in range(args.block)]
        shift = block_index % len(names)
        for name in names[shift:] + names[:shift]:
            for transition in block:
                start = time.thread_time()  # CPU time: a preemption by another process is not the buffer's
                buffers[name].add(*transition)
                calls[name].append(time.thread_time() - start)
    return buffers, calls


def measure(args: argparse.Namespace, kind: str, n_envs: int, pool: np.ndarray) -> dict[str, Any]:
    """Fill the three buffers side by side ``--repeats`` times, then time ``sample()``; measure the bytes per
    transition. Each ``add()`` call's time is its least over the repeats: a stall that the buffer causes recurs at the
    same call, a machine's hiccup does not.

    :param args: the flags
    :param kind: the stream
    :param n_envs: number of environments
    :param pool: the frames of the stream
    :return: per variant: bytes per transition, GB at each size, ``add()`` and ``sample()`` times
    """
    repeats = []
    for _ in range(args.repeats):
        buffers, calls = timed_fill(args, kind, n_envs, pool)
        repeats.append(calls)
    names = list(buffers)
    calls = {name: np.min([r[name] for r in repeats], axis=0).tolist() for name in names}
    per_env = args.probe_size // n_envs
    wrapped = {name: times[per_env:] for name, times in calls.items()}  # once the ring has wrapped
    block_means = {
        name: [statistics.fmean(times[i : i + args.block]) for i in range(0, len(times), args.block)]
        for name, times in wrapped.items()
    }
    sample_times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(args.rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            for _ in range(args.sample_calls):
                buffers[name].sample(args.batch_size)
            sample_times[name].append((time.perf_counter() - start) / args.sample_calls)
    # The bytes of each buffer at the probe size and at twice that (filled the same way): the slope is the cost of a
    # transition, the rest a fixed cost (SB3's arrays have none; the frame store has the last stacks).
    larger = make_buffer(VARIANTS[2], 2 * args.probe_size, kind, n_envs)
    for transition in stream(kind, n_envs, args.episode_length, per_env * 3, pool):
        larger.add(*transition)
    reference = VARIANTS[0]
    reference_per_transition = buffer_nbytes(buffers[reference]) / args.probe_size
    rows = {}
    for name, buffer in buffers.items():
        larger_bytes = buffer_nbytes(larger) if name == VARIANTS[2] else 2 * buffer_nbytes(buffer)
        per_transition = (larger_bytes - buffer_nbytes(buffer)) / args.probe_size
        fixed = buffer_nbytes(buffer) - per_transition * args.probe_size
        rows[name] = {
            "bytes_per_transition": per_transition,
            "fixed_bytes": fixed,
            "memory_ratio_vs_replay_buffer": per_transition / reference_per_transition,
            "gb_at_size": {str(size): (fixed + per_transition * size) / 1e9 for size in args.sizes},
            "add_us_median": statistics.median(wrapped[name]) * 1e6,
            "add_ms_slowest": max(calls[name]) * 1e3,
            "add_ratio_vs_replay_buffer": median_ratio(block_means[name], block_means[reference]),
            "sample_ms_median": statistics.median(sample_times[name]) * 1e3,
            "sample_ratio_vs_replay_buffer": median_ratio(sample_times[name], sample_times[reference]),
        }
    rows[VARIANTS[2]]["blocks"] = sum(len(store.blocks) for store in buffers[VARIANTS[2]].frame_stores.values())
    return rows


def to_markdown(results: dict[str, Any]) -> str:
    """Summarise the results as Markdown tables.

    :param results: the results of :func:`main`
    :return: the Markdown text
    """
    flags = results["run"]["flags"]
    sizes = flags["sizes"]
    lines = [
        "# Replay buffer memory and speed, 84x84 uint8 camera streams, 2 float32 actions",
        "",
        describe_line(results["run"]),
        f"Episodes of {flags['episode_length']} steps ending in a truncation, buffers of {flags['probe_size']:,} "
        f"transitions filled 1.5 times. Streams: gray4 = 4 stacked grayscale frames (consecutive observations share "
        "3), rgb = (3, 84, 84) without stacking (the next observation shares no frame with the observation), "
        "unshared = 4 frames, every observation and next observation drawn afresh. optimize_memory_usage=True "
        "takes next observations from the following slot: on rgb and unshared it does not keep what the others "
        f"keep. SB3's default buffer_size is {results['sb3_default_buffer_size']:,}.",
        "",
        "## Memory (tracemalloc, one env, each buffer built and filled alone)",
        "",
    ]
    headers = ["stream", "buffer", "held MB", "peak MB", "peak / ReplayBuffer's peak"]
    rows = []
    for kind, variants in results["traced"].items():
        reference = variants[VARIANTS[0]]["peak_mb"]
        rows += [[kind, name, v["held_mb"], v["peak_mb"], v["peak_mb"] / reference] for name, v in variants.items()]
    lines += [markdown_table(headers, rows), ""]
    lines += [
        "## Bytes and speed",
        "",
        f"GB = 1e9 bytes, for a full buffer (nbytes). add(): CPU time per call (thread_time), least of "
        f"{flags['repeats']} fills: the slowest of the whole fill, the median once the ring wrapped, and the median "
        "ratio of block means; sample(): wall time, median of "
        f"{flags['rounds']} rounds of {flags['sample_calls']} calls; ratios against ReplayBuffer measured in the same "
        "run, calls alternated.",
    ]
    headers = ["buffer", "bytes/transition", "vs ReplayBuffer", "fixed MB", *(f"GB at {s:,}" for s in sizes),
               "slowest add() ms", "add() µs", "add() ratio", "sample(256) ms", "sample ratio"]  # fmt: skip
    for kind, by_envs in results["streams"].items():
        for n_envs, variants in by_envs.items():
            rows = [
                [name, int(round(v["bytes_per_transition"])), v["memory_ratio_vs_replay_buffer"],
                 v["fixed_bytes"] / 1e6, *(v["gb_at_size"][str(s)] for s in sizes), v["add_ms_slowest"],
                 v["add_us_median"], v["add_ratio_vs_replay_buffer"], v["sample_ms_median"],
                 v["sample_ratio_vs_replay_buffer"]]  # fmt: skip
                for name, v in variants.items()
            ]
            lines += ["", f"### {kind}, {n_envs} env(s)", "", markdown_table(headers, rows)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--probe-size", type=int, default=4000, help="capacity of the buffers actually built")
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[1_000_000, 200_000, 100_000, 50_000], help="capacities to report"
    )
    parser.add_argument("--streams", nargs="+", default=list(STREAMS), choices=list(STREAMS), help="camera streams")
    parser.add_argument("--episode-length", type=int, default=100, help="steps per episode of the streams")
    parser.add_argument("--n-envs", type=int, nargs="+", default=[1, 4], help="environments adding to the buffers")
    parser.add_argument("--block", type=int, default=20, help="add() calls per buffer in turn")
    parser.add_argument("--repeats", type=int, default=3, help="fills, each add() call's least time kept")
    parser.add_argument("--batch-size", type=int, default=256, help="sample() batch size")
    parser.add_argument("--rounds", type=int, default=20, help="rounds of sample() calls")
    parser.add_argument("--sample-calls", type=int, default=5, help="sample() calls per buffer per round")
    add_common_args(parser, threads=1)
    args = parser.parse_args()
    set_threads(args.threads)
    pool = np.random.default_rng(0).integers(0, 256, (97, 1, 84, 84), dtype=np.uint8)
    results = {
        "run": run_description(args),
        "sb3_default_buffer_size": SB3_DEFAULT_BUFFER_SIZE,
        "traced": {kind: {name: traced_memory(args, kind, name, pool) for name in VARIANTS} for kind in args.streams},
        "streams": {
            kind: {str(n_envs): measure(args, kind, n_envs, pool) for n_envs in args.n_envs} for kind in args.streams
        },
    }
    write_results(args.output_dir, "replay_memory", results, to_markdown(results))


if __name__ == "__main__":
    main()
