"""Sweeps: two worker processes share one study's trials (each run once), pruning stops a trial at an evaluation,
and the best configuration loads straight into ``train --config``; on the surrogate, with tiny trials."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import require

require("optuna")
require("highway_env")

import optuna  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from sb3_td3_cnnclip import sweep  # noqa: E402
from sb3_td3_cnnclip.cli import build_parser, config_from_args, main  # noqa: E402
from sb3_td3_cnnclip.config_file import TrainConfig  # noqa: E402
from sb3_td3_cnnclip.sweep import eval_address, objective, open_storage, sample_params, write_best_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: a trial of a few seconds: 30 steps of one surrogate env, 10 updates of batch 8, evaluations of one episode
TINY = {"simulator": "surrogate", "max_timesteps": 30, "learning_starts": 10, "batch_size": 8, "buffer_size": 100,
        "verbose": 0, "progress_bar": False}  # fmt: skip


def flags(options: dict) -> list[str]:
    """``train`` flags of options."""
    out = []
    for name, value in options.items():
        flag = f"--{name.replace('_', '-')}"
        out += [flag if value else f"--no-{name.replace('_', '-')}"] if isinstance(value, bool) else [flag, str(value)]
    return out


@pytest.mark.slow
def test_two_workers_share_one_journal_study_and_the_best_config_trains(tmp_path: Path) -> None:
    journal = tmp_path / "study.journal"
    command = [sys.executable, "-m", "sb3_td3_cnnclip", "sweep", "--study", "s", "--storage", str(journal),
               "--n-trials", "2", "--n-evaluations", "2", "--eval-episodes", "1", "--eval-max-steps", "30", "--seed", "0", "--log-dir",
               str(tmp_path), *flags(TINY)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    workers = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [worker.communicate(timeout=600)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], "\n".join(output[-3000:] for output in outputs)

    study = optuna.load_study(study_name="s", storage=open_storage(str(journal)))
    trials = study.trials
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    by_worker: dict[str, list[int]] = {}
    for t in trials:
        by_worker.setdefault(t.user_attrs["worker"], []).append(t.number)
    assert sorted(len(numbers) for numbers in by_worker.values()) == [2, 2]  # each worker ran 2, none ran one twice
    assert sorted(p.name for p in tmp_path.glob("s_trial_*")) == [f"s_trial_{n}_1" for n in range(4)]

    best = tmp_path / "s_best.yaml"
    assert f"best trial {study.best_trial.number} of study 's'" in best.read_text()
    loaded = config_from_args(build_parser().parse_args(["train", "--config", str(best)]))
    assert loaded == TrainConfig(**study.best_trial.user_attrs["config"])
    assert loaded.learning_rate == study.best_params["learning_rate"]


def test_a_pruned_trial_stops_training_at_that_evaluation(tmp_path: Path) -> None:
    base = TrainConfig(**{**TINY, "seed": 1, "log_dir": str(tmp_path)})
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=1e9))
    study.optimize(lambda trial: objective(trial, base, 3, 1, eval_address(base, None), eval_max_steps=30), n_trials=1)
    (trial,) = study.trials
    assert trial.state == TrialState.PRUNED
    assert list(trial.intermediate_values) == [1]  # 1 of 3 evaluations: training stopped there
    assert trial.user_attrs["config"]["seed"] == 1
    assert len(list(tmp_path.glob("*_trial_0_1/progress.csv"))) == 1  # the trial's own log


def test_a_trial_gets_a_fresh_run_dir_and_its_last_updates_reach_the_logs(tmp_path: Path) -> None:
    old = tmp_path / "s_trial_0_1"  # an earlier study of the same name stopped its trial 0 early
    old.mkdir()
    (old / "explosion.json").write_text(json.dumps({"reason": "an earlier study's"}))
    base = TrainConfig(**{**TINY, "seed": 1, "log_dir": str(tmp_path)})
    study = optuna.create_study(study_name="s", direction="maximize")
    study.optimize(lambda trial: objective(trial, base, 1, 1, eval_address(base, None), eval_max_steps=30), n_trials=1)
    (trial,) = study.trials
    assert trial.state == TrialState.COMPLETE  # not pruned by the old folder's explosion.json
    assert trial.user_attrs["run_dir"] == str(tmp_path / "s_trial_0_2")
    rows = (tmp_path / "s_trial_0_2" / "progress.csv").read_text().splitlines()
    steps = rows[0].split(",").index("time/total_timesteps")
    assert float(rows[-1].split(",")[steps]) == TINY["max_timesteps"]  # the final dump, after no episode ended


def test_each_algorithm_samples_only_the_parameters_it_takes() -> None:
    own = {"td3": {"action_noise_sigma", "policy_delay", "target_policy_noise"}, "ddpg": {"action_noise_sigma"}, "sac": set(), "tqc": set()}
    common = set(sample_params(optuna.create_study().ask(), "sac"))
    assert "learning_rate" in common and "pre_tanh_penalty" in common
    for algo, params in own.items():
        trial = optuna.create_study().ask()
        sampled = sample_params(trial, algo)
        assert (set(sampled) - common, set(trial.params)) == (params, set(sampled)), algo  # nothing sampled and dropped
        assert TrainConfig(algo=algo, **sampled).algo == algo  # a valid configuration of that algorithm


def test_a_trial_trains_the_configured_algorithm(tmp_path: Path) -> None:
    base = TrainConfig(**{**TINY, "algo": "sac", "seed": 1, "log_dir": str(tmp_path)})
    study = optuna.create_study(study_name="s", direction="maximize")
    study.optimize(lambda trial: objective(trial, base, 1, 1, eval_address(base, None), eval_max_steps=30), n_trials=1)
    (trial,) = study.trials
    assert trial.state == TrialState.COMPLETE and trial.user_attrs["config"]["algo"] == "sac"
    columns = (tmp_path / "s_trial_0_1" / "progress.csv").read_text().splitlines()[0].split(",")
    assert "train/ent_coef_grad_before_max" in columns  # SACCnnClip's learned entropy coefficient


def recording(build, name: str, closed: list[str], close_error: Exception | None = None):
    """``build``, whose env appends ``name`` to ``closed`` when it closes, then raises ``close_error`` if given."""

    def build_and_record(*args: Any, **kwargs: Any) -> Any:
        env = build(*args, **kwargs)
        close = env.close

        def record_close() -> None:
            closed.append(name)
            close()
            if close_error is not None:
                raise close_error

        env.close = record_close
        return env

    return build_and_record


@pytest.mark.parametrize(
    ("failing", "eval_close_fails"),
    [("claim_run_dir", False), ("set_user_attr", False), ("make_logger", False), ("make_logger", True)],
)
def test_a_failing_trial_raises_its_own_error_after_closing_both_envs(
    failing: str, eval_close_fails: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    error = PermissionError(f"{failing} failed")

    def fail(*args: Any) -> None:
        raise error

    set_user_attr = optuna.Trial.set_user_attr

    def run_dir_fails(trial: optuna.Trial, key: str, value: Any) -> None:  # as a locked shared database would
        (fail if key == "run_dir" else set_user_attr)(trial, key, value)

    closed: list[str] = []
    close_error = OSError("eval env close failed") if eval_close_fails else None
    monkeypatch.setattr(sweep, "make_train_env", recording(sweep.make_train_env, "train", closed))
    monkeypatch.setattr(sweep, "make_carla_vec_env", recording(sweep.make_carla_vec_env, "eval", closed, close_error))
    if failing == "set_user_attr":
        monkeypatch.setattr(optuna.Trial, "set_user_attr", run_dir_fails)
    else:
        monkeypatch.setattr(sweep, failing, fail)
    base = TrainConfig(**{**TINY, "seed": 1, "log_dir": str(tmp_path)})
    trial = optuna.create_study(direction="maximize").ask()
    with pytest.raises(PermissionError) as raised:
        objective(trial, base, 1, 1, eval_address(base, None), eval_max_steps=30)
    assert raised.value is error  # the first error, not a later one of the clean-up
    assert sorted(closed) == ["eval", "train"]
    assert ("closing the trial failed too (OSError: eval env close failed)" in capsys.readouterr().err) == eval_close_fails


def test_best_config_needs_a_completed_trial_and_a_yaml_file(tmp_path: Path) -> None:
    study = optuna.create_study(direction="maximize")
    config = dataclasses.asdict(TrainConfig(seed=5))
    study.add_trial(optuna.trial.create_trial(value=1.0, user_attrs={"config": config}))
    with pytest.raises(ValueError, match="must be a .yaml or .yml file"):
        write_best_config(study, tmp_path / "best.toml")
    assert config_from_args(build_parser().parse_args(["train", "--config", str(write_best_config(study, tmp_path / "b.yml"))])) == TrainConfig(seed=5)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--n-evaluations", "0"], "0 is not a positive integer"),
        (["--n-envs", "0"], "n_envs=0 must be > 0"),
        (["--servers", "gpu1:2000"], "give the evaluation env's server too: --eval-server host:port"),
        (["--eval-server", "localhost:2001"], "share server ports: localhost:2000 and localhost:2001"),
        (["--eval-server", "localhost"], "'localhost' is not a host:port address"),
    ],
)
def test_sweep_flags_are_checked(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
