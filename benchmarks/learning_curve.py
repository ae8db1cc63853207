"""Does the agent learn to drive? Learning curves of TD3 configurations on the surrogate ``CarlaScenario0-v0``.

Every configuration trains ``TD3CnnClip("CnnPolicy", "CarlaScenario0-v0")`` on the highway-env surrogate backend
for ``--steps`` env steps per seed, and every ``--eval-every`` steps (and once before training) drives
``--eval-episodes`` evaluation episodes with the deterministic policy on fixed seeds (``--eval-seed``,
``--eval-seed + 1``, ...), in a separate env (a policy without an update since the previous evaluation, before
``--learning-starts``, keeps that evaluation's figures). Each evaluation records the mean route completion, the collision,
off-lane, goal and time-limit rates (from ``info["termination_reason"]``), the mean return, episode length and
mean speed, and the training wall time so far.

Configurations (every one: lr 3e-4, gamma 0.99, Gaussian exploration noise 0.1, the CLI's TD3 settings, with the
batch, buffer and warm-up of the size):

- ``td3``: plain TD3 (``TD3CnnClip`` with every gradient limit ``None`` and ``pre_tanh_penalty=0`` and
  ``channels_last=False``: exactly TD3);
- ``recommended``: the library's default gradient limits and ``pre_tanh_penalty=0.01`` (the CLI's defaults);
- ``+shift``: ``random_shift_pad=4`` (DrQ's random-shift augmentation);
- ``+encoder``: ``critic_trained_encoder=True`` (DrQ-v2's encoder trained by the critic only);
- ``+nstep3``: ``n_steps=3`` (SB3's n-step returns);
- ``+bf16``: ``bf16_encoders=True`` (the update's CNNs in bfloat16: does reduced precision change learning?);

and their combinations, named ``recommended+shift+encoder`` etc. (see ``CONFIGS``).

Each (configuration, seed) runs in its own process (``--workers`` at a time, ``--threads`` torch threads each)
and writes, under ``--run-dir``, one JSON file per evaluation and a checkpoint (model and replay buffer) after
each: a stopped run started again with the same flags continues from the last checkpoint (the training episode
in progress restarts; random streams are not restored; with ``--no-buffer-checkpoints``, the default of ``large``
whose 100k-transition buffers would take 5.6 GB each, the replay buffer restarts empty and is refilled by ``--learning-starts`` random steps). A larger ``--steps`` extends a finished run. The result
files (``<name>.json``, ``<name>.md``, ``<name>.png`` in ``--output-dir``) are rewritten from every evaluation
file found each time a job finishes, so a cut-off run still reports what it measured; ``--report-only``
rewrites them without training.

``--size`` sets every size flag at once (each can still be given): ``tiny`` (CI: seconds), ``small`` (a 2-core
CPU: about an hour), ``large`` (the goal of issue 13: 100k steps, 3 seeds, on a GPU).

Run: ``python benchmarks/learning_curve.py --size small --machine "2-core CPU (shared)"``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from common import (
    RESULTS_DIR, add_common_args, describe_line, markdown_table, run_description, set_threads, write_results,
)
from stable_baselines3.common.noise import NormalActionNoise

from sb3_td3_cnnclip import FrameStackReplayBuffer, TD3CnnClip
from sb3_td3_cnnclip.callbacks.driving_metrics import TERMINATION_REASONS
from sb3_td3_cnnclip.evaluation import drive_episode

ENV_ID = "CarlaScenario0-v0"

#: keyword arguments shared by every configuration (the CLI's defaults)
COMMON: dict[str, Any] = {"learning_rate": 3e-4, "gamma": 0.99, "tau": 0.005, "policy_delay": 2}
NO_LIMITS = {f"{group}_max_grad_norm": None for group in ("actor_cnn", "actor_mlp", "critic_cnn", "critic_mlp")}
#: the options added to ``recommended``, by suffix
OPTIONS: dict[str, dict[str, Any]] = {
    "shift": {"random_shift_pad": 4},
    "encoder": {"critic_trained_encoder": True},
    "nstep3": {"n_steps": 3},
    "bf16": {"bf16_encoders": True},
}
#: configuration name -> TD3CnnClip keyword arguments (besides COMMON and the size's)
CONFIGS: dict[str, dict[str, Any]] = {
    "td3": {**NO_LIMITS, "pre_tanh_penalty": 0.0, "channels_last": False},
    "recommended": {"pre_tanh_penalty": 0.01},
}
for _names in (["shift"], ["encoder"], ["nstep3"], ["bf16"], ["shift", "encoder"], ["shift", "encoder", "nstep3"]):
    CONFIGS["+".join(["recommended", *_names])] = {
        "pre_tanh_penalty": 0.01, **{k: v for name in _names for k, v in OPTIONS[name].items()}
    }

#: the flags each ``--size`` sets
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"steps": 120, "eval_every": 60, "eval_episodes": 2, "eval_max_steps": 20, "seeds": [0],
             "batch_size": 8, "buffer_size": 200, "learning_starts": 40, "workers": 1, "buffer_checkpoints": True,
             "configs": ["td3", "recommended+shift+encoder+nstep3"]},
    "small": {"steps": 4000, "eval_every": 1000, "eval_episodes": 5, "eval_max_steps": 1200, "seeds": [0, 1],
              "batch_size": 64, "buffer_size": 10_000, "learning_starts": 1000, "workers": 2, "buffer_checkpoints": True,
              "configs": ["td3", "recommended", "recommended+shift+encoder"]},
    "large": {"steps": 100_000, "eval_every": 10_000, "eval_episodes": 10, "eval_max_steps": 1200, "seeds": [0, 1, 2],
              "batch_size": 256, "buffer_size": 100_000, "learning_starts": 1000, "workers": 7, "buffer_checkpoints": False,
              "configs": list(CONFIGS)},
}  # fmt: skip

#: per-evaluation figures: key -> Markdown column title
FIGURES = {
    "route_completion": "route completion", "collision_rate": "collision", "off_lane_rate": "off lane",
    "goal_rate": "goal", "time_limit_rate": "time limit", "return": "return", "length": "length",
    "mean_speed": "speed m/s",
}  # fmt: skip


def evaluate(model: TD3CnnClip, env: gym.Env, episodes: int, first_seed: int) -> dict[str, Any]:
    """Drive ``episodes`` episodes with the deterministic policy on the seeds ``first_seed, first_seed + 1, ...``.

    :param model: the model
    :param env: the evaluation env (its ``TimeLimit`` ends long episodes)
    :param episodes: number of episodes
    :param first_seed: reset seed of the first episode
    :return: the means over episodes of :data:`FIGURES`, and each episode's figures under ``"episodes"``
    """
    rows = []
    for episode in range(episodes):
        row = drive_episode(model, env, first_seed + episode)
        del row["simulator"]  # always the surrogate here
        rows.append({**row, **{f"{name}_rate": float(row["termination_reason"] == name) for name in TERMINATION_REASONS}})
    means = {key: statistics.fmean(row[key] for row in rows) for key in FIGURES}
    return {**means, "episodes": rows}


#: the arrays of an SB3 ReplayBuffer (and NStepReplayBuffer) that a checkpoint keeps
BUFFER_ARRAYS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")


def save_buffer(model: TD3CnnClip, path: Path) -> None:
    """Save the model's replay buffer: a :class:`FrameStackReplayBuffer` (each frame stored once) whole, as SB3's
    ``save_replay_buffer`` does; SB3's own buffers only their filled part (``save_replay_buffer`` pickles every
    preallocated row: 0.56 GB for 10k 4x84x84 transitions however few are stored).

    :param model: the model
    :param path: the checkpoint file
    """
    buffer = model.replay_buffer
    if isinstance(buffer, FrameStackReplayBuffer):
        model.save_replay_buffer(path)
        return
    filled = buffer.buffer_size if buffer.full else buffer.pos
    with path.open("wb") as file:
        np.savez(file, pos=buffer.pos, full=buffer.full, **{k: getattr(buffer, k)[:filled] for k in BUFFER_ARRAYS})


def load_buffer(model: TD3CnnClip, path: Path) -> None:
    """Restore what :func:`save_buffer` saved into a model of the same configuration.

    :param model: the model (a new one: its replay buffer is empty and sized as the saved one)
    :param path: the checkpoint file
    """
    if isinstance(model.replay_buffer, FrameStackReplayBuffer):
        model.load_replay_buffer(path)
        return
    buffer = model.replay_buffer
    with np.load(path) as saved:
        for key in BUFFER_ARRAYS:
            getattr(buffer, key)[: len(saved[key])] = saved[key]
        buffer.pos, buffer.full = int(saved["pos"]), bool(saved["full"])


def job_settings(args: argparse.Namespace, config: str, seed: int) -> dict[str, Any]:
    """What a job's results depend on, besides ``--steps`` (a larger one extends a run)."""
    return {
        "config": config, "seed": seed, "kwargs": {**COMMON, **CONFIGS[config]}, "batch_size": args.batch_size,
        "buffer_size": args.buffer_size, "learning_starts": args.learning_starts, "eval_every": args.eval_every,
        "eval_episodes": args.eval_episodes, "eval_max_steps": args.eval_max_steps, "eval_seed": args.eval_seed,
        "action_noise_sigma": args.action_noise_sigma, "device": args.device,
    }  # fmt: skip


def run_job(args: argparse.Namespace, config: str, seed: int) -> str:
    """Train one configuration on one seed, evaluating and checkpointing every ``--eval-every`` steps.

    :param args: the flags
    :param config: the configuration's name
    :param seed: the training seed
    :return: a line describing what was done
    """
    set_threads(args.threads)
    folder = args.run_dir / config / f"seed_{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    settings = job_settings(args, config, seed)
    settings_file = folder / "job.json"
    if settings_file.exists() and json.loads(settings_file.read_text()) != json.loads(json.dumps(settings)):
        raise ValueError(
            f"{folder} holds a run with other settings ({settings_file.read_text()}), not {settings}. Use another "
            "--run-dir, or delete that folder to start it again."
        )
    settings_file.write_text(json.dumps(settings, indent=2))
    env = gym.make(ENV_ID, simulator="surrogate")
    eval_env = gym.make(ENV_ID, simulator="surrogate", max_episode_steps=args.eval_max_steps)
    checkpoint, buffer_file = folder / "model.zip", folder / "replay_buffer.ckpt"
    if checkpoint.exists():
        model = TD3CnnClip.load(checkpoint, env=env, device=args.device)
        resumed = model.num_timesteps
        if args.buffer_checkpoints and buffer_file.exists():
            load_buffer(model, buffer_file)
            model.learning_starts = args.learning_starts
        else:  # refill the empty buffer with random actions before training again
            model.learning_starts = resumed + args.learning_starts
    else:
        n_actions = env.action_space.shape[0]
        noise = NormalActionNoise(np.zeros(n_actions), args.action_noise_sigma * np.ones(n_actions))
        model = TD3CnnClip(
            "CnnPolicy", env, buffer_size=args.buffer_size, learning_starts=args.learning_starts,
            batch_size=args.batch_size, action_noise=noise, seed=seed, device=args.device, **settings["kwargs"],
        )  # fmt: skip
        resumed = 0
    train_seconds = float(json.loads((folder / "wall.json").read_text())["train_s"]) if resumed else 0.0
    while True:
        step = model.num_timesteps
        eval_file = folder / f"eval_{step:07d}.json"
        if not eval_file.exists():
            previous = sorted(folder.glob("eval_*.json"))
            record = json.loads(previous[-1].read_text()) if previous else {}
            if record.get("n_updates") != model._n_updates:  # else the same policy (no update yet): same figures
                record = evaluate(model, eval_env, args.eval_episodes, args.eval_seed)
            record.update(step=step, n_updates=model._n_updates, train_s=train_seconds)
            _write_atomically(eval_file, json.dumps(record, indent=1))
        if step >= args.steps:
            break
        start = time.perf_counter()
        model.learn(min(args.eval_every, args.steps - step), reset_num_timesteps=False)
        train_seconds += time.perf_counter() - start
        if args.buffer_checkpoints:
            save_buffer(model, folder / "replay_buffer.tmp.ckpt")
            os.replace(folder / "replay_buffer.tmp.ckpt", buffer_file)
        model.save(folder / "model.tmp.zip")
        os.replace(folder / "model.tmp.zip", checkpoint)
        _write_atomically(folder / "wall.json", json.dumps({"train_s": train_seconds, "step": model.num_timesteps}))
    env.close()
    eval_env.close()
    return f"{config} seed {seed}: {resumed} -> {model.num_timesteps} steps, training {train_seconds:.0f} s"


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def collect(args: argparse.Namespace) -> dict[str, dict[int, list[dict[str, Any]]]]:
    """Every evaluation record under ``--run-dir`` for the chosen configurations and seeds, in step order."""
    found: dict[str, dict[int, list[dict[str, Any]]]] = {}
    for config in args.configs:
        for seed in args.seeds:
            files = sorted((args.run_dir / config / f"seed_{seed}").glob("eval_*.json"))
            records = [json.loads(f.read_text()) for f in files]
            records = [r for r in records if r["step"] <= args.steps]
            if records:
                found.setdefault(config, {})[seed] = records
    return found


def summarise(found: dict[str, dict[int, list[dict[str, Any]]]]) -> dict[str, list[dict[str, Any]]]:
    """Per configuration and evaluation step: mean, min and max over the seeds that reached that step."""
    curves: dict[str, list[dict[str, Any]]] = {}
    for config, seeds in found.items():
        steps = sorted({r["step"] for records in seeds.values() for r in records})
        curves[config] = []
        for step in steps:
            at_step = [r for records in seeds.values() for r in records if r["step"] == step]
            point: dict[str, Any] = {"step": step, "seeds": len(at_step)}
            for key in (*FIGURES, "train_s"):
                values = [r[key] for r in at_step]
                point[key] = {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}
            curves[config].append(point)
    return curves


def plot(curves: dict[str, list[dict[str, Any]]], path: Path, title: str) -> None:
    """Route completion and collision rate against env steps: mean over seeds, min-max band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for ax, key, label in zip(axes, ("route_completion", "collision_rate", "return"),
                              ("route completion", "collision rate", "return")):  # fmt: skip
        for config, points in curves.items():
            steps = [p["step"] for p in points]
            mean = [p[key]["mean"] for p in points]
            (line,) = ax.plot(steps, mean, marker="o", markersize=3, label=config)
            ax.fill_between(steps, [p[key]["min"] for p in points], [p[key]["max"] for p in points],
                            color=line.get_color(), alpha=0.15)  # fmt: skip
        ax.set_xlabel("env steps")
        ax.set_ylabel(f"{label} (evaluation)")
        ax.grid(alpha=0.3)
    axes[0].set_ylim(0, 1)
    axes[1].set_ylim(-0.02, 1.02)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(args: argparse.Namespace) -> None:
    """Rewrite the JSON, Markdown and PNG results from the evaluation files found."""
    found = collect(args)
    curves = summarise(found)
    run = run_description(argparse.Namespace(**{k: v for k, v in vars(args).items() if k != "run_dir"}))  # no path
    results = {
        "run": run, "env_id": ENV_ID, "configs": {config: {**COMMON, **CONFIGS[config]} for config in args.configs},
        "curves": curves, "evaluations": {c: {str(s): r for s, r in seeds.items()} for c, seeds in found.items()},
    }  # fmt: skip
    last_rows, curve_rows = [], []
    for config, points in curves.items():
        last = points[-1]
        cells = [f"{last[k]['mean']:.3g} [{last[k]['min']:.3g}, {last[k]['max']:.3g}]" for k in FIGURES]
        last_rows.append([config, last["step"], last["seeds"], *cells, f"{last['train_s']['mean'] / 60:.1f}"])
    all_steps = sorted({p["step"] for points in curves.values() for p in points})
    for config, points in curves.items():
        by_step = {p["step"]: f"{p['route_completion']['mean']:.3f}" for p in points}
        curve_rows.append([config, *(by_step.get(step, "") for step in all_steps)])
    markdown = "\n".join([
        f"# Learning curves on the surrogate {ENV_ID}",
        "",
        describe_line(run),
        f"Note: {args.note}" if args.note else "",
        f"Each configuration: {len(args.seeds)} seed(s) x {args.steps} env steps, batch {args.batch_size}, buffer "
        f"{args.buffer_size}, learning_starts {args.learning_starts}; evaluation every {args.eval_every} steps: "
        f"{args.eval_episodes} deterministic episodes on seeds {args.eval_seed}.. (at most {args.eval_max_steps} "
        "steps each). Cells: mean over seeds [min, max]. Issue 13's goal: recommended >= 0.8 route completion and "
        "<= 0.1 collision rate at 100k steps on 3 seeds.",
        "",
        "## Last evaluation",
        "",
        markdown_table(["config", "step", "seeds", *FIGURES.values(), "train min"], last_rows),
        "",
        "## Route completion at each evaluation (mean over seeds)",
        "",
        markdown_table(["config", *map(str, all_steps)], curve_rows) if curve_rows else "(no evaluation yet)",
        "",
        f"![learning curves]({args.name}.png)",
    ])  # fmt: skip
    write_results(args.output_dir, args.name, results, markdown)
    if curves:
        title = (f"surrogate {ENV_ID}, evaluation every {args.eval_every} steps: mean over {len(args.seeds)} seeds, "
                 f"band = min..max; {args.machine}, {run['date_utc']} UTC")  # fmt: skip
        plot(curves, args.output_dir / f"{args.name}.png", title)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=SIZES, default="small", help="preset of the size flags (default: small)")
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, help="configurations to compare")
    parser.add_argument("--seeds", nargs="+", type=int, help="training seeds")
    parser.add_argument("--steps", type=int, help="env steps per run")
    parser.add_argument("--eval-every", type=int, help="env steps between evaluations")
    parser.add_argument("--eval-episodes", type=int, help="deterministic episodes per evaluation")
    parser.add_argument("--eval-max-steps", type=int, help="step limit of an evaluation episode (default: the env's)")
    parser.add_argument("--eval-seed", type=int, default=1000, help="reset seed of the first evaluation episode")
    parser.add_argument("--batch-size", type=int, help="minibatch size")
    parser.add_argument("--buffer-size", type=int, help="replay buffer capacity")
    parser.add_argument("--learning-starts", type=int, help="random-action steps before the first update")
    parser.add_argument("--action-noise-sigma", type=float, default=0.1, help="exploration noise std (CLI default)")
    parser.add_argument("--workers", type=int, help="parallel processes")
    parser.add_argument("--device", default="auto", help="torch device of every run")
    parser.add_argument("--name", default="learning_curve", help="base name of the result files")
    parser.add_argument("--run-dir", type=Path, help="evaluations and checkpoints (default: benchmarks/runs/<name>)")
    parser.add_argument("--note", default="", help="a sentence written into the Markdown (e.g. what the run cannot show)")
    parser.add_argument(
        "--buffer-checkpoints", action=argparse.BooleanOptionalAction,
        help="checkpoint the replay buffer's filled part with the model (56 KB per 4x84x84 transition); without, a "
        "resumed job starts from the model with an empty buffer (default: on, except --size large)",
    )  # fmt: skip
    parser.add_argument("--report-only", action="store_true", help="rewrite the results from the run folder, train nothing")
    add_common_args(parser)
    args = parser.parse_args(argv)
    for key, value in SIZES[args.size].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key in ("steps", "eval_every", "eval_episodes", "eval_max_steps", "batch_size", "buffer_size", "workers"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')}={getattr(args, key)} must be at least 1.")
    if args.learning_starts < 0:
        parser.error(f"--learning-starts={args.learning_starts} must be >= 0.")
    if args.run_dir is None:
        args.run_dir = RESULTS_DIR.parent / "runs" / args.name
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    set_threads(args.threads)  # the jobs' count, which the results' header reports (this process only waits)
    if not args.report_only:
        jobs = [(config, seed) for config in args.configs for seed in args.seeds]
        with ProcessPoolExecutor(max_workers=args.workers, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(run_job, args, config, seed) for config, seed in jobs]
            for future in as_completed(futures):
                print(future.result(), flush=True)
                report(args)
    report(args)
    print(f"results: {args.output_dir / args.name}.md", flush=True)


if __name__ == "__main__":
    main()
