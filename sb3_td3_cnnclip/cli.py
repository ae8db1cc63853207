"""The command line: ``sb3-td3-cnnclip train | evaluate | report | sweep`` (also ``python -m sb3_td3_cnnclip``).

This module parses the arguments and dispatches; the session it runs (the envs, the model, the run directory,
loading and driving a saved model) is :mod:`sb3_td3_cnnclip.session`. ``train`` writes one run directory
``<log_dir>/<run_name>_<n>/`` (see :func:`~sb3_td3_cnnclip.session.run_train`); ``report`` checks such a directory;
``evaluate`` drives a saved model.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

import sb3_td3_cnnclip
from sb3_td3_cnnclip.config_file import ALGORITHMS, AlgorithmMismatchError, TrainConfig, load_config_file, option_names, resolve_config, run_algo
from sb3_td3_cnnclip.envs import MissingExtraError, SimulatorUnavailableError
from sb3_td3_cnnclip.report import RunDirError, check_run, write_plots
from sb3_td3_cnnclip.session import ModelFileError, model_file, run_config, run_evaluate, run_train, saved_algorithms
from sb3_td3_cnnclip.vec_env import EnvWorkerError, parse_servers

#: env options ``evaluate`` takes from the model's run (config.json beside the model), unless flags override them
INHERITED_OPTIONS = ("scenario", "simulator", "host", "port", "tm_port", "action_repeat", "time_to_collision_threshold")
#: options of ``evaluate`` shared with ``train``
EVALUATE_OPTIONS = (*INHERITED_OPTIONS, "seed", "device")
#: ``evaluate``'s own help of a shared option
EVALUATE_HELP = {"seed": "seed of the first episode's reset; episode i gets seed + i (none: unseeded)"}
#: help of ``--algo`` of ``evaluate`` and ``report``, which read a run's algorithm from its config.json
EVALUATE_ALGO_HELP = (
    "the model's algorithm (default: the run's config.json; for a model without one, the algorithm its file holds, "
    "td3 for a td3 or ddpg file); a run trained with another one is an error"
)
REPORT_ALGO_HELP = "the run's algorithm, whose parameter groups are checked (default: the run's config.json, else td3); a run trained with another one is an error"
DESCRIPTION = (
    "Train TD3CnnClip, SACCnnClip, DDPGCnnClip or TQCCnnClip (--algo) on the CARLA driving scenarios, check a run, "
    "drive a saved model, tune with Optuna (also: python -m sb3_td3_cnnclip)."
)
TRAIN_DESCRIPTION = (
    "Train TD3CnnClip (--algo td3), SACCnnClip (sac), DDPGCnnClip (ddpg) or TQCCnnClip (tqc) on a driving scenario. "
    "Options: defaults, overridden by --config FILE, overridden by flags. Everything lands in "
    "<log-dir>/<run-name>_<n>/; Ctrl-C stops training and saves the model there."
)
EVALUATE_DESCRIPTION = (
    "Drive a saved model deterministically and print driving metrics per episode. The environment options default "
    "to the run's config.json, overridden by flags."
)
SWEEP_DESCRIPTION = (
    "Tune the --algo class (default TD3CnnClip) with Optuna: trials of --max-timesteps steps, each evaluated "
    "--n-evaluations times (pruned when below the median), in a study that every worker started with the same --study "
    "and --storage shares. The best configuration is written as a YAML file for train --config."
)

#: errors printed as one line (no traceback) with exit status 2: the message says what to do
USER_ERRORS = (RunDirError, SimulatorUnavailableError, MissingExtraError, FileNotFoundError, ModelFileError, EnvWorkerError,
               AlgorithmMismatchError)  # fmt: skip


def float_or_none(text: str) -> float | None:
    """Parse a number, or ``none`` (e.g. a grad-norm limit that only measures)."""
    return None if text.lower() == "none" else float(text)


def int_or_none(text: str) -> int | None:
    """Parse an integer, or ``none``."""
    return None if text.lower() == "none" else int(text)


#: type of a TrainConfig field -> (argparse type, metavar)
_PARSERS: dict[Any, tuple[Callable[[str], Any], str]] = {
    int: (int, "N"), float: (float, "X"), str: (str, "TEXT"), float | None: (float_or_none, "X|none"), int | None: (int_or_none, "N|none"),
    str | None: (str, "TEXT|none"),
}  # fmt: skip


def add_options(
    parser: argparse.ArgumentParser, names: Sequence[str], inherited: Sequence[str] = (), helps: dict[str, str] | None = None
) -> None:
    """Add a flag for each named :class:`TrainConfig` field. Flags default to "absent" so that only the ones the
    user gives override the lower layers (defaults, config file).

    :param parser: the (sub)parser
    :param names: the fields to offer
    :param inherited: the fields whose default comes from a run's ``config.json`` (said in their help)
    :param helps: help texts that replace the fields' own (name -> text)
    """
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name not in names:
            continue
        flags = [f"--{f.name.replace('_', '-')}", *f.metadata["flags"]]
        shown = "none" if f.default is None else f.default
        default = f"the run's config.json, else {shown}" if f.name in inherited else shown
        help_text = f"{(helps or {}).get(f.name, f.metadata['help'])} (default: {default})"
        if hints[f.name] is bool:
            parser.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        else:
            parse, metavar = _PARSERS[hints[f.name]]
            parser.add_argument(
                *flags, dest=f.name, type=parse, choices=f.metadata["choices"], default=argparse.SUPPRESS,
                metavar=None if f.metadata["choices"] else metavar, help=help_text,
            )  # fmt: skip



def print_evaluation(results: list[dict[str, Any]]) -> None:
    """Print one line per episode, the means and the count of each termination reason.

    :param results: as returned by :func:`~sb3_td3_cnnclip.session.run_evaluate`
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
    path = model_file(args.model)
    run = run_config(path)
    # the run's algorithm (checked against --algo); for a model saved elsewhere --algo, else the one its file holds
    algo = run_algo(run, args.algo, path) if run else args.algo or saved_algorithms(path)[0]
    saved = {"algo": algo, "action_repeat": 1}  # runs from before action_repeat existed decided every tick
    saved.update({name: value for name, value in run.items() if name in INHERITED_OPTIONS})
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
        raise MissingExtraError(f"Sweeps need Optuna and PyYAML ({error}): pip install optuna pyyaml (or the package's sweep extra).") from error
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
        loss_bound=args.actor_loss_bound, algo=args.algo,
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
    parser = argparse.ArgumentParser(prog="sb3-td3-cnnclip", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"%(prog)s {sb3_td3_cnnclip.__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train TD3CnnClip, SACCnnClip, DDPGCnnClip or TQCCnnClip on a driving scenario", description=TRAIN_DESCRIPTION)
    train.add_argument("--config", metavar="FILE", help="YAML (needs PyYAML) or TOML file of options (keys: the flag names with underscores); flags override it")
    add_options(train, option_names())
    train.set_defaults(func=_train, parser=train)

    evaluate = commands.add_parser("evaluate", help="drive a saved model and print driving metrics", description=EVALUATE_DESCRIPTION)
    evaluate.add_argument("model", help="a run directory or its model.zip")
    evaluate.add_argument("--episodes", type=_positive_int, default=3, help="episodes to drive (default: 3)")
    evaluate.add_argument("--video", metavar="FILE", help="save the camera view of every episode as an animated GIF")
    evaluate.add_argument("--algo", choices=ALGORITHMS, help=EVALUATE_ALGO_HELP)
    add_options(evaluate, EVALUATE_OPTIONS, inherited=INHERITED_OPTIONS, helps=EVALUATE_HELP)
    evaluate.set_defaults(func=_evaluate, parser=evaluate)

    sweep = commands.add_parser("sweep", help="tune the --algo class with Optuna; run one such worker per process or machine", description=SWEEP_DESCRIPTION)
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
    report.add_argument("--algo", choices=ALGORITHMS, help=REPORT_ALGO_HELP)
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
