"""The training session of the command line, one function per step: the logger, the envs, the model, the callbacks,
the run directory, the run itself, loading a saved model and driving it. ``sb3-td3-cnnclip train`` and ``evaluate``
(:mod:`sb3_td3_cnnclip.cli`) and every trial of a sweep (:mod:`sb3_td3_cnnclip.sweep`) build their sessions here.

:func:`run_train` writes one run directory ``<log_dir>/<run_name>_<n>/`` holding the TensorBoard events,
``progress.csv``, ``config.json`` (the resolved options with the ``algo``, the model's class, the simulator that
actually ran, the reward bound, library versions), ``model.zip`` and ``result.json`` (how the run ended);
``debug=True`` adds ``debug/`` with one TensorBoard point per gradient update. A run written before ``algo`` existed
has none in its ``config.json``: it trained TD3.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import sys
import zipfile
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import stable_baselines3
import torch
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, ProgressBarCallback
from stable_baselines3.common.logger import HumanOutputFormat, KVWriter, Logger, configure
from stable_baselines3.common.noise import NormalActionNoise
from stable_baselines3.common.utils import get_latest_run_id
from stable_baselines3.common.vec_env import VecEnv

import sb3_td3_cnnclip
from sb3_td3_cnnclip.callbacks import DrivingMetricsCallback, ExplosionEarlyStopping, ScenarioCallback, UpdateStatsWriter
from sb3_td3_cnnclip.config_file import (
    ALGORITHMS,
    PRIVILEGED_POLICY,
    STATE_POLICY,
    TrainConfig,
    learning_rate_schedule,
)
from sb3_td3_cnnclip.envs import SCENARIO_IDS, MissingExtraError
from sb3_td3_cnnclip.evaluation import drive_episode
from sb3_td3_cnnclip.report import CONFIG_FILE, DEBUG_SUBDIR, RESULT_FILE
from sb3_td3_cnnclip.cnnclip import CnnClipMixin
from sb3_td3_cnnclip.ddpg_cnnclip import DDPGCnnClip
from sb3_td3_cnnclip.sac_cnnclip import SACCnnClip
from sb3_td3_cnnclip.td3_cnnclip import TD3CnnClip
from sb3_td3_cnnclip.tqc_cnnclip import TQCCnnClip
from sb3_td3_cnnclip.vec_env import make_carla_vec_env

#: written by ExplosionEarlyStopping in the run directory when it stops training
EXPLOSION_FILE = "explosion.json"
#: the model file of a run directory
MODEL_FILE = "model.zip"
#: the class of each ``algo``
ALGORITHM_CLASSES: dict[str, type[CnnClipMixin]] = {"td3": TD3CnnClip, "sac": SACCnnClip, "ddpg": DDPGCnnClip, "tqc": TQCCnnClip}
#: the algorithms a saved model may be, told by keys that SB3 saves for them only (tried in this order): SB3's DDPG
#: is its TD3 with other settings and saves the same keys, so the file alone does not tell them apart
SAVED_KEYS: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("tqc",), ("top_quantiles_to_drop_per_net",)),
    (("sac",), ("target_entropy", "target_update_interval")),
    (("td3", "ddpg"), ("policy_delay", "target_policy_noise")),
)


class ModelFileError(ValueError):
    """``evaluate`` was given a file that is not a saved model of the algorithm expected."""


class EveryNthDump(KVWriter):
    """Passes every ``n``-th logger dump on to another writer, e.g. SB3's stdout table: the logs can then be dumped
    to TensorBoard at every episode while the terminal (and its progress bar) stays readable.

    :param writer: the writer that receives every ``n``-th dump
    :param n: dumps between two that are passed on
    """

    def __init__(self, writer: KVWriter, n: int) -> None:
        self.writer = writer
        self.n = n
        self._dumps = 0

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, tuple[str, ...]], step: int = 0) -> None:
        self._dumps += 1
        if self._dumps % self.n == 0:
            self.writer.write(key_values, key_excluded, step)

    def close(self) -> None:
        self.writer.close()


def make_logger(config: TrainConfig, run_dir: Path) -> Logger:
    """The run's logger: TensorBoard and ``progress.csv`` at every dump, SB3's table on stdout every
    ``table_interval`` dumps.

    :param config: the options
    :param run_dir: the run directory
    :return: the logger
    """
    logger = configure(str(run_dir), ["csv", "tensorboard"])
    if config.table_interval:
        logger.output_formats.append(EveryNthDump(HumanOutputFormat(sys.stdout), config.table_interval))
    return logger


def make_env(config: TrainConfig, render_mode: str | None = None) -> gym.Env:
    """The scenario's environment, observing a Dict for the MultiInput policies.

    :param config: the options (scenario, simulator and server)
    :param render_mode: ``None`` or ``"rgb_array"``
    :return: the environment
    """
    return gym.make(
        SCENARIO_IDS[config.scenario], render_mode=render_mode, simulator=config.simulator, host=config.host,
        port=config.port, tm_port=config.tm_port, **config.env_kwargs(),
    )  # fmt: skip


def make_train_env(config: TrainConfig) -> VecEnv:
    """The ``config.n_envs`` training envs of the scenario, each on its own server and Traffic Manager port.

    :param config: the options (scenario, simulator, servers, n_envs, seed, worker_timeout)
    :return: the VecEnv (see :func:`~sb3_td3_cnnclip.vec_env.make_carla_vec_env`)
    """
    return make_carla_vec_env(
        config.scenario, config.n_envs, servers=config.servers, host=config.host, port=config.port,
        tm_port=config.tm_port, port_stride=config.port_stride, simulator=config.simulator, seed=config.seed,
        env_kwargs=config.env_kwargs(), worker_timeout=config.worker_timeout,
    )  # fmt: skip


def make_model(config: TrainConfig, env: gym.Env | VecEnv) -> CnnClipMixin:
    """The model the options describe: the class of ``config.algo`` (:data:`ALGORITHM_CLASSES`), with the options
    every algorithm takes and those of its own (:meth:`~sb3_td3_cnnclip.config_file.TrainConfig.algorithm_kwargs`);
    the parameters the options do not name keep the class's defaults (SAC's ``ent_coef="auto"``, ...).

    :param config: the options
    :param env: the training environment
    :return: the model
    """
    n_actions = env.action_space.shape[0]
    sigma = config.action_noise()
    noise = NormalActionNoise(np.zeros(n_actions), sigma * np.ones(n_actions)) if sigma > 0 else None
    learning_rate = learning_rate_schedule(
        config.learning_rate, config.lr_schedule, config.final_learning_rate, config.lr_decay_fraction
    )
    return ALGORITHM_CLASSES[config.algo](
        config.policy, env, learning_rate=learning_rate,
        buffer_size=config.buffer_size, learning_starts=config.learning_starts, batch_size=config.batch_size,
        tau=config.tau, gamma=config.gamma,
        train_freq=config.train_freq, gradient_steps=config.gradient_steps, action_noise=noise,
        actor_cnn_max_grad_norm=config.actor_cnn_max_grad_norm, actor_mlp_max_grad_norm=config.actor_mlp_max_grad_norm,
        critic_cnn_max_grad_norm=config.critic_cnn_max_grad_norm, critic_mlp_max_grad_norm=config.critic_mlp_max_grad_norm,
        actor_lr_scale=config.actor_lr_scale, pre_tanh_penalty=config.pre_tanh_penalty, n_steps=config.n_steps,
        random_shift_pad=config.random_shift_pad, critic_trained_encoder=config.critic_trained_encoder,
        bf16_encoders=config.bf16_encoders, warmup_actions=config.warmup_actions,
        on_nonfinite_grad="raise" if config.debug else "skip", seed=config.seed, device=config.device,
        verbose=config.verbose, **config.algorithm_kwargs(),
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


def claim_run_dir(log_dir: str | Path, run_name: str) -> Path:
    """Create the next free run directory ``<log_dir>/<run_name>_<n>`` and return it.

    The directory is created without ``exist_ok``: of several runs started together into one log directory, each
    gets its own (one that finds ``<n>`` taken tries ``<n + 1>``).

    :param log_dir: the log directory (created if missing)
    :param run_name: the run name
    :return: the new, empty run directory
    """
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    number = get_latest_run_id(str(log_dir), run_name) + 1
    while True:
        run_dir = Path(log_dir) / f"{run_name}_{number}"
        try:
            run_dir.mkdir()
            return run_dir
        except FileExistsError:
            number += 1


def configure_torch(config: TrainConfig) -> None:
    """Set torch for the rest of the process as the options say: its CPU thread count and whether denormal floats
    are flushed to zero (a flush switched on stays on, as a thread count stays set).

    :param config: the options (``torch_threads`` and ``flush_denormal``)
    """
    if config.torch_threads is not None:
        torch.set_num_threads(config.torch_threads)
    if config.flush_denormal:
        flush_denormal_floats()


def flush_denormal_floats() -> None:
    """Make the CPU treat denormal floats as zero for the rest of the process (``torch.set_flush_denormal(True)``).

    :raises RuntimeError: on a CPU that cannot flush them
    """
    if not torch.set_flush_denormal(True):
        raise RuntimeError(
            "flush_denormal is on, but this CPU cannot flush denormal floats (torch.set_flush_denormal needs an x86 "
            "CPU with SSE3): leave the option off."
        )


def run_train(config: TrainConfig) -> tuple[Path, str]:
    """Train as the options say and save everything in a new run directory. Its ``config.json`` records the options
    (``config``, with the ``algo`` that ``evaluate`` and ``report`` read) and the model's class (``model_class``).

    :param config: the options (a ``None`` seed is drawn here and recorded)
    :return: the run directory and how the run ended (``completed``, ``stopped_early`` or ``interrupted``)
    """
    if config.seed is None:
        config = dataclasses.replace(config, seed=secrets.randbelow(2**31))
    configure_torch(config)
    env = make_train_env(config)
    model = make_model(config, env)
    run_dir = claim_run_dir(config.log_dir, config.run_name or type(model).__name__)
    model.set_logger(make_logger(config, run_dir))
    saved = {
        "config": dataclasses.asdict(config),
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
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
        stopped = (run_dir / EXPLOSION_FILE).is_file() or model.num_timesteps < config.max_timesteps
        status = "stopped_early" if stopped else "completed"
    except KeyboardInterrupt:
        status = "interrupted"
    finally:
        if status in ("error", "interrupted"):
            try:  # SB3 skips it when learn() raises: flush the writers, close the progress bar
                callback.on_training_end()
            except Exception as error:  # noqa: BLE001 (the run must still be saved; the first error is the one to see)
                print(f"Warning: the callbacks' end of training failed ({type(error).__name__}: {error})", file=sys.stderr)
        if model.logger.name_to_value:  # the updates since the last dump
            model.dump_logs()
        model.logger.close()
        model.save(run_dir / MODEL_FILE)
        result = {"status": status, "num_timesteps": model.num_timesteps, "n_updates": model._n_updates,
                  "nonfinite_skips": model.nonfinite_skips, "model": str(run_dir / MODEL_FILE)}  # fmt: skip
        explosion = run_dir / EXPLOSION_FILE
        if explosion.is_file():
            result["stop_reason"] = json.loads(explosion.read_text())["reason"]
        (run_dir / RESULT_FILE).write_text(json.dumps(result, indent=2))
        env.close()
        print(f"Training {status} at timestep {model.num_timesteps}; model saved to {run_dir / MODEL_FILE}")
    if "stop_reason" in result:
        print(f"Stopped early: {result['stop_reason']} (details in {run_dir / EXPLOSION_FILE})")
    print(f"Check the run with: sb3-td3-cnnclip report {run_dir}")
    return run_dir, status


def model_file(path: str | Path) -> Path:
    """The saved model a path names: the file itself, or the ``model.zip`` of a run directory.

    :param path: a model file or a run directory
    :return: the model file (it exists)
    """
    path = Path(path)
    if path.is_dir():
        if not (path / MODEL_FILE).is_file():
            raise FileNotFoundError(f"Run directory {str(path)!r} has no {MODEL_FILE}; train saves it when the run ends.")
        return path / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"Model {str(path)!r} does not exist; pass a run directory or its {MODEL_FILE}.")
    return path


def saved_algorithms(path: Path) -> tuple[str, ...]:
    """The algorithms whose model a file holds, told by the keys of its data (:data:`SAVED_KEYS`).

    :param path: the model file
    :return: ``("tqc",)``, ``("sac",)`` or ``("td3", "ddpg")``
    """
    try:
        with zipfile.ZipFile(path) as archive:
            data = json.loads(archive.read("data"))
    except (zipfile.BadZipFile, KeyError, ValueError) as error:
        raise ModelFileError(
            f"{str(path)!r} is not a model saved by Stable-Baselines3 ({error}); pass a run directory or its {MODEL_FILE}."
        ) from error
    for algos, keys in SAVED_KEYS:
        if all(key in data for key in keys):
            return algos
    raise ModelFileError(f"{str(path)!r} holds a Stable-Baselines3 model of none of {', '.join(ALGORITHMS)} (none of their keys in it).")


def load_model(path: Path, device: str, algo: str) -> CnnClipMixin:
    """Load a model saved by the class of ``algo`` or by its SB3 / sb3-contrib base, after checking that the file
    holds a model of that algorithm (a clear error, not one from inside SB3).

    :param path: the model file
    :param device: the torch device
    :param algo: the model's algorithm (``td3``, ``sac``, ``ddpg`` or ``tqc``)
    :return: the model
    """
    found = saved_algorithms(path)
    if algo not in found:
        raise ModelFileError(f"{str(path)!r} holds a {' or '.join(found)} model, not a {algo} one: pass --algo {found[0]}.")
    return ALGORITHM_CLASSES[algo].load(path, device=device)


def run_config(model_path: Path) -> dict[str, Any]:
    """The options saved beside a model by ``train`` (empty when the model was saved elsewhere).

    :param model_path: the model file
    :return: option name -> value, as ``config.json`` holds them
    """
    path = model_path.parent / CONFIG_FILE
    return json.loads(path.read_text())["config"] if path.is_file() else {}


def policy_of(observation_space: gym.Space) -> str:
    """The policy that observes ``observation_space`` (the inverse of
    :func:`~sb3_td3_cnnclip.config_file.observation_of`, unbounded).

    :param observation_space: a model's observation space
    """
    if isinstance(observation_space, gym.spaces.Dict):
        return PRIVILEGED_POLICY if "state" in observation_space.spaces else "MultiInputPolicy"
    return STATE_POLICY if len(observation_space.shape) == 1 else "CnnPolicy"


def run_evaluate(model_path: str | Path, config: TrainConfig, episodes: int, video: str | Path | None = None) -> list[dict[str, Any]]:
    """Drive ``episodes`` episodes with the model's deterministic policy; optionally save the camera view as a GIF.

    :param model_path: the saved model, or a run directory holding one (``model.zip``)
    :param config: the env options (scenario, simulator, server, seed, device) and the model's ``algo``
    :param episodes: number of episodes
    :param video: GIF file to write (``None``: no video)
    :return: one dict of driving metrics per episode
    """
    model = load_model(model_file(model_path), config.device, config.algo)
    policy = policy_of(model.observation_space)
    env = make_env(dataclasses.replace(config, policy=policy), render_mode="rgb_array" if video else None)
    frames, results = [], []
    try:
        for episode in range(episodes):
            seed = None if config.seed is None else config.seed + episode
            result = drive_episode(model, env, seed, on_step=lambda: frames.append(env.render()))
            results.append({"episode": episode, **result})
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
        raise MissingExtraError("Videos need Pillow: pip install pillow (or the package's report extra).") from error
    images = [Image.fromarray(f).resize((f.shape[1] * scale, f.shape[0] * scale), Image.NEAREST) for f in frames]
    path.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)

