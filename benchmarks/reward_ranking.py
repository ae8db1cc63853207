"""Does the reward ask for the target speed? Returns of the scripted driver against careful crawlers.

The reward is checked by ranking scripted behaviours, not by reading its formula. On each scenario and reset seed,
the scripted driver of ``sb3_td3_cnnclip.envs.expert`` (lane keeping and IDM car following on ground truth, free-road
speed at the 30 km/h limit) drives one episode, and so does the same driver capped at each ``--cruise-speeds`` value
(a crawler that still keeps its lane and its distance). The table gives each driver's mean return, route completion,
endings and speed, and its return relative to the scripted driver's on the same seeds. A reward that asks for speed
ranks the scripted driver first, every slower crawler lower, and every crawler that times out lowest. The safety
column sums the safety component (collision, off-road, near-miss and, with ``--time-to-collision-threshold``, closing
in on the vehicle ahead): the drivers drive the same episodes whatever the reward, so the difference between the
safety columns of two runs that differ only by the threshold is what the time-to-collision term costs each driver.

Run: ``python benchmarks/reward_ranking.py`` (about 10 minutes on one core); the reward with the time-to-collision
term: ``python benchmarks/reward_ranking.py --time-to-collision-threshold 3 --name reward_ranking_ttc3``
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import gymnasium as gym
from common import add_common_args, describe_line, markdown_table, run_description, set_threads, write_results

from sb3_td3_cnnclip.envs.expert import drive_episode
from sb3_td3_cnnclip.envs.registration import SCENARIO_IDS
from sb3_td3_cnnclip.envs.surrogate_backend import SPEED_LIMIT


def rank_scenario(
    scenario: int, seeds: list[int], cruise_speeds: list[float], action_repeat: int, time_to_collision_threshold: float
) -> dict[str, Any]:
    """Drive the scripted driver and each crawler once per seed on one surrogate scenario.

    :param scenario: the scenario id
    :param seeds: the reset seeds
    :param cruise_speeds: the crawlers' free-road speeds in m/s
    :param action_repeat: simulator ticks per decision
    :param time_to_collision_threshold: the env's option of that name (0: the reward without the term)
    :return: per driver (``"expert"`` or the speed), its episodes and their means
    """
    env = gym.make(SCENARIO_IDS[scenario], simulator="surrogate", action_repeat=action_repeat,
                   time_to_collision_threshold=time_to_collision_threshold)
    drivers: dict[str, Any] = {}
    for name, speed in [("expert", SPEED_LIMIT), *((f"{s:g} m/s", s) for s in cruise_speeds)]:
        episodes = []
        for seed in seeds:
            info = drive_episode(env, seed=seed, cruise_speed=speed)
            episodes.append({"seed": seed, "return": info["return"], "safety": info["safety_return"],
                             "route_completion": info["route_completion"], "ending": info["termination_reason"],
                             "mean_speed": info["mean_speed"]})
        drivers[name] = {"cruise_speed": speed, "episodes": episodes,
                         **{key: statistics.fmean(e[key] for e in episodes)
                            for key in ("return", "safety", "route_completion", "mean_speed")}}  # fmt: skip
        print(f"scenario {scenario} {name}: return {drivers[name]['return']:.1f}", flush=True)
    env.close()
    expert = drivers["expert"]["episodes"]
    for driver in drivers.values():
        driver["return_vs_expert"] = statistics.fmean(
            e["return"] / x["return"] for e, x in zip(driver["episodes"], expert))
    return drivers


def to_markdown(results: dict[str, Any]) -> str:
    """The result file's Markdown: title, run line and one table per scenario.

    :param results: what :func:`main` measured
    """
    flags = results["run"]["flags"]
    lines = [
        "# Reward ranking: the scripted driver against careful crawlers",
        "",
        describe_line(results["run"]),
        f"Reset seeds {flags['first_seed']}-{flags['first_seed'] + flags['episodes'] - 1}, one episode each per "
        f"driver; each action held {flags['action_repeat']} ticks. A crawler is the scripted driver with a lower "
        "free-road speed. Return / expert: mean over seeds of the return relative to the scripted driver's. Safety: "
        "mean over seeds of the episode's summed safety reward. Time-to-collision threshold "
        f"{flags['time_to_collision_threshold']:g} s (0: the term is off).",
    ]
    for scenario, drivers in results["scenarios"].items():
        rows = [[name, f"{d['return']:.1f}", f"{d['return_vs_expert']:.3f}", f"{d['safety']:.2f}",
                 f"{100 * d['route_completion']:.1f} %", ", ".join(sorted({e["ending"] for e in d["episodes"]})),
                 f"{d['mean_speed']:.2f}"] for name, d in drivers.items()]  # fmt: skip
        headers = ["driver", "return", "return / expert", "safety", "route", "endings", "speed m/s"]
        lines += ["", f"## {SCENARIO_IDS[int(scenario)]}", "", markdown_table(headers, rows)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", type=int, nargs="+", default=[0, 1, 2], help="surrogate scenarios to run")
    parser.add_argument("--episodes", type=int, default=5, help="episodes (seeds) per driver")
    parser.add_argument("--first-seed", type=int, default=1000, help="reset seed of the first episode")
    parser.add_argument("--cruise-speeds", type=float, nargs="+", default=[8, 7, 6, 5, 4, 3], help="crawlers, m/s")
    parser.add_argument("--action-repeat", type=int, default=4, help="simulator ticks per decision")
    parser.add_argument("--time-to-collision-threshold", type=float, default=0.0,
                        help="the envs' time_to_collision_threshold in s (0: the reward without the term)")
    parser.add_argument("--name", default="reward_ranking", help="base name of the result files")
    add_common_args(parser, threads=1)
    args = parser.parse_args()
    set_threads(args.threads)
    seeds = list(range(args.first_seed, args.first_seed + args.episodes))
    results = {
        "run": run_description(args),
        "scenarios": {
            str(s): rank_scenario(s, seeds, args.cruise_speeds, args.action_repeat, args.time_to_collision_threshold)
            for s in args.scenarios
        },
    }
    write_results(args.output_dir, args.name, results, to_markdown(results))


if __name__ == "__main__":
    main()
