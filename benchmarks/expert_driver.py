"""Expert driver: how well the scripted driver of ``sb3_td3_cnnclip.envs.expert`` does on each surrogate scenario.

The driver (lane keeping plus IDM car following on the simulator's ground truth) is the ceiling a learned policy
is compared with, and the check that every scenario can be completed within its time limit. Each scenario runs
``--episodes`` episodes of the registered id (``simulator="surrogate"``, registered time limit) with reset seeds
``--first-seed``, ``--first-seed + 1``, ...; the table gives the mean route completion, the share of episodes
ending in each way (collision, off lane, goal, time limit), the mean speed, the longest episode in steps, and how
often a vehicle cut into the lane ahead of the driver (``drive_episode``'s ``cut_ins``).

Run: ``python benchmarks/expert_driver.py`` (about 5 minutes on one core)
"""

from __future__ import annotations

import argparse
from typing import Any

import gymnasium as gym
import numpy as np
from common import add_common_args, describe_line, markdown_table, run_description, set_threads, write_results

from sb3_td3_cnnclip.envs.expert import drive_episode
from sb3_td3_cnnclip.envs.registration import SCENARIO_IDS

#: how an episode can end, as ``info["termination_reason"]``
ENDINGS = ("collision", "off_lane", "goal", "time_limit")


def run_scenario(scenario: int, seeds: list[int], image_size: int) -> dict[str, Any]:
    """Drive one episode per seed on a surrogate scenario and summarise them.

    :param scenario: the scenario id
    :param seeds: the reset seeds, one episode each
    :param image_size: camera image side (the driver does not look at it; smaller is faster)
    :return: the per-episode records and their summary
    """
    env = gym.make(SCENARIO_IDS[scenario], simulator="surrogate", image_size=image_size)
    episodes = []
    for seed in seeds:
        info = drive_episode(env, seed=seed)
        episodes.append({"seed": seed, "route_completion": info["route_completion"],
                         "ending": info["termination_reason"], "steps": info["steps"],
                         "mean_speed": info["mean_speed"], "cut_ins": info["cut_ins"]})
        print(f"scenario {scenario} seed {seed}: {episodes[-1]}", flush=True)
    env.close()
    summary = {
        "route_completion": float(np.mean([e["route_completion"] for e in episodes])),
        **{f"{ending}_rate": float(np.mean([e["ending"] == ending for e in episodes])) for ending in ENDINGS},
        "mean_speed": float(np.mean([e["mean_speed"] for e in episodes])),
        "cut_ins": int(sum(e["cut_ins"] for e in episodes)),
        "max_steps": int(max(e["steps"] for e in episodes)),
        "time_limit_steps": int(env.spec.max_episode_steps),
    }
    return {"summary": summary, "episodes": episodes}


def to_markdown(results: dict[str, Any]) -> str:
    """The result file's Markdown: title, run line and one row per scenario.

    :param results: what :func:`main` measured
    """
    rows = []
    for scenario, result in results["scenarios"].items():
        summary = result["summary"]
        rows.append([SCENARIO_IDS[int(scenario)], len(result["episodes"]), f"{100 * summary['route_completion']:.1f} %",
                     *(f"{100 * summary[f'{ending}_rate']:.0f} %" for ending in ENDINGS),
                     f"{summary['mean_speed']:.2f}", f"{summary['max_steps']} / {summary['time_limit_steps']}",
                     summary["cut_ins"]])
    flags = results["run"]["flags"]
    seeds = f"{flags['first_seed']}-{flags['first_seed'] + flags['episodes'] - 1}"
    return "\n".join([
        f"# Expert driver on the surrogate ({results['label']})",
        "",
        describe_line(results["run"]),
        f"Scripted driver (lane keeping + IDM following on ground truth), reset seeds {seeds}, one episode each.",
        "",
        markdown_table(["env", "episodes", "route completion", "collision", "off lane", "goal", "time limit",
                        "mean speed (m/s)", "longest episode (steps / limit)", "cut-ins (all episodes)"], rows),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", type=int, nargs="+", default=[0, 1, 2], help="surrogate scenarios to run")
    parser.add_argument("--episodes", type=int, default=10, help="episodes per scenario")
    parser.add_argument("--first-seed", type=int, default=500, help="reset seed of the first episode")
    parser.add_argument("--image-size", type=int, default=84, help="camera image side")
    parser.add_argument("--name", default="expert_driver", help="base name of the result files")
    parser.add_argument("--label", default="current surrogate", help="words describing the code measured")
    add_common_args(parser, threads=1)
    args = parser.parse_args()
    set_threads(args.threads)
    seeds = list(range(args.first_seed, args.first_seed + args.episodes))
    results = {
        "run": run_description(args),
        "label": args.label,
        "scenarios": {str(scenario): run_scenario(scenario, seeds, args.image_size) for scenario in args.scenarios},
    }
    write_results(args.output_dir, args.name, results, to_markdown(results))


if __name__ == "__main__":
    main()
