"""Environment throughput: the surrogate scenarios' steps/s, and what the env's own code costs on top of its simulator.

Surrogate (``CarlaScenario{0,1,2}-v0``, ``simulator="surrogate"``, random actions, reset on episode end): the envs
run in interleaved blocks of ``--block`` steps, so load from other processes hits all scenarios alike. Inside each
env the calls to the backend's highway-env instance (``backend.env.tick`` / ``reset``, highway-env with exactly the
surrogate's configuration, and ``backend.camera_image``, its drawing of the one image per decision) are timed, so the
wrapper's overhead (frame measurement, reward, frame stacking, info, Gymnasium wrappers) is measured on the very same
trajectory: ``env step - highway-env step``.

CARLA backend on the fake ``carla`` package of ``tests/fake_carla`` (with ``--fake-carla``): the same random-action
loop, first timed, then run under cProfile, where the time spent inside the fake package (the stand-in for the
server, entered from the backend) is separated from the backend's and the env's own code.

Several envs in one run (with ``--n-envs 1 2 4``): env steps/s of ``make_carla_vec_env`` on the surrogate for each
number of envs (one env: ``DummyVecEnv`` in this process; several: one worker process each), and SB3's own
``SubprocVecEnv`` of the same envs for each number above one, random actions, the
VecEnvs stepped in interleaved blocks of ``--block`` vector steps so load from other processes hits them alike, and
the CPU time the VecEnv's processes used per env step (Linux); written to ``env_throughput_n_envs.{json,md}`` instead.

Run: ``python benchmarks/env_throughput.py --steps 600 --fake-carla``, or
``python benchmarks/env_throughput.py --n-envs 1 2 4 --scenarios 0 --steps 200 --block 20``
"""

from __future__ import annotations

import argparse
import cProfile
import importlib
import os
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from common import add_common_args, describe_line, markdown_table, run_description, set_threads, write_results
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import SubprocVecEnv

from sb3_td3_cnnclip.envs.registration import SCENARIO_IDS
from sb3_td3_cnnclip.vec_env import make_carla_vec_env

#: the fake carla package used by the tests
FAKE_CARLA = Path(__file__).resolve().parent.parent / "tests" / "fake_carla"


class Stopwatch:
    """Wraps a callable and accumulates the wall time spent in it.

    :param function: the callable to time
    """

    def __init__(self, function: Callable[..., Any]) -> None:
        self.function = function
        self.seconds = 0.0
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return self.function(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start
            self.calls += 1


class RandomDriver:
    """Steps one env with seeded random actions, resetting it when an episode ends, and times steps and resets.

    :param env: the env
    :param seed: seed of the first reset and of the actions
    """

    def __init__(self, env: gym.Env, seed: int) -> None:
        self.env = env
        self.env.action_space.seed(seed)
        self.reset_seconds, self.resets, self.episode_lengths, self.length = 0.0, 0, [], 0
        start = time.perf_counter()
        self.env.reset(seed=seed)
        self.first_reset_seconds = time.perf_counter() - start

    def run(self, steps: int) -> float:
        """Take ``steps`` steps; return the seconds spent in ``step`` (resets are timed apart).

        :param steps: number of steps
        """
        step_seconds = 0.0
        for _ in range(steps):
            action = self.env.action_space.sample()
            start = time.perf_counter()
            _, _, terminated, truncated, _ = self.env.step(action)
            step_seconds += time.perf_counter() - start
            self.length += 1
            if terminated or truncated:
                self.episode_lengths.append(self.length)
                self.length = 0
                start = time.perf_counter()
                self.env.reset()
                self.reset_seconds += time.perf_counter() - start
                self.resets += 1
        return step_seconds


def surrogate_throughput(scenarios: list[int], steps: int, block: int, seed: int) -> dict[str, Any]:
    """Steps/s of each surrogate scenario and the wrapper's overhead over highway-env, interleaved by blocks.

    :param scenarios: scenario ids
    :param steps: steps per scenario
    :param block: steps per scenario before switching to the next
    :param seed: seed of the envs and of the actions
    :return: per scenario the figures
    """
    drivers, highway_ticks, highway_draws, highway_resets = {}, {}, {}, {}
    for scenario in scenarios:
        env = gym.make(SCENARIO_IDS[scenario], simulator="surrogate")
        backend = env.unwrapped.backend
        highway_ticks[scenario] = backend.env.tick = Stopwatch(backend.env.tick)
        highway_draws[scenario] = backend.camera_image = Stopwatch(backend.camera_image)
        highway_resets[scenario] = backend.env.reset = Stopwatch(backend.env.reset)
        drivers[scenario] = RandomDriver(env, seed)
    def highway_seconds(scenario: int) -> float:
        return highway_ticks[scenario].seconds + highway_draws[scenario].seconds

    blocks: dict[int, list[tuple[float, float]]] = {scenario: [] for scenario in scenarios}
    for _ in range(steps // block):
        for scenario in scenarios:
            inner_before = highway_seconds(scenario)
            seconds = drivers[scenario].run(block)
            blocks[scenario].append((seconds, highway_seconds(scenario) - inner_before))
    results = {}
    for scenario in scenarios:
        driver, env = drivers[scenario], drivers[scenario].env
        step_ms = [1e3 * total / block for total, _ in blocks[scenario]]
        inner_ms = [1e3 * inner / block for _, inner in blocks[scenario]]
        step_total = sum(total for total, _ in blocks[scenario])
        n_steps = block * len(blocks[scenario])
        results[str(scenario)] = {
            "n_npcs": env.unwrapped.config.n_npcs,
            "simulated_vehicles": env.unwrapped.backend.vehicles_count,
            "vehicles_density": env.unwrapped.backend.vehicles_density,
            "steps": n_steps,
            "resets": driver.resets,
            "mean_episode_length": statistics.mean(driver.episode_lengths) if driver.episode_lengths else None,
            "steps_per_s_with_resets": n_steps / (step_total + driver.reset_seconds),
            "steps_per_s_without_resets": n_steps / step_total,
            "median_block_step_ms": statistics.median(step_ms),
            "median_block_highway_step_ms": statistics.median(inner_ms),
            "median_block_wrapper_overhead_ms": statistics.median(a - b for a, b in zip(step_ms, inner_ms)),
            "median_block_step_ratio_vs_highway": statistics.median(a / b for a, b in zip(step_ms, inner_ms)),
            "mean_reset_ms": 1e3 * driver.reset_seconds / driver.resets if driver.resets else None,
            "mean_highway_reset_ms": 1e3 * highway_resets[scenario].seconds / highway_resets[scenario].calls,
            "drawing_share_of_highway_step": highway_draws[scenario].seconds / highway_seconds(scenario),
        }
        env.close()
    return results


def cpu_seconds(pids: list[int]) -> float:
    """CPU seconds (user + system) used so far by this process and the given processes (Linux ``/proc``).

    :param pids: other processes, e.g. a VecEnv's workers
    :return: the seconds
    """
    total = time.process_time()
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    return total


def vec_env_throughput(n_envs_list: list[int], scenario: int, steps: int, block: int, seed: int) -> dict[str, Any]:
    """Env steps/s of one surrogate scenario run by ``make_carla_vec_env`` with each number of envs, side by side with
    SB3's own ``SubprocVecEnv`` (``make_vec_env``, same envs) for each number above one.

    :param n_envs_list: numbers of envs to compare; the first is the reference of the speed-ups
    :param scenario: scenario id
    :param steps: vector steps per VecEnv
    :param block: vector steps per VecEnv before switching to the next
    :param seed: seed of the envs and of the actions
    :return: per VecEnv (``"2"``: ``make_carla_vec_env``, ``"2, SB3"``: SB3's ``SubprocVecEnv``) the figures
    """
    rng = np.random.default_rng(seed)
    vec_envs = {str(n): make_carla_vec_env(scenario, n, simulator="surrogate", seed=seed) for n in n_envs_list}
    for n in (n for n in n_envs_list if n > 1):
        vec_envs[f"{n}, SB3"] = make_vec_env(SCENARIO_IDS[scenario], n, seed=seed, vec_env_cls=SubprocVecEnv,
                                             env_kwargs={"simulator": "surrogate"})  # fmt: skip
    blocks: dict[str, list[float]] = {name: [] for name in vec_envs}
    cpu: dict[str, float] = {name: 0.0 for name in vec_envs}
    try:
        for vec_env in vec_envs.values():
            vec_env.reset()
        order = list(vec_envs)
        for _ in range(steps // block):
            order = order[1:] + order[:1]  # each VecEnv in each position in turn
            for name in order:
                vec_env = vec_envs[name]
                actions = rng.uniform(-1.0, 1.0, (block, vec_env.num_envs, 2)).astype(np.float32)
                pids = [process.pid for process in getattr(vec_env, "processes", [])]
                cpu_start, start = cpu_seconds(pids), time.perf_counter()
                for action in actions:
                    vec_env.step(action)
                blocks[name].append(time.perf_counter() - start)
                cpu[name] += cpu_seconds(pids) - cpu_start
    finally:
        for vec_env in vec_envs.values():
            vec_env.close()
    rates = {name: [vec_envs[name].num_envs * block / seconds for seconds in blocks[name]] for name in vec_envs}
    reference = str(n_envs_list[0])
    return {
        name: {
            "vec_env": type(vec_env).__name__,
            "vector_steps": block * len(blocks[name]),
            "env_steps_per_s": vec_env.num_envs * block * len(blocks[name]) / sum(blocks[name]),
            "median_block_env_steps_per_s": statistics.median(rates[name]),
            "median_block_speedup": statistics.median(a / b for a, b in zip(rates[name], rates[reference])),
            "cpu_ms_per_env_step": 1e3 * cpu[name] / (vec_env.num_envs * block * len(blocks[name])),
        }
        for name, vec_env in vec_envs.items()
    }


def vec_env_markdown(results: dict[str, Any]) -> str:
    """Summarise :func:`vec_env_throughput` results as Markdown.

    :param results: the results of :func:`main` with ``--n-envs``
    :return: the Markdown text
    """
    reference = next(iter(results["n_envs"]))
    load = results["load_average_1min"]
    rows = [[n, v["vec_env"], v["vector_steps"], v["env_steps_per_s"], v["median_block_env_steps_per_s"],
             v["median_block_speedup"], v["cpu_ms_per_env_step"]] for n, v in results["n_envs"].items()]  # fmt: skip
    headers = ["n_envs", "VecEnv", "vector steps", "env steps/s", "median block env steps/s",
               f"median block speed-up vs n_envs={reference}", "CPU ms per env step (all processes)"]  # fmt: skip
    return "\n".join([
        f"# Several envs in one run (surrogate CarlaScenario{results['scenario']}-v0, random actions)",
        "",
        describe_line(results["run"]),
        "The VecEnvs ran side by side in interleaved blocks of vector steps; a speed-up compares blocks run back to back. "
        "CPU time counts this process and the VecEnv's workers (user + system).",
        f"1-minute load average of the machine: {load['before']:.1f} before the run, {load['after']:.1f} after (with "
        f"{os.cpu_count()} cores, a load above {os.cpu_count()} means other processes competed for them).",
        "",
        markdown_table(headers, rows),
    ])  # fmt: skip


def import_fake_carla() -> Any:
    """Import the fake ``carla`` of the tests in place of any installed client, on a fresh fake server.

    :return: the fake module
    """
    for name in [name for name in sys.modules if name == "carla" or name.startswith("carla.")]:
        del sys.modules[name]
    sys.path.insert(0, str(FAKE_CARLA))
    carla = importlib.import_module("carla")
    if Path(carla.__file__).resolve().parent.parent != FAKE_CARLA:
        raise RuntimeError(f"Imported {carla.__file__} instead of the fake carla of {FAKE_CARLA}.")
    carla._server.reset()
    return carla


def fake_carla_overhead(steps: int, n_npcs: int, seed: int) -> dict[str, Any]:
    """Per-step time of the CARLA backend and env on the fake server, split into fake-server time and own code.

    :param steps: steps of the timed run and of the profiled run
    :param n_npcs: NPC vehicles spawned
    :param seed: seed of the env and of the actions
    :return: the figures
    """
    carla = import_fake_carla()
    fake_root = str(FAKE_CARLA)
    env = gym.make(SCENARIO_IDS[0], simulator="carla", n_npcs=n_npcs, seed=seed)
    driver = RandomDriver(env, seed)
    step_seconds = driver.run(steps)
    server_log_length = len(carla._server.SERVER.log)
    profiler = cProfile.Profile()
    profiler.enable()
    profiled_seconds = driver.run(steps)
    profiler.disable()
    env.close()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    in_fake = 0.0  # cumulative time of calls into the fake package from code outside it
    for function, (*_, callers) in stats.items():
        if function[0].startswith(fake_root):
            in_fake += sum(edge[3] for caller, edge in callers.items() if not caller[0].startswith(fake_root))
    profiled_total = profiled_seconds + driver.reset_seconds  # resets of both runs: a small share, noted
    backend = {key: value for key, value in stats.items() if key[0].endswith("carla_backend.py")}
    own = {f"CarlaBackend.{m}": sum(v[3] for key, v in backend.items() if key[2] == m) for m in ("step", "reset")}
    return {
        "n_npcs": n_npcs,
        "steps": steps,
        "resets": driver.resets,
        "server_log_entries_before_profile": server_log_length,
        "unprofiled_step_ms": 1e3 * step_seconds / steps,
        "profiled_step_ms": 1e3 * profiled_seconds / steps,
        "profiled_cumulative_ms_per_step": {name: 1e3 * value / steps for name, value in own.items()},
        "profiled_fake_server_ms_per_step": 1e3 * in_fake / steps,
        "profiled_own_code_ms_per_step": 1e3 * (profiled_seconds - in_fake) / steps,
        "profiled_own_code_fraction": (profiled_seconds - in_fake) / profiled_total,
    }


def to_markdown(results: dict[str, Any]) -> str:
    """Summarise the results as Markdown tables.

    :param results: the results of :func:`main`
    :return: the Markdown text
    """
    rows = [
        [f"CarlaScenario{s}-v0", v["n_npcs"], v["simulated_vehicles"], f"{v['vehicles_density']:.2f}",
         v["steps_per_s_with_resets"], v["steps_per_s_without_resets"], v["median_block_highway_step_ms"],
         v["median_block_wrapper_overhead_ms"], v["median_block_step_ratio_vs_highway"],
         f"{100 * v['drawing_share_of_highway_step']:.0f} %", v["mean_episode_length"], v["mean_reset_ms"]]
        for s, v in results["surrogate"].items()
    ]  # fmt: skip
    headers = ["env", "n_npcs", "simulated", "density", "steps/s (with resets)", "steps/s (steps only)",
               "highway-env ms/step", "wrapper overhead ms/step", "env/highway-env", "drawing share of highway-env",
               "mean episode length", "reset ms"]  # fmt: skip
    text = [
        "# Environment throughput (surrogate backend, random actions)",
        "",
        describe_line(results["run"]),
        "Medians over interleaved blocks of steps; the overhead is the env's step minus the highway-env step inside "
        "it (its ticks and the drawing of the decision's one image).",
        "",
        markdown_table(headers, rows),
    ]
    if "fake_carla" in results:
        v = results["fake_carla"]
        text += [
            "",
            f"CARLA backend on the fake carla package ({v['n_npcs']} NPCs, {v['steps']} steps): "
            f"{v['unprofiled_step_ms']:.3f} ms per env step unprofiled. Under cProfile "
            f"({v['profiled_step_ms']:.3f} ms/step): fake server {v['profiled_fake_server_ms_per_step']:.3f} ms, "
            f"backend + env code {v['profiled_own_code_ms_per_step']:.3f} ms per step.",
        ]
    return "\n".join(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", type=int, nargs="+", default=[0, 1, 2], help="surrogate scenarios to run")
    parser.add_argument("--steps", type=int, default=600, help="steps per scenario (and per fake-carla run)")
    parser.add_argument("--block", type=int, default=50, help="steps per scenario before switching to the next")
    parser.add_argument("--fake-carla", action="store_true", help="also time the CARLA backend on the fake carla")
    parser.add_argument("--fake-npcs", type=int, default=20, help="NPCs of the fake-carla run")
    parser.add_argument("--seed", type=int, default=0, help="seed of the envs and of the random actions")
    parser.add_argument("--n-envs", type=int, nargs="+", help="instead: compare these numbers of envs on the first of --scenarios")
    add_common_args(parser, threads=1)
    args = parser.parse_args()
    set_threads(args.threads)
    np.random.seed(args.seed)
    if args.n_envs:
        load_before = os.getloadavg()[0]
        results = {"run": run_description(args), "scenario": args.scenarios[0],
                   "n_envs": vec_env_throughput(args.n_envs, args.scenarios[0], args.steps, args.block, args.seed),
                   "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]}}  # fmt: skip
        write_results(args.output_dir, "env_throughput_n_envs", results, vec_env_markdown(results))
        return
    results = {
        "run": run_description(args),
        "surrogate": surrogate_throughput(args.scenarios, args.steps, args.block, args.seed),
    }
    if args.fake_carla:
        results["fake_carla"] = fake_carla_overhead(args.steps, args.fake_npcs, args.seed)
    write_results(args.output_dir, "env_throughput", results, to_markdown(results))


if __name__ == "__main__":
    main()
