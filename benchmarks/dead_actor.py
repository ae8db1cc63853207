"""The dead actor: how often TD3's actor stops learning on images, and what prevents it.

A TD3 actor on images "dies" when its CNN features grow until the pre-tanh of every action is huge: every action
sits on a bound, ``tanh'`` is exactly 0 in float32 and the actor's MLP gradient is exactly 0 from then on.
For each configuration and seed this script trains on an image env and reads ``TD3CnnClip.update_stats``:
the fraction of actor updates whose MLP gradient is exactly 0, the actions' saturation, the actor's mean |pre-tanh|,
the actor's feature norm, max |Q|, and the returns (last training episodes, and a deterministic evaluation).

A configuration is ``+``-joined parts, each ``name`` or ``name=value``:

- ``td3``: plain TD3 (``TD3CnnClip`` with every limit ``None``: its updates are exactly SB3 TD3's, measured only);
- ``sac``, ``ddpg``, ``tqc``: the same with ``SACCnnClip``, ``DDPGCnnClip``, ``TQCCnnClip`` (plain SAC, DDPG and
  TQC unless other parts are added; SAC and TQC explore with their own stochastic policy, without action noise);
- ``clip``: the seed report's gradient limits (actor CNN 1.0, actor MLP 1.0, critic CNN 10.0, critic MLP 10.0);
- ``bounded``: ``"BoundedCnnPolicy"`` (NatureCNN + LayerNorm + tanh, features in [-1, 1]);
- ``actor_lr=S``: ``actor_lr_scale=S`` (the actor's learning rate is S times the critic's);
- ``penalty=C``: ``pre_tanh_penalty=C`` (``C * mean(pre_tanh ** 2)`` added to the actor loss).

The other parts apply to TD3 unless ``sac``, ``ddpg`` or ``tqc`` is one of them.
Example: ``--configs td3 clip bounded bounded+clip penalty=0.01 sac sac+clip+penalty=0.01``.
Each run goes to its own process (``--workers`` at a time, one torch thread each). With ``--merge`` the runs are
added to those already in the result file (same settings and seed: replaced), so a large study can be run in parts.

Run: ``python benchmarks/dead_actor.py --env toy --seeds 1 2 --steps 1000 --workers 2``
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from common import add_common_args, describe_line, markdown_table, run_description, set_threads, write_results
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.noise import NormalActionNoise

from sb3_td3_cnnclip.cnnclip import SATURATION_EPS, CnnClipMixin
from sb3_td3_cnnclip.envs.toy import ToyImageEnv
from sb3_td3_cnnclip.session import ALGORITHM_CLASSES

NAME = "dead_actor"
#: gradient limits of the ``td3`` configuration (measure, never clip)
NO_CLIP = dict.fromkeys(
    ("actor_cnn_max_grad_norm", "actor_mlp_max_grad_norm", "critic_cnn_max_grad_norm", "critic_mlp_max_grad_norm")
)
#: the configuration parts and whether they take a value
PARTS = {"td3": False, "sac": False, "ddpg": False, "tqc": False, "clip": False, "bounded": False, "actor_lr": True, "penalty": True}
#: an actor whose final saturation reaches this is counted dead even with a non-zero gradient
SATURATED = 0.5


def parse_config(config: str) -> dict[str, float | bool]:
    """Parse ``"bounded+penalty=0.01"`` into ``{"bounded": True, "penalty": 0.01}``.

    :param config: the configuration's name
    :return: its parts
    """
    parts: dict[str, float | bool] = {}
    for part in config.split("+"):
        name, _, value = part.partition("=")
        if name not in PARTS or PARTS[name] != bool(value):
            raise ValueError(
                f"Configuration part {part!r} of {config!r} is unknown: use td3, sac, ddpg, tqc, clip, bounded, actor_lr=<scale> or "
                "penalty=<coef>, joined by '+'."
            )
        parts[name] = float(value) if value else True
    if sum(name in parts for name in ALGORITHM_CLASSES) > 1:
        raise ValueError(f"Configuration {config!r} names more than one of {list(ALGORITHM_CLASSES)}.")
    return parts


def make_env(env_id: str) -> gym.Env:
    """The benchmark's env: ``toy`` (random 4x48x48 frames) or ``driving`` (surrogate CarlaScenario0-v0).

    :param env_id: ``"toy"`` or ``"driving"``
    :return: the env, wrapped in a Monitor
    """
    if env_id == "toy":
        return Monitor(ToyImageEnv(size=48, channels=4))
    return Monitor(gym.make("CarlaScenario0-v0", simulator="surrogate"))


def make_model(settings: dict[str, Any], seed: int) -> CnnClipMixin:
    """Build the model a run's settings describe.

    :param settings: the run's settings (see :func:`main`)
    :param seed: the run's seed
    :return: the model
    """
    parts = parse_config(settings["config"])
    env = make_env(settings["env"])
    n_actions = env.action_space.shape[0]
    algo = next((name for name in ALGORITHM_CLASSES if name in parts), "td3")
    noise = settings["action_noise"] if algo in ("td3", "ddpg") else 0.0
    return ALGORITHM_CLASSES[algo](
        "BoundedCnnPolicy" if parts.get("bounded") else "CnnPolicy",
        env,
        learning_rate=settings["lr"],
        buffer_size=settings["steps"],
        learning_starts=settings["learning_starts"],
        batch_size=settings["batch_size"],
        action_noise=NormalActionNoise(np.zeros(n_actions), noise * np.ones(n_actions)) if noise > 0 else None,
        stats_history=settings["steps"],
        seed=seed,
        actor_lr_scale=float(parts.get("actor_lr", 1.0)),
        pre_tanh_penalty=float(parts.get("penalty", 0.0)),
        **({} if parts.get("clip") else NO_CLIP),
    )


def run_one(settings: dict[str, Any], seed: int, threads: int) -> dict[str, Any]:
    """Train one configuration on one seed and summarise its actor's health.

    :param settings: the run's settings
    :param seed: the run's seed
    :param threads: torch threads of this process
    :return: the run's figures
    """
    set_threads(threads)
    start = time.perf_counter()
    model = make_model(settings, seed)
    model.learn(settings["steps"])
    train_seconds = time.perf_counter() - start
    actor = [s for s in model.update_stats if "actor_mlp_before" in s]
    if len(model.update_stats) != model._n_updates:
        raise RuntimeError(f"stats_history kept {len(model.update_stats)} of {model._n_updates} updates.")
    zero = [s["n_updates"] for s in actor if s["actor_mlp_before"] == 0.0]
    tail = actor[-max(1, len(actor) // 10) :]  # the last 10 % of actor updates
    clipped = {
        network: statistics.fmean(
            any(s.get(f"{group}_after", np.inf) < s[f"{group}_before"] for group in groups if f"{group}_before" in s)
            for s in (actor if network == "actor" else model.update_stats)
        )
        for network, groups in (("actor", ("actor_cnn", "actor_mlp")), ("critic", ("critic_cnn", "critic_mlp")))
    }
    eval_env = make_env(settings["env"])
    eval_env.reset(seed=seed + 10_000)
    eval_actions: list[np.ndarray] = []
    eval_returns, _ = evaluate_policy(
        model, eval_env, settings["eval_episodes"], return_episode_rewards=True,
        callback=lambda local, _: eval_actions.append(local["actions"][0]),
    )  # fmt: skip
    train_returns = [info["r"] for info in model.ep_info_buffer][-10:]
    return {
        "settings": settings,
        "seed": seed,
        "actor_updates": len(actor),
        "zero_grad_updates": len(zero),
        "first_zero_grad_update": zero[0] if zero else None,
        "saturation_mean": statistics.fmean(s["actor_saturation"] for s in actor),
        "saturation_final": statistics.fmean(s["actor_saturation"] for s in tail),
        "pre_tanh_abs_final": statistics.fmean(s["actor_pre_tanh_abs"] for s in tail),
        "actor_feature_norm_first": actor[0]["actor_feature_norm"],
        "actor_feature_norm_max": max(s["actor_feature_norm"] for s in actor),
        "actor_feature_norm_final": statistics.fmean(s["actor_feature_norm"] for s in tail),
        "q_abs_max": max(s["q_abs_max"] for s in model.update_stats),
        "actor_clip_frac": clipped["actor"],
        "critic_clip_frac": clipped["critic"],
        "nonfinite_skips": dict(model.nonfinite_skips),
        "train_return_last10": statistics.fmean(train_returns) if train_returns else None,
        "eval_return": statistics.fmean(eval_returns),
        "eval_action_mean": np.mean(eval_actions, axis=0).tolist(),
        "eval_action_at_bound": np.mean(np.abs(eval_actions) > 1 - SATURATION_EPS, axis=0).tolist(),
        "train_seconds": train_seconds,
    }


def alive(run: dict[str, Any]) -> bool:
    """An actor is alive when no actor update had a zero MLP gradient and its final saturation stays below 50 %.

    :param run: one run's figures
    :return: whether its actor stayed alive
    """
    return run["zero_grad_updates"] == 0 and run["saturation_final"] < SATURATED


def summarise(runs: list[dict[str, Any]]) -> str:
    """One Markdown table row per settings (all seeds of a configuration), in the order first seen.

    :param runs: every run
    :return: the table
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault(json.dumps(run["settings"], sort_keys=True), []).append(run)
    rows = []
    for group in sorted(groups.values(), key=lambda g: (g[0]["settings"]["env"], g[0]["settings"]["steps"], g[0]["settings"]["lr"])):
        group.sort(key=lambda run: run["seed"])
        settings = group[0]["settings"]
        clipped = "clip" in parse_config(settings["config"])
        eval_returns = [run["eval_return"] for run in group]
        rows.append([
            settings["env"], settings["steps"], settings["lr"], settings["config"], len(group),
            f"{sum(alive(run) for run in group)}/{len(group)}",
            ", ".join(f"{run['zero_grad_updates']}/{run['actor_updates']}" for run in group),
            statistics.fmean(run["saturation_final"] for run in group),
            max(run["saturation_final"] for run in group),
            statistics.fmean(run["pre_tanh_abs_final"] for run in group),
            max(run["actor_feature_norm_max"] for run in group),
            max(run["q_abs_max"] for run in group),
            *(
                statistics.fmean(run[f"{network}_clip_frac"] for run in group) if clipped else "–"
                for network in ("actor", "critic")
            ),
            statistics.fmean(eval_returns),
            statistics.stdev(eval_returns) if len(group) > 1 else float("nan"),
            statistics.fmean(run["train_return_last10"] for run in group),
            statistics.fmean(run["train_seconds"] for run in group),
            " ".join(
                "(" + ", ".join(f"{a:.2f}" for a in run["eval_action_mean"]) + ")" for run in group if "eval_action_mean" in run
            ),
        ])  # fmt: skip
    headers = [
        "env", "steps", "lr", "config", "seeds", "alive", "zero-grad actor updates (per seed)", "saturation (last 10 %)",
        "max saturation", "|pre-tanh| (last 10 %)", "max actor feature norm", "max abs Q", "actor clip frac",
        "critic clip frac", "eval return",
        "eval return std", "train return (last 10 ep.)", "seconds per run",
        "mean eval action (per seed)",
    ]  # fmt: skip
    return markdown_table(headers, rows)


def write(output_dir: Path, results: dict[str, Any]) -> None:
    """Write the result file and its Markdown summary.

    :param output_dir: folder of the result files
    :param results: ``invocations`` (the description of each invocation that contributed runs), ``runs`` (every
        run) and ``notes`` (remarks written by hand into the result file, kept and shown)
    """
    invocations, runs = results["invocations"], results["runs"]
    markdown = "\n".join([
        "# The dead actor: zero-gradient actor updates, saturation and returns per configuration", "",
        "Alive: no actor update with an exactly-zero MLP gradient and final saturation below 50 %. "
        "Saturation: fraction of action elements within 1e-3 of a bound. Eval return: mean of "
        "deterministic episodes after training. `td3` is TD3CnnClip with every limit None (SB3 TD3's updates). "
        "Clip frac: fraction of updates on which a group's gradient was clipped (– when nothing is clipped).",
        "", *(f"- {describe_line(inv)} Flags: {json.dumps(inv['flags'])}" for inv in invocations), "",
        *(f"Note: {note}\n" for note in results["notes"]),
        summarise(runs),
    ])  # fmt: skip
    write_results(output_dir, NAME, results, markdown)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", choices=("toy", "driving"), default="toy", help="toy 4x48x48 frames, or surrogate CarlaScenario0-v0")
    parser.add_argument("--configs", nargs="+", default=["td3", "clip", "bounded", "bounded+clip"], help="configurations (see above)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--steps", type=int, default=1000, help="environment steps per run")
    parser.add_argument("--lr", type=float, default=1e-3, help="learning rate (SB3 TD3's default: 1e-3)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-starts", type=int, default=64)
    parser.add_argument("--action-noise", type=float, default=0.1, help="std of Gaussian exploration noise (0: none)")
    parser.add_argument("--eval-episodes", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2, help="runs in parallel, one process each")
    parser.add_argument("--merge", action="store_true", help="add to the runs already in the result file")
    parser.add_argument("--rewrite", action="store_true", help="only rewrite the Markdown summary from the result file")
    add_common_args(parser)
    args = parser.parse_args()
    set_threads(args.threads)
    for config in args.configs:
        parse_config(config)  # fail before any training
    json_path = args.output_dir / f"{NAME}.json"
    if args.rewrite and not json_path.exists():
        parser.error(f"--rewrite needs a result file, and {json_path} does not exist: run the benchmark first.")
    reuse = (args.merge or args.rewrite) and json_path.exists()
    results = json.loads(json_path.read_text()) if reuse else {"invocations": [], "runs": []}
    results.setdefault("notes", [])
    if args.rewrite:
        write(args.output_dir, results)
        return
    results["invocations"].append(run_description(args))

    jobs = []
    for config in args.configs:
        settings = {
            "env": args.env, "config": config, "steps": args.steps, "lr": args.lr, "batch_size": args.batch_size,
            "learning_starts": args.learning_starts, "action_noise": args.action_noise,
            "eval_episodes": args.eval_episodes,
        }  # fmt: skip
        jobs += [(settings, seed) for seed in args.seeds]
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(run_one, settings, seed, args.threads) for settings, seed in jobs]
        for future in as_completed(futures):
            run = future.result()
            same = (run["settings"], run["seed"])
            results["runs"] = [r for r in results["runs"] if (r["settings"], r["seed"]) != same] + [run]
            print(f"{run['settings']['config']} seed {run['seed']}: {run['zero_grad_updates']}/{run['actor_updates']} "
                  f"zero-grad, saturation {run['saturation_final']:.2f}, eval return {run['eval_return']:.1f}, "
                  f"{run['train_seconds']:.0f} s", flush=True)  # fmt: skip
            write(args.output_dir, results)


if __name__ == "__main__":
    main()
