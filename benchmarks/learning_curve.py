"""Does the agent learn to drive? Learning curves of TD3 configurations on the surrogate ``CarlaScenario{0,1,2}-v0``.

Every run trains ``TD3CnnClip("CnnPolicy", "CarlaScenario<s>-v0")`` on the highway-env surrogate backend with each
action held for ``--action-repeat`` simulator ticks (the frame stack holds one frame per decision) for a budget of
``--ticks`` simulator ticks (``--ticks / --action-repeat`` decisions, SB3's timesteps). Every ``--eval-every`` ticks
(and once before training) it drives ``--eval-episodes`` evaluation episodes with the deterministic policy on
seeds training never saw (``--eval-seed``, ``--eval-seed + 1``, ...) in a separate env (a policy without an update
since the previous evaluation keeps that evaluation's figures). Each evaluation records the mean route completion,
the collision, off-lane, goal and time-limit rates (from ``info["termination_reason"]``), the mean return, episode
length (decisions) and mean speed, the training wall time so far and its own wall time. The scripted driver of
``sb3_td3_cnnclip.envs.expert`` drives the same seeds with the same action repeat once per scenario (cached in the
run folder); each evaluation's mean speed is reported relative to the driver's (``speed / expert``), next to the
route completion and collisions, so that crawling cannot pass for driving. At the end of its budget a run's model
drives ``--final-eval-episodes`` more episodes (50 at the ``cpu`` size) on the seeds after the curve's, which neither
training nor the curve's evaluations (by which configurations are chosen) drove, against the scripted driver on the
same seeds: the final evaluation, whose figures the Markdown judges against the goals as the run's verdict (10
episodes per seed along the curve are 30 per run: one collision more or less moves a run across the 5 % goal).

Configurations (every one: lr 3e-4, gamma 0.99, tau 0.005; the TD3 ones with policy delay 2 and Gaussian
exploration noise 0.1, the CLI's settings; with the batch, buffer and warm-up of the size):

- ``td3``: plain TD3 (``TD3CnnClip`` with every gradient limit ``None`` and ``pre_tanh_penalty=0`` and
  ``channels_last=False``: exactly TD3);
- ``recommended``: the library's default gradient limits and ``pre_tanh_penalty=0.01`` (the CLI's defaults);
- :data:`RECIPE`, ``recommended+nstep3``: with ``--action-repeat 4`` and the ``cpu`` size's batch, buffer and
  warm-up, the recipe of ``examples/drive.yml`` (scenario 0);
- :data:`TRAFFIC_RECIPE`, ``recommended+nstep3+bf16+lindecay+ttc5+privileged``: the same way, the recipe of
  ``examples/drive_traffic.yml`` (scenario 1; scenario 2: the file with ``--scenario 2``);
- ``+shift``: ``random_shift_pad=4`` (DrQ's random-shift augmentation);
- ``+encoder``: ``critic_trained_encoder=True`` (DrQ-v2's encoder trained by the critic only);
- ``+nstep3``: ``n_steps=3`` (SB3's n-step returns);
- ``sac`` / ``tqc``: plain SAC / TQC (``SACCnnClip`` / ``TQCCnnClip`` with every limit ``None``,
  ``pre_tanh_penalty=0`` and ``channels_last=False``: exactly the base algorithm), exploring with their own
  stochastic policy (no action noise); ``sac_recommended`` / ``tqc_recommended``: the classes' defaults;
- ``+bf16``: ``bf16_encoders=True`` (the update's CNNs in bfloat16: does reduced precision change learning?);
- ``+scripted``: ``warmup_actions="scripted"`` (the warm-up's decisions driven by the scripted driver plus the
  exploration noise instead of uniform random actions: demonstrations in the replay buffer, inside the same budget);
- ``+freq2``: ``train_freq=2`` (one gradient step every 2 decisions: half the updates, for a table that fits 3 hours);
- ``+lindecay``: the learning rate (actor's and critic's) decayed linearly from 3e-4 to 0 over the run's whole budget
  (``lr_schedule="linear"`` of the command line and config files, rl-zoo's ``lin_3e-4``; :class:`BudgetProgress`
  keeps SB3's progress on the budget across the run's ``learn()`` calls and restarts; a run extended by a larger
  ``--ticks`` goes on at the new budget's rate), so that the policy at the end of the budget is the settled one the
  goals judge;
- ``+linfloor``: the same linear decay from 3e-4 down to a floor of 1e-4 (``final_learning_rate=1e-4``), which leaves
  the policy a rate to recover with late in the run;
- ``+decay20`` (``+decay40``): the rate constant at 3e-4 for the first 80 % (60 %) of the budget, then decayed
  linearly to 0 over the last 20 % (40 %) (``lr_decay_fraction=0.2`` (0.4); 40k-50k (30k-50k) ticks on scenario 0):
  learning at the full rate until the policy drives, then settling it for the end of the budget that the goals judge;
  ``+decay25`` the same over the last 25 %: with ``--ticks 40000`` on scenario 0, 3e-4 until 30k ticks (the
  ``+decay40`` run's first 30k exactly), then decayed to 0 at 40k, a budget inside the goal's 50k;
- ``+ttc3`` (``+ttc5``): ``time_to_collision_threshold=3.0`` (5.0), an option of the envs rather than of the model (a
  configuration's ``env_kwargs`` go to ``gymnasium.make`` of its training and evaluation envs): the safety reward
  penalises closing in on the vehicle ahead under 3 s (5 s) of time to collision, asking for braking before a
  rear-end collision (its returns include that penalty, so they do not compare with the other configurations';
  the scripted driver's reference drives the default reward);
- ``+state``: ``MlpPolicy`` on the privileged ``observation="state"`` (kinematics, waypoints and the 6 nearest
  vehicles' positions and velocities relative to the ego; no camera): the ceiling of what the same algorithm,
  reward and budget reach without vision, telling a perception shortfall from one of the reward or the algorithm;
- ``+privileged``: ``PrivilegedCriticPolicy`` on ``observation="privileged"``, the asymmetric actor-critic: the
  actor drives from the camera (as ``CnnPolicy``'s), the critics learn from that state (no critic CNN);
- ``+trunk``: ``TrunkCnnPolicy`` (:class:`~sb3_td3_cnnclip.encoders.TrunkNatureCNN`: NatureCNN's convolutions, then
  DrQ-v2's Linear -> LayerNorm -> tanh without the ReLU, so that no feature can die), actor and critics;
- ``+curric``: a curriculum with :class:`~sb3_td3_cnnclip.callbacks.ScenarioCallback`: the training envs drive
  scenarios 0 up to the run's in equal shares of the budget (scenario 2: 0, 1, 2 for a third each), while every
  evaluation drives the run's scenario (a stopped curriculum run cannot resume: its stage is not checkpointed);

and their combinations, named ``recommended+shift+encoder`` etc. (see ``CONFIGS``).

Each (configuration, scenario, seed) runs in its own process (``--workers`` at a time, ``--threads`` torch threads
each; ``--flush-denormal`` flushes denormal floats to zero in them, a job setting) and writes, under ``--run-dir``,
one JSON file per evaluation and a checkpoint (model and replay buffer) after each: a stopped run started again with
the same flags continues from the last checkpoint (the training episode in progress restarts; random streams are not
restored; with ``--no-buffer-checkpoints``, the default of ``large``, the replay buffer restarts empty and is refilled
by ``--learning-starts`` random decisions). A larger ``--ticks`` extends a finished run. The result files
(``<name>.json``, ``<name>.md``, ``<name>.png`` in ``--output-dir``) are rewritten from every evaluation file found
each time a job finishes, so a cut-off run still reports what it measured; ``--report-only`` rewrites them without
training. The Markdown checks each run's last evaluation along the curve and its final evaluation against the goals of
issue 20 (:data:`GOALS`). A finished run started again with another ``--final-eval-episodes`` drives only its final
evaluation again, from its checkpoint.

``--size`` sets every size flag at once (each can still be given): ``tiny`` (CI: seconds), ``cpu`` (issue 20's
table on a 2-core CPU: the recipe and ``td3`` on scenario 0, the traffic recipe on 1 and 2 (its term at 5 s on 2),
3 seeds each, 50k ticks on scenario 0 and 100k on 1 and 2, evaluated every 25k ticks: 10 episodes of a policy
that reaches the goal are about 2600 decisions, as many as the 10k ticks of training between two evaluations at
10k, without their updates; learning_curve_cpu's results were measured evaluating every 10k), ``large`` (every
configuration and scenario, for a bigger machine).
``--configs`` / ``--scenarios`` replace the size's runs by every combination of the ones given.

Run: ``python benchmarks/learning_curve.py --size cpu --machine "2-core CPU"``
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
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.noise import NormalActionNoise

from sb3_td3_cnnclip import FrameStackReplayBuffer, TD3CnnClip
from sb3_td3_cnnclip.cnnclip import CnnClipMixin
from sb3_td3_cnnclip.callbacks import ScenarioCallback
from sb3_td3_cnnclip.callbacks.driving_metrics import TERMINATION_REASONS
from sb3_td3_cnnclip.config_file import learning_rate_schedule
from sb3_td3_cnnclip.envs import SCENARIO_IDS
from sb3_td3_cnnclip.envs.expert import drive_episode as drive_expert_episode
from sb3_td3_cnnclip.evaluation import drive_episode
from sb3_td3_cnnclip.session import ALGORITHM_CLASSES, flush_denormal_floats

#: keyword arguments shared by every configuration (the CLI's defaults)
COMMON: dict[str, Any] = {"learning_rate": 3e-4, "gamma": 0.99, "tau": 0.005}
#: TD3's delayed actor updates (the CLI's default), in every TD3 configuration
DELAY = {"policy_delay": 2}
NO_LIMITS = {f"{group}_max_grad_norm": None for group in ("actor_cnn", "actor_mlp", "critic_cnn", "critic_mlp")}
#: the options added to ``recommended``, by suffix
OPTIONS: dict[str, dict[str, Any]] = {
    "shift": {"random_shift_pad": 4},
    "encoder": {"critic_trained_encoder": True},
    "nstep3": {"n_steps": 3},
    "bf16": {"bf16_encoders": True},
    "scripted": {"warmup_actions": "scripted"},
    "freq2": {"train_freq": 2},
    "lindecay": {"lr_schedule": "linear"},
    "linfloor": {"lr_schedule": "linear", "final_learning_rate": 1e-4},
    "decay20": {"lr_schedule": "linear", "lr_decay_fraction": 0.2},
    "decay40": {"lr_schedule": "linear", "lr_decay_fraction": 0.4},
    "decay25": {"lr_schedule": "linear", "lr_decay_fraction": 0.25},
    "ttc3": {"env_kwargs": {"time_to_collision_threshold": 3.0}},
    "ttc5": {"env_kwargs": {"time_to_collision_threshold": 5.0}},
    "state": {"policy": "MlpPolicy", "env_kwargs": {"observation": "state"}},
    "privileged": {"policy": "PrivilegedCriticPolicy", "env_kwargs": {"observation": "privileged"}},
    "curric": {"curriculum": True},
    "trunk": {"policy": "TrunkCnnPolicy"},
}
#: configuration name -> keyword arguments of its class (besides COMMON and the size's), its ``"algo"`` (a key of
#: ``session.ALGORITHM_CLASSES``; a configuration without one is TD3CnnClip's), its ``"policy"`` (``"CnnPolicy"``
#: by default) and its ``"env_kwargs"`` (options of its envs' ``gymnasium.make``; none by default)
CONFIGS: dict[str, dict[str, Any]] = {
    "td3": {**DELAY, **NO_LIMITS, "pre_tanh_penalty": 0.0, "channels_last": False},
    "recommended": {**DELAY, "pre_tanh_penalty": 0.01},
    "sac": {"algo": "sac", **NO_LIMITS, "pre_tanh_penalty": 0.0, "channels_last": False},
    "sac_recommended": {"algo": "sac"},
    "tqc": {"algo": "tqc", **NO_LIMITS, "pre_tanh_penalty": 0.0, "channels_last": False},
    "tqc_recommended": {"algo": "tqc"},
}
#: the configuration of examples/drive.yml (scenario 0), which the cpu size measures
RECIPE = "recommended+nstep3"
#: the configuration of examples/drive_traffic.yml, which the cpu size measures on scenarios 1 and 2
TRAFFIC_RECIPE = "recommended+nstep3+bf16+lindecay+ttc5+privileged"
for _names in (["shift"], ["encoder"], ["nstep3"], ["bf16"], ["scripted"], ["shift", "encoder"], ["shift", "encoder", "nstep3"],
               ["nstep3", "freq2"], ["shift", "encoder", "nstep3", "freq2"], ["nstep3", "bf16"], ["nstep3", "lindecay"],
               ["nstep3", "bf16", "lindecay"], ["nstep3", "ttc3"], ["nstep3", "bf16", "lindecay", "ttc3"],
               ["nstep3", "lindecay", "state"], ["nstep3", "lindecay", "ttc3", "state"],
               ["nstep3", "bf16", "lindecay", "privileged"], ["nstep3", "bf16", "lindecay", "ttc3", "privileged"],
               ["nstep3", "bf16", "lindecay", "ttc3", "privileged", "curric"],
               ["nstep3", "bf16", "lindecay", "ttc5", "privileged"],
               ["shift", "nstep3", "bf16", "lindecay", "ttc3", "privileged"], ["shift", "nstep3"],
               ["nstep3", "encoder"], ["nstep3", "trunk"], ["nstep3", "bf16", "lindecay", "ttc5"],
               ["nstep3", "ttc5"], ["nstep3", "bf16", "linfloor", "ttc5"], ["nstep3", "ttc5", "decay20"],
               ["nstep3", "ttc5", "decay40"], ["nstep3", "ttc5", "decay25"]):
    _env_kwargs = {k: v for name in _names for k, v in OPTIONS[name].get("env_kwargs", {}).items()}
    CONFIGS["+".join(["recommended", *_names])] = {
        **DELAY, "pre_tanh_penalty": 0.01, **{k: v for name in _names for k, v in OPTIONS[name].items()},
        **({"env_kwargs": _env_kwargs} if _env_kwargs else {}),  # the options' env_kwargs merged
    }

#: the flags each ``--size`` sets; ``runs`` lists (configuration, scenario) pairs, ``ticks`` the budget per scenario
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"ticks": {0: 480, 1: 480, 2: 480}, "eval_every": 240, "eval_episodes": 2, "eval_max_steps": 20,
             "final_eval_episodes": 3,
             "seeds": [0], "action_repeat": 4, "batch_size": 8, "buffer_size": 200, "learning_starts": 40, "workers": 1,
             "buffer_checkpoints": True, "runs": [("td3", 0), ("recommended+shift+encoder+nstep3", 0)]},
    "cpu": {"ticks": {0: 50_000, 1: 100_000, 2: 100_000}, "eval_every": 25_000, "eval_episodes": 10,
            "final_eval_episodes": 50,
            "eval_max_steps": None, "seeds": [0, 1, 2], "action_repeat": 4, "batch_size": 64, "buffer_size": 50_000,
            "learning_starts": 1000, "workers": 2, "buffer_checkpoints": True,
            "runs": [(RECIPE, 0), ("td3", 0), (TRAFFIC_RECIPE, 1), (TRAFFIC_RECIPE, 2)]},
    "large": {"ticks": {0: 400_000, 1: 400_000, 2: 400_000}, "eval_every": 40_000, "eval_episodes": 10,
              "final_eval_episodes": 50,
              "eval_max_steps": None, "seeds": [0, 1, 2], "action_repeat": 4, "batch_size": 256,
              "buffer_size": 100_000, "learning_starts": 1000, "workers": 7, "buffer_checkpoints": False,
              "runs": [(config, scenario) for scenario in SCENARIO_IDS for config in CONFIGS]},
}  # fmt: skip

#: issue 20's goals for the last evaluation, per scenario: least route completion, most collisions, least speed / expert
GOALS: dict[int, tuple[float, float, float]] = {0: (0.95, 0.05, 0.90), 1: (0.90, 0.05, 0.85), 2: (0.90, 0.05, 0.85)}

#: per-evaluation figures: key -> Markdown column title
FIGURES = {
    "route_completion": "route completion", "collision_rate": "collision", "off_lane_rate": "off lane",
    "goal_rate": "goal", "time_limit_rate": "time limit", "speed_vs_expert": "speed / expert", "return": "return",
    "length": "decisions", "mean_speed": "speed m/s",
}  # fmt: skip


def evaluate(model: TD3CnnClip, env: gym.Env, episodes: int, first_seed: int) -> dict[str, Any]:
    """Drive ``episodes`` episodes with the deterministic policy on the seeds ``first_seed, first_seed + 1, ...``.

    :param model: the model
    :param env: the evaluation env
    :param episodes: number of episodes
    :param first_seed: reset seed of the first episode
    :return: the means over episodes of :data:`FIGURES` but ``speed_vs_expert`` (see :func:`collect`), and each
        episode's seed and figures under ``"episodes"``
    """
    rows = []
    for episode in range(episodes):
        seed = first_seed + episode
        row = drive_episode(model, env, seed)
        del row["simulator"]  # always the surrogate here
        rates = {f"{name}_rate": float(row["termination_reason"] == name) for name in TERMINATION_REASONS}
        rows.append({"seed": seed, **row, **rates})
    means = {key: statistics.fmean(row[key] for row in rows) for key in FIGURES if key != "speed_vs_expert"}
    return {**means, "episodes": rows}


def final_seeds(args: argparse.Namespace) -> tuple[int, int]:
    """The first reset seed and the episodes of the final evaluation: the ``--final-eval-episodes`` seeds after the
    curve's, which neither training nor the evaluations along the curve (by which configurations are chosen) drove."""
    return args.eval_seed + args.eval_episodes, args.final_eval_episodes


def expert_reference(args: argparse.Namespace, scenario: int, final: bool = False) -> dict[str, Any]:
    """The scripted driver on the evaluation seeds of ``scenario`` with the same action repeat, cached in the run folder.

    :param args: the flags (evaluation seeds and episodes, action repeat, run folder)
    :param scenario: the scenario id
    :param final: on the final evaluation's seeds (:func:`final_seeds`) rather than the curve's
    :return: the settings, the mean speed, route completion and goal rate, and each episode's figures
    """
    first_seed, count = final_seeds(args) if final else (args.eval_seed, args.eval_episodes)
    settings = {"scenario": scenario, "eval_seed": first_seed, "eval_episodes": count,
                "action_repeat": args.action_repeat, "eval_max_steps": args.eval_max_steps}  # fmt: skip
    path = args.run_dir / f"expert_scenario_{scenario}{'_final' if final else ''}.json"
    if path.exists() and (cached := json.loads(path.read_text()))["settings"] == settings:
        return cached
    env = make_env(args, scenario, args.eval_max_steps)  # the default reward: only speed and route are compared
    episodes = []
    for seed in range(first_seed, first_seed + count):
        info = drive_expert_episode(env, seed=seed)
        episodes.append({"seed": seed, "mean_speed": info["mean_speed"], "route_completion": info["route_completion"],
                         "termination_reason": info["termination_reason"], "return": info["return"]})
    env.close()
    reference = {
        "settings": settings, "mean_speed": statistics.fmean(e["mean_speed"] for e in episodes),
        "route_completion": statistics.fmean(e["route_completion"] for e in episodes),
        "goal_rate": statistics.fmean(e["termination_reason"] == "goal" for e in episodes), "episodes": episodes,
    }  # fmt: skip
    args.run_dir.mkdir(parents=True, exist_ok=True)
    _write_atomically(path, json.dumps(reference, indent=1))
    return reference


def make_env(args: argparse.Namespace, scenario: int, max_episode_steps: int | None = None, **env_kwargs: Any) -> gym.Env:
    """A surrogate env of ``scenario`` with the run's action repeat.

    :param args: the flags (``action_repeat``)
    :param scenario: the scenario id
    :param max_episode_steps: a step limit in decisions on top of the env's own 60 s (``None``: none)
    :param env_kwargs: other ``gymnasium.make`` options (a configuration's ``"env_kwargs"``)
    """
    limit = {} if max_episode_steps is None else {"max_episode_steps": max_episode_steps}
    return gym.make(SCENARIO_IDS[scenario], simulator="surrogate", action_repeat=args.action_repeat, **limit, **env_kwargs)


def make_envs(args: argparse.Namespace, config: str, scenario: int) -> tuple[gym.Env, gym.Env]:
    """The training env and the evaluation env (limited to ``--eval-max-steps``) of one configuration on ``scenario``,
    both with the configuration's ``"env_kwargs"``.

    :param args: the flags
    :param config: the configuration's name
    :param scenario: the scenario id
    """
    env_kwargs = CONFIGS[config].get("env_kwargs", {})
    return make_env(args, scenario, **env_kwargs), make_env(args, scenario, args.eval_max_steps, **env_kwargs)


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


def job_settings(args: argparse.Namespace, config: str, scenario: int, seed: int) -> dict[str, Any]:
    """What a job's results depend on, besides ``--ticks`` (a larger one extends a run)."""
    return {
        "config": config, "scenario": scenario, "seed": seed, "kwargs": {**COMMON, **CONFIGS[config]},
        "action_repeat": args.action_repeat, "batch_size": args.batch_size,
        "buffer_size": args.buffer_size, "learning_starts": args.learning_starts, "eval_every": args.eval_every,
        "eval_episodes": args.eval_episodes, "eval_max_steps": args.eval_max_steps, "eval_seed": args.eval_seed,
        "action_noise_sigma": args.action_noise_sigma, "device": args.device,
        **({"flush_denormal": True} if args.flush_denormal else {}),  # absent when off: older run folders resume
    }  # fmt: skip


def job_folder(args: argparse.Namespace, config: str, scenario: int, seed: int) -> Path:
    """The folder of one run's evaluations and checkpoints."""
    return args.run_dir / config / f"scenario_{scenario}" / f"seed_{seed}"


def make_model(args: argparse.Namespace, config: str, env: gym.Env, seed: int) -> CnnClipMixin:
    """A new model of one configuration: its class (``"algo"``, TD3CnnClip by default) with COMMON, the
    configuration's keywords and the size's; Gaussian exploration noise for TD3, none for SAC and TQC.

    :param args: the flags
    :param config: the configuration's name
    :param env: the training env
    :param seed: the training seed
    :return: the model
    """
    kwargs = {**COMMON, **CONFIGS[config]}
    kwargs.pop("env_kwargs", None)  # the envs' (:func:`make_envs`)
    kwargs.pop("curriculum", None)  # a callback's (:func:`curriculum_callback`)
    algo, policy = ALGORITHM_CLASSES[kwargs.pop("algo", "td3")], kwargs.pop("policy", "CnnPolicy")
    kwargs["learning_rate"] = learning_rate_schedule(
        kwargs["learning_rate"], kwargs.pop("lr_schedule", "constant"), kwargs.pop("final_learning_rate", 0.0),
        kwargs.pop("lr_decay_fraction", 1.0),
    )
    n_actions = env.action_space.shape[0]
    noise = NormalActionNoise(np.zeros(n_actions), args.action_noise_sigma * np.ones(n_actions))
    return algo(
        policy, env, buffer_size=args.buffer_size, learning_starts=args.learning_starts,
        batch_size=args.batch_size, action_noise=noise if algo is TD3CnnClip else None, seed=seed,
        device=args.device, **kwargs,
    )  # fmt: skip


class BudgetProgress(BaseCallback):
    """Make SB3's training progress (``progress_remaining``, which learning-rate schedules read) run over a whole
    budget of steps rather than over each ``learn()`` call: a run trains in one ``learn()`` call per evaluation and
    again after a restart, and SB3 counts each call's progress from 1 to 0.

    :param budget: the run's steps (decisions), at which the progress reaches 0
    """

    def __init__(self, budget: int) -> None:
        super().__init__()
        self.budget = budget

    def _on_training_start(self) -> None:
        self.model._total_timesteps = self.budget  # SB3's progress_remaining = 1 - num_timesteps / _total_timesteps

    def _on_step(self) -> bool:
        return True


def curriculum_callback(config: str, scenario: int, seed: int, steps: int) -> ScenarioCallback | None:
    """The curriculum of a ``+curric`` configuration, else ``None``: the training envs drive scenarios 0, ..., the
    run's scenario in equal shares of its ``steps`` (the command line's ``--curriculum``, from scenario 0 up to the
    evaluated one); the evaluation env always drives the run's scenario.

    :param config: the configuration's name
    :param scenario: the run's scenario id
    :param seed: the training seed, which seeds each stage's traffic
    :param steps: the run's budget in decisions
    """
    if not CONFIGS[config].get("curriculum"):
        return None
    if scenario == 0:
        raise ValueError(f"{config} raises the traffic from scenario 0 up to the run's, so it needs scenario 1 or 2.")
    return ScenarioCallback(list(range(scenario + 1)), seed=seed, advance_every=max(1, steps // (scenario + 1)))


def run_job(args: argparse.Namespace, config: str, scenario: int, seed: int) -> str:
    """Train one configuration on one scenario and seed, evaluating and checkpointing every ``--eval-every`` ticks.

    :param args: the flags
    :param config: the configuration's name
    :param scenario: the scenario id
    :param seed: the training seed
    :return: a line describing what was done
    """
    set_threads(args.threads)
    if args.flush_denormal:
        flush_denormal_floats()
    folder = job_folder(args, config, scenario, seed)
    folder.mkdir(parents=True, exist_ok=True)
    settings = job_settings(args, config, scenario, seed)
    settings_file = folder / "job.json"
    if settings_file.exists() and json.loads(settings_file.read_text()) != json.loads(json.dumps(settings)):
        raise ValueError(
            f"{folder} holds a run with other settings ({settings_file.read_text()}), not {settings}. Use another "
            "--run-dir, or delete that folder to start it again."
        )
    settings_file.write_text(json.dumps(settings, indent=2))
    env, eval_env = make_envs(args, config, scenario)
    steps, eval_every = ticks_budget(args, scenario) // args.action_repeat, max(1, args.eval_every // args.action_repeat)
    checkpoint, buffer_file = folder / "model.zip", folder / "replay_buffer.ckpt"
    curriculum = curriculum_callback(config, scenario, seed, steps)
    if checkpoint.exists():
        model = ALGORITHM_CLASSES[settings["kwargs"].get("algo", "td3")].load(checkpoint, env=env, device=args.device)
        resumed = model.num_timesteps
        if args.buffer_checkpoints and buffer_file.exists():
            load_buffer(model, buffer_file)
            model.learning_starts = args.learning_starts
        else:  # refill the empty buffer with random actions before training again
            model.learning_starts = resumed + args.learning_starts
    else:
        model = make_model(args, config, env, seed)
        resumed = 0
    if curriculum is not None and 0 < resumed < steps:
        raise ValueError(
            f"{folder} holds a stopped curriculum run: the curriculum's stage is not checkpointed, so it cannot "
            "resume. Delete that folder to start it again."
        )
    train_seconds = float(json.loads((folder / "wall.json").read_text())["train_s"]) if resumed else 0.0
    while True:
        step = model.num_timesteps
        eval_file = folder / f"eval_{step:07d}.json"
        if not eval_file.exists():
            previous = sorted(folder.glob("eval_*.json"))
            record = json.loads(previous[-1].read_text()) if previous else {}
            start = time.perf_counter()
            if record.get("n_updates") != model._n_updates:  # else the same policy (no update yet): same figures
                record = evaluate(model, eval_env, args.eval_episodes, args.eval_seed)
            record.update(step=step, n_updates=model._n_updates, train_s=train_seconds,
                          eval_s=time.perf_counter() - start)  # fmt: skip
            _write_atomically(eval_file, json.dumps(record, indent=1))
        if step >= steps:
            break
        start = time.perf_counter()
        callbacks = [BudgetProgress(steps)] + ([curriculum] if curriculum is not None else [])
        model.learn(min(eval_every, steps - step), reset_num_timesteps=False, callback=callbacks)
        train_seconds += time.perf_counter() - start
        if args.buffer_checkpoints:
            save_buffer(model, folder / "replay_buffer.tmp.ckpt")
            os.replace(folder / "replay_buffer.tmp.ckpt", buffer_file)
        model.save(folder / "model.tmp.zip")
        os.replace(folder / "model.tmp.zip", checkpoint)
        _write_atomically(folder / "wall.json", json.dumps({"train_s": train_seconds, "step": model.num_timesteps}))
    if args.final_eval_episodes:
        final_evaluation(args, model, eval_env, folder)
    env.close()
    eval_env.close()
    return f"{config} scenario {scenario} seed {seed}: {resumed} -> {model.num_timesteps} steps, training {train_seconds:.0f} s"


def final_evaluation(args: argparse.Namespace, model: CnnClipMixin, env: gym.Env, folder: Path) -> None:
    """Drive the final evaluation of a run's model at the end of its budget (:func:`final_seeds`) into
    ``final_eval.json``, unless that file already holds it (the same seeds and the same policy).

    :param args: the flags
    :param model: the model at the end of the budget
    :param env: the evaluation env
    :param folder: the run's folder
    """
    first_seed, episodes = final_seeds(args)
    settings = {"eval_seed": first_seed, "eval_episodes": episodes, "step": model.num_timesteps,
                "n_updates": model._n_updates}  # fmt: skip
    path = folder / "final_eval.json"
    if path.exists() and json.loads(path.read_text())["settings"] == settings:
        return
    start = time.perf_counter()
    record = evaluate(model, env, episodes, first_seed)
    record.update(settings=settings, step=model.num_timesteps, eval_s=time.perf_counter() - start)
    _write_atomically(path, json.dumps(record, indent=1))


def ticks_budget(args: argparse.Namespace, scenario: int) -> int:
    """Simulator ticks of a run on ``scenario``: ``--ticks``, else the size's budget for the scenario."""
    return args.ticks if args.ticks is not None else SIZES[args.size]["ticks"][scenario]


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


Found = dict[tuple[str, int], dict[int, list[dict[str, Any]]]]


def collect(args: argparse.Namespace) -> Found:
    """Every evaluation record under ``--run-dir`` for the chosen runs and seeds, in step order, each with its
    ``ticks`` and its ``speed_vs_expert`` (the mean speed over the scripted driver's on the same seeds)."""
    found: Found = {}
    for config, scenario in args.runs:
        expert_speed = None
        for seed in args.seeds:
            files = sorted(job_folder(args, config, scenario, seed).glob("eval_*.json"))
            records = [json.loads(f.read_text()) for f in files]
            records = [r for r in records if r["step"] * args.action_repeat <= ticks_budget(args, scenario)]
            if not records:
                continue
            expert_speed = expert_speed or expert_reference(args, scenario)["mean_speed"]
            for record in records:
                record.update(ticks=record["step"] * args.action_repeat, speed_vs_expert=record["mean_speed"] / expert_speed)
            found.setdefault((config, scenario), {})[seed] = records
    return found


def collect_final(args: argparse.Namespace, found: Found) -> dict[tuple[str, int], dict[int, dict[str, Any]]]:
    """Every final evaluation under ``--run-dir`` of the runs and seeds found that was driven on the seeds
    :func:`final_seeds` names with the model of the seed's last evaluation found (the end of its run within the
    budget), each with its ``ticks`` and ``speed_vs_expert`` (over the scripted driver's on the same seeds).

    :param args: the flags
    :param found: the evaluations along the curves (:func:`collect`)
    """
    first_seed, episodes = final_seeds(args)
    finals: dict[tuple[str, int], dict[int, dict[str, Any]]] = {}
    for (config, scenario), seeds in found.items() if episodes else []:
        for seed, records in seeds.items():
            path = job_folder(args, config, scenario, seed) / "final_eval.json"
            record = json.loads(path.read_text()) if path.exists() else None
            if record is None or (record["settings"]["eval_seed"], record["settings"]["eval_episodes"]) != (
                    first_seed, episodes) or record["step"] != records[-1]["step"]:
                continue
            expert_speed = expert_reference(args, scenario, final=True)["mean_speed"]
            record["ticks"] = record["step"] * args.action_repeat
            record["speed_vs_expert"] = record["mean_speed"] / expert_speed
            finals.setdefault((config, scenario), {})[seed] = record
    return finals


def summarise_final(finals: dict[tuple[str, int], dict[int, dict[str, Any]]]) -> dict[tuple[str, int], dict[str, Any]]:
    """Per run: mean, min and max over its seeds of each final evaluation figure and its wall time, the seeds, the
    episodes of each seed and the collisions counted over all of them."""
    summaries = {}
    for run, seeds in finals.items():
        records = list(seeds.values())
        summaries[run] = {
            "ticks": records[0]["ticks"], "seeds": len(records), "episodes": records[0]["settings"]["eval_episodes"],
            **{key: _spread([r[key] for r in records]) for key in (*FIGURES, "eval_s")},
            "collisions": sum(e["termination_reason"] == "collision" for r in records for e in r["episodes"]),
        }  # fmt: skip
    return summaries


def summarise(found: Found) -> dict[tuple[str, int], list[dict[str, Any]]]:
    """Per run and evaluation step: mean, min and max over the seeds that reached that step; ``eval_s`` is the sum
    of each seed's evaluation wall times up to that step, present only where every seed timed each of its evaluations
    (runs from before ``eval_s`` existed did not)."""
    curves: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for run, seeds in found.items():
        steps = sorted({r["step"] for records in seeds.values() for r in records})
        curves[run] = []
        for step in steps:
            so_far = [[r for r in records if r["step"] <= step] for records in seeds.values()]
            so_far = [records for records in so_far if records[-1]["step"] == step]  # the seeds that reached it
            at_step = [records[-1] for records in so_far]
            point: dict[str, Any] = {"step": step, "ticks": at_step[0]["ticks"], "seeds": len(at_step)}
            for key in (*FIGURES, "train_s"):
                point[key] = _spread([r[key] for r in at_step])
            evaluation_s = [[r.get("eval_s") for r in records] for records in so_far]
            if all(None not in times for times in evaluation_s):
                point["eval_s"] = _spread([sum(times) for times in evaluation_s])
            curves[run].append(point)
    return curves


def _seed_range(first_seed: int, episodes: int) -> str:
    """The reset seeds of ``episodes`` evaluation episodes from ``first_seed``, as ``"first-last"``."""
    return f"{first_seed}-{first_seed + episodes - 1}"


def _cell(spread: dict[str, float]) -> str:
    """A Markdown cell of a figure over seeds: ``mean [min, max]``."""
    return f"{spread['mean']:.3g} [{spread['min']:.3g}, {spread['max']:.3g}]"


def _spread(values: list[float]) -> dict[str, float]:
    """Mean, min and max of the values (one per seed)."""
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}


def goal_status(scenario: int, point: dict[str, Any]) -> str:
    """Whether an evaluation point meets :data:`GOALS` for its scenario, naming each figure that misses, and saying
    so when the point has fewer seeds than the goals' mean of 3."""
    completion, collisions, speed = GOALS[scenario]
    misses = [f"route < {completion:.0%}"] * (point["route_completion"]["mean"] < completion)
    misses += [f"collisions > {collisions:.0%}"] * (point["collision_rate"]["mean"] > collisions)
    misses += [f"speed < {speed:.0%}"] * (point["speed_vs_expert"]["mean"] < speed)
    status = "met" if not misses else "missed: " + ", ".join(misses)
    return status if point["seeds"] >= 3 else f"{status} ({point['seeds']} seed(s): the goals are for the mean of 3)"


def plot(curves: dict[tuple[str, int], list[dict[str, Any]]], path: Path, title: str) -> None:
    """Route completion, collision rate and speed over the expert's against simulator ticks: mean over seeds,
    min-max band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for ax, key in zip(axes, ("route_completion", "collision_rate", "speed_vs_expert")):
        for (config, scenario), points in curves.items():
            ticks = [p["ticks"] for p in points]
            (line,) = ax.plot(ticks, [p[key]["mean"] for p in points], marker="o", markersize=3,
                              label=f"{config}, scenario {scenario}")  # fmt: skip
            ax.fill_between(ticks, [p[key]["min"] for p in points], [p[key]["max"] for p in points],
                            color=line.get_color(), alpha=0.15)  # fmt: skip
        ax.set_xlabel("simulator ticks")
        ax.set_ylabel(f"{FIGURES[key]} (evaluation)")
        ax.grid(alpha=0.3)
    axes[0].set_ylim(0, 1.02)
    axes[1].set_ylim(-0.02, 1.02)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(args: argparse.Namespace) -> None:
    """Rewrite the JSON, Markdown and PNG results from the evaluation files found."""
    found = collect(args)
    finals = collect_final(args, found)
    curves, final_points = summarise(found), summarise_final(finals)
    run = run_description(argparse.Namespace(**{k: v for k, v in vars(args).items() if k != "run_dir"}))  # no path
    experts = {scenario: expert_reference(args, scenario) for scenario in sorted({s for _, s in curves})}
    results = {
        "run": run, "configs": {config: {**COMMON, **CONFIGS[config]} for config in sorted({c for c, _ in args.runs})},
        "experts": {str(s): e for s, e in experts.items()},
        "curves": {f"{c}/scenario_{s}": points for (c, s), points in curves.items()},
        "evaluations": {f"{c}/scenario_{s}": {str(seed): r for seed, r in seeds.items()} for (c, s), seeds in found.items()},
        "final": {f"{c}/scenario_{s}": {"summary": final_points[(c, s)],
                                        "seeds": {str(seed): r for seed, r in seeds.items()}}
                  for (c, s), seeds in finals.items()},
        "experts_final": {str(s): expert_reference(args, s, final=True) for s in sorted({s for _, s in finals})},
    }  # fmt: skip
    last_rows, curve_rows = [], []
    for (config, scenario), points in curves.items():
        last = points[-1]
        cells = [_cell(last[key]) for key in FIGURES]
        eval_min = f"{last['eval_s']['mean'] / 60:.1f}" if "eval_s" in last else "n/a"
        last_rows.append([config, scenario, last["ticks"], last["seeds"], *cells, f"{last['train_s']['mean'] / 60:.1f}",
                          eval_min, goal_status(scenario, last)])  # fmt: skip
    final_rows = []
    for (config, scenario), point in final_points.items():
        final_rows.append([config, scenario, point["ticks"], point["seeds"], point["episodes"],
                           *[_cell(point[key]) for key in FIGURES],
                           f"{point['collisions']} of {point['seeds'] * point['episodes']}",
                           f"{point['eval_s']['mean'] / 60:.1f}", goal_status(scenario, point)])  # fmt: skip
    for (config, scenario), points in curves.items():
        curve_rows.append([config, scenario, ", ".join(
            f"{p['ticks'] // 1000}k: {p['route_completion']['mean']:.2f}" for p in points)])
    expert_rows = [[s, _seed_range(e["settings"]["eval_seed"], e["settings"]["eval_episodes"]), f"{e['mean_speed']:.2f}",
                    f"{e['route_completion']:.3f}", f"{e['goal_rate']:.2f}"]
                   for s, e in [*experts.items(), *results["experts_final"].items()]]  # fmt: skip
    markdown = "\n".join([
        "# Learning curves on the surrogate CarlaScenario ids",
        "",
        describe_line(run),
        f"Note: {args.note}" if args.note else "",
        f"{len(args.seeds)} training seed(s) per run, each action held {args.action_repeat} ticks, batch "
        f"{args.batch_size}, buffer {args.buffer_size}, learning_starts {args.learning_starts} decisions"
        f"{', denormal floats flushed to zero (--flush-denormal)' if args.flush_denormal else ''}; evaluation "
        f"every {args.eval_every} simulator ticks: {args.eval_episodes} deterministic episodes on seeds "
        f"{_seed_range(args.eval_seed, args.eval_episodes)} (never used in training). Cells: mean over seeds "
        "[min, max]; train min and eval min: wall minutes of training and of the evaluations, mean over seeds (n/a: "
        "runs from before evaluations were timed). Goals (issue 20, mean of 3 training seeds): scenario 0 route >= "
        "95 %, collisions <= 5 %, speed >= 90 % of the scripted driver's; scenarios 1-2 >= 90 %, <= 5 %, >= 85 %.",
        "",
        "## Last evaluation",
        "",
        markdown_table(["config", "scenario", "ticks", "seeds", *FIGURES.values(), "train min", "eval min", "goal"],
                       last_rows),
        "",
        "## Final evaluation: the verdict",
        "",
        f"The model at the end of the budget, {args.final_eval_episodes} deterministic episodes per seed on seeds "
        f"{_seed_range(*final_seeds(args))}, after the curve's: neither training nor "
        "the evaluations along the curve (by which configurations are chosen) drove them, and the curve's "
        f"{args.eval_episodes} episodes per point are too few for a verdict on a 5 % rate. Cells as above; collisions: "
        "episodes that ended in a collision, over every seed's; goal: the run's verdict.",
        "",
        markdown_table(["config", "scenario", "ticks", "seeds", "episodes per seed", *FIGURES.values(), "collisions",
                        "eval min", "goal"], final_rows) if final_rows else "(no final evaluation yet)",
        "",
        "## Route completion at each evaluation (mean over seeds; ticks: route)",
        "",
        markdown_table(["config", "scenario", "route completion"], curve_rows) if curve_rows else "(no evaluation yet)",
        "",
        "## The scripted driver on the same seeds (the reference of speed / expert)",
        "",
        markdown_table(["scenario", "seeds", "mean speed m/s", "route completion", "goal rate"], expert_rows),
        "",
        f"![learning curves]({args.name}.png)",
    ])  # fmt: skip
    write_results(args.output_dir, args.name, results, markdown, echo=False)
    if curves:
        title = (f"surrogate, action repeat {args.action_repeat}, evaluation every {args.eval_every} ticks: mean over up to "
                 f"{len(args.seeds)} seeds, band = min..max; {args.machine}, {run['date_utc']} UTC")  # fmt: skip
        plot(curves, args.output_dir / f"{args.name}.png", title)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=SIZES, default="cpu", help="preset of the size flags (default: cpu)")
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, help="configurations to compare (default: the size's)")
    parser.add_argument("--scenarios", nargs="+", type=int, choices=list(SCENARIO_IDS), help="scenarios (default: the size's)")
    parser.add_argument("--seeds", nargs="+", type=int, help="training seeds")
    parser.add_argument("--ticks", type=int, help="simulator ticks per run (default: the size's budget per scenario)")
    parser.add_argument("--action-repeat", type=int, help="simulator ticks per decision")
    parser.add_argument("--eval-every", type=int, help="simulator ticks between evaluations")
    parser.add_argument("--eval-episodes", type=int, help="deterministic episodes per evaluation")
    parser.add_argument("--eval-max-steps", type=int, help="decision limit of an evaluation episode (default: the env's 60 s)")
    parser.add_argument("--eval-seed", type=int, default=1000, help="reset seed of the first evaluation episode")
    parser.add_argument("--final-eval-episodes", type=int,
                        help="episodes of the final evaluation, on the seeds after the evaluations' (0: none)")
    parser.add_argument("--batch-size", type=int, help="minibatch size")
    parser.add_argument("--buffer-size", type=int, help="replay buffer capacity")
    parser.add_argument("--learning-starts", type=int, help="warm-up decisions before the first update")
    parser.add_argument("--action-noise-sigma", type=float, default=0.1, help="exploration noise std (CLI default)")
    parser.add_argument("--workers", type=int, help="parallel processes")
    parser.add_argument("--device", default="auto", help="torch device of every run")
    parser.add_argument(
        "--flush-denormal", action="store_true",
        help="treat denormal floats as zero in every job (torch.set_flush_denormal, the train command's flush_denormal; "
        "recorded in each job's settings)",
    )  # fmt: skip
    parser.add_argument("--name", default="learning_curve", help="base name of the result files")
    parser.add_argument("--run-dir", type=Path, help="evaluations and checkpoints (default: benchmarks/runs/<name>)")
    parser.add_argument("--note", default="", help="a sentence written into the Markdown (e.g. what the run cannot show)")
    parser.add_argument(
        "--buffer-checkpoints", action=argparse.BooleanOptionalAction,
        help="checkpoint the replay buffer with the model; without, a resumed job starts from the model with an empty "
        "buffer (default: on, except --size large)",
    )  # fmt: skip
    parser.add_argument("--report-only", action="store_true", help="rewrite the results from the run folder, train nothing")
    add_common_args(parser)
    args = parser.parse_args(argv)
    size = SIZES[args.size]
    for key, value in size.items():
        if key not in ("ticks", "runs") and getattr(args, key) is None:
            setattr(args, key, value)
    if args.configs or args.scenarios:
        args.runs = [(config, scenario) for config in args.configs or sorted({c for c, _ in size["runs"]})
                     for scenario in args.scenarios or sorted({s for _, s in size["runs"]})]  # fmt: skip
    else:
        args.runs = size["runs"]
    for key in ("eval_every", "eval_episodes", "batch_size", "buffer_size", "workers", "action_repeat",
                *(["ticks"] if args.ticks is not None else []), *(["eval_max_steps"] if args.eval_max_steps else [])):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')}={getattr(args, key)} must be at least 1.")
    for key in ("learning_starts", "final_eval_episodes"):
        if getattr(args, key) < 0:
            parser.error(f"--{key.replace('_', '-')}={getattr(args, key)} must be >= 0.")
    if args.run_dir is None:
        args.run_dir = RESULTS_DIR.parent / "runs" / args.name
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    set_threads(args.threads)  # the jobs' count, which the results' header reports (this process only waits)
    if not args.report_only:
        for scenario in sorted({s for _, s in args.runs}):
            expert_reference(args, scenario)  # before the jobs load the cores
        jobs = [(config, scenario, seed) for config, scenario in args.runs for seed in args.seeds]
        with ProcessPoolExecutor(max_workers=args.workers, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(run_job, args, *job) for job in jobs]
            for future in as_completed(futures):
                print(future.result(), flush=True)
                report(args)
    report(args)
    print(f"results: {args.output_dir / args.name}.md", flush=True)


if __name__ == "__main__":
    main()
