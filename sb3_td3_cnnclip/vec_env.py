"""Several driving envs in one run: each env gets its own CARLA server address and Traffic Manager port (checked
before anything connects) and its own process, and a run ends cleanly when one of them fails.

:func:`make_carla_vec_env` builds the envs like SB3's ``make_vec_env`` (``Monitor`` around each env, ``DummyVecEnv``
for one env, seed ``seed + i`` for env ``i``), with per-env server addresses from :func:`env_addresses`. Several envs
run in a :class:`GuardedSubprocVecEnv`: SB3's ``SubprocVecEnv`` whose workers report an error instead of dying
silently. When an env fails (its server is lost, its process dies or stops answering), every other env is closed
(actors destroyed, world settings restored) before :class:`EnvWorkerError` names the env and its server.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from functools import partial
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv
from stable_baselines3.common.vec_env import subproc_vec_env
from stable_baselines3.common.vec_env.base_vec_env import CloudpickleWrapper

from sb3_td3_cnnclip.envs.config import ScenarioConfig
from sb3_td3_cnnclip.envs.errors import SimulatorUnavailableError
from sb3_td3_cnnclip.envs.driving_env import carla_server_answers, resolve_simulator
from sb3_td3_cnnclip.envs.registration import SCENARIO_IDS

#: ports a CARLA server opens from its RPC port on: the RPC port, streaming (+1) and secondary / multi-GPU (+2)
SERVER_PORT_SPAN = 3
#: seconds a worker may take to answer before it counts as hung: above the CARLA env's own time-outs (load_timeout
#: 60 s, camera image 10 s), so that the env's own error, which says more, comes first
WORKER_TIMEOUT = 120.0
#: seconds a terminated worker gets to close its env before it is killed
KILL_GRACE = 10.0
#: host names of this machine, where a CARLA server's ports and the Traffic Managers' ports share one port space
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


class EnvWorkerError(RuntimeError):
    """One env of a :class:`GuardedSubprocVecEnv` failed; every env was closed.

    :param message: what failed, where, and what to do
    :param index: the env's index
    :param name: the env's description (its server address)
    """

    def __init__(self, message: str, index: int, name: str) -> None:
        super().__init__(message)
        self.index = index
        self.name = name


@dataclass(frozen=True)
class EnvAddress:
    """Where one env's simulator runs.

    :param host: CARLA server host
    :param port: CARLA server RPC port (the server also opens ``port + 1`` and ``port + 2``)
    :param tm_port: Traffic Manager port, opened on this machine by the env's client
    """

    host: str
    port: int
    tm_port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port} (Traffic Manager port {self.tm_port})"


def parse_servers(text: str) -> list[tuple[str, int]]:
    """Parse a comma-separated list of ``host:port`` CARLA server addresses.

    :param text: e.g. ``"localhost:2000,localhost:2003,gpu2:2000"``
    :return: ``(host, port)`` pairs in order
    """
    servers = []
    for item in text.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(
                f"servers={text!r}: {item.strip()!r} is not a host:port address with a port in [1, 65535]; "
                "write e.g. localhost:2000,localhost:2003."
            )
        servers.append((host, int(port)))
    return servers


def env_addresses(
    n_envs: int,
    host: str = "localhost",
    port: int = 2000,
    tm_port: int = 8000,
    port_stride: int = SERVER_PORT_SPAN,
    servers: str | Sequence[tuple[str, int]] | None = None,
) -> list[EnvAddress]:
    """The server address and Traffic Manager port of each env, checked by :func:`check_ports`.

    Env ``i`` uses the ``i``-th of ``servers``, or ``host:(port + i * port_stride)`` without them, and the Traffic
    Manager port ``tm_port + i * port_stride`` (every env's client opens its Traffic Manager on this machine).

    :param n_envs: number of envs (at least 1)
    :param host: server host when ``servers`` is not given
    :param port: RPC port of env 0's server when ``servers`` is not given
    :param tm_port: Traffic Manager port of env 0
    :param port_stride: port distance between consecutive envs
    :param servers: one ``(host, port)`` per env, or their ``"host:port,host:port"`` text; ``None`` or ``""``: derived
    :return: one address per env
    """
    if not isinstance(n_envs, int) or isinstance(n_envs, bool) or n_envs < 1:
        raise ValueError(f"n_envs={n_envs!r} must be an integer >= 1.")
    if not isinstance(port_stride, int) or port_stride < 1:
        raise ValueError(f"port_stride={port_stride!r} must be a positive integer.")
    pairs = parse_servers(servers) if isinstance(servers, str) and servers else list(servers or [])
    if pairs and len(pairs) != n_envs:
        raise ValueError(f"servers lists {len(pairs)} address(es) for n_envs={n_envs}; give exactly one per env.")
    pairs = pairs or [(host, port + i * port_stride) for i in range(n_envs)]
    addresses = [EnvAddress(h, p, tm_port + i * port_stride) for i, (h, p) in enumerate(pairs)]
    check_ports(addresses)
    return addresses


def check_ports(addresses: Sequence[EnvAddress]) -> None:
    """Reject any port two envs would share, before anything connects.

    Two servers on one host must be at least :data:`SERVER_PORT_SPAN` ports apart (a CARLA server opens its RPC port
    and the next two); Traffic Manager ports, all opened on this machine, must differ from each other and from the
    ports of the servers on this machine ("bind error" otherwise).

    :param addresses: one address per env
    """
    for address in addresses:
        for name, value, span in (("port", address.port, SERVER_PORT_SPAN), ("tm_port", address.tm_port, 1)):
            if not 0 < value <= 65536 - span:
                raise ValueError(
                    f"{name}={value} of {address} is out of range: ports must lie in [1, 65535], and a CARLA server "
                    "also opens port + 1 and port + 2."
                )
    for i, a in enumerate(addresses):
        for j, b in enumerate(addresses[:i]):
            if _machine(a.host) == _machine(b.host) and abs(a.port - b.port) < SERVER_PORT_SPAN:
                raise ValueError(
                    f"Envs {j} and {i} share server ports: {b.host}:{b.port} and {a.host}:{a.port} (a CARLA server "
                    f"opens its RPC port and the next {SERVER_PORT_SPAN - 1}). Give each env its own server, at least "
                    f"{SERVER_PORT_SPAN} ports apart, e.g. --port-stride {SERVER_PORT_SPAN}."
                )
            if a.tm_port == b.tm_port:
                raise ValueError(f"Envs {j} and {i} share Traffic Manager port {a.tm_port}; give each env its own.")
        for j, server in enumerate(addresses):
            if _machine(server.host) == "localhost" and 0 <= a.tm_port - server.port < SERVER_PORT_SPAN:
                raise ValueError(
                    f"Env {i}'s Traffic Manager port {a.tm_port} is a port of env {j}'s server {server.host}:"
                    f"{server.port} on this machine; move --tm-port away from the servers' ports."
                )


def _machine(host: str) -> str:
    """The machine a host name stands for: ``"localhost"`` for this one, else the lower-cased name."""
    return "localhost" if host.lower() in LOCAL_HOSTS else host.lower()


class _Failure:
    """What a worker sends instead of an answer when its env raised.

    :param error: the exception's type and message
    """

    def __init__(self, error: str) -> None:
        self.error = error


def _worker(remote: Any, parent_remote: Any, env_fn_wrapper: CloudpickleWrapper) -> None:
    """SB3's worker loop; an error is sent to the parent as :class:`_Failure`, and the env is closed however the
    loop ends (error, ``close``, parent gone, Ctrl-C, SIGTERM)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # run the `finally` below when terminated
    made: list[gym.Env] = []

    def make_env() -> gym.Env:
        made.append(env_fn_wrapper.var())
        return made[-1]

    try:
        subproc_vec_env._worker(remote, parent_remote, CloudpickleWrapper(make_env))
    except Exception as error:
        traceback.print_exc()
        with suppress(OSError):
            remote.send(_Failure(f"{type(error).__name__}: {error}"))
    finally:
        for env in made:
            with suppress(Exception):
                env.close()
        remote.close()


class _Remote:
    """The parent's end of one worker's pipe, as SB3's ``SubprocVecEnv`` uses it (``send``/``recv``/``close``).

    It counts the answers still due, and turns a failure report, a dead worker or a worker that does not answer
    within ``worker_timeout`` into :meth:`GuardedSubprocVecEnv._fail`.

    :param connection: the pipe's parent end
    :param index: the env's index
    :param vec_env: the owner
    """

    def __init__(self, connection: Any, index: int, vec_env: GuardedSubprocVecEnv) -> None:
        self.connection = connection
        self.index = index
        self.vec_env = vec_env
        self.pending = 0
        self.command = "start"

    def send(self, message: tuple[str, Any]) -> None:
        self.command = message[0]
        try:
            self.connection.send(message)
        except OSError as error:
            reason = self._failure_report() or f"its process is gone ({error})"  # a worker that failed said why
            self.vec_env._fail(self.index, self.command, reason)
        self.pending += 1

    def recv(self) -> Any:
        timeout = self.vec_env.worker_timeout
        if not self.connection.poll(timeout):
            self.vec_env._fail(self.index, self.command, f"it did not answer within worker_timeout={timeout} s", hung=True)
        try:
            answer = self.connection.recv()
        except (EOFError, OSError):
            process = self.vec_env.processes[self.index]
            process.join(1.0)
            self.vec_env._fail(self.index, self.command, f"its process died (exit code {process.exitcode})")
        self.pending -= 1
        if isinstance(answer, _Failure):
            self.vec_env._fail(self.index, self.command, answer.error)
        return answer

    def close(self) -> None:
        self.connection.close()

    def _failure_report(self) -> str | None:
        """The error a worker that ended sent before its pipe closed, if it waits there unread; else ``None``."""
        with suppress(EOFError, OSError):
            while self.connection.poll():
                answer = self.connection.recv()
                if isinstance(answer, _Failure):
                    return answer.error
        return None


class GuardedSubprocVecEnv(SubprocVecEnv):
    """SB3's ``SubprocVecEnv`` (one process per env) that never hangs on a failed env and never leaves one open.

    When an env raises (e.g. its CARLA server is lost), its process dies, or it does not answer within
    ``worker_timeout`` seconds, every other env is closed (answers in flight are read first, then each worker closes
    its env, so CARLA actors are destroyed and world settings restored), the failed worker is ended, and
    :class:`EnvWorkerError` names the env. ``close()`` does the same shutdown and tolerates dead workers.

    :param env_fns: functions that build the envs, one per process
    :param names: a description of each env for error messages, e.g. its server address (default ``env <i>``)
    :param start_method: ``multiprocessing`` start method (default as SB3: forkserver where available, else spawn)
    :param worker_timeout: seconds to wait for a worker's answer before it counts as hung
    """

    def __init__(
        self,
        env_fns: list[Callable[[], gym.Env]],
        names: Sequence[str] | None = None,
        start_method: str | None = None,
        worker_timeout: float = WORKER_TIMEOUT,
    ) -> None:
        if names is not None and len(names) != len(env_fns):
            raise ValueError(f"names has {len(names)} entries for {len(env_fns)} envs; give one per env.")
        self.names = list(names) if names is not None else [f"env {i}" for i in range(len(env_fns))]
        self.worker_timeout = worker_timeout
        self.waiting, self.closed = False, False
        if start_method is None:
            start_method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
        context = mp.get_context(start_method)
        self.processes, self.remotes = [], []
        try:
            for index, env_fn in enumerate(env_fns):
                remote, work_remote = context.Pipe()
                process = context.Process(
                    target=_worker, args=(work_remote, remote, CloudpickleWrapper(env_fn)), daemon=True
                )
                process.start()
                work_remote.close()
                self.processes.append(process)
                self.remotes.append(_Remote(remote, index, self))
            self.remotes[0].send(("get_spaces", None))
            observation_space, action_space = self.remotes[0].recv()
            VecEnv.__init__(self, len(env_fns), observation_space, action_space)
        except BaseException:
            self._shut_down(failed=None)  # the workers already started close their envs and end (done if _fail ran)
            raise

    def step_async(self, actions: np.ndarray) -> None:
        # env 0 last: step_wait reads env 0's answer first, so it then mostly finds every answer there and this
        # process wakes once per vector step rather than once per env (in SB3's order env 0, started first, answers
        # first, and the wait for the next env sends this process to sleep again)
        for remote, action in reversed(list(zip(self.remotes, actions, strict=True))):
            remote.send(("step", action))
        self.waiting = True

    def close(self) -> None:
        self._shut_down(failed=None)

    def _fail(self, index: int, command: str, reason: str, hung: bool = False) -> None:
        """Shut every env down, then raise :class:`EnvWorkerError` for env ``index``."""
        unclean = self._shut_down(failed=index, hung=hung)
        n = len(self.remotes)
        others = f"the other {n - 1} env(s) were closed" if n > 1 else "no other env ran"
        if unclean:
            others += (
                f", except env(s) {unclean}, which did not close within {self.worker_timeout} s and were killed "
                "(their servers may keep actors or stay in synchronous mode: restart them)"
            )
        raise EnvWorkerError(
            f"Env {index} of {n} ({self.names[index]}) failed during {command!r}: {reason}. Training stopped; {others}. "
            "The worker printed its traceback above; for CARLA, check that env's server (restart it if it crashed), "
            "then start the run again.",
            index, self.names[index],
        )  # fmt: skip

    def _shut_down(self, failed: int | None, hung: bool = False) -> list[int]:
        """Close every env: read the answers in flight, ask each live worker to close its env, wait for it.

        :param failed: the env that failed (not asked anything more), or ``None``
        :param hung: whether the failed env's worker hangs (then it is terminated at once)
        :return: the envs, other than ``failed``, whose worker had to be terminated
        """
        if self.closed:
            return []
        self.closed, self.waiting = True, False
        for remote in self.remotes:
            if remote.index == failed:
                continue
            with suppress(OSError, EOFError):
                while remote.pending and remote.connection.poll(self.worker_timeout):
                    remote.connection.recv()
                    remote.pending -= 1
                if not remote.pending:
                    remote.connection.send(("close", None))
        unclean = []
        for index, process in enumerate(self.processes):
            process.join(0.0 if hung and index == failed else self.worker_timeout)
            if process.is_alive():
                process.terminate()
                process.join(KILL_GRACE)
                if process.is_alive():
                    process.kill()
                    process.join()
                if index != failed:
                    unclean.append(index)
        for remote in self.remotes:
            remote.close()
        return unclean


def _make_env(env_id: str, env_kwargs: dict[str, Any], wrapper_class: Callable[[gym.Env], gym.Env] | None) -> gym.Env:
    """One env wrapped in SB3's ``Monitor`` (episode returns and lengths in ``info["episode"]``), then in
    ``wrapper_class``, as SB3's ``make_vec_env`` does."""
    env = Monitor(gym.make(env_id, **env_kwargs))
    return env if wrapper_class is None else wrapper_class(env)


def _resolve_simulator(simulator: str, addresses: Sequence[EnvAddress], env_kwargs: dict[str, Any]) -> str:
    """One simulator for every env: ``"auto"`` is CARLA when every server answers, the surrogate (with the env's
    warning) when none does, and an error when only some do."""
    if simulator != "auto":
        return simulator
    timeout = env_kwargs.get("connect_timeout", ScenarioConfig.connect_timeout)
    silent = [a for a in addresses if not carla_server_answers(a.host, a.port, timeout)]
    if not silent:
        return "carla"
    if len(silent) < len(addresses):
        raise SimulatorUnavailableError(
            f"simulator='auto': the CARLA servers {', '.join(f'{a.host}:{a.port}' for a in silent)} did not answer "
            f"within {timeout} s while the others did. Start them (or fix --servers), or pass simulator='surrogate'."
        )
    first = addresses[0]
    return resolve_simulator(ScenarioConfig(host=first.host, port=first.port, connect_timeout=timeout))


def make_carla_vec_env(
    scenario: int = 0,
    n_envs: int = 1,
    *,
    servers: str | Sequence[tuple[str, int]] | None = None,
    host: str = "localhost",
    port: int = 2000,
    tm_port: int = 8000,
    port_stride: int = SERVER_PORT_SPAN,
    simulator: str = "auto",
    seed: int | None = None,
    env_kwargs: dict[str, Any] | None = None,
    wrapper_class: Callable[[gym.Env], gym.Env] | None = None,
    start_method: str | None = None,
    worker_timeout: float = WORKER_TIMEOUT,
) -> VecEnv:
    """``n_envs`` envs of one ``CarlaScenario`` in a VecEnv: ``DummyVecEnv`` for one env, else
    :class:`GuardedSubprocVecEnv` (one process per env, CARLA or surrogate alike). Ports are checked before anything
    connects; with ``simulator="auto"`` and several envs, every server must answer (CARLA) or none (surrogate).

    With several envs, SB3 counts every env's step as a timestep: ``train_freq=1`` collects ``n_envs`` transitions
    per training phase, so ``gradient_steps`` updates run per ``n_envs`` transitions (``gradient_steps=n_envs`` keeps
    one update per transition).

    :param scenario: scenario id (0, 1 or 2)
    :param n_envs: number of envs
    :param servers: one ``(host, port)`` per env, or ``"host:port,host:port"`` (see :func:`env_addresses`)
    :param host: server host when ``servers`` is not given
    :param port: RPC port of env 0's server when ``servers`` is not given
    :param tm_port: Traffic Manager port of env 0
    :param port_stride: port distance between consecutive envs (server ports without ``servers``, TM ports always)
    :param simulator: ``"auto"``, ``"carla"`` or ``"surrogate"``
    :param seed: env ``i`` is reset with ``seed + i`` first (``None``: unseeded)
    :param env_kwargs: other ``gymnasium.make`` options of every env (``ScenarioConfig`` fields, ``render_mode``)
    :param wrapper_class: wraps each env, outside its ``Monitor`` (``None``: none)
    :param start_method: ``multiprocessing`` start method of the workers (several envs only)
    :param worker_timeout: seconds to wait for a worker's answer before it counts as hung (several envs only)
    :return: the VecEnv
    """
    addresses = env_addresses(n_envs, host, port, tm_port, port_stride, servers)
    env_kwargs = dict(env_kwargs or {})
    if n_envs > 1:
        simulator = _resolve_simulator(simulator, addresses, env_kwargs)
    env_fns = [
        partial(_make_env, SCENARIO_IDS[scenario],
                {**env_kwargs, "simulator": simulator, "host": a.host, "port": a.port, "tm_port": a.tm_port},
                wrapper_class)
        for a in addresses
    ]  # fmt: skip
    if n_envs == 1:
        vec_env: VecEnv = DummyVecEnv(env_fns)
    else:
        names = ["surrogate" if simulator == "surrogate" else f"CARLA server {a}" for a in addresses]
        vec_env = GuardedSubprocVecEnv(env_fns, names=names, start_method=start_method, worker_timeout=worker_timeout)
    if seed is not None:
        vec_env.seed(seed)
    return vec_env
