"""Hyperparameter sweeps with Optuna (the engine rl-zoo3 uses for SB3): trials of the configured algorithm (``algo``:
TD3CnnClip, SACCnnClip, DDPGCnnClip or TQCCnnClip) on a driving scenario, pruned on intermediate evaluations, in a
study whose storage several worker processes share.

Every worker runs ``sb3-td3-cnnclip sweep --study NAME --storage WHERE ...`` and asks the storage for its next trial,
so workers on the same study share the trials and never run the same one twice. ``WHERE`` is a file path (an Optuna
journal file, the default ``<log_dir>/<study>.journal``: safe for several processes on one machine, as long as the
file system supports file locks) or a database URL (``sqlite:///sweep.db`` on one machine,
``postgresql://user:password@host/db`` for workers on many machines).

A trial trains the base options (defaults, ``--config``, flags) with the parameters of :func:`sample_params` on
``n_envs`` envs, with the callbacks ``train`` would use (early stop, metrics, curriculum, ...), evaluates the deterministic policy ``n_evaluations`` times on one more env, and reports each mean
return to Optuna, whose median pruner stops trials that fall below the median of the others at the same point. The
objective is the last evaluation's mean return; a trial that the early stop ends counts as pruned. Each trial stores its complete configuration (the trial's user
attribute ``config``, and the worker that ran it as ``worker``, host:pid); :func:`write_best_config` writes the best one as a YAML file for ``train --config``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import socket
import sys
import warnings
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import EvalCallback
from stable_baselines3.common.vec_env import VecEnv

from sb3_td3_cnnclip.config_file import TrainConfig
from sb3_td3_cnnclip.session import (
    EXPLOSION_FILE, claim_run_dir, configure_torch, make_callbacks, make_logger, make_model, make_train_env,
)
from sb3_td3_cnnclip.vec_env import EnvAddress, check_ports, env_addresses, make_carla_vec_env, parse_servers

#: choices of the gradient-norm limits (``None``: measure only)
ACTOR_LIMITS = (0.3, 1.0, 3.0, None)
CRITIC_LIMITS = (1.0, 10.0, 100.0, None)


def sample_params(trial: optuna.Trial, algo: str = "td3") -> dict[str, Any]:
    """The parameters a trial tries: the algorithm's usual ones (as rl-zoo3's TD3 sampler) and this package's own.
    Only the algorithm's own parameters are sampled: TD3's policy delay and target policy noise for ``td3``, the
    exploration noise for ``td3`` and ``ddpg`` (SAC and TQC explore with their stochastic policy).

    :param trial: the Optuna trial
    :param algo: the algorithm of the trial (``td3``, ``sac``, ``ddpg`` or ``tqc``)
    :return: :class:`~sb3_td3_cnnclip.config_file.TrainConfig` field -> value
    """
    params = {
        "learning_rate": trial.suggest_float("learning_rate", 1e-5, 1e-3, log=True),
        "batch_size": trial.suggest_categorical("batch_size", [32, 64, 128, 256]),
        "tau": trial.suggest_categorical("tau", [0.001, 0.005, 0.01, 0.02]),
        "gamma": trial.suggest_categorical("gamma", [0.95, 0.98, 0.99, 0.995]),
        "actor_cnn_max_grad_norm": trial.suggest_categorical("actor_cnn_max_grad_norm", ACTOR_LIMITS),
        "actor_mlp_max_grad_norm": trial.suggest_categorical("actor_mlp_max_grad_norm", ACTOR_LIMITS),
        "critic_cnn_max_grad_norm": trial.suggest_categorical("critic_cnn_max_grad_norm", CRITIC_LIMITS),
        "critic_mlp_max_grad_norm": trial.suggest_categorical("critic_mlp_max_grad_norm", CRITIC_LIMITS),
        "actor_lr_scale": trial.suggest_float("actor_lr_scale", 0.03, 1.0, log=True),
        "pre_tanh_penalty": trial.suggest_categorical("pre_tanh_penalty", [0.0, 0.001, 0.01, 0.1]),
    }
    if algo in ("td3", "ddpg"):
        params["action_noise_sigma"] = trial.suggest_float("action_noise_sigma", 0.0, 0.5)
    if algo == "td3":
        params["policy_delay"] = trial.suggest_int("policy_delay", 1, 3)
        params["target_policy_noise"] = trial.suggest_float("target_policy_noise", 0.05, 0.4)
    return params


class TrialEvalCallback(EvalCallback):
    """SB3's ``EvalCallback`` that reports each evaluation's mean return to an Optuna trial and stops training when the
    trial is pruned (rl-zoo3's pattern).

    :param trial: the Optuna trial
    :param eval_env: the evaluation env
    :param n_eval_episodes: episodes per evaluation
    :param eval_freq: calls (vector steps of the training env) between evaluations
    """

    def __init__(self, trial: optuna.Trial, eval_env: VecEnv, n_eval_episodes: int, eval_freq: int) -> None:
        super().__init__(eval_env, n_eval_episodes=n_eval_episodes, eval_freq=eval_freq, deterministic=True, verbose=0)
        self.trial = trial
        self.n_evaluations = 0
        self.is_pruned = False

    def _init_callback(self) -> None:
        with warnings.catch_warnings():  # the evaluation env is one in-process env on purpose
            warnings.filterwarnings("ignore", "Training and eval env are not of the same type")
            super()._init_callback()

    def _on_step(self) -> bool:
        if self.n_calls % self.eval_freq:
            return True
        continue_training = super()._on_step()
        self.n_evaluations += 1
        self.trial.report(self.last_mean_reward, self.n_evaluations)
        self.is_pruned = self.trial.should_prune()
        return continue_training and not self.is_pruned


def open_storage(storage: str) -> str | JournalStorage:
    """The study storage: a database URL as is, a file path as an Optuna journal file.

    :param storage: ``sqlite:///sweep.db``, ``postgresql://...``, or a file path
    :return: what ``optuna.create_study(storage=...)`` takes
    """
    if "://" in storage:
        return storage
    Path(storage).parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(storage))


def eval_address(base: TrainConfig, eval_server: str | None) -> EnvAddress:
    """Where the evaluation env runs: ``eval_server``, or the next server after the training envs'
    (``--port + n_envs x --port-stride``); its Traffic Manager port follows the training envs' ones.

    :param base: the options (server layout of the training envs)
    :param eval_server: ``host:port`` of the evaluation env's server (``None``: the next one)
    :return: the address, checked against the training envs' ports
    """
    if eval_server is None and base.servers:
        raise ValueError("With --servers, give the evaluation env's server too: --eval-server host:port.")
    if eval_server is None:
        return env_addresses(base.n_envs + 1, base.host, base.port, base.tm_port, base.port_stride)[-1]
    (host, port), = parse_servers(eval_server)  # fmt: skip
    training = env_addresses(base.n_envs, base.host, base.port, base.tm_port, base.port_stride, base.servers)
    address = EnvAddress(host, port, base.tm_port + base.n_envs * base.port_stride)
    check_ports([*training, address])
    return address


def _close_logger(model: BaseAlgorithm) -> None:
    """Write the updates since the last dump, as ``train`` does, and close the model's logger.

    :param model: a model whose logger is set
    """
    if model.logger.name_to_value:
        model.dump_logs()
    model.logger.close()


def objective(
    trial: optuna.Trial,
    base: TrainConfig,
    n_evaluations: int,
    eval_episodes: int,
    eval_at: EnvAddress,
    eval_max_steps: int | None = None,
) -> float:
    """Train one trial's configuration and return its last evaluation's mean return.

    :param trial: the Optuna trial
    :param base: the options the sampled parameters override
    :param n_evaluations: evaluations during training (each one a pruning point)
    :param eval_episodes: episodes per evaluation
    :param eval_at: server address of the evaluation env
    :param eval_max_steps: step limit of an evaluation episode (``None``: the scenario's)
    :return: the mean return of the last evaluation
    """
    seed = secrets.randbelow(2**31) if base.seed is None else base.seed + trial.number
    config = dataclasses.replace(base, **sample_params(trial, base.algo), seed=seed, run_name=f"{trial.study.study_name}_trial_{trial.number}")
    trial.set_user_attr("config", dataclasses.asdict(config))
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    env = make_train_env(config)
    cleanup = ExitStack()  # what the trial opened, closed last first however the trial ends
    cleanup.callback(env.close)
    try:
        eval_env = make_carla_vec_env(
            config.scenario, 1, host=eval_at.host, port=eval_at.port, tm_port=eval_at.tm_port,
            simulator=env.get_attr("simulator_name")[0], seed=seed + config.n_envs,
            env_kwargs={**config.env_kwargs(),
                        **({} if eval_max_steps is None else {"max_episode_steps": eval_max_steps})},
        )  # fmt: skip
        cleanup.callback(eval_env.close)
        model = make_model(config, env)
        run_dir = claim_run_dir(config.log_dir, config.run_name)  # a fresh one, even where an earlier study left its own
        trial.set_user_attr("run_dir", str(run_dir))
        model.set_logger(make_logger(config, run_dir))
        cleanup.callback(_close_logger, model)
        eval_freq = max(1, config.max_timesteps // (n_evaluations * config.n_envs))
        callback = TrialEvalCallback(trial, eval_env, eval_episodes, eval_freq)
        callbacks = [*make_callbacks(config, run_dir).callbacks, callback]
        model.learn(config.max_timesteps, callback=callbacks, log_interval=config.log_interval)
    except BaseException:
        try:
            cleanup.close()
        except Exception as error:  # noqa: BLE001 (every env was still closed; the first error is the one to see)
            print(f"Warning: closing the trial failed too ({type(error).__name__}: {error})", file=sys.stderr)
        raise
    cleanup.close()
    if callback.is_pruned:
        raise optuna.TrialPruned()
    explosion = run_dir / EXPLOSION_FILE
    if explosion.is_file():  # an unpromising trial, like a pruned one
        raise optuna.TrialPruned(f"early stop: {json.loads(explosion.read_text())['reason']}")
    return callback.last_mean_reward


def write_best_config(study: optuna.Study, path: str | Path) -> Path:
    """Write the best trial's complete configuration as YAML, loadable with ``sb3-td3-cnnclip train --config``.

    :param study: the study (with at least one completed trial)
    :param path: the ``.yaml``/``.yml`` file (replaced atomically: several workers may write it)
    :return: the path
    """
    path = Path(path)
    if path.suffix.lower() not in (".yaml", ".yml"):
        raise ValueError(f"best config {str(path)!r} must be a .yaml or .yml file.")
    best = study.best_trial
    header = f"# best trial {best.number} of study {study.study_name!r}: mean evaluation return {best.value:.6g}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(header + yaml.safe_dump(best.user_attrs["config"], sort_keys=False))
    partial.replace(path)
    return path


def run_sweep(
    base: TrainConfig,
    study_name: str,
    storage: str | None = None,
    n_trials: int = 10,
    max_trials: int | None = None,
    n_evaluations: int = 5,
    eval_episodes: int = 3,
    eval_server: str | None = None,
    eval_max_steps: int | None = None,
    best_config: str | Path | None = None,
) -> optuna.Study:
    """Run ``n_trials`` trials of a study as one worker, then write the best configuration so far.

    :param base: the options the sampled parameters override (``max_timesteps`` is each trial's length)
    :param study_name: the study's name (workers with the same name and storage share it)
    :param storage: journal file path or database URL (``None``: ``<log_dir>/<study_name>.journal``)
    :param n_trials: trials this worker runs
    :param max_trials: stop once the study holds this many finished trials, all workers together (``None``: no cap)
    :param n_evaluations: evaluations per trial (pruning points)
    :param eval_episodes: episodes per evaluation
    :param eval_server: ``host:port`` of the evaluation env's CARLA server (``None``: the next after the training envs')
    :param eval_max_steps: step limit of an evaluation episode (``None``: the scenario's)
    :param best_config: YAML file for the best configuration (``None``: ``<log_dir>/<study_name>_best.yaml``)
    :return: the study
    """
    for name, value in (("n_trials", n_trials), ("n_evaluations", n_evaluations), ("eval_episodes", eval_episodes)):
        if value < 1:
            raise ValueError(f"{name}={value} must be >= 1.")
    eval_at = eval_address(base, eval_server)
    configure_torch(base)
    storage = storage or str(Path(base.log_dir) / f"{study_name}.journal")
    study = optuna.create_study(
        study_name=study_name, storage=open_storage(storage), direction="maximize", load_if_exists=True,
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=n_evaluations // 3),
    )  # fmt: skip
    callbacks = [] if max_trials is None else [MaxTrialsCallback(max_trials, states=(TrialState.COMPLETE, TrialState.PRUNED))]
    study.optimize(
        lambda trial: objective(trial, base, n_evaluations, eval_episodes, eval_at, eval_max_steps),
        n_trials=n_trials, callbacks=callbacks,
    )  # fmt: skip
    if any(t.state == TrialState.COMPLETE for t in study.trials):
        path = write_best_config(study, best_config or Path(base.log_dir) / f"{study_name}_best.yaml")
        print(f"Best trial {study.best_trial.number}: mean evaluation return {study.best_value:.6g}; its configuration "
              f"is in {path} (train it with: sb3-td3-cnnclip train --config {path})")  # fmt: skip
    return study
