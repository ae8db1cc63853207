"""What ``TD3CnnClip("CnnPolicy", "CarlaScenario0-v0").learn(5000)`` costs on a CPU, and cheaper CPU settings.

Every candidate is a ``TD3CnnClip("CnnPolicy", "CarlaScenario0-v0", ...)`` (the surrogate backend when no CARLA
server answers) with its own torch thread count and keyword arguments. The candidates learn in interleaved chunks
of ``--chunk`` steps (``learn(chunk, reset_num_timesteps=False)``, the thread count set before each chunk), so
load from other processes hits them alike, for ``--measure-steps`` steps each. The time goes to three places,
measured by wrapping the model's methods: the env (``VecEnv.step``: simulator, DrivingEnv, Monitor), the rest of
the rollout (policy forward, replay buffer, callbacks) and ``train()``. Per env step and per gradient step these
are the medians over the chunks; ``learn(total)`` is then extrapolated as ``total x (env + rollout) + updates x
train``, with the candidate's own ``learning_starts``, ``train_freq`` and ``gradient_steps`` (the measurement
itself starts training after ``--measure-learning-starts`` steps so that every candidate has updates to time).

With ``--full N`` the candidate named by ``--full-candidate`` (default: the first) also runs one uninterrupted
``learn(N)`` after the chunks, to check the extrapolation (and, with N = 5000, to give the real figure).

Run: ``python benchmarks/learn_5000.py --measure-steps 300``
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

from common import add_common_args, describe_line, markdown_table, run_description, set_threads, write_results
from replay_memory import buffer_nbytes
from stable_baselines3 import TD3
from stable_baselines3.common.vec_env import VecEnv

from sb3_td3_cnnclip import TD3CnnClip

ENV_ID = "CarlaScenario0-v0"

#: SB3's TD3 default ``learning_starts`` (TD3CnnClip keeps it)
TD3_LEARNING_STARTS: int = inspect.signature(TD3).parameters["learning_starts"].default

#: replay buffer of every default candidate: the CLI's default, which holds a whole learn(5000); the buffer's size
#: does not change the time per step (the arrays are allocated lazily and sampling costs O(batch))
BUFFER_SIZE = 10_000

#: the candidates compared by default: name -> (torch threads, TD3CnnClip keyword arguments); the first is the
#: package's defaults (TD3's: batch 256, learning_starts 100, one update per env step; torch's 2 threads here)
DEFAULT_CANDIDATES: dict[str, tuple[int, dict[str, Any]]] = {
    "defaults (2 threads)": (2, {"buffer_size": BUFFER_SIZE}),
    "1 thread": (1, {"buffer_size": BUFFER_SIZE}),
    "batch 128, 1 thread": (1, {"buffer_size": BUFFER_SIZE, "batch_size": 128}),
    "batch 64, 2 threads": (2, {"buffer_size": BUFFER_SIZE, "batch_size": 64}),
    "batch 64, 1 thread": (1, {"buffer_size": BUFFER_SIZE, "batch_size": 64}),
    "recommended: batch 64, 1 thread, learning_starts 1000": (
        1, {"buffer_size": BUFFER_SIZE, "batch_size": 64, "learning_starts": 1000}
    ),
}


class Timer:
    """Wraps a callable and accumulates the wall time spent in it.

    :param function: the callable to time
    """

    def __init__(self, function: Callable[..., Any]) -> None:
        self.function = function
        self.seconds = 0.0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return self.function(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start


class TimedModel:
    """A TD3CnnClip whose env steps, rollouts and ``train()`` calls are timed.

    :param threads: torch threads while this model learns
    :param kwargs: TD3CnnClip keyword arguments (on top of the package defaults)
    :param seed: the model's seed
    """

    def __init__(self, threads: int, kwargs: dict[str, Any], seed: int) -> None:
        self.threads = threads
        self.kwargs = kwargs
        set_threads(threads)
        start = time.perf_counter()
        self.model = TD3CnnClip("CnnPolicy", ENV_ID, seed=seed, **kwargs)
        self.setup_seconds = time.perf_counter() - start
        env = self.model.get_env()
        assert isinstance(env, VecEnv)
        self.env_step = env.step = Timer(env.step)
        self.rollout = self.model.collect_rollouts = Timer(self.model.collect_rollouts)
        self.train = self.model.train = Timer(self.model.train)
        #: per chunk: (env steps, updates, env seconds, rest-of-rollout seconds, train seconds)
        self.chunks: list[tuple[int, int, float, float, float]] = []

    def learn(self, steps: int) -> None:
        """Learn ``steps`` more steps with this model's thread count and record the chunk's times.

        :param steps: env steps
        """
        set_threads(self.threads)
        before = (self.model.num_timesteps, self.model._n_updates, self.env_step.seconds, self.rollout.seconds,
                  self.train.seconds)  # fmt: skip
        self.model.learn(steps, reset_num_timesteps=False)
        env = self.env_step.seconds - before[2]
        self.chunks.append((
            self.model.num_timesteps - before[0], self.model._n_updates - before[1], env,
            self.rollout.seconds - before[3] - env, self.train.seconds - before[4],
        ))  # fmt: skip

    def summary(self, total: int, learning_starts: int) -> dict[str, Any]:
        """Per-step and per-update medians over the chunks, and ``learn(total)`` extrapolated.

        :param total: env steps of the extrapolated run
        :param learning_starts: the candidate's own ``learning_starts`` (the measurement may use another)
        """
        env_ms = statistics.median(1e3 * c[2] / c[0] for c in self.chunks)
        rollout_ms = statistics.median(1e3 * c[3] / c[0] for c in self.chunks)
        train_ms = statistics.median(1e3 * c[4] / c[1] for c in self.chunks if c[1] > 0)
        model = self.model
        calls = max(0, total - learning_starts) // model.train_freq.frequency
        updates = calls * model.gradient_steps
        seconds = total * (env_ms + rollout_ms) / 1e3 + updates * train_ms / 1e3
        return {
            "threads": self.threads,
            "kwargs": self.kwargs,
            "batch_size": model.batch_size,
            "learning_starts": learning_starts,
            "train_freq": model.train_freq.frequency,
            "gradient_steps": model.gradient_steps,
            "buffer_size": model.buffer_size,
            "full_buffer_gb": buffer_nbytes(model.replay_buffer) / 1e9,  # allocated now: SB3 all, FrameStack its blocks
            "setup_s": self.setup_seconds,
            "measured_steps": sum(c[0] for c in self.chunks),
            "measured_updates": sum(c[1] for c in self.chunks),
            "env_ms_per_step": env_ms,
            "rollout_other_ms_per_step": rollout_ms,
            "train_ms_per_update": train_ms,
            f"updates_in_{total}": updates,
            f"extrapolated_learn_{total}_s": seconds,
            f"extrapolated_env_share": total * env_ms / 1e3 / seconds,
        }


def construct_defaults() -> dict[str, Any]:
    """Try the literal ``TD3CnnClip("CnnPolicy", ENV_ID)`` and report whether its replay buffer could be allocated.

    :return: ``{"constructed": True, "buffer_size": ...}`` or ``{"constructed": False, "error": ...}``
    """
    try:
        model = TD3CnnClip("CnnPolicy", ENV_ID)
    except MemoryError as err:  # numpy's _ArrayMemoryError when the buffer exceeds what the OS will commit
        return {"constructed": False, "error": f"{type(err).__name__}: {err}"}
    result = {"constructed": True, "buffer_size": model.buffer_size}
    model.get_env().close()
    return result


def full_run(threads: int, kwargs: dict[str, Any], total: int, seed: int) -> dict[str, Any]:
    """One uninterrupted ``learn(total)`` with the time split into env, rest of the rollout and train.

    :param threads: torch threads
    :param kwargs: TD3CnnClip keyword arguments
    :param total: env steps
    :param seed: the model's seed
    """
    timed = TimedModel(threads, kwargs, seed)
    start = time.perf_counter()
    timed.learn(total)
    wall = time.perf_counter() - start
    _, updates, env, rollout, train = timed.chunks[0]
    return {
        "threads": threads,
        "kwargs": kwargs,
        "timesteps": total,
        "updates": updates,
        "setup_s": timed.setup_seconds,
        "learn_s": wall,
        "env_s": env,
        "rollout_other_s": rollout,
        "train_s": train,
        "other_s": wall - env - rollout - train,
    }


def to_markdown(results: dict[str, Any]) -> str:
    """Summarise the results as Markdown tables.

    :param results: the results of :func:`main`
    :return: the Markdown text
    """
    total = results["run"]["flags"]["total"]
    reference = next(iter(results["candidates"].values()))[f"extrapolated_learn_{total}_s"]
    rows = [
        [name, v["threads"], v["batch_size"], v["learning_starts"], v["buffer_size"], f"{v['full_buffer_gb']:.2f}",
         v["env_ms_per_step"], v["rollout_other_ms_per_step"], v["train_ms_per_update"], v[f"updates_in_{total}"],
         v[f"extrapolated_learn_{total}_s"] / 60, v[f"extrapolated_learn_{total}_s"] / reference]
        for name, v in results["candidates"].items()
    ]  # fmt: skip
    headers = ["candidate", "threads", "batch", "learning_starts", "buffer", "full buffer GB", "env ms/step",
               "rollout other ms/step", "train ms/update", f"updates in {total}", f"learn({total}) min (extrapolated)",
               "vs first"]  # fmt: skip
    literal = results["literal_defaults"]
    text = [
        f"# learn({total}) of TD3CnnClip('CnnPolicy', '{ENV_ID}') on a CPU",
        "",
        describe_line(results["run"]),
        f"`TD3CnnClip('CnnPolicy', '{ENV_ID}')` with every default: "
        + ("constructed." if literal["constructed"] else f"failed on this machine: `{literal['error']}`."),
        f"Medians over {results['run']['flags']['chunk']}-step chunks of interleaved learn() calls; learn({total}) "
        "extrapolated from them (see the script's docstring).",
        "",
        markdown_table(headers, rows),
    ]
    if "full" in results:
        v = results["full"]
        text += [
            "",
            f"Uninterrupted learn({v['timesteps']}) of '{v['candidate']}': {v['learn_s'] / 60:.1f} min "
            f"({v['updates']} updates): env {v['env_s']:.0f} s, rest of the rollout {v['rollout_other_s']:.0f} s, "
            f"train {v['train_s']:.0f} s, other {v['other_s']:.0f} s; model construction {v['setup_s']:.1f} s.",
        ]
    return "\n".join(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--measure-steps", type=int, default=300, help="env steps measured per candidate")
    parser.add_argument("--chunk", type=int, default=50, help="env steps per learn() call before switching")
    parser.add_argument("--measure-learning-starts", type=int, default=100, help="learning_starts while measuring")
    parser.add_argument("--total", type=int, default=5000, help="env steps of the extrapolated learn()")
    parser.add_argument("--full", type=int, default=0, help="also run one candidate's learn(N) in one go")
    parser.add_argument("--full-candidate", default=None, help="the candidate of --full (default: the first)")
    parser.add_argument(
        "--candidates", type=json.loads, default=DEFAULT_CANDIDATES,
        help='JSON {"name": [threads, {TD3CnnClip kwargs}], ...}; the first is the reference',
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of every model")
    # --threads applies outside the candidates' learn() calls (model construction); each candidate sets its own
    add_common_args(parser, threads=os.cpu_count() or 1)
    args = parser.parse_args()
    set_threads(args.threads)
    timed = {
        name: TimedModel(threads, {**kwargs, "learning_starts": args.measure_learning_starts}, args.seed)
        for name, (threads, kwargs) in args.candidates.items()
    }
    for chunk in range(args.measure_steps // args.chunk):
        for name, model in timed.items():
            model.learn(args.chunk)
        print(f"chunk {chunk + 1}/{args.measure_steps // args.chunk} done")
    results: dict[str, Any] = {
        "run": run_description(args),
        "literal_defaults": construct_defaults(),
        "candidates": {},
    }
    for name, model in timed.items():
        learning_starts = args.candidates[name][1].get("learning_starts", TD3_LEARNING_STARTS)
        results["candidates"][name] = model.summary(args.total, learning_starts)
    if args.full:
        name = args.full_candidate or next(iter(args.candidates))
        threads, kwargs = args.candidates[name]
        results["full"] = {"candidate": name, **full_run(threads, kwargs, args.full, args.seed)}
    set_threads(args.threads)
    write_results(args.output_dir, "learn_5000", results, to_markdown(results))


if __name__ == "__main__":
    main()
