"""The training configuration of the command line: every option with its default (the ONE place to change them),
its validation, and loading it from a YAML or TOML file whose keys are the option names.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stable_baselines3.common.type_aliases import Schedule

from sb3_td3_cnnclip.cnnclip import WARMUP_ACTIONS
from sb3_td3_cnnclip.envs.config import SCENARIO_NPCS, SIMULATORS
from sb3_td3_cnnclip.envs.errors import MissingExtraError
from sb3_td3_cnnclip.vec_env import env_addresses

#: the algorithms of the command line (``--algo``): TD3CnnClip, SACCnnClip, DDPGCnnClip, TQCCnnClip
ALGORITHMS = ("td3", "sac", "ddpg", "tqc")
#: policies the command line offers; the MultiInput ones observe the env's Dict (image + kinematics) observation
POLICIES = ("CnnPolicy", "BoundedCnnPolicy", "TrunkCnnPolicy", "MultiInputPolicy", "BoundedMultiInputPolicy",
            "MlpPolicy", "PrivilegedCriticPolicy")
DICT_POLICIES = ("MultiInputPolicy", "BoundedMultiInputPolicy")
#: the policy that observes the privileged ``observation="state"`` vector (no camera)
STATE_POLICY = "MlpPolicy"
#: the asymmetric actor-critic, whose envs observe ``observation="privileged"`` (camera for the actor, state for
#: the critics)
PRIVILEGED_POLICY = "PrivilegedCriticPolicy"
#: this package's TD3 policies, each with the SB3 policy to choose instead for the other algorithms
TD3_POLICIES = {"BoundedCnnPolicy": "CnnPolicy", "TrunkCnnPolicy": "CnnPolicy",
                "BoundedMultiInputPolicy": "MultiInputPolicy", PRIVILEGED_POLICY: "CnnPolicy"}
#: the algorithms that take :data:`TD3_POLICIES`
TD3_POLICY_ALGORITHMS = ("td3", "ddpg")
#: ``action_noise_sigma`` when none is given: the deterministic actors of TD3 and DDPG explore with Gaussian noise,
#: the stochastic policies of SAC and TQC sample their own actions (SB3's default for them: no action noise)
DEFAULT_ACTION_NOISE_SIGMA = {"td3": 0.1, "ddpg": 0.1, "sac": 0.0, "tqc": 0.0}
#: learning-rate schedules over a run (``lr_schedule``): constant, or decayed linearly to ``final_learning_rate`` (0 by
#: default: rl-zoo's ``lin_<lr>``) over the last ``lr_decay_fraction`` of the run (all of it by default)
LR_SCHEDULES = ("constant", "linear")

#: a range check: (predicate, what the value must be, for the error message)
Check = tuple[Callable[[float], bool], str]
POSITIVE: Check = (lambda v: v > 0, "> 0")
NON_NEGATIVE: Check = (lambda v: v >= 0, ">= 0")
FRACTION: Check = (lambda v: 0 < v <= 1, "in (0, 1]")
PORT: Check = (lambda v: 0 < v < 65536, "a port number in [1, 65535]")


def option(
    default: Any, help: str, check: Check | None = None, choices: tuple | None = None, flags: tuple = (), algos: tuple = ALGORITHMS
) -> Any:
    """A :class:`TrainConfig` field with what the command line needs to offer it.

    :param default: the default value
    :param help: the help text of the flag (the default is appended)
    :param check: range check of a number (``None``: any value of the right type)
    :param choices: the allowed values (``None``: any value of the right type)
    :param flags: extra flag spellings besides ``--<name-with-dashes>``
    :param algos: the algorithms that take the option; with another ``algo`` it must keep its default
    :return: a dataclass field
    """
    metadata = {"help": help, "check": check, "choices": choices, "flags": flags, "algos": algos}
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """Everything ``sb3-td3-cnnclip train`` needs. Each field is a flag (``--max-timesteps``) and a config-file key
    (``max_timesteps``); see each field's ``help`` metadata (``sb3-td3-cnnclip train --help``).

    ``algo`` picks the class (``td3``: :class:`~sb3_td3_cnnclip.TD3CnnClip`, ``sac``:
    :class:`~sb3_td3_cnnclip.SACCnnClip`, ``ddpg``: :class:`~sb3_td3_cnnclip.DDPGCnnClip`, ``tqc``:
    :class:`~sb3_td3_cnnclip.TQCCnnClip`). TD3's own options (``policy_delay``, ``target_policy_noise``,
    ``target_noise_clip``) are rejected with any other ``algo`` unless left at their defaults, and so is
    ``compile_update`` with SAC and TQC; SAC's and TQC's own parameters (``ent_coef="auto"``, ``target_entropy``, ...)
    keep SB3's defaults. ``action_noise_sigma`` and ``pre_tanh_penalty`` default to ``None``: the algorithm's own
    value (:data:`DEFAULT_ACTION_NOISE_SIGMA`; the class's ``default_pre_tanh_penalty``).

    TD3 hyperparameters follow SB3's TD3 and the original project (lr 3e-4, gamma 0.99, tau 0.005, batch 256,
    policy delay 2), except the replay buffer and the warm-up: ``buffer_size=200_000`` takes about 1.5 GB when full
    (4x84x84 uint8, each frame stored once by ``FrameStackReplayBuffer``) where SB3's 1_000_000 take 56 GB, and
    ``learning_starts=200`` leaves updates even in the 500-step validation run.
    Two choices come from ``benchmarks/``: ``pre_tanh_penalty=0.01`` (TD3's default) kept the actor alive (no
    zero-gradient actor update) on every seed of the toy and surrogate runs where plain TD3 saturated its tanh on every
    seed, with higher returns; ``torch_threads=1`` made a batch-256 update 6.5x faster than torch's two threads on a
    busy 2-core CPU.
    """

    algo: str = option("td3", "algorithm: td3 (TD3CnnClip), sac (SACCnnClip), ddpg (DDPGCnnClip) or tqc (TQCCnnClip); recorded in the run's config.json", choices=ALGORITHMS)
    scenario: int = option(0, "driving scenario (NPC vehicles 0: 20, 1: 50, 2: 100)", choices=tuple(SCENARIO_NPCS))
    simulator: str = option("auto", "simulator backend; auto = CARLA if a server answers, else the surrogate", choices=SIMULATORS)
    host: str = option("localhost", "CARLA server host")
    port: int = option(2000, "CARLA server RPC port", PORT)
    tm_port: int = option(8000, "CARLA Traffic Manager port (of env 0; env i gets tm_port + i x port_stride)", PORT)
    n_envs: int = option(1, "envs stepped in parallel, one process and one CARLA server each; every env's step counts as a timestep", POSITIVE)
    servers: str = option("", "CARLA server of each env: host:port,host:port,... (empty: --host, and --port + i x --port-stride)")
    worker_timeout: float = option(120.0, "seconds to wait for an env worker's answer (--n-envs above 1) before the run ends with an error naming its server; raise it for CARLA servers slow to load a map", POSITIVE)
    port_stride: int = option(3, "port distance between consecutive envs (server ports without --servers, Traffic Manager ports); a CARLA server opens port, port+1 and port+2", POSITIVE)
    action_repeat: int = option(4, "simulator ticks per decision: each action is held this long and the frame stack holds one frame per decision (1: a decision every 50 ms tick; with 4 the recipe drove scenario 0 on 2 of 3 seeds in 50k ticks, with 1 nothing drove)", POSITIVE)
    time_to_collision_threshold: float = option(0.0, "seconds of time to collision with the vehicle ahead in the ego's path under which the safety reward penalises closing in on it, linearly up to the full penalty at contact (0: off, the reward every benchmark so far measured; e.g. 3.0)", NON_NEGATIVE)
    policy: str = option(
        "CnnPolicy", "policy; Bounded* bound the CNN features, TrunkCnnPolicy without the ReLU before the bound, "
        "so that none can die (td3 and ddpg), MultiInput* observe image + kinematics, "
        "MlpPolicy the privileged state (kinematics, waypoints and the nearest vehicles; no camera), "
        "PrivilegedCriticPolicy drives from the camera with critics that learn from that state (td3 and ddpg)",
        choices=POLICIES)
    max_timesteps: int = option(5000, "environment steps to train for", POSITIVE)
    seed: int | None = option(None, "random seed (none: draw one, recorded in the run's config.json)", NON_NEGATIVE)
    device: str = option("auto", "torch device: auto, cpu, cuda, cuda:1, ...")
    torch_threads: int | None = option(1, "torch CPU threads (none: torch's default, one per core)", POSITIVE)
    flush_denormal: bool = option(False, "treat denormal floats as zero in the CPU's math (torch.set_flush_denormal, for the rest of the process): late in a run a fifth to a third of Adam's moments are denormal and the update took 0.77-0.90x as long with this (benchmarks/results/denormals.md); not bit-identical to float32 math")
    log_dir: str = option("runs", "directory that receives one sub-directory per run (TensorBoard, config, model)")
    run_name: str | None = option(None, "name of the run directory, numbered like SB3's runs: <log_dir>/<run_name>_<n> (none: the algorithm's class name, e.g. TD3CnnClip)")
    learning_rate: float = option(3e-4, "Adam learning rate of the actor and the critic", POSITIVE, flags=("--lr",))
    lr_schedule: str = option("constant", "learning-rate schedule over --max-timesteps: constant, or linear (from --learning-rate at the start to --final-learning-rate at the end; to 0, rl-zoo's lin_<lr>, by default)", choices=LR_SCHEDULES)
    final_learning_rate: float = option(0.0, "learning rate at the end of a linear --lr-schedule, at most --learning-rate (a floor that leaves the policy a rate to recover with late in the run)", NON_NEGATIVE)
    lr_decay_fraction: float = option(1.0, "last fraction of --max-timesteps over which a linear --lr-schedule decays, the rate staying at --learning-rate before it (1: the whole run; 0.2: constant for the first 0.8 of the run, decayed over the last 0.2)", FRACTION)
    gamma: float = option(0.99, "discount factor", FRACTION)
    tau: float = option(0.005, "soft update coefficient of the target networks", FRACTION)
    batch_size: int = option(256, "minibatch size of each gradient step", POSITIVE)
    buffer_size: int = option(200_000, "replay buffer capacity (200_000 is ~1.5 GB when full at 4x84x84)", POSITIVE)
    learning_starts: int = option(200, "warm-up steps (actions from --warmup-actions) before the first gradient step", NON_NEGATIVE)
    warmup_actions: str = option("random", "actions of the warm-up: random (uniform), scripted (the surrogate's scripted driver plus the exploration noise: demonstrations) or autopilot (the simulator's own driver steers, CARLA's Traffic Manager on CARLA, and the buffer stores the controls it applied)", choices=WARMUP_ACTIONS)
    policy_delay: int = option(2, "critic updates per actor update (td3 only)", POSITIVE, algos=("td3",))
    train_freq: int = option(1, "environment steps between training phases", POSITIVE)
    gradient_steps: int = option(1, "gradient steps per training phase", POSITIVE)
    target_policy_noise: float = option(0.2, "std of the noise added to the target policy's actions (td3 only)", NON_NEGATIVE, algos=("td3",))
    target_noise_clip: float = option(0.5, "clip of the target policy noise (td3 only)", NON_NEGATIVE, algos=("td3",))
    action_noise_sigma: float | None = option(None, "std of the Gaussian exploration noise added to the actions (0: none; none: 0.1 for td3 and ddpg, 0 for sac and tqc, whose stochastic policy explores)", NON_NEGATIVE)
    actor_cnn_max_grad_norm: float | None = option(1.0, "gradient-norm limit of the actor CNN (none: measure only)", POSITIVE)
    actor_mlp_max_grad_norm: float | None = option(1.0, "gradient-norm limit of the actor MLP (none: measure only)", POSITIVE)
    critic_cnn_max_grad_norm: float | None = option(10.0, "gradient-norm limit of the critic CNN (none: measure only)", POSITIVE)
    critic_mlp_max_grad_norm: float | None = option(10.0, "gradient-norm limit of the critic MLP (none: measure only)", POSITIVE)
    actor_lr_scale: float = option(1.0, "actor learning rate = this x --learning-rate (below 1 keeps the actor out of tanh saturation)", POSITIVE)
    pre_tanh_penalty: float | None = option(None, "coefficient of mean(pre_tanh^2) added to the actor loss; keeps the actor alive (0: the base algorithm's loss; none: the algorithm's default, 0.01 for td3 (measured), 0 for sac, ddpg and tqc)", NON_NEGATIVE)
    n_steps: int = option(1, "n-step returns (SB3's n_steps; 1: TD3's one-step targets), in the frame-stacked replay buffer", POSITIVE)
    random_shift_pad: int = option(0, "DrQ random-shift augmentation of the replay images, in pixels (0: off; 4 for 84x84)", NON_NEGATIVE)
    critic_trained_encoder: bool = option(False, "DrQ-v2: one image encoder trained by the critic only, the actor reads it without gradient")
    compile_update: bool = option(False, "the fast path: torch.compile the update's loss functions, fused optimizers, non-finite steps skipped on the device (td3 and ddpg; the first updates pay tens of seconds of compilation)", algos=("td3", "ddpg"))
    bf16_encoders: bool = option(False, "run the CNNs of the update in bfloat16 autocast (about 2x faster on CPUs with AMX/AVX512-BF16; float32 within bfloat16 rounding)")
    early_stop: bool = option(True, "stop on a loss / Q / gradient explosion or a dead actor, and count alerts")
    curriculum: bool = option(False, "raise the scenario (traffic) from --scenario to 2, in equal shares of --max-timesteps")
    metrics: bool = option(True, "log driving metrics (route completion, speed, termination reasons) under driving/")
    debug: bool = option(False, "log every gradient update under debug/ (step = update) and raise on non-finite gradients")
    progress_bar: bool = option(True, "show a progress bar")
    log_interval: int = option(1, "episodes between two logger dumps to TensorBoard and progress.csv (one more is written at the end)", POSITIVE)
    table_interval: int = option(0, "dumps between two of SB3's training tables on stdout (0: none, the progress bar stays readable)", NON_NEGATIVE)
    verbose: int = option(1, "0: quiet, 1: SB3's messages, 2: debug messages", choices=(0, 1, 2))

    def env_kwargs(self) -> dict[str, Any]:
        """The ``gymnasium.make`` options of every env these options train or evaluate on, besides the server."""
        return {"observation": observation_of(self.policy), "action_repeat": self.action_repeat,
                "time_to_collision_threshold": self.time_to_collision_threshold}

    def action_noise(self) -> float:
        """The std of the exploration noise: ``action_noise_sigma``, or the algorithm's default when it is ``None``."""
        return DEFAULT_ACTION_NOISE_SIGMA[self.algo] if self.action_noise_sigma is None else self.action_noise_sigma

    def algorithm_kwargs(self) -> dict[str, Any]:
        """The options that only some algorithms take (TD3's ``policy_delay``, ...), for the algorithm of ``algo``
        when it takes them (the others keep their own settings: DDPG's policy delay of 1, ...)."""
        return {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self)
            if f.metadata["algos"] != ALGORITHMS and self.algo in f.metadata["algos"]
        }  # fmt: skip

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(TrainConfig)
        for f in dataclasses.fields(self):
            setattr(self, f.name, _validate(f.name, getattr(self, f.name), hints[f.name], f.metadata))
        env_addresses(self.n_envs, self.host, self.port, self.tm_port, self.port_stride, self.servers)  # ports, before any connection
        for f in dataclasses.fields(self):
            if self.algo not in f.metadata["algos"] and getattr(self, f.name) != f.default:
                raise ValueError(
                    f"{f.name}={getattr(self, f.name)!r} is an option of algo {' and '.join(f.metadata['algos'])} only; "
                    f"algo={self.algo!r} does not take it: leave it at its default ({f.default!r})."
                )
        if self.policy in TD3_POLICIES and self.algo not in TD3_POLICY_ALGORITHMS:
            raise ValueError(
                f"policy={self.policy!r} is a TD3 policy (algo {' and '.join(TD3_POLICY_ALGORITHMS)}); with "
                f"algo={self.algo!r} choose {TD3_POLICIES[self.policy]!r}."
            )
        if self.curriculum and self.scenario == max(SCENARIO_NPCS):
            raise ValueError(f"curriculum=True raises the scenario from scenario={self.scenario}, the last one; start from 0 or 1.")
        learning_rate_schedule(  # its errors, now
            self.learning_rate, self.lr_schedule, self.final_learning_rate, self.lr_decay_fraction
        )


def observation_of(policy: str) -> str:
    """The ``observation`` option of the envs a policy observes: ``"dict"`` for the MultiInput policies, ``"state"``
    for :data:`STATE_POLICY`, ``"privileged"`` for :data:`PRIVILEGED_POLICY`, else ``"image"``.

    :param policy: one of :data:`POLICIES`
    """
    if policy in DICT_POLICIES:
        return "dict"
    return {STATE_POLICY: "state", PRIVILEGED_POLICY: "privileged"}.get(policy, "image")


def learning_rate_schedule(
    learning_rate: float, lr_schedule: str, final_learning_rate: float = 0.0, decay_fraction: float = 1.0
) -> float | Schedule:
    """The ``learning_rate`` argument of a model: the rate, kept constant or decayed as ``lr_schedule`` says. SB3 reads
    a schedule at the progress of one ``learn()`` call, so the linear decay reaches ``final_learning_rate`` at the end
    of the call.

    :param learning_rate: the initial (and, with ``"constant"``, the only) learning rate
    :param lr_schedule: one of :data:`LR_SCHEDULES`
    :param final_learning_rate: the rate at the end of the ``"linear"`` decay, in ``[0, learning_rate]``; a constant
        schedule takes only the default 0
    :param decay_fraction: the last fraction of the progress over which the ``"linear"`` decay runs, in ``(0, 1]``
        (the rate is ``learning_rate`` before it); a constant schedule takes only the default 1
    :return: the rate, or a :class:`LateLinearSchedule` from it to ``final_learning_rate``
    """
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule={lr_schedule!r} is not a schedule; choose one of {list(LR_SCHEDULES)}.")
    shape = (("final_learning_rate", final_learning_rate, 0.0), ("lr_decay_fraction", decay_fraction, 1.0))
    for name, value, default in shape:
        if lr_schedule == "constant" and value != default:
            raise ValueError(
                f"{name}={value!r} shapes a linear decay, and lr_schedule='constant' keeps the rate; set "
                f"lr_schedule='linear' or leave {name} at {default}."
            )
    if not 0.0 <= final_learning_rate <= learning_rate:
        raise ValueError(
            f"final_learning_rate={final_learning_rate!r} must be in [0, learning_rate={learning_rate!r}]: the linear "
            "schedule decays the rate."
        )
    if not 0.0 < decay_fraction <= 1.0:
        raise ValueError(
            f"lr_decay_fraction={decay_fraction!r} must be in (0, 1]: the last fraction of the run that the decay "
            "spans."
        )
    if lr_schedule == "constant":
        return learning_rate
    return LateLinearSchedule(learning_rate, final_learning_rate, decay_fraction)


@dataclass(frozen=True)
class LateLinearSchedule:
    """A learning rate constant at ``start`` until the last ``decay_fraction`` of the progress, then decayed linearly to
    ``end`` at its end (``decay_fraction=1``: SB3's ``LinearSchedule(start, end, 1.0)``, rl-zoo's ``lin_<lr>``).

    :param start: the rate until the decay
    :param end: the rate at the end of the progress
    :param decay_fraction: the last fraction of the progress over which the rate decays, in ``(0, 1]``
    """

    start: float
    end: float
    decay_fraction: float

    def __call__(self, progress_remaining: float) -> float:
        """The rate at ``progress_remaining`` (SB3's: 1 at the start of ``learn()``, 0 at its end)."""
        return self.end + (self.start - self.end) * min(1.0, progress_remaining / self.decay_fraction)


def _validate(name: str, value: Any, hint: Any, metadata: typing.Mapping[str, Any]) -> Any:
    """Check one option's type, range and choices; return it normalised (int -> float, "none" -> None).

    :param name: the option name, for the error message
    :param value: the value to check
    :param hint: the field's type
    :param metadata: the field's metadata (``check`` and ``choices``)
    :return: the normalised value
    """
    optional = hint in (float | None, int | None, str | None)
    if optional and (value is None or (isinstance(value, str) and value.lower() == "none")):
        return None
    base = {float | None: float, int | None: int, str | None: str}.get(hint, hint)
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if base is float and is_number:
        value = float(value)
    elif base is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, base) or (base is int and isinstance(value, bool)):
        hint_text = " (YAML reads 3e-4 as a string: write 3.0e-4)" if base is float and isinstance(value, str) else ""
        kind = base.__name__ + (" or none" if optional else "")
        raise ValueError(f"{name}={value!r} must be of type {kind}{hint_text}.")
    if base is float and not math.isfinite(value):
        raise ValueError(f"{name}={value!r} must be finite.")
    if metadata["choices"] is not None and value not in metadata["choices"]:
        raise ValueError(f"{name}={value!r} is not allowed; choose one of {list(metadata['choices'])}.")
    if metadata["check"] is not None and not metadata["check"][0](value):
        raise ValueError(f"{name}={value!r} must be {metadata['check'][1]}.")
    return value


def option_names() -> list[str]:
    """The valid option names (config-file keys) in declaration order."""
    return [f.name for f in dataclasses.fields(TrainConfig)]


def check_keys(values: dict[str, Any], source: str) -> None:
    """Reject option names that :class:`TrainConfig` does not have, listing the valid ones.

    :param values: option name -> value
    :param source: where the values come from, for the error message
    """
    unknown = sorted(set(values) - set(option_names()))
    if unknown:
        raise ValueError(f"Unknown option(s) {unknown} in {source}; valid options are: {', '.join(option_names())}.")


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read options from a YAML (``.yaml``/``.yml``) or TOML (``.toml``) file of ``option_name: value`` pairs.

    TOML has no null: write ``"none"`` for a grad-norm limit that should only be measured.

    :param path: the file
    :return: option name -> value (unvalidated values, known names)
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Config file {str(path)!r} does not exist (expected a .yaml, .yml or .toml file).")
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as error:
            raise MissingExtraError("YAML config files need PyYAML: pip install pyyaml (or the package's yaml extra), or write a .toml file.") from error
        values = yaml.safe_load(path.read_text())
    elif suffix == ".toml":
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover (Python 3.10)
            import tomli as tomllib
        values = tomllib.loads(path.read_text())
    else:
        raise ValueError(f"Config file {str(path)!r} has suffix {suffix!r}; use .yaml, .yml or .toml.")
    if not isinstance(values, dict):
        raise ValueError(f"Config file {str(path)!r} must hold a mapping of option names to values, got {type(values).__name__}.")
    check_keys(values, str(path))
    return values


class AlgorithmMismatchError(ValueError):
    """A run was given an ``--algo`` other than the one it was trained with."""


def run_algo(options: dict[str, Any], given: str | None, run: str | Path) -> str:
    """The algorithm a run trained: the ``algo`` of its options (``td3`` for runs written before ``algo`` existed),
    checked against the one the user gave.

    :param options: the run's options (the ``config`` of its ``config.json``)
    :param given: the algorithm the user gave (``None``: none)
    :param run: the run directory or model, for the error message
    :return: the run's algorithm
    """
    trained = options.get("algo", "td3")
    if given is not None and given != trained:
        raise AlgorithmMismatchError(
            f"{str(run)!r} was trained with algo {trained!r} (its run's config.json), not {given!r}: leave --algo out."
        )
    return trained


def resolve_config(*layers: dict[str, Any]) -> TrainConfig:
    """Merge option layers over the defaults, later layers winning (e.g. config file, then command-line flags).

    :param layers: option name -> value dicts
    :return: the validated configuration
    """
    values: dict[str, Any] = {}
    for layer in layers:
        values.update(layer)
    check_keys(values, "the options")
    return TrainConfig(**values)
