"""The command line: ``sb3-td3-cnnclip train | evaluate | report | sweep`` (also ``python -m sb3_td3_cnnclip``).

``train`` writes one run directory ``<log_dir>/<run_name>_<n>/`` holding the TensorBoard events, ``progress.csv``,
``config.json`` (the resolved options, the simulator that actually ran, the reward bound, library versions),
``model.zip`` and ``result.json`` (how the run ended); ``--debug`` adds ``debug/`` with one TensorBoard point per
gradient update. ``report`` checks such a directory; ``evaluate`` drives a saved model.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import secrets
import sys
import typing
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import stable_baselines3
import torch
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, ProgressBarCallback
from stable_baselines3.common.logger import configure
from stable_baselines3.common.noise import NormalActionNoise
from stable_baselines3.common.utils import get_latest_run_id
from stable_baselines3.common.vec_env import VecEnv
from torch.utils.tensorboard import SummaryWriter

import sb3_td3_cnnclip
from sb3_td3_cnnclip.callbacks import DrivingMetricsCallback, ExplosionEarlyStopping, ScenarioCallback
from sb3_td3_cnnclip.config_file import DICT_POLICIES, TrainConfig, load_config_file, option_names, resolve_config
from sb3_td3_cnnclip.envs import SCENARIO_IDS, MissingExtraError, SimulatorUnavailableError
from sb3_td3_cnnclip.report import CONFIG_FILE, DEBUG_SUBDIR, RESULT_FILE, RunDirError, check_run, write_plots
from sb3_td3_cnnclip.td3_cnnclip import TD3CnnClip
from sb3_td3_cnnclip.vec_env import EnvWorkerError, make_carla_vec_env, parse_servers

#: env options ``evaluate`` takes from the model's run (config.json beside the model), unless flags override them
INHERITED_OPTIONS = ("scenario", "simulator", "host", "port", "tm_port")
#: options of ``evaluate`` shared with ``train``
EVALUATE_OPTIONS = (*INHERITED_OPTIONS, "seed", "device")
TRAIN_DESCRIPTION = (
    "Train TD3CnnClip on a driving scenario. Options: defaults, overridden by --config FILE, overridden by flags. "
    "Everything lands in <log-dir>/<run-name>_<n>/; Ctrl-C stops training and saves the model there."
)
SWEEP_DESCRIPTION = (
    "Tune TD3CnnClip with Optuna: trials of --max-timesteps steps, each evaluated --n-evaluations times (pruned when "
    "below the median), in a study that every worker started with the same --study and --storage shares. The best "
    "configuration is written as a YAML file for train --config."
)
#: written by ExplosionEarlyStopping in the run directory when it stops training
EXPLOSION_FILE = "explosion.json"
#: errors printed as one line (no traceback) with exit status 2: the message says what to do
USER_ERRORS = (RunDirError, SimulatorUnavailableError, MissingExtraError, FileNotFoundError, EnvWorkerError)


def float_or_none(text: str) -> float | None:
    """Parse a number, or ``none`` (e.g. a grad-norm limit that only measures)."""
    return None if text.lower() == "none" else float(text)


def int_or_none(text: str) -> int | None:
    """Parse an integer, or ``none``."""
    return None if text.lower() == "none" else int(text)


#: type of a TrainConfig field -> (argparse type, metavar)
_PARSERS: dict[Any, tuple[Callable[[str], Any], str]] = {
    int: (int, "N"), float: (float, "X"), str: (str, "TEXT"), float | None: (float_or_none, "X|none"), int | None: (int_or_none, "N|none"),
}  # fmt: skip


def add_options(parser: argparse.ArgumentParser, names: Sequence[str]) -> None:
    """Add a flag for each named :class:`TrainConfig` field. Flags default to "absent" so that only the ones the
    user gives override the lower layers (defaults, config file).

    :param parser: the (sub)parser
    :param names: the fields to offer
    """
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name not in names:
            continue
        flags = [f"--{f.name.replace('_', '-')}", *f.metadata["flags"]]
        shown = "none" if f.default is None else f.default
        help_text = f"{f.metadata['help']} (default: {shown})"
        if hints[f.name] is bool:
            parser.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        else:
            parse, metavar = _PARSERS[hints[f.name]]
            parser.add_argument(
                *flags, dest=f.name, type=parse, choices=f.metadata["choices"], default=argparse.SUPPRESS,
                metavar=None if f.metadata["choices"] else metavar, help=help_text,
            )  # fmt: skip


class UpdateStatsWriter(BaseCallback):
    """Writes every entry of ``model.update_stats`` (one per gradient step) to TensorBoard as ``debug/<key>``, with
    the update number as step, in its own event file (steps count updates there, not timesteps).

    ``train()`` runs after the env step's callbacks, so the entries of one training phase are written at the next
    step, and the last ones at the end of training.

    :param log_dir: directory of the event file
    :param verbose: SB3 callback verbosity
    """

    def __init__(self, log_dir: str | Path, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.log_dir = Path(log_dir)
        self._writer: SummaryWriter | None = None
        self._last_update = 0

    def _on_training_start(self) -> None:
        self._writer = SummaryWriter(str(self.log_dir))
        self._last_update = self.model._n_updates

    def _on_step(self) -> bool:
        self._write_new()
        return True

    def _on_training_end(self) -> None:
        self._write_new()
        self._writer.close()

    def _write_new(self) -> None:
        new = []
        for stats in reversed(self.model.update_stats):
            if stats["n_updates"] <= self._last_update:
                break
            new.append(stats)
        if not new:
            return
        new.reverse()
        if new[0]["n_updates"] != self._last_update + 1:
            raise RuntimeError(
                f"Updates {self._last_update + 1} to {new[0]['n_updates'] - 1} left model.update_stats before they "
                f"were written: stats_history={self.model.stats_history} is smaller than the gradient steps of one "
                "training phase; raise stats_history."
            )
        for stats in new:
            for key, value in stats.items():
                if key != "n_updates":
                    self._writer.add_scalar(f"debug/{key}", value, stats["n_updates"])
        self._last_update = new[-1]["n_updates"]


def make_env(config: TrainConfig, render_mode: str | None = None) -> gym.Env:
    """The scenario's environment, observing a Dict for the MultiInput policies.

    :param config: the options (scenario, simulator and server)
    :param render_mode: ``None`` or ``"rgb_array"``
    :return: the environment
    """
    return gym.make(
        SCENARIO_IDS[config.scenario], render_mode=render_mode, simulator=config.simulator, host=config.host,
        port=config.port, tm_port=config.tm_port, observation="dict" if config.policy in DICT_POLICIES else "image",
    )  # fmt: skip


def make_train_env(config: TrainConfig) -> VecEnv:
    """The ``config.n_envs`` training envs of the scenario, each on its own server and Traffic Manager port.

    :param config: the options (scenario, simulator, servers, n_envs, seed)
    :return: the VecEnv (see :func:`~sb3_td3_cnnclip.vec_env.make_carla_vec_env`)
    """
    return make_carla_vec_env(
        config.scenario, config.n_envs, servers=config.servers, host=config.host, port=config.port,
        tm_port=config.tm_port, port_stride=config.port_stride, simulator=config.simulator, seed=config.seed,
        env_kwargs={"observation": "dict" if config.policy in DICT_POLICIES else "image"},
    )  # fmt: skip


def make_model(config: TrainConfig, env: gym.Env | VecEnv) -> TD3CnnClip:
    """The TD3CnnClip model the options describe.

    :param config: the options
    :param env: the training environment
    :return: the model
    """
    n_actions = env.action_space.shape[0]
    sigma = config.action_noise_sigma
    noise = NormalActionNoise(np.zeros(n_actions), sigma * np.ones(n_actions)) if sigma > 0 else None
    return TD3CnnClip(
        config.policy, env, learning_rate=config.learning_rate, buffer_size=config.buffer_size,
        learning_starts=config.learning_starts, batch_size=config.batch_size, tau=config.tau, gamma=config.gamma,
        train_freq=config.train_freq, gradient_steps=config.gradient_steps, action_noise=noise,
        policy_delay=config.policy_delay, target_policy_noise=config.target_policy_noise,
        target_noise_clip=config.target_noise_clip, actor_cnn_max_grad_norm=config.actor_cnn_max_grad_norm,
        actor_mlp_max_grad_norm=config.actor_mlp_max_grad_norm, critic_cnn_max_grad_norm=config.critic_cnn_max_grad_norm,
        critic_mlp_max_grad_norm=config.critic_mlp_max_grad_norm, actor_lr_scale=config.actor_lr_scale,
        pre_tanh_penalty=config.pre_tanh_penalty,
        on_nonfinite_grad="raise" if config.debug else "skip", seed=config.seed, device=config.device,
        verbose=config.verbose,
    )  # fmt: skip


def make_callbacks(config: TrainConfig, run_dir: Path) -> CallbackList:
    """The callbacks the options switch on.

    :param config: the options
    :param run_dir: the run directory
    :return: the callbacks, in one list
    """
    callbacks: list[BaseCallback] = []
    if config.curriculum:
        stages = list(range(config.scenario, max(SCENARIO_IDS) + 1))
        callbacks.append(ScenarioCallback(stages, seed=config.seed, advance_every=max(1, config.max_timesteps // len(stages)), verbose=1))
    if config.early_stop:
        callbacks.append(ExplosionEarlyStopping(log_dir=str(run_dir)))
    if config.metrics:
        callbacks.append(DrivingMetricsCallback())
    if config.debug:
        callbacks.append(UpdateStatsWriter(run_dir / DEBUG_SUBDIR))
    if config.progress_bar:
        callbacks.append(ProgressBarCallback())
    return CallbackList(callbacks)


def run_train(config: TrainConfig) -> tuple[Path, str]:
    """Train as the options say and save everything in a new run directory.

    :param config: the options (a ``None`` seed is drawn here and recorded)
    :return: the run directory and how the run ended (``completed``, ``stopped_early`` or ``interrupted``)
    """
    if config.seed is None:
        config = dataclasses.replace(config, seed=secrets.randbelow(2**31))
    run_dir = Path(config.log_dir) / f"{config.run_name}_{get_latest_run_id(config.log_dir, config.run_name) + 1}"
    if config.torch_threads is not None:
        torch.set_num_threads(config.torch_threads)
    env = make_train_env(config)
    model = make_model(config, env)
    model.set_logger(configure(str(run_dir), ["stdout", "csv", "tensorboard"] if config.verbose else ["csv", "tensorboard"]))
    saved = {
        "config": dataclasses.asdict(config),
        "env": {"id": SCENARIO_IDS[config.scenario], "simulator": env.get_attr("simulator_name")[0],
                "max_abs_reward": env.get_attr("max_abs_reward")[0], "n_envs": env.num_envs},
        "versions": {"sb3_td3_cnnclip": sb3_td3_cnnclip.__version__, "stable_baselines3": stable_baselines3.__version__,
                     "torch": torch.__version__, "gymnasium": gym.__version__},
    }  # fmt: skip
    (run_dir / CONFIG_FILE).write_text(json.dumps(saved, indent=2))
    print(f"Run directory: {run_dir}\nSimulator: {saved['env']['simulator']}\nConfiguration (saved to {run_dir / CONFIG_FILE}):")
    for name, value in saved["config"].items():
        print(f"  {name} = {value}")
    callback = make_callbacks(config, run_dir)
    status = "error"
    try:
        model.learn(config.max_timesteps, callback=callback, log_interval=config.log_interval)
        status = "completed" if model.num_timesteps >= config.max_timesteps else "stopped_early"
    except KeyboardInterrupt:
        status = "interrupted"
    finally:
        if status in ("error", "interrupted"):
            callback.on_training_end()  # SB3 skips it when learn() raises: flush the writers, close the progress bar
        if model.logger.name_to_value:  # the updates since the last dump
            model.dump_logs()
        model.logger.close()
        model.save(run_dir / "model.zip")
        result = {"status": status, "num_timesteps": model.num_timesteps, "n_updates": model._n_updates,
                  "nonfinite_skips": model.nonfinite_skips, "model": str(run_dir / "model.zip")}  # fmt: skip
        explosion = run_dir / EXPLOSION_FILE
        if explosion.is_file():
            result["stop_reason"] = json.loads(explosion.read_text())["reason"]
        (run_dir / RESULT_FILE).write_text(json.dumps(result, indent=2))
        env.close()
        print(f"Training {status} at timestep {model.num_timesteps}; model saved to {run_dir / 'model.zip'}")
    if "stop_reason" in result:
        print(f"Stopped early: {result['stop_reason']} (details in {run_dir / EXPLOSION_FILE})")
    print(f"Check the run with: sb3-td3-cnnclip report {run_dir}")
    return run_dir, status


def _run_config(model_path: Path) -> dict[str, Any]:
    """The options saved beside a model by ``train`` (empty when the model was saved elsewhere)."""
    path = model_path.parent / CONFIG_FILE
    return json.loads(path.read_text())["config"] if path.is_file() else {}


def run_evaluate(model_path: str | Path, config: TrainConfig, episodes: int, video: str | Path | None = None) -> list[dict[str, Any]]:
    """Drive ``episodes`` episodes with the model's deterministic policy; optionally save the camera view as a GIF.

    :param model_path: the saved model (``model.zip``)
    :param config: the env options (scenario, simulator, server, seed, device)
    :param episodes: number of episodes
    :param video: GIF file to write (``None``: no video)
    :return: one dict of driving metrics per episode
    """
    model_path = Path(model_path)
    if not model_path.is_file():
        raise FileNotFoundError(f"Model {str(model_path)!r} does not exist; pass the model.zip of a run directory.")
    model = TD3CnnClip.load(model_path, device=config.device)
    policy = "MultiInputPolicy" if isinstance(model.observation_space, gym.spaces.Dict) else "CnnPolicy"
    env = make_env(dataclasses.replace(config, policy=policy), render_mode="rgb_array" if video else None)
    frames, results = [], []
    try:
        for episode in range(episodes):
            obs, info = env.reset(seed=None if config.seed is None else config.seed + episode)
            frames.append(env.render())
            done, total, length, speeds = False, 0.0, 0, []
            while not done:
                action, _ = model.predict(obs, deterministic=True)
                obs, reward, terminated, truncated, info = env.step(action)
                done, total, length = terminated or truncated, total + reward, length + 1
                speeds.append(info["speed"])
                frames.append(env.render())
            results.append({
                "episode": episode, "return": total, "length": length, "route_completion": info["route_completion"],
                "termination_reason": info["termination_reason"], "mean_speed": float(np.mean(speeds)),
                "simulator": info["simulator"],
            })  # fmt: skip
    finally:
        env.close()
    if video:
        _save_gif(frames, Path(video), env.metadata["render_fps"])
    return results


def _save_gif(frames: list[np.ndarray], path: Path, fps: int, scale: int = 4) -> None:
    """Save RGB frames as an animated GIF, enlarged ``scale`` times (nearest neighbour) to be watchable."""
    try:
        from PIL import Image
    except ImportError as error:
        raise MissingExtraError('Videos need Pillow: pip install "sb3-td3-cnnclip[report]".') from error
    images = [Image.fromarray(f).resize((f.shape[1] * scale, f.shape[0] * scale), Image.NEAREST) for f in frames]
    path.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)


def print_evaluation(results: list[dict[str, Any]]) -> None:
    """Print one line per episode, the means and the count of each termination reason.

    :param results: as returned by :func:`run_evaluate`
    """
    print(f"{'episode':>7} {'return':>9} {'length':>6} {'route':>6} {'speed':>6}  termination")
    for r in results:
        print(f"{r['episode']:>7} {r['return']:>9.2f} {r['length']:>6} {r['route_completion']:>6.1%} {r['mean_speed']:>6.2f}  {r['termination_reason']}")
    means = {key: np.mean([r[key] for r in results]) for key in ("return", "length", "route_completion", "mean_speed")}
    print(f"{'mean':>7} {means['return']:>9.2f} {means['length']:>6.0f} {means['route_completion']:>6.1%} {means['mean_speed']:>6.2f}")
    reasons = Counter(str(r["termination_reason"]) for r in results)
    print("termination reasons: " + ", ".join(f"{reason}: {count}" for reason, count in reasons.most_common()))
    print(f"simulator: {results[0]['simulator']}")


def _positive_int(text: str) -> int:
    """Parse a positive integer (argparse type)."""
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The training options: defaults, overridden by the ``--config`` file, overridden by the flags given.

    :param args: the parsed ``train`` arguments
    :return: the validated options
    """
    file_values = load_config_file(args.config) if args.config else {}
    return resolve_config(file_values, {name: getattr(args, name) for name in option_names() if hasattr(args, name)})


def _train(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
    except ValueError as error:
        args.parser.error(str(error))
    _, status = run_train(config)
    return 130 if status == "interrupted" else 0


def _evaluate(args: argparse.Namespace) -> int:
    given = {name: getattr(args, name) for name in EVALUATE_OPTIONS if hasattr(args, name)}
    run = _run_config(Path(args.model))
    saved = {name: value for name, value in run.items() if name in INHERITED_OPTIONS}
    if run.get("servers"):  # a run of several envs: drive on its env 0's server
        saved["host"], saved["port"] = parse_servers(run["servers"])[0]
    try:
        config = resolve_config(saved, given)
    except ValueError as error:
        args.parser.error(str(error))
    results = run_evaluate(args.model, config, args.episodes, args.video)
    print_evaluation(results)
    if args.video:
        print(f"Video saved to {args.video}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    try:
        from sb3_td3_cnnclip.sweep import eval_address, run_sweep
    except ImportError as error:
        raise MissingExtraError(f'Sweeps need Optuna and PyYAML ({error}): pip install "sb3-td3-cnnclip[sweep]".') from error
    try:
        config = config_from_args(args)
        eval_address(config, args.eval_server)
    except ValueError as error:
        args.parser.error(str(error))
    run_sweep(
        config, args.study, args.storage, n_trials=args.n_trials, max_trials=args.max_trials,
        n_evaluations=args.n_evaluations, eval_episodes=args.eval_episodes, eval_server=args.eval_server,
        eval_max_steps=args.eval_max_steps, best_config=args.best_config,
    )  # fmt: skip
    return 0


def _report(args: argparse.Namespace) -> int:
    report = check_run(
        args.run_dir, actor_cnn_max_grad_norm=args.actor_cnn_max_grad_norm,
        critic_cnn_max_grad_norm=args.critic_cnn_max_grad_norm, max_timesteps=args.max_timesteps,
        loss_bound=args.actor_loss_bound,
    )  # fmt: skip
    if not args.no_plots:
        write_plots(report, args.plots_dir)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.table())
        if report.plots:
            print("Plots: " + ", ".join(str(p) for p in report.plots))
    return 0 if report.passed else 1


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``sb3-td3-cnnclip`` and its commands."""
    parser = argparse.ArgumentParser(prog="sb3-td3-cnnclip", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {sb3_td3_cnnclip.__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train TD3CnnClip on a driving scenario", description=TRAIN_DESCRIPTION)
    train.add_argument("--config", metavar="FILE", help="YAML or TOML file of options (keys: the flag names with underscores); flags override it")
    add_options(train, option_names())
    train.set_defaults(func=_train, parser=train)

    evaluate = commands.add_parser("evaluate", help="drive a saved model and print driving metrics")
    evaluate.add_argument("model", help="the saved model (model.zip); scenario, simulator and server default to its run's config.json")
    evaluate.add_argument("--episodes", type=_positive_int, default=3, help="episodes to drive (default: 3)")
    evaluate.add_argument("--video", metavar="FILE", help="save the camera view of every episode as an animated GIF")
    add_options(evaluate, EVALUATE_OPTIONS)
    evaluate.set_defaults(func=_evaluate, parser=evaluate)

    sweep = commands.add_parser("sweep", help="tune TD3CnnClip with Optuna; run one such worker per process or machine", description=SWEEP_DESCRIPTION)
    sweep.add_argument("--config", metavar="FILE", help="YAML or TOML file of base options; flags override it, sampled parameters override both")
    sweep.add_argument("--study", default="sweep", help="study name; workers on the same study and storage share its trials (default: sweep)")
    sweep.add_argument("--storage", metavar="PATH|URL", help="journal file, or database URL such as sqlite:///sweep.db or postgresql://... (default: <log-dir>/<study>.journal)")
    sweep.add_argument("--n-trials", type=_positive_int, metavar="N", default=10, help="trials this worker runs (default: 10)")
    sweep.add_argument("--max-trials", type=_positive_int, metavar="N", help="stop once the study holds this many finished trials, all workers together")
    sweep.add_argument("--n-evaluations", type=_positive_int, metavar="N", default=5, help="evaluations per trial, each a pruning point (default: 5)")
    sweep.add_argument("--eval-episodes", type=_positive_int, metavar="N", default=3, help="episodes per evaluation (default: 3)")
    sweep.add_argument("--eval-max-steps", type=_positive_int, metavar="N", help="step limit of an evaluation episode, for quick sweeps (default: the scenario's)")
    sweep.add_argument("--eval-server", metavar="HOST:PORT", help="CARLA server of the evaluation env (default: the next after the training envs')")
    sweep.add_argument("--best-config", metavar="FILE", help="YAML file for the best configuration (default: <log-dir>/<study>_best.yaml)")
    add_options(sweep, [name for name in option_names() if name != "run_name"])  # trials are named <study>_trial_<n>
    sweep.set_defaults(func=_sweep, parser=sweep)

    report = commands.add_parser("report", help="check a run against the success criteria (exit 1 if one fails)")
    report.add_argument("run_dir", help="a run directory, or a log directory holding exactly one run")
    report.add_argument("--json", action="store_true", help="print the result as JSON")
    report.add_argument("--no-plots", action="store_true", help="do not write PNG plots")
    report.add_argument("--plots-dir", metavar="DIR", help="where to write the plots (default: the run directory)")
    report.add_argument("--actor-cnn-max-grad-norm", type=float, help="actor CNN limit (default: from config.json)")
    report.add_argument("--critic-cnn-max-grad-norm", type=float, help="critic CNN limit (default: from config.json)")
    report.add_argument("--max-timesteps", type=_positive_int, help="timesteps the run should reach (default: from config.json)")
    report.add_argument("--actor-loss-bound", type=float, help="bound on |actor loss| (default: r_max / (1 - gamma))")
    report.set_defaults(func=_report, parser=report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    :param argv: the arguments (default: ``sys.argv[1:]``)
    :return: the exit status: 0 success, 1 a report criterion failed, 2 a usage error, 130 interrupted
    """
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as error:
        print(f"sb3-td3-cnnclip {args.command}: error: {error}", file=sys.stderr)
        return 2


def train_main(argv: Sequence[str] | None = None) -> int:
    """``sb3-td3-cnnclip train`` with the given flags (for the ``train_td3.py`` scripts).

    :param argv: the train flags (default: ``sys.argv[1:]``)
    :return: the exit status
    """
    return main(["train", *(sys.argv[1:] if argv is None else argv)])
