"""Replay buffer memory per transition for 4x84x84 uint8 observations, with and without ``optimize_memory_usage``.

The bytes are the ``nbytes`` of the arrays of an actual SB3 ``ReplayBuffer`` of ``--probe-size`` transitions
(observations, next observations unless ``optimize_memory_usage``, actions, rewards, dones, timeouts), divided by
its size and checked to be exactly linear against a buffer twice as large; they are then extrapolated to the
buffer sizes asked for (SB3's default ``buffer_size`` is 1,000,000). The arrays are allocated with ``np.zeros``,
so the operating system commits the pages as the buffer fills: the figures are the memory of a full buffer.

Run: ``python benchmarks/replay_memory.py``
"""

from __future__ import annotations

import argparse
import inspect
from typing import Any

import numpy as np
from common import add_common_args, describe_line, markdown_table, run_description, set_threads, write_results
from gymnasium import spaces
from stable_baselines3 import TD3
from stable_baselines3.common.buffers import ReplayBuffer

#: the arrays a ReplayBuffer may hold
ARRAYS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")

#: SB3's default TD3 ``buffer_size``, read from its signature
SB3_DEFAULT_BUFFER_SIZE: int = inspect.signature(TD3).parameters["buffer_size"].default


def buffer_bytes(size: int, observation_space: spaces.Box, optimize_memory_usage: bool) -> dict[str, int]:
    """Build a ReplayBuffer and return the bytes of each of its arrays.

    :param size: capacity in transitions
    :param observation_space: the observation space
    :param optimize_memory_usage: SB3's variant that stores each frame once (next observation = following slot)
    :return: ``nbytes`` per array name (arrays the buffer does not hold are absent)
    """
    action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
    buffer = ReplayBuffer(
        size, observation_space, action_space, device="cpu", n_envs=1,
        optimize_memory_usage=optimize_memory_usage, handle_timeout_termination=not optimize_memory_usage,
    )  # fmt: skip
    return {name: getattr(buffer, name).nbytes for name in ARRAYS if getattr(buffer, name, None) is not None}


def measure(probe_size: int, sizes: list[int], observation_space: spaces.Box) -> list[dict[str, Any]]:
    """Bytes per transition of both variants, and the memory of full buffers of the given sizes.

    :param probe_size: capacity of the buffer actually built
    :param sizes: capacities to extrapolate to
    :param observation_space: the observation space
    :return: one dict per variant
    """
    rows = []
    for optimize in (False, True):
        small = buffer_bytes(probe_size, observation_space, optimize)
        large = buffer_bytes(2 * probe_size, observation_space, optimize)
        per_transition = sum(small.values()) / probe_size
        if sum(large.values()) != 2 * sum(small.values()):
            raise RuntimeError(f"Buffer bytes are not linear in the size: {small} at {probe_size}, {large} at x2.")
        rows.append({
            "optimize_memory_usage": optimize,
            "bytes_per_transition": per_transition,
            "bytes_per_transition_by_array": {name: nbytes / probe_size for name, nbytes in small.items()},
            "gb_at_size": {str(size): per_transition * size / 1e9 for size in sizes},
        })  # fmt: skip
    return rows


def to_markdown(results: dict[str, Any]) -> str:
    """Summarise the results as a Markdown table.

    :param results: the results of :func:`main`
    :return: the Markdown text
    """
    sizes = results["run"]["flags"]["sizes"]
    rows = [
        [str(v["optimize_memory_usage"]), int(v["bytes_per_transition"]), *(v["gb_at_size"][str(s)] for s in sizes)]
        for v in results["variants"]
    ]
    headers = ["optimize_memory_usage", "bytes/transition", *(f"GB at {s:,}" for s in sizes)]
    return "\n".join([
        f"# Replay buffer memory, observations {tuple(results['observation_shape'])} uint8, 2 float32 actions",
        "",
        describe_line(results["run"]),
        f"SB3's default buffer_size is {results['sb3_default_buffer_size']:,}. GB = 1e9 bytes, for a full buffer.",
        "",
        markdown_table(headers, rows),
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--probe-size", type=int, default=1000, help="capacity of the buffer actually built")
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[1_000_000, 200_000, 100_000, 50_000], help="capacities to report"
    )
    parser.add_argument("--shape", type=int, nargs=3, default=[4, 84, 84], help="observation shape (uint8)")
    add_common_args(parser, threads=1)
    args = parser.parse_args()
    set_threads(args.threads)
    observation_space = spaces.Box(0, 255, tuple(args.shape), np.uint8)
    results = {
        "run": run_description(args),
        "observation_shape": args.shape,
        "sb3_default_buffer_size": SB3_DEFAULT_BUFFER_SIZE,
        "variants": measure(args.probe_size, args.sizes, observation_space),
    }
    json_path, md_path = write_results(args.output_dir, "replay_memory", results, to_markdown(results))
    print(to_markdown(results))
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
