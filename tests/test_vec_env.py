"""Several envs in one run: ports checked before anything connects, and a failed env (server lost, process dead or
hung) ends the run with an error naming it, after every other env closed, on the fake ``carla`` of tests/fake_carla.

The fault tests start their workers with ``fork``, so that each worker inherits the fake ``carla`` module of the
test process (each worker then has its own fake server, like one CARLA server per env); a worker writes what its
fake server holds once its env has closed (:class:`ServerReport`).
"""

from __future__ import annotations

import csv
import json
import multiprocessing as mp
import os
import sys
import time
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

from stable_baselines3.common.logger import configure

from sb3_td3_cnnclip import TD3CnnClip, session
from sb3_td3_cnnclip.callbacks import DrivingMetricsCallback, ExplosionEarlyStopping, ScenarioCallback
from sb3_td3_cnnclip.cli import main
from sb3_td3_cnnclip.config_file import TrainConfig
from sb3_td3_cnnclip.envs.toy import ToyImageEnv
from sb3_td3_cnnclip.vec_env import (
    EnvAddress,
    EnvWorkerError,
    WORKER_TIMEOUT,
    GuardedSubprocVecEnv,
    env_addresses,
    make_carla_vec_env,
    parse_servers,
)

FAKE_CARLA = Path(__file__).parent / "fake_carla"
#: env 1 of the fault tests; its server is the one that fails
FAILING_PORT = 2003
#: small fake envs: few NPCs, tiny images
FAKE_ENV = {"image_size": 16, "n_npcs": 2, "connect_timeout": 0.5}


@pytest.fixture
def carla(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The fake ``carla`` in place of the installed client (inherited by forked workers)."""
    for name in [name for name in sys.modules if name == "carla" or name.startswith("carla.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(FAKE_CARLA))
    import carla

    assert Path(carla.__file__).parent.parent == FAKE_CARLA
    carla._server.reset()
    yield carla
    for name in [name for name in sys.modules if name == "carla" or name.startswith("carla.")]:
        del sys.modules[name]


class ServerReport(gym.Wrapper):
    """In a worker: makes the server of port :data:`FAILING_PORT` fail as ``fault`` says, and writes what the
    worker's fake server holds to ``<report_dir>/<port>.json`` each time the env closes.

    :param env: the env (on the fake carla)
    :param report_dir: where to write
    :param fault: ``"lost"`` (the server is lost at the 5th step), ``"exit"`` (the worker process dies at the first
        step), ``"hang"`` (the first step never returns), or ``"collide"`` (every server: a collision every 12 ticks,
        so that episodes end quickly)
    """

    def __init__(self, env: gym.Env, report_dir: Path, fault: str) -> None:
        super().__init__(env)
        import carla

        self.server = carla._server.SERVER
        self.port = env.unwrapped.config.port
        self.path = report_dir / f"{self.port}.json"
        self.fault = fault if self.port == FAILING_PORT else None
        if fault == "collide":
            self.server.collision_frames = set(range(self.server.frame + 6, self.server.frame + 100_000, 12))
        if self.fault == "lost":
            self.server.lost_at_frame = self.server.frame + 7  # reset ticks twice: the 5th step's tick

    def step(self, action: np.ndarray):
        if self.fault == "exit":
            os._exit(3)
        while self.fault == "hang":
            time.sleep(0.1)
        return super().step(action)

    def close(self) -> None:
        super().close()
        server = self.server
        self.path.write_text(json.dumps({
            "actors": len(server.actors), "synchronous_mode": server.settings.synchronous_mode,
            "tm_synchronous": any(server.traffic_managers.values()), "ticks": len(server.entries("tick")),
        }))  # fmt: skip


def fake_vec_env(report_dir: Path, n_envs: int, fault: str = "none", start_method: str = "fork", **kwargs: Any) -> GuardedSubprocVecEnv:
    """``n_envs`` envs on the fake carla (ports 2000, 2003, ...), each writing its server's state to ``report_dir``."""
    kwargs["env_kwargs"] = {**FAKE_ENV, **kwargs.get("env_kwargs", {})}
    return make_carla_vec_env(
        0, n_envs, simulator="carla", start_method=start_method,
        wrapper_class=partial(ServerReport, report_dir=report_dir, fault=fault), **kwargs,
    )  # fmt: skip


def fault_run(report_dir: Path, fault: str, worker_timeout: float = 60.0) -> tuple[EnvWorkerError, GuardedSubprocVecEnv]:
    """Three envs on the fake carla (ports 2000, 2003, 2006), stepped until one fails."""
    vec_env = fake_vec_env(report_dir, 3, fault, seed=0, worker_timeout=worker_timeout)
    vec_env.reset()
    with pytest.raises(EnvWorkerError) as error:
        for _ in range(20):
            vec_env.step(np.zeros((3, 2), np.float32))
    return error.value, vec_env


def assert_others_clean(report_dir: Path, vec_env: GuardedSubprocVecEnv) -> None:
    """Envs 0 and 2 closed with nothing left on their servers; every worker process ended."""
    for port in (2000, 2006):
        report = json.loads((report_dir / f"{port}.json").read_text())
        assert report["ticks"] > 2  # the env stepped
        assert (report["actors"], report["synchronous_mode"], report["tm_synchronous"]) == (0, False, False)
    assert all(not process.is_alive() for process in vec_env.processes)
    vec_env.close()  # already closed: does nothing


def test_server_lost_mid_episode_ends_the_run_naming_it_after_the_others_cleaned_up(carla, tmp_path: Path) -> None:
    error, vec_env = fault_run(tmp_path, "lost")
    assert (error.index, error.name) == (1, "CARLA server localhost:2003 (Traffic Manager port 8003)")
    message = str(error)
    assert "Env 1 of 3 (CARLA server localhost:2003 (Traffic Manager port 8003)) failed during 'step'" in message
    assert "time-out of" in message and "connected to localhost:2003" in message  # the client's own error
    assert "the other 2 env(s) were closed." in message  # none had to be killed
    assert_others_clean(tmp_path, vec_env)
    # the lost server's own cleanup was tried; its actors stay there (it does not answer)
    lost = json.loads((tmp_path / f"{FAILING_PORT}.json").read_text())
    assert lost["actors"] > 0


def test_train_stops_with_one_line_naming_the_lost_server(carla, tmp_path: Path, monkeypatch, capsys) -> None:
    def fake_envs(*args, **kwargs):
        kwargs["env_kwargs"] = {**kwargs["env_kwargs"], **FAKE_ENV, "image_size": 36}  # NatureCNN's smallest input
        wrapper = partial(ServerReport, report_dir=tmp_path, fault="lost")
        return make_carla_vec_env(*args, **kwargs, start_method="fork", wrapper_class=wrapper)

    monkeypatch.setattr(session, "make_carla_vec_env", fake_envs)
    flags = ["--simulator", "carla", "--n-envs", "3", "--learning-starts", "1000", "--buffer-size", "100",
             "--seed", "0", "--verbose", "0", "--no-progress-bar", "--log-dir", str(tmp_path / "runs")]  # fmt: skip
    assert main(["train", *flags]) == 2
    error = capsys.readouterr().err
    assert error.startswith("sb3-td3-cnnclip train: error: Env 1 of 3 (CARLA server localhost:2003")
    result = json.loads((tmp_path / "runs" / "TD3CnnClip_1" / "result.json").read_text())
    assert result["status"] == "error" and Path(result["model"]).is_file()
    for port in (2000, 2006):
        report = json.loads((tmp_path / f"{port}.json").read_text())
        assert (report["actors"], report["synchronous_mode"], report["tm_synchronous"]) == (0, False, False)


def test_worker_timeout_option_reaches_the_vec_env(monkeypatch) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(session, "make_carla_vec_env", lambda *args, **kwargs: seen.update(kwargs))
    session.make_train_env(TrainConfig(n_envs=2, worker_timeout=300))
    assert seen["worker_timeout"] == 300.0
    assert TrainConfig().worker_timeout == WORKER_TIMEOUT
    with pytest.raises(ValueError, match="worker_timeout=0.0 must be > 0"):
        TrainConfig(worker_timeout=0)


def test_dead_worker_ends_the_run_naming_it(carla, tmp_path: Path) -> None:
    error, vec_env = fault_run(tmp_path, "exit")
    assert error.index == 1
    assert "its process died (exit code 3)" in str(error)
    assert_others_clean(tmp_path, vec_env)


def test_hung_worker_ends_the_run_after_worker_timeout(carla, tmp_path: Path) -> None:
    error, vec_env = fault_run(tmp_path, "hang", worker_timeout=3.0)
    assert error.index == 1
    assert "did not answer within worker_timeout=3.0 s" in str(error)
    assert_others_clean(tmp_path, vec_env)


def toy_env(fails: bool) -> gym.Env:
    """A toy env, or a constructor that raises ``RuntimeError("boom")``."""
    if fails:
        raise RuntimeError("boom")
    return ToyImageEnv()


def test_an_env_that_fails_to_build_is_named_with_its_own_error() -> None:
    with pytest.raises(EnvWorkerError) as error:
        GuardedSubprocVecEnv([partial(toy_env, index == 1) for index in range(3)], start_method="fork")
    assert error.value.index == 1
    assert "RuntimeError: boom" in str(error.value)
    assert "its process is gone" not in str(error.value)


def test_workers_already_started_are_closed_when_starting_the_next_fails(carla, tmp_path: Path, monkeypatch) -> None:
    started: list[mp.process.BaseProcess] = []
    start = mp.process.BaseProcess.start

    def start_two(process: mp.process.BaseProcess) -> None:
        if len(started) == 2:
            raise OSError("no more processes")
        start(process)
        started.append(process)

    monkeypatch.setattr(mp.process.BaseProcess, "start", start_two)
    with pytest.raises(OSError, match="no more processes"):
        fake_vec_env(tmp_path, 3)
    assert [process.exitcode for process in started] == [0, 0]  # ended on their own, after closing their envs
    for port in (2000, 2003):
        report = json.loads((tmp_path / f"{port}.json").read_text())
        assert (report["actors"], report["synchronous_mode"], report["tm_synchronous"]) == (0, False, False)


def test_close_closes_every_env(carla, tmp_path: Path) -> None:
    vec_env = fake_vec_env(tmp_path, 3)
    vec_env.reset()
    vec_env.step_async(np.zeros((3, 2), np.float32))  # a step in flight is read before the envs close
    vec_env.close()
    for port in (2000, 2003, 2006):
        report = json.loads((tmp_path / f"{port}.json").read_text())
        assert (report["actors"], report["synchronous_mode"], report["tm_synchronous"]) == (0, False, False)
    assert [process.exitcode for process in vec_env.processes] == [0, 0, 0]


def test_a_vector_step_sends_env_0_its_action_last(carla, tmp_path: Path, monkeypatch) -> None:
    vec_env = fake_vec_env(tmp_path, 3)
    vec_env.reset()
    sent: list[tuple[int, str, float]] = []

    def recording(remote):
        send = remote.send

        def record(message):
            sent.append((remote.index, message[0], float(message[1][0])))
            return send(message)

        return record

    for remote in vec_env.remotes:
        monkeypatch.setattr(remote, "send", recording(remote))
    vec_env.step(np.array([[0.0, 0.0], [0.5, 0.0], [1.0, 0.0]], np.float32))
    assert sent == [(2, "step", 1.0), (1, "step", 0.5), (0, "step", 0.0)]  # each env its own action
    vec_env.close()


@pytest.mark.slow
def test_workers_close_their_envs_when_the_trainer_dies(carla, tmp_path: Path) -> None:
    # spawn, as the default forkserver: no worker holds another's pipe, so each sees its pipe close
    vec_env = fake_vec_env(tmp_path, 2, start_method="spawn")
    vec_env.reset()
    for remote in vec_env.remotes:
        remote.connection.close()  # what the trainer's death does to the pipes
    for process in vec_env.processes:
        process.join(60)
    assert [process.exitcode for process in vec_env.processes] == [0, 0]
    for port in (2000, 2003):
        report = json.loads((tmp_path / f"{port}.json").read_text())
        assert (report["actors"], report["synchronous_mode"], report["tm_synchronous"]) == (0, False, False)


def test_callbacks_with_two_envs_in_worker_processes(carla, tmp_path: Path) -> None:
    vec_env = fake_vec_env(tmp_path, 2, "collide", seed=0, env_kwargs={"image_size": 36})
    model = TD3CnnClip("CnnPolicy", vec_env, buffer_size=200, learning_starts=40, batch_size=8, seed=0)
    model.set_logger(configure(str(tmp_path / "log"), ["csv"]))
    callbacks = [ScenarioCallback([0, 1], n_npcs=2, seed=0, advance_every=30), DrivingMetricsCallback(),
                 ExplosionEarlyStopping(log_dir=str(tmp_path))]  # fmt: skip
    model.learn(80, callback=callbacks, log_interval=1)
    assert vec_env.get_attr("scenario") == [1, 1]  # the curriculum reached both workers
    with open(tmp_path / "log" / "progress.csv") as file:
        rows = [row for row in csv.DictReader(file) if row["driving/episodes"]]
    assert sum(int(float(row["driving/episodes"])) for row in rows) >= 4  # both envs' episodes
    assert {float(row["driving/collision_rate"]) for row in rows} == {1.0}
    assert model.num_timesteps == 80  # no early stop
    vec_env.close()
    for port in (2000, 2003):
        report = json.loads((tmp_path / f"{port}.json").read_text())
        assert (report["actors"], report["synchronous_mode"], report["tm_synchronous"]) == (0, False, False)


def test_env_addresses_from_a_base_port_or_a_list() -> None:
    assert env_addresses(3, port=2000, tm_port=8000) == [
        EnvAddress("localhost", 2000, 8000), EnvAddress("localhost", 2003, 8003), EnvAddress("localhost", 2006, 8006)]
    assert env_addresses(2, servers="gpu1:2000, gpu2:2000", tm_port=9000, port_stride=5) == [
        EnvAddress("gpu1", 2000, 9000), EnvAddress("gpu2", 2000, 9005)]
    assert parse_servers("[::1]:2000,h:1") == [("[::1]", 2000), ("h", 1)]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_envs": 0}, "n_envs=0 must be an integer >= 1"),
        ({"n_envs": 2, "servers": "localhost:2000,localhost"}, "'localhost' is not a host:port address"),
        ({"n_envs": 1, "servers": "host:70000"}, "'host:70000' is not a host:port address"),
        ({"n_envs": 2, "servers": "a:2000"}, "servers lists 1 address(es) for n_envs=2"),
        ({"n_envs": 2, "servers": "a:2000,A:2000"}, "Envs 0 and 1 share server ports: a:2000 and A:2000"),
        ({"n_envs": 2, "servers": "localhost:2000,127.0.0.1:2002"}, "Envs 0 and 1 share server ports"),
        ({"n_envs": 2, "port_stride": 1}, "Envs 0 and 1 share server ports: localhost:2000 and localhost:2001"),
        ({"n_envs": 2, "tm_port": 2004}, "Env 0's Traffic Manager port 2004 is a port of env 1's server localhost:2003"),
        ({"n_envs": 1, "port": 65534}, "port=65534 of localhost:65534"),
    ],
)
def test_port_clashes_and_bad_addresses_are_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError) as error:
        env_addresses(**kwargs)
    assert message in str(error.value)


def test_a_clash_is_rejected_before_anything_connects(carla) -> None:
    with pytest.raises(ValueError, match="share server ports"):
        make_carla_vec_env(0, 2, servers="localhost:2000,localhost:2000", simulator="carla", start_method="fork")
    assert carla._server.SERVER.log == []  # no client was created
    assert mp.active_children() == []


def test_auto_needs_every_server_or_none(closed_port: int) -> None:
    import socket

    from sb3_td3_cnnclip.envs import SimulatorUnavailableError

    with socket.create_server(("localhost", 0)) as listening:
        servers = f"localhost:{listening.getsockname()[1]},localhost:{closed_port}"
        with pytest.raises(SimulatorUnavailableError, match=f"localhost:{closed_port} did not answer"):
            make_carla_vec_env(0, 2, servers=servers, env_kwargs={"connect_timeout": 0.5})


@pytest.mark.slow
def test_train_two_surrogate_envs_with_every_callback_then_report_and_evaluate(tmp_path: Path, capsys) -> None:
    flags = ["--simulator", "surrogate", "--n-envs", "2", "--max-timesteps", "80", "--learning-starts", "40",
             "--batch-size", "8", "--buffer-size", "100", "--seed", "3", "--curriculum", "--debug", "--verbose", "0",
             "--no-progress-bar", "--log-dir", str(tmp_path)]  # fmt: skip
    assert main(["train", *flags]) == 0
    run_dir = tmp_path / "TD3CnnClip_1"
    saved = json.loads((run_dir / "config.json").read_text())
    assert (saved["env"]["n_envs"], saved["env"]["simulator"], saved["config"]["n_envs"]) == (2, "surrogate", 2)
    result = json.loads((run_dir / "result.json").read_text())
    # 40 vector steps of 2 envs; one gradient step per vector step after the warm-up (train_freq=1, gradient_steps=1)
    assert (result["status"], result["num_timesteps"], result["n_updates"]) == ("completed", 80, 20)
    rows = (run_dir / "progress.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert {"curriculum/scenario", "alerts/dead_actor", "train/actor_cnn_grad_after"} <= set(header)
    assert float(rows[-1].split(",")[header.index("curriculum/scenario")]) == 2  # set_scenario reached both workers
    capsys.readouterr()
    assert main(["report", str(run_dir), "--json", "--no-plots"]) in (0, 1)  # a criterion may fail on 20 updates
    assert json.loads(capsys.readouterr().out)["criteria"]
    assert main(["evaluate", str(run_dir / "model.zip"), "--episodes", "1"]) == 0
    assert "simulator: surrogate" in capsys.readouterr().out


def test_evaluate_drives_on_env_0s_server(tmp_path: Path, closed_port: int, capsys) -> None:
    TD3CnnClip("CnnPolicy", ToyImageEnv(), buffer_size=10).save(tmp_path / "model.zip")
    config = {**TrainConfig().__dict__, "simulator": "carla", "n_envs": 2, "servers": f"localhost:{closed_port},elsewhere:2000"}
    (tmp_path / "config.json").write_text(json.dumps({"config": config}))
    assert main(["evaluate", str(tmp_path / "model.zip")]) == 2
    assert f"No CARLA server answered at localhost:{closed_port}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--n-envs", "0"], "n_envs=0 must be > 0"),
        (["--n-envs", "2", "--servers", "localhost:2000,localhost:x"], "'localhost:x' is not a host:port address"),
        (["--n-envs", "2", "--servers", "localhost:2000,localhost:2000"], "Envs 0 and 1 share server ports"),
        (["--n-envs", "3", "--servers", "a:2000,b:2000"], "servers lists 2 address(es) for n_envs=3"),
        (["--n-envs", "2", "--port-stride", "2"], "share server ports: localhost:2000 and localhost:2002"),
    ],
)
def test_cli_flags_are_checked(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
