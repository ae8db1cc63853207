"""Does flushing denormal floats to zero speed up the late gradient updates of a run on the CPU?

Late in a run, much of the actor's gradient is exactly zero on any batch (ReLU units, or input features, inactive
over the whole batch), so Adam's first moments of those entries decay by ``beta1`` per update into the denormal
range (magnitudes below ``torch.finfo(float32).tiny``), where x86 CPUs compute far slower.
``torch.set_flush_denormal(True)`` makes the CPU treat denormal inputs and results as zero.

For each ``--checkpoints`` folder of a ``learning_curve.py`` run (``model.zip`` with its optimizers' state,
``replay_buffer.ckpt`` and ``job.json``), this script counts the denormal entries of Adam's moments (actor and
critic), then times ``--updates`` gradient steps (``model.train``) with the flush off and on, alternating (the order
rotates every repeat), each from the checkpoint's weights and optimizer state (the model is loaded again before every
timed call) and the same batches (the random generators are re-seeded). The figure to quote is the median of the
paired ratios (flush on / off) of a repeat. It also reports how far the weights (actor, critic and their targets)
after those updates lie apart: the flush changes the results wherever a denormal would have reached them.

Run: ``python benchmarks/denormals.py --checkpoints <run folder> [<run folder> ...]``, a run folder being e.g.
``benchmarks/runs/learning_curve_cpu/recommended+nstep3+lindecay/scenario_0/seed_0``
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch as th
from common import add_common_args, describe_line, markdown_table, median_ratio, run_description, set_threads
from common import write_results
from learning_curve import load_buffer
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.utils import set_random_seed

from sb3_td3_cnnclip.session import ALGORITHM_CLASSES


def load_checkpoint(folder: Path) -> OffPolicyAlgorithm:
    """Load a learning-curve run's model (weights and optimizers' state) and its replay buffer.

    :param folder: the run's folder (``model.zip``, ``replay_buffer.ckpt``, ``job.json``)
    :return: the model, with a logger that writes nothing
    """
    missing = [name for name in ("model.zip", "replay_buffer.ckpt", "job.json") if not (folder / name).exists()]
    if missing:
        raise FileNotFoundError(
            f"{folder} lacks {', '.join(missing)}: pass the folder of a learning_curve.py run that saved a checkpoint "
            "(e.g. benchmarks/runs/learning_curve_cpu/<config>/scenario_0/seed_0)."
        )
    settings = json.loads((folder / "job.json").read_text())
    model = ALGORITHM_CLASSES[settings["kwargs"].get("algo", "td3")].load(folder / "model.zip", device="cpu")
    load_buffer(model, folder / "replay_buffer.ckpt")
    model.set_logger(Logger(folder=None, output_formats=[]))
    return model


def denormal_fraction(model: OffPolicyAlgorithm) -> float:
    """Fraction of the entries of every Adam moment (``exp_avg``, ``exp_avg_sq``) of the model's optimizers that are
    denormal floats (nonzero and smaller in magnitude than the dtype's smallest normal number).

    :param model: the model
    :return: the fraction, over all moment entries of the actor's and the critic's optimizers
    """
    denormal = total = 0
    for optimizer in (model.actor.optimizer, model.critic.optimizer):
        for state in optimizer.state.values():
            for key in ("exp_avg", "exp_avg_sq"):
                moment = state[key]
                denormal += int(((moment != 0) & (moment.abs() < th.finfo(moment.dtype).tiny)).sum())
                total += moment.numel()
    return denormal / total


def timed_updates(folder: Path, flush: bool, updates: int) -> tuple[float, th.Tensor]:
    """Load the checkpoint, then time ``updates`` gradient steps (at the run's batch size) with the flush on or off.

    :param folder: the run's folder
    :param flush: the ``torch.set_flush_denormal`` setting during the updates
    :param updates: gradient steps
    :return: the seconds the updates took and the policy's weights after them (actor, critic and their targets, one
        flat vector)
    """
    model = load_checkpoint(folder)
    set_random_seed(0)
    if not th.set_flush_denormal(flush):
        raise RuntimeError("torch.set_flush_denormal is not supported on this CPU (it needs SSE3).")
    try:
        start = time.perf_counter()
        model.train(gradient_steps=updates, batch_size=model.batch_size)
        seconds = time.perf_counter() - start
    finally:
        th.set_flush_denormal(False)
    return seconds, th.cat([parameter.detach().reshape(-1) for parameter in model.policy.parameters()])


def measure(folder: Path, updates: int, repeats: int) -> dict[str, Any]:
    """Denormal fraction, timings and weight difference of one checkpoint.

    :param folder: the run's folder
    :param updates: gradient steps per timed call
    :param repeats: timed calls per setting
    :return: the figures
    """
    model = load_checkpoint(folder)
    result: dict[str, Any] = {"folder": str(folder), "step": model.num_timesteps, "updates": updates,
                              "batch_size": model.batch_size, "denormal_fraction": denormal_fraction(model),
                              "learning_rate": model.lr_schedule(model._current_progress_remaining)}  # fmt: skip
    del model
    seconds: dict[bool, list[float]] = {False: [], True: []}
    weights: dict[bool, th.Tensor] = {}
    for repeat in range(repeats):
        for flush in (False, True) if repeat % 2 == 0 else (True, False):
            elapsed, weights[flush] = timed_updates(folder, flush, updates)
            seconds[flush].append(elapsed)
    result.update(
        seconds_off=seconds[False], seconds_on=seconds[True],
        ms_per_update_off=1000 * statistics.median(seconds[False]) / updates,
        ms_per_update_on=1000 * statistics.median(seconds[True]) / updates,
        ratio=median_ratio(seconds[True], seconds[False]),
        max_weight_difference=float((weights[True] - weights[False]).abs().max()),
    )  # fmt: skip
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", nargs="+", required=True, help="learning_curve.py run folders")
    parser.add_argument("--updates", type=int, default=30, help="gradient steps per timed call")
    parser.add_argument("--repeats", type=int, default=4, help="timed calls per setting")
    parser.add_argument("--name", default="denormals", help="name of the result files")
    add_common_args(parser)
    args = parser.parse_args()
    if args.updates < 1 or args.repeats < 1:
        raise ValueError(f"--updates={args.updates} and --repeats={args.repeats} must be at least 1.")
    set_threads(args.threads)
    checkpoints = [measure(Path(folder), args.updates, args.repeats) for folder in args.checkpoints]
    results = {"run": run_description(args), "checkpoints": checkpoints}
    rows = [
        [c["folder"].split("runs/")[-1], c["step"], f"{c['learning_rate']:.2g}",
         f"{100 * c['denormal_fraction']:.1f} %", c["ms_per_update_off"], c["ms_per_update_on"], f"{c['ratio']:.3f}",
         f"{c['max_weight_difference']:.2g}"]
        for c in checkpoints
    ]  # fmt: skip
    markdown = "\n\n".join([
        "# Flushing denormal floats to zero: gradient-update time on late checkpoints",
        describe_line(results["run"]),
        f"{args.updates} updates per timed call, {args.repeats} calls per setting, alternating; ratio: median of the "
        "paired (flush on / flush off) times. Denormal: share of Adam's moment entries (actor and critic) that are "
        "denormal at the checkpoint. Weight difference: largest absolute difference of the weights (actor, critic "
        "and their targets) after the updates from the checkpoint, flush on against off (0: bit-identical; at a "
        "learning rate of 0, as at the end of a linear decay, it is 0 whatever the flush does).",
        markdown_table(["checkpoint", "decisions", "learning rate", "denormal", "ms/update off", "ms/update on",
                        "on / off", "weight difference"], rows),
    ])  # fmt: skip
    write_results(args.output_dir, args.name, results, markdown)


if __name__ == "__main__":
    main()
