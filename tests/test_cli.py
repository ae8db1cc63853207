"""The command line: options and config files, their errors, the per-update debug log, and train -> report -> evaluate."""

from __future__ import annotations

import json
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import pytest
import torch
from conftest import require
from PIL import Image
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.utils import LinearSchedule
from stable_baselines3.common.vec_env import DummyVecEnv
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sb3_td3_cnnclip import DDPGCnnClip, SACCnnClip, TD3CnnClip, cli, session
from sb3_td3_cnnclip.callbacks import UpdateStatsWriter
from sb3_td3_cnnclip.cli import build_parser, config_from_args, main
from sb3_td3_cnnclip.config_file import (
    ALGORITHMS, TrainConfig, learning_rate_schedule, load_config_file, option_names, resolve_config,
)
from sb3_td3_cnnclip.envs.toy import ToyImageEnv
from sb3_td3_cnnclip.session import claim_run_dir, run_train


def parse_train(*argv: str) -> TrainConfig:
    return config_from_args(build_parser().parse_args(["train", *argv]))


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_defaults_match_each_class(algo: str) -> None:
    cls = session.ALGORITHM_CLASSES[algo]
    default = cls("CnnPolicy", ToyImageEnv(), buffer_size=10)  # every option at the class's default
    model = session.make_model(TrainConfig(algo=algo, buffer_size=10), ToyImageEnv())
    assert type(model) is cls
    for name in ("actor_cnn_max_grad_norm", "actor_mlp_max_grad_norm", "critic_cnn_max_grad_norm", "critic_mlp_max_grad_norm",
                 "pre_tanh_penalty", "random_shift_pad", "critic_trained_encoder", "compile_update", "bf16_encoders",
                 "policy_delay", "target_policy_noise", "target_noise_clip", "ent_coef", "target_entropy"):  # fmt: skip
        assert getattr(model, name, "absent") == getattr(default, name, "absent"), name
    # exploration: Gaussian noise for the deterministic actors, none for the stochastic policies of SAC and TQC
    sigma = None if model.action_noise is None else model.action_noise._sigma.tolist()
    assert sigma == {"td3": [0.1, 0.1], "ddpg": [0.1, 0.1], "sac": None, "tqc": None}[algo]
    assert session.make_model(TrainConfig(algo=algo, action_noise_sigma=0.3, buffer_size=10), ToyImageEnv()).action_noise._sigma.tolist() == [0.3, 0.3]
    assert tuple(session.ALGORITHM_CLASSES) == ALGORITHMS
    config = TrainConfig()
    # the replay buffer of the default run fits a laptop: at most 7,500 bytes per 4x84x84 uint8 transition
    assert config.buffer_size * 7_500 < 1.6e9
    assert config.learning_starts < 500  # the 500-step validation run of the failure report updates


def test_flags() -> None:
    config = parse_train("--lr", "1e-3", "--actor-cnn-max-grad-norm", "none", "--critic-mlp-max-grad-norm", "5",
                         "--no-early-stop", "--debug", "--scenario", "1", "--seed", "7")  # fmt: skip
    assert (config.learning_rate, config.actor_cnn_max_grad_norm, config.critic_mlp_max_grad_norm) == (1e-3, None, 5.0)
    assert (config.early_stop, config.debug, config.scenario, config.seed) == (False, True, 1, 7)
    assert parse_train() == TrainConfig()


def test_prevention_flags_reach_the_model() -> None:
    config = parse_train("--actor-lr-scale", "0.1", "--pre-tanh-penalty", "0.5", "--buffer-size", "100")
    model = session.make_model(config, ToyImageEnv())
    assert (model.actor_lr_scale, model.pre_tanh_penalty) == (0.1, 0.5)
    assert parse_train("--torch-threads", "none").torch_threads is None


def test_learning_flags_reach_the_model() -> None:
    config = parse_train("--n-steps", "3", "--random-shift-pad", "4", "--critic-trained-encoder", "--compile-update",
                         "--bf16-encoders", "--warmup-actions", "scripted", "--buffer-size", "100")  # fmt: skip
    model = session.make_model(config, ToyImageEnv(size=48))
    assert (model.n_steps, model.random_shift_pad, model.critic_trained_encoder, model.compile_update) == (3, 4, True, True)
    assert model.bf16_encoders is True and model.warmup_actions == "scripted"
    assert model.replay_buffer.n_steps == 3
    assert session.make_model(parse_train("--warmup-actions", "autopilot"), ToyImageEnv()).warmup_actions == "autopilot"


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ((), [1e-3, 5e-4, 2e-4, 1e-4, 0.0]),  # rl-zoo's lin_1e-3
        (("--final-learning-rate", "2e-4"), [1e-3, 6e-4, 3.6e-4, 2.8e-4, 2e-4]),
        (("--lr-decay-fraction", "0.2"), [1e-3, 1e-3, 1e-3, 5e-4, 0.0]),  # constant, then decayed over the last 0.2
        (("--lr-decay-fraction", "0.2", "--final-learning-rate", "2e-4"), [1e-3, 1e-3, 1e-3, 6e-4, 2e-4]),
    ],
)
def test_linear_lr_schedule_decays_the_rate_over_the_run(flags: tuple[str, ...], expected: list[float]) -> None:
    flags = ("--lr", "1e-3", "--lr-schedule", "linear", "--buffer-size", "100", "--learning-starts", "4", *flags)
    config = parse_train(*flags)
    model = session.make_model(config, ToyImageEnv(size=36))
    progress = (1.0, 0.5, 0.2, 0.1, 0.0)  # SB3's progress remaining
    assert [model.lr_schedule(p) for p in progress] == pytest.approx(expected, abs=1e-15)
    if config.lr_decay_fraction == 1.0:  # over the whole run: SB3's own linear schedule
        sb3 = LinearSchedule(1e-3, config.final_learning_rate, 1.0)
        assert [model.lr_schedule(p) for p in progress] == pytest.approx([sb3(p) for p in progress], abs=1e-15)
    model.learn(20)  # the last update reads the progress after the run's last step: 0
    rates = [optimizer.param_groups[0]["lr"] for optimizer in (model.actor.optimizer, model.critic.optimizer)]
    assert rates == pytest.approx([expected[-1]] * 2, abs=1e-15)


def test_lr_schedule_options_are_checked() -> None:
    assert session.make_model(parse_train("--lr", "1e-3", "--buffer-size", "100"), ToyImageEnv(size=36)).lr_schedule(0.0) == 1e-3
    with pytest.raises(ValueError, match=r"lr_schedule='cosine' is not a schedule; choose one of \['constant', 'linear'\]"):
        learning_rate_schedule(1e-3, "cosine")
    for flag, value, default in (("--final-learning-rate", "0.0001", "0.0"), ("--lr-decay-fraction", "0.5", "1.0")):
        name = flag[2:].replace("-", "_")
        message = rf"{name}={value} shapes a linear decay, and lr_schedule='constant' keeps the rate; set lr_schedule="
        with pytest.raises(ValueError, match=message + rf"'linear' or leave {name} at {default}\."):
            parse_train(flag, value)
    with pytest.raises(ValueError, match=r"final_learning_rate=0.002 must be in \[0, learning_rate=0.001\]"):
        parse_train("--lr", "1e-3", "--lr-schedule", "linear", "--final-learning-rate", "2e-3")
    with pytest.raises(ValueError, match=r"lr_decay_fraction=0.0 must be in \(0, 1\]\."):
        parse_train("--lr-schedule", "linear", "--lr-decay-fraction", "0")
    with pytest.raises(ValueError, match=r"lr_decay_fraction=0.0 must be in \(0, 1\]: the last fraction of the run"):
        learning_rate_schedule(1e-3, "linear", 0.0, 0.0)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--batch-size", "0"], "batch_size=0 must be > 0"),
        (["--gamma", "1.5"], "gamma=1.5 must be in (0, 1]"),
        (["--learning-rate", "abc"], "invalid float value: 'abc'"),
        (["--scenario", "5"], "invalid choice: 5"),
        (["--simulator", "unity"], "invalid choice: 'unity'"),
        (["--port", "0"], "port=0 must be a port number"),
        (["--actor-cnn-max-grad-norm", "-1"], "actor_cnn_max_grad_norm=-1.0 must be > 0"),
        (["--actor-mlp-max-grad-norm", "inf"], "must be finite"),
        (["--curriculum", "--scenario", "2"], "start from 0 or 1"),
        (["--actor-lr-scale", "0"], "actor_lr_scale=0.0 must be > 0"),
        (["--pre-tanh-penalty", "-1"], "pre_tanh_penalty=-1.0 must be >= 0"),
        (["--torch-threads", "0"], "torch_threads=0 must be > 0"),
        (["--n-steps", "0"], "n_steps=0 must be > 0"),
        (["--random-shift-pad", "-1"], "random_shift_pad=-1 must be >= 0"),
        (["--lr-schedule", "cosine"], "argument --lr-schedule: invalid choice: 'cosine'"),
        (["--unknown-flag"], "unrecognized arguments: --unknown-flag"),
        (["--algo", "ppo"], "argument --algo: invalid choice: 'ppo'"),
        (["--algo", "sac", "--policy-delay", "3"],
         "policy_delay=3 is an option of algo td3 only; algo='sac' does not take it: leave it at its default (2)."),
        (["--algo", "ddpg", "--target-noise-clip", "0.3"],
         "target_noise_clip=0.3 is an option of algo td3 only; algo='ddpg' does not take it: leave it at its default (0.5)."),
        (["--algo", "tqc", "--compile-update"],
         "compile_update=True is an option of algo td3 and ddpg only; algo='tqc' does not take it: leave it at its default (False)."),
        (["--algo", "sac", "--policy", "BoundedMultiInputPolicy"],
         "policy='BoundedMultiInputPolicy' is a TD3 policy (algo td3 and ddpg); with algo='sac' choose 'MultiInputPolicy'."),
        (["--algo", "tqc", "--policy", "PrivilegedCriticPolicy"],
         "policy='PrivilegedCriticPolicy' is a TD3 policy (algo td3 and ddpg); with algo='tqc' choose 'CnnPolicy'."),
        (["--algo", "sac", "--policy", "TrunkCnnPolicy"],
         "policy='TrunkCnnPolicy' is a TD3 policy (algo td3 and ddpg); with algo='sac' choose 'CnnPolicy'."),
    ],
)
def test_bad_flag_values(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_help_texts(capsys: pytest.CaptureFixture) -> None:
    helps = {}
    for command in ("", "train", "evaluate", "report"):
        with pytest.raises(SystemExit):
            main([*command.split(), "--help"])
        helps[command] = " ".join(capsys.readouterr().out.split())  # argparse's lines joined
    assert [command for command, text in helps.items() if "``" in text] == []  # no reStructuredText markup
    assert "--scenario {0,1,2} driving scenario (NPC vehicles 0: 20, 1: 50, 2: 100) (default: the run's config.json, else 0)" in helps["evaluate"]
    assert "--seed N|none seed of the first episode's reset; episode i gets seed + i (none: unseeded) (default: none)" in helps["evaluate"]
    assert "--seed N|none random seed (none: draw one, recorded in the run's config.json) (default: none)" in helps["train"]
    assert "--scenario {0,1,2} driving scenario (NPC vehicles 0: 20, 1: 50, 2: 100) (default: 0)" in helps["train"]
    assert "--algo {td3,sac,ddpg,tqc} algorithm: td3 (TD3CnnClip), sac (SACCnnClip), ddpg (DDPGCnnClip) or tqc (TQCCnnClip); recorded in the run's config.json (default: td3)" in helps["train"]
    assert f"--algo {{td3,sac,ddpg,tqc}} {cli.EVALUATE_ALGO_HELP}" in helps["evaluate"]
    assert f"--algo {{td3,sac,ddpg,tqc}} {cli.REPORT_ALGO_HELP}" in helps["report"]


def test_config_files(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("algo: sac\nlearning_rate: 1.0e-4\nbatch_size: 64\nactor_cnn_max_grad_norm: null\n")
    (tmp_path / "c.toml").write_text('algo = "sac"\nlearning_rate = 1e-4\nbatch_size = 64\nactor_cnn_max_grad_norm = "none"\n')
    for name in ("c.yaml", "c.toml"):
        config = resolve_config(load_config_file(tmp_path / name))
        assert (config.algo, config.learning_rate, config.batch_size, config.actor_cnn_max_grad_norm) == ("sac", 1e-4, 64, None)
    # flags override the file
    config = parse_train("--config", str(tmp_path / "c.yaml"), "--batch-size", "32", "--algo", "tqc")
    assert (config.algo, config.learning_rate, config.batch_size) == ("tqc", 1e-4, 32)
    (tmp_path / "bad.yaml").write_text("algo: sac\npolicy_delay: 1\n")
    with pytest.raises(ValueError, match="policy_delay=1 is an option of algo td3 only; algo='sac' does not take it"):
        resolve_config(load_config_file(tmp_path / "bad.yaml"))


def test_config_file_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "unknown.yaml").write_text("learning_rate: 1.0e-4\nlearning-rate: 1.0e-4\nlr: 1\n")
    with pytest.raises(SystemExit):
        main(["train", "--config", str(tmp_path / "unknown.yaml")])
    error = capsys.readouterr().err
    assert "Unknown option(s) ['learning-rate', 'lr']" in error
    assert "valid options are: " + ", ".join(option_names()) in error
    (tmp_path / "string.yaml").write_text("learning_rate: 3e-4\n")  # YAML 1.1 reads this as a string
    with pytest.raises(ValueError, match="write 3.0e-4"):
        resolve_config(load_config_file(tmp_path / "string.yaml"))
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        load_config_file(tmp_path / "list.yaml")
    (tmp_path / "c.json").write_text("{}")
    with pytest.raises(ValueError, match="use .yaml, .yml or .toml"):
        load_config_file(tmp_path / "c.json")
    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml' does not exist" in capsys.readouterr().err


def read_scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    accumulator = EventAccumulator(str(directory), size_guidance={"scalars": 0}, purge_orphaned_data=False)
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def test_update_stats_writer_logs_every_update(tmp_path: Path) -> None:
    model = TD3CnnClip("CnnPolicy", ToyImageEnv(), buffer_size=100, learning_starts=10, batch_size=4, train_freq=2, gradient_steps=3, seed=0)
    model.learn(16, callback=UpdateStatsWriter(tmp_path))
    scalars = read_scalars(tmp_path)
    assert model._n_updates == 9  # 3 training phases (after steps 12, 14, 16) of 3 gradient steps
    assert [step for step, _ in scalars["debug/critic_loss"]] == list(range(1, 10))
    assert [step for step, _ in scalars["debug/actor_loss"]] == [2, 4, 6, 8]  # policy_delay=2
    expected = [pytest.approx(s["critic_cnn_after"]) for s in model.update_stats]
    assert [value for _, value in scalars["debug/critic_cnn_after"]] == expected


def test_update_stats_writer_refuses_to_lose_updates(tmp_path: Path) -> None:
    model = TD3CnnClip("CnnPolicy", ToyImageEnv(), buffer_size=100, learning_starts=4, batch_size=4, gradient_steps=3, stats_history=2)
    writer = UpdateStatsWriter(tmp_path)
    model.learn(8, callback=writer)  # update_stats grows to hold each train() call of learn(): nothing lost
    model.train(2, batch_size=4)  # two train() calls outside learn(): 4 updates since the last write, 3 kept
    model.train(2, batch_size=4)
    with pytest.raises(RuntimeError, match="raise stats_history"):
        writer.on_step()


class ToyDrivingEnv(ToyImageEnv):
    """The toy image env with what ``run_train`` records of a driving env."""

    simulator_name = "toy"
    max_abs_reward = 2.0
    spec = gym.envs.registration.EnvSpec("ToyDriving-v0")


def train_on(monkeypatch: pytest.MonkeyPatch, make_env: Callable[[TrainConfig], gym.Env]) -> None:
    """Make ``train`` run on ``make_env(config)`` (in SB3's Monitor and DummyVecEnv) instead of the scenario's envs."""
    monkeypatch.setattr(session, "make_train_env", lambda config: DummyVecEnv([lambda: Monitor(make_env(config))]))


def test_concurrent_runs_get_their_own_run_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = 4
    barrier = threading.Barrier(runs, timeout=120)

    def make_env(config: TrainConfig) -> gym.Env:
        barrier.wait()  # the runs get here together, as runs started at once do
        return ToyDrivingEnv()

    train_on(monkeypatch, make_env)
    errors: list[BaseException] = []

    def train(seed: int) -> None:
        config = TrainConfig(seed=seed, log_dir=str(tmp_path), max_timesteps=2, buffer_size=10, metrics=False,
                             progress_bar=False, verbose=0)  # fmt: skip
        try:
            run_train(config)
        except BaseException as error:  # noqa: BLE001 (re-raised below, in the test's thread)
            errors.append(error)

    threads = [threading.Thread(target=train, args=(seed,)) for seed in range(runs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    run_dirs = sorted(path.name for path in tmp_path.iterdir())
    assert run_dirs == [f"TD3CnnClip_{n}" for n in range(1, runs + 1)]
    seeds = {json.loads((tmp_path / name / "config.json").read_text())["config"]["seed"] for name in run_dirs}
    assert seeds == set(range(runs))  # each run wrote its own config.json, none overwrote another's
    for name in run_dirs:
        assert json.loads((tmp_path / name / "result.json").read_text())["model"] == str(tmp_path / name / "model.zip")


@pytest.mark.parametrize("table_interval", [None, 2])
def test_training_table_interval(table_interval: int | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    train_on(monkeypatch, lambda config: ToyDrivingEnv(episode_length=10))
    flags = ["--max-timesteps", "60", "--buffer-size", "10", "--no-metrics", "--no-progress-bar", "--log-dir", str(tmp_path)]
    if table_interval is not None:
        flags += ["--table-interval", str(table_interval)]
    assert main(["train", *flags]) == 0
    tables = capsys.readouterr().out.count("| time/")
    dumps = len((tmp_path / "TD3CnnClip_1" / "progress.csv").read_text().splitlines()) - 1
    assert dumps >= 6  # one per episode (--log-interval 1) whatever is printed, as the report needs
    assert tables == (0 if table_interval is None else dumps // table_interval)


def denormals_flushed() -> bool:
    """Whether torch's CPU math treats denormal floats as zero now: a quarter of the smallest normal float32 is a
    denormal, which a flushing CPU returns as 0."""
    return float(torch.tensor([torch.finfo(torch.float32).tiny]) / 4) == 0.0


class FlushProbe(BaseCallback):
    """Records, at every env step of training, whether denormal floats are flushed."""

    def __init__(self) -> None:
        super().__init__()
        self.flushed: list[bool] = []

    def _on_step(self) -> bool:
        self.flushed.append(denormals_flushed())
        return True


@pytest.mark.parametrize("flush", [False, True])
def test_flush_denormal_holds_while_training(flush: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    train_on(monkeypatch, lambda config: ToyDrivingEnv(episode_length=10))
    probe, make_callbacks = FlushProbe(), session.make_callbacks
    monkeypatch.setattr(session, "make_callbacks", lambda *args: CallbackList([*make_callbacks(*args).callbacks, probe]))
    flags = ["--max-timesteps", "20", "--buffer-size", "10", "--no-metrics", "--no-progress-bar", "--verbose", "0",
             "--log-dir", str(tmp_path)] + (["--flush-denormal"] if flush else [])  # fmt: skip
    assert not denormals_flushed()
    try:
        assert main(["train", *flags]) == 0
    finally:
        torch.set_flush_denormal(False)
    assert probe.flushed == [flush] * 20
    assert json.loads((tmp_path / "TD3CnnClip_1" / "config.json").read_text())["config"]["flush_denormal"] is flush


def test_claim_run_dir_skips_a_number_taken_meanwhile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "TD3CnnClip_1").mkdir()
    (tmp_path / "TD3CnnClip_2").mkdir()
    monkeypatch.setattr(session, "get_latest_run_id", lambda *args: 0)  # another run took 1 and 2 after the listing
    assert claim_run_dir(tmp_path, "TD3CnnClip") == tmp_path / "TD3CnnClip_3"
    assert claim_run_dir(tmp_path / "new", "run") == tmp_path / "new" / "run_1"


class Interrupt(BaseCallback):
    """Raises KeyboardInterrupt (as Ctrl-C does) at the given env step."""

    def __init__(self, at_step: int) -> None:
        super().__init__()
        self.at_step = at_step

    def _on_step(self) -> bool:
        if self.num_timesteps == self.at_step:
            raise KeyboardInterrupt
        return True


def test_ctrl_c_saves_the_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    require("highway_env")
    make_callbacks = session.make_callbacks
    monkeypatch.setattr(session, "make_callbacks", lambda *args: CallbackList([*make_callbacks(*args).callbacks, Interrupt(5)]))
    status = main(["train", "--simulator", "surrogate", "--log-dir", str(tmp_path), "--verbose", "0", "--no-progress-bar"])
    run_dir = tmp_path / "TD3CnnClip_1"
    assert status == 130
    assert json.loads((run_dir / "result.json").read_text())["status"] == "interrupted"
    assert TD3CnnClip.load(run_dir / "model.zip").num_timesteps == 5
    assert f"Training interrupted at timestep 5; model saved to {run_dir / 'model.zip'}" in capsys.readouterr().out


@pytest.mark.slow
def test_train_report_evaluate(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    require("highway_env")
    flags = ["--simulator", "surrogate", "--max-timesteps", "60", "--learning-starts", "30", "--batch-size", "8",
             "--buffer-size", "100", "--seed", "42", "--debug", "--verbose", "0", "--log-dir", str(tmp_path)]  # fmt: skip
    assert main(["train", *flags]) == 0
    run_dir = tmp_path / "TD3CnnClip_1"
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["env"]["simulator"] == "surrogate"
    assert saved["config"] == {**TrainConfig().__dict__, "simulator": "surrogate", "max_timesteps": 60,
                               "learning_starts": 30, "batch_size": 8, "buffer_size": 100, "seed": 42, "debug": True,
                               "verbose": 0, "log_dir": str(tmp_path)}  # fmt: skip
    assert json.loads((run_dir / "result.json").read_text())["status"] == "completed"
    debug = read_scalars(run_dir / "debug")
    assert [step for step, _ in debug["debug/critic_cnn_after"]] == list(range(1, 31))
    capsys.readouterr()

    assert main(["report", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [c["status"] for c in report["criteria"]] == ["PASS"] * 6
    assert report["criteria"][0]["measured"] == f"max {max(v for _, v in debug['debug/actor_cnn_after']):.4g} over 15 updates"

    video = tmp_path / "drive.gif"
    assert main(["evaluate", str(run_dir / "model.zip"), "--episodes", "1", "--video", str(video)]) == 0
    output = capsys.readouterr().out
    length = int(output.splitlines()[1].split()[2])
    assert "simulator: surrogate" in output
    # the reset frame and one per decision of 4 ticks, at 5 frames/s (Pillow merges identical frames, adding durations)
    gif = Image.open(video)
    durations = []
    for index in range(gif.n_frames):
        gif.seek(index)
        durations.append(gif.info["duration"])
    assert sum(durations) == (length + 1) * 200


def test_evaluate_missing_model(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["evaluate", str(tmp_path / "missing.zip")]) == 2
    assert "missing.zip' does not exist" in capsys.readouterr().err


def test_evaluate_inherits_the_run_options(tmp_path: Path, closed_port: int, capsys: pytest.CaptureFixture) -> None:
    require("carla")  # the CARLA client, asked for by the run's config
    TD3CnnClip("CnnPolicy", ToyImageEnv(), buffer_size=10).save(tmp_path / "model.zip")
    config = {**TrainConfig().__dict__, "simulator": "carla", "port": closed_port}
    (tmp_path / "config.json").write_text(json.dumps({"config": config}))
    # the run's simulator and port apply: CARLA is asked for, and nobody answers on that port
    for model in (tmp_path / "model.zip", tmp_path):  # the model, or its run directory
        assert main(["evaluate", str(model)]) == 2
        assert f"localhost:{closed_port}" in capsys.readouterr().err


@pytest.mark.parametrize("option, saved, flags, expected", [
    ("action_repeat", 2, [], 2),  # the run's
    ("action_repeat", None, [], 1),  # a run from before action_repeat existed decided every tick
    ("action_repeat", 2, ["--action-repeat", "3"], 3),  # a flag overrides the run's
    ("time_to_collision_threshold", 3.0, [], 3.0),
    ("time_to_collision_threshold", None, [], 0.0),  # a run from before the option existed had no such term
    ("time_to_collision_threshold", 3.0, ["--time-to-collision-threshold", "0"], 0.0),
])
def test_evaluate_drives_with_the_runs_env_options(option: str, saved: float | None, flags: list[str], expected: float,
                                                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    TD3CnnClip("CnnPolicy", ToyImageEnv(), buffer_size=10).save(tmp_path / "model.zip")
    config = {key: value for key, value in TrainConfig().__dict__.items() if key != option}
    (tmp_path / "config.json").write_text(json.dumps({"config": {**config, **({} if saved is None else {option: saved})}}))
    seen = []
    monkeypatch.setattr(cli, "run_evaluate", lambda model, config, *_: seen.append(config) or [])
    monkeypatch.setattr(cli, "print_evaluation", lambda results: None)
    assert main(["evaluate", str(tmp_path), *flags]) == 0
    assert getattr(seen[0], option) == expected
    assert seen[0].algo == "td3"  # a run from before algo existed trained TD3


def test_action_repeat_and_the_time_to_collision_threshold_reach_the_training_env() -> None:
    require("highway_env")
    env = session.make_train_env(parse_train("--simulator", "surrogate", "--action-repeat", "2", "--policy", "MultiInputPolicy",
                                             "--time-to-collision-threshold", "3"))  # fmt: skip
    config = env.get_attr("config")[0]
    assert (config.action_repeat, config.observation, config.time_to_collision_threshold) == (2, "dict", 3.0)
    env.close()
    assert TrainConfig().env_kwargs() == {"observation": "image", "action_repeat": 4, "time_to_collision_threshold": 0.0}
    with pytest.raises(ValueError, match=r"time_to_collision_threshold=-1.0 must be >= 0"):
        TrainConfig(time_to_collision_threshold=-1)


@pytest.mark.parametrize("policy, observation", [("MlpPolicy", "state"), ("PrivilegedCriticPolicy", "privileged")])
def test_the_privileged_policies_train_and_evaluate_on_their_observations(
    policy: str, observation: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    require("highway_env")
    assert TrainConfig(policy=policy).env_kwargs()["observation"] == observation
    flags = ["--policy", policy, "--simulator", "surrogate", "--max-timesteps", "12", "--learning-starts", "6",
             "--batch-size", "4", "--buffer-size", "20", "--n-steps", "3", "--seed", "0", "--verbose", "0",
             "--no-progress-bar", "--log-dir", str(tmp_path)]  # fmt: skip
    assert main(["train", *flags]) == 0
    run_dir = tmp_path / "TD3CnnClip_1"
    # kinematics, 5 waypoints and 6 vehicles: evaluate must rebuild this env, not the camera's, from the model
    space = session.load_model(run_dir / "model.zip", "cpu", "td3").observation_space
    assert (space["state"] if observation == "privileged" else space).shape == (5 + 2 * 5 + 5 * 6,)
    capsys.readouterr()
    assert main(["evaluate", str(run_dir), "--episodes", "1"]) == 0
    assert "simulator: surrogate" in capsys.readouterr().out


def test_evaluate_takes_a_run_directory(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "model.zip").touch()
    assert session.model_file(tmp_path) == session.model_file(tmp_path / "model.zip") == tmp_path / "model.zip"
    empty = tmp_path / "unfinished"
    empty.mkdir()
    assert main(["evaluate", str(empty)]) == 2
    assert capsys.readouterr().err == (
        f"sb3-td3-cnnclip evaluate: error: Run directory {str(empty)!r} has no model.zip; train saves it when the run ends.\n"
    )


def test_evaluate_rejects_what_is_not_a_model_of_the_algorithm(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "text.zip").write_text("not a model")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as archive:
        archive.writestr("notes.txt", "a zip file without SB3's data")
    PPO("MlpPolicy", "CartPole-v1", n_steps=8, batch_size=8).save(tmp_path / "ppo.zip")
    SACCnnClip("CnnPolicy", ToyImageEnv(size=36), buffer_size=10).save(tmp_path / "sac.zip")
    not_saved = "is not a model saved by Stable-Baselines3 ({}); pass a run directory or its model.zip."
    expected = {"text.zip": not_saved.format("File is not a zip file"),
                "other.zip": not_saved.format('"There is no item named \'data\' in the archive"'),
                "ppo.zip": "holds a Stable-Baselines3 model of none of td3, sac, ddpg, tqc (none of their keys in it).",
                "sac.zip": "holds a sac model, not a td3 one: pass --algo sac."}  # fmt: skip
    for name, message in expected.items():
        assert main(["evaluate", str(tmp_path / name), "--algo", "td3"]) == 2
        assert capsys.readouterr().err == f"sb3-td3-cnnclip evaluate: error: {str(tmp_path / name)!r} {message}\n"
    # without --algo, a model saved outside a run loads as the algorithm its file holds
    TD3CnnClip("CnnPolicy", ToyImageEnv(size=36), buffer_size=10).save(tmp_path / "td3.zip")
    assert session.saved_algorithms(tmp_path / "sac.zip") == ("sac",)
    assert session.saved_algorithms(tmp_path / "td3.zip") == ("td3", "ddpg")  # SB3's DDPG saves TD3's keys
    assert type(session.load_model(tmp_path / "td3.zip", "cpu", "ddpg")) is DDPGCnnClip


#: criteria of every algorithm's report, and those of SAC's and TQC's learned entropy coefficient
CRITERIA = ["actor CNN grad AFTER <= limit", "critic CNN grad AFTER <= limit", "actor MLP grad > 0"]
CHECKS = ["alerts/* == 0", "|actor loss| bounded", "trained all timesteps"]
OWN_CRITERIA = {"td3": [], "ddpg": [], "sac": ["ent_coef grad measured, never clipped"], "tqc": ["ent_coef grad measured, never clipped"]}


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_each_algorithm_trains_evaluates_and_reports(algo: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    require("highway_env")
    # every callback of train: the curriculum (scenarios 0, 1, 2), early stop, driving metrics and the debug log
    flags = ["--algo", algo, "--simulator", "surrogate", "--max-timesteps", "12", "--learning-starts", "6", "--batch-size", "4",
             "--buffer-size", "20", "--seed", "0", "--curriculum", "--debug", "--verbose", "0", "--no-progress-bar",
             "--log-dir", str(tmp_path)]  # fmt: skip
    assert main(["train", *flags]) == 0
    cls = session.ALGORITHM_CLASSES[algo]
    run_dir = tmp_path / f"{cls.__name__}_1"  # named after the class
    saved = json.loads((run_dir / "config.json").read_text())
    assert (saved["config"]["algo"], saved["model_class"]) == (algo, f"{cls.__module__}.{cls.__name__}")
    assert json.loads((run_dir / "result.json").read_text())["status"] == "completed"
    assert len(read_scalars(run_dir / "debug")["debug/critic_cnn_after"]) == 6  # an update per step after the warm-up
    capsys.readouterr()

    assert main(["report", str(run_dir), "--json", "--no-plots"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["algo"] == algo
    assert [(c["name"], c["status"]) for c in report["criteria"]] == [(name, "PASS") for name in CRITERIA + OWN_CRITERIA[algo] + CHECKS]

    assert main(["evaluate", str(run_dir), "--episodes", "1", "--seed", "1000"]) == 0
    assert "simulator: surrogate" in capsys.readouterr().out
    other = "sac" if algo != "sac" else "td3"
    for command in ("evaluate", "report"):
        assert main([command, str(run_dir), "--algo", other]) == 2
        where = run_dir / "model.zip" if command == "evaluate" else run_dir
        assert capsys.readouterr().err == (f"sb3-td3-cnnclip {command}: error: {str(where)!r} was trained with algo {algo!r} (its run's "
                                           f"config.json), not {other!r}: leave --algo out.\n")  # fmt: skip
