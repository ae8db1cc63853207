"""Time per gradient step of TD3CnnClip (or ``--algo``'s class) against its base algorithm (CnnPolicy, 4x84x84 uint8).

The variants start from the same weights (same seed, checked), share one pre-filled replay buffer and get the same
batches and noise (the random generators are re-seeded before each timed call). Their ``train()`` calls alternate
(the order rotates every repeat), so load from other processes hits all of them alike; each variant's time is
divided by the base algorithm's time from the same repeat and the median of those ratios is reported.

``--algo`` (``td3``, ``sac``, ``ddpg``, ``tqc``) picks the pair: ``TD3CnnClip`` and SB3's ``TD3`` (the default),
``SACCnnClip`` and SB3's ``SAC``, ``DDPGCnnClip`` and SB3's ``DDPG``, ``TQCCnnClip`` and sb3-contrib's ``TQC``; the
results of another algorithm than TD3 go to ``clip_overhead_<algo>.{json,md}``.

Variants: ``base`` (the base algorithm: ``stable_baselines3.TD3`` for TD3), ``clip`` (the package's class with its default limits, which may not fire
on these random batches: the clipped fraction is reported), ``clip_every_step`` (every limit 1e-8, so every group is
clipped and its norm measured again on every update: the worst case) and ``measure_only`` (the package's class with every
limit ``None``: norms and statistics measured, nothing clipped), ``compiled`` (default limits,
``compile_update=True``: the fast path) and ``clip_default_layout`` (default limits, ``channels_last=False``: the
convolution weights in torch's default layout, to show what the ``channels_last`` default gains on a CPU),
``clip_channels_last`` (default limits, ``channels_last=True``, which is off by default on CUDA), ``bf16``
(default limits, ``bf16_encoders=True``: the CNNs in bfloat16 autocast), ``compiled_bf16`` (both options) and
``compiled_device_buffer`` (the fast path sampling from a ``DeviceReplayBuffer``: the same transitions, copied to
the device, with the batches drawn there by ``torch.randint``, so its batches are not the others'). Every
variant of the package's class runs with ``pre_tanh_penalty=0`` (TD3CnnClip's default is 0.01), so that the ratios measure clipping and measuring alone. ``--variants`` picks some of them. The
warm-up calls (``compiled`` compiles there; its compiled code is reset before each batch size, so each size is
compiled once, for that static shape, as in training) are timed too and reported as the first-call cost. The
compiled variants share the compiled code of the package's loss functions: only the first of them in a batch size
pays the compilation, and the others' first-call cost is that of a warm cache.

``--device`` (``cpu``, ``cuda``, ``auto``) puts every model on that device; on CUDA each timed call ends with
``torch.cuda.synchronize()``. The load average (``os.getloadavg``) before and after each batch size is recorded:
on a shared machine the interleaved ratios are the figures to quote, not the absolute times.

With ``--profile-steps N`` the ``clip`` and ``base`` variants are also run under cProfile for N steps at the first
batch size; the time spent in this package's functions, and the top functions by own time, go into the results.

Run: ``python benchmarks/clip_overhead.py --batch-sizes 64 256 --threads 1 --device cpu``
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from common import add_common_args, describe_line, markdown_table, median_ratio, run_description, set_threads
from common import write_results
from sb3_contrib import TQC
from stable_baselines3 import DDPG, SAC, TD3
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.vec_env import DummyVecEnv

from sb3_td3_cnnclip import DDPGCnnClip, SACCnnClip, TD3CnnClip, TQCCnnClip
from sb3_td3_cnnclip.cnnclip import CnnClipMixin
from sb3_td3_cnnclip.device_buffer import STORAGE, DeviceReplayBuffer
from sb3_td3_cnnclip.envs.toy import ToyImageEnv

#: the base algorithm and the package's class of each ``--algo``
ALGOS: dict[str, tuple[type[OffPolicyAlgorithm], type[OffPolicyAlgorithm]]] = {
    "td3": (TD3, TD3CnnClip), "sac": (SAC, SACCnnClip), "ddpg": (DDPG, DDPGCnnClip), "tqc": (TQC, TQCCnnClip),
}
#: the keywords of each variant of the package's class (``base`` is the base algorithm)
VARIANTS: dict[str, dict[str, Any] | None] = {
    "base": None,
    "clip": {},
    "clip_every_step": {
        "actor_cnn_max_grad_norm": 1e-8,
        "actor_mlp_max_grad_norm": 1e-8,
        "critic_cnn_max_grad_norm": 1e-8,
        "critic_mlp_max_grad_norm": 1e-8,
    },
    "measure_only": {
        "actor_cnn_max_grad_norm": None,
        "actor_mlp_max_grad_norm": None,
        "critic_cnn_max_grad_norm": None,
        "critic_mlp_max_grad_norm": None,
    },
    "compiled": {"compile_update": True},
    "clip_default_layout": {"channels_last": False},
    "clip_channels_last": {"channels_last": True},
    "bf16": {"bf16_encoders": True},
    "compiled_bf16": {"bf16_encoders": True, "compile_update": True},
    "compiled_device_buffer": {"compile_update": True, "replay_buffer_class": DeviceReplayBuffer},
}


def make_models(algo: str, seed: int, buffer_size: int, device: str, names: list[str]) -> dict[str, OffPolicyAlgorithm]:
    """Build the variants on a 4x84x84 toy image env from the same seed and check their weights are identical.

    :param algo: the key of :data:`ALGOS`
    :param seed: the models' seed
    :param buffer_size: replay buffer capacity
    :param device: the models' device
    :param names: the variants to build (``"base"`` always comes first, as the reference)
    :return: the models by variant name
    """
    base, package_class = ALGOS[algo]
    models: dict[str, OffPolicyAlgorithm] = {}
    for name in ["base", *(n for n in names if n != "base")]:
        limits = VARIANTS[name]
        env = DummyVecEnv([lambda: ToyImageEnv(size=84, channels=4)])
        cls, kwargs = (base, {}) if limits is None else (package_class, {"pre_tanh_penalty": 0.0, **limits})
        model = cls("CnnPolicy", env, buffer_size=buffer_size, seed=seed, device=device, **kwargs)
        model.set_logger(Logger(folder=None, output_formats=[]))
        models[name] = model
    reference = models["base"].policy.state_dict()
    for name, model in models.items():
        state = model.policy.state_dict()
        if state.keys() != reference.keys() or not all(th.equal(state[k], reference[k]) for k in reference):
            raise RuntimeError(f"Variant {name!r} did not start from the same weights as 'base' with seed={seed}.")
    return models


def fill_buffer(buffer: ReplayBuffer, seed: int) -> None:
    """Fill a replay buffer completely with random frames, actions and rewards (as ToyImageEnv would produce).

    :param buffer: the buffer to fill
    :param seed: seed of the generator
    """
    rng = np.random.default_rng(seed)
    buffer.observations[:] = rng.integers(0, 256, buffer.observations.shape, dtype=np.uint8)
    buffer.next_observations[:] = rng.integers(0, 256, buffer.next_observations.shape, dtype=np.uint8)
    buffer.actions[:] = rng.uniform(-1.0, 1.0, buffer.actions.shape)
    buffer.rewards[:] = rng.normal(0.0, 1.0, buffer.rewards.shape)
    buffer.pos, buffer.full = 0, True


def share_buffer(models: dict[str, OffPolicyAlgorithm], buffer: ReplayBuffer) -> None:
    """Give every model the filled ``buffer``; a model with a :class:`DeviceReplayBuffer` gets a copy of its content.

    :param models: the models by variant name
    :param buffer: the filled host buffer
    """
    for model in models.values():
        if isinstance(model.replay_buffer, DeviceReplayBuffer):
            for name in STORAGE:
                getattr(model.replay_buffer, name).copy_(th.as_tensor(getattr(buffer, name)))
            model.replay_buffer.pos, model.replay_buffer.full = buffer.pos, buffer.full
        else:
            model.replay_buffer = buffer


def timed_train(model: OffPolicyAlgorithm, gradient_steps: int, batch_size: int, seed: int) -> tuple[float, float]:
    """Run ``model.train`` once with re-seeded generators and time it.

    :param model: the model
    :param gradient_steps: gradient steps of the call
    :param batch_size: minibatch size
    :param seed: seed for numpy (replay sampling) and torch (target policy noise)
    :return: wall seconds and process CPU seconds per gradient step
    """
    np.random.seed(seed)
    th.manual_seed(seed)
    wall, cpu = time.perf_counter(), time.process_time()
    model.train(gradient_steps=gradient_steps, batch_size=batch_size)
    if model.device.type == "cuda":
        th.cuda.synchronize(model.device)
    return (time.perf_counter() - wall) / gradient_steps, (time.process_time() - cpu) / gradient_steps


def measure(models: dict[str, OffPolicyAlgorithm], batch_size: int, gradient_steps: int, repeats: int, warmup: int) -> dict[str, Any]:
    """Time the variants' ``train()`` calls interleaved, rotating the order every repeat.

    :param models: the models by variant name
    :param batch_size: minibatch size
    :param gradient_steps: gradient steps per timed call
    :param repeats: timed calls per variant
    :param warmup: untimed calls per variant before timing
    :return: per variant the per-step times (ms) and the median ratios against ``base``
    """
    names = list(models)
    load_before = os.getloadavg()
    th._dynamo.reset()  # compile the fast path for this batch size only
    warmup_s = dict.fromkeys(names, 0.0)
    for repeat in range(warmup):
        for name in names:
            steps = max(gradient_steps, getattr(models[name], "policy_delay", 1))  # an actor update too: compiles both losses
            wall_s, _ = timed_train(models[name], steps, batch_size, seed=-repeat % 2**31)
            warmup_s[name] += wall_s * steps
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            step_wall, step_cpu = timed_train(models[name], gradient_steps, batch_size, seed=repeat)
            wall[name].append(step_wall * 1e3)
            cpu[name].append(step_cpu * 1e3)
        times = ", ".join(f"{n} {wall[n][-1]:.1f} ms" for n in names)
        print(f"batch {batch_size} repeat {repeat + 1}/{repeats}: {times}")
    result: dict[str, Any] = {
        "batch_size": batch_size,
        "gradient_steps_per_call": gradient_steps,
        "load_average_1_5_15_min": {"before": load_before, "after": os.getloadavg()},
        "variants": {},
    }
    for name in names:
        result["variants"][name] = {
            "wall_ms_per_step": wall[name],
            "cpu_ms_per_step": cpu[name],
            "median_wall_ms": statistics.median(wall[name]),
            "median_cpu_ms": statistics.median(cpu[name]),
            "median_wall_ratio_vs_base": median_ratio(wall[name], wall["base"]),
            "median_cpu_ratio_vs_base": median_ratio(cpu[name], cpu["base"]),
            "wall_ratio_vs_base_quartiles": quartiles([a / b for a, b in zip(wall[name], wall["base"])]),
            "cpu_ratio_vs_base_quartiles": quartiles([a / b for a, b in zip(cpu[name], cpu["base"])]),
            "median_cpu_overhead_ms_vs_base": statistics.median(a - b for a, b in zip(cpu[name], cpu["base"])),
            "warmup_wall_s": warmup_s[name],
        }
        if isinstance(models[name], CnnClipMixin):
            timed = list(models[name].update_stats)[-repeats * gradient_steps :]
            result["variants"][name]["clip_fraction"] = clip_fractions(timed)
    return result


def clip_fractions(update_stats: list[dict[str, float]]) -> dict[str, float]:
    """Fraction of the updates on which each group's gradient was clipped (its norm after below its norm before).

    :param update_stats: ``update_stats`` entries of the package's class
    :return: the fraction per group, over the updates that measured that group
    """
    fractions = {}
    for group in ("critic_cnn", "critic_mlp", "actor_cnn", "actor_mlp"):
        pairs = [(s[f"{group}_before"], s[f"{group}_after"]) for s in update_stats if f"{group}_after" in s]
        if pairs:
            fractions[group] = sum(after < before for before, after in pairs) / len(pairs)
    return fractions


def profile(model: OffPolicyAlgorithm, gradient_steps: int, batch_size: int, top: int) -> dict[str, Any]:
    """Run ``train`` under cProfile and summarise where the time goes.

    :param model: the model
    :param gradient_steps: gradient steps to profile
    :param batch_size: minibatch size
    :param top: number of functions to list by own time
    :return: total ms per step; this package's functions by cumulative ms per step; what the package's
        ``clip_and_step`` calls, by cumulative ms per step (``optimizer.step`` among them, which the base algorithm pays too);
        and the top functions by own time
    """
    profiler = cProfile.Profile()
    np.random.seed(0)
    th.manual_seed(0)
    profiler.enable()
    model.train(gradient_steps=gradient_steps, batch_size=batch_size)
    profiler.disable()
    stats = pstats.Stats(profiler)
    entries = stats.stats  # type: ignore[attr-defined]

    def name(key: tuple[str, int, str]) -> str:
        return f"{Path(key[0]).name}:{key[1]}({key[2]})"

    def entry(key: tuple[str, int, str], ncalls: int, own: float, cumulative: float) -> dict[str, Any]:
        return {
            "function": name(key),
            "calls_per_step": ncalls / gradient_steps,
            "own_ms_per_step": own * 1e3 / gradient_steps,
            "cumulative_ms_per_step": cumulative * 1e3 / gradient_steps,
        }

    package = [entry(k, v[1], v[2], v[3]) for k, v in entries.items() if "sb3_td3_cnnclip" in k[0]]
    clip_and_step = [k for k in entries if k[0].endswith("grad_clip.py") and k[2] == "clip_and_step"]
    callees = [
        entry(callee, edge[1], edge[2], edge[3])
        for callee, value in entries.items()
        for caller, edge in value[4].items()
        if caller in clip_and_step
    ]
    by_own = sorted(entries.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
    return {
        "total_ms_per_step": stats.total_tt * 1e3 / gradient_steps,  # type: ignore[attr-defined]
        "package_functions": sorted(package, key=lambda e: e["cumulative_ms_per_step"], reverse=True),
        "clip_and_step_callees": sorted(callees, key=lambda e: e["cumulative_ms_per_step"], reverse=True),
        "top_by_own_time": [entry(k, v[1], v[2], v[3]) for k, v in by_own],
    }


def quartiles(values: list[float]) -> tuple[float, float]:
    """First and third quartiles.

    :param values: at least two values
    """
    q1, _, q3 = statistics.quantiles(values, n=4)
    return q1, q3


def to_markdown(results: dict[str, Any]) -> str:
    """Summarise the results as Markdown tables (medians and quartiles of the paired ratios, profile excerpts).

    :param results: the results of :func:`main`
    :return: the Markdown text
    """
    rows = []
    for batch in results["batches"]:
        for name, v in batch["variants"].items():
            wall_q, cpu_q = v["wall_ratio_vs_base_quartiles"], v["cpu_ratio_vs_base_quartiles"]
            rows.append([
                batch["batch_size"], name, v["median_wall_ms"], v["median_wall_ratio_vs_base"],
                f"{wall_q[0]:.3f}-{wall_q[1]:.3f}", v["median_cpu_ratio_vs_base"], f"{cpu_q[0]:.3f}-{cpu_q[1]:.3f}",
                v["median_cpu_overhead_ms_vs_base"], v["warmup_wall_s"],
                " / ".join(f"{f:.0%}" for f in v["clip_fraction"].values()) if "clip_fraction" in v else "",
            ])  # fmt: skip
    headers = [
        "batch", "variant", "median ms/step (wall)", "ratio vs base (wall)", "wall IQR", "ratio vs base (CPU)",
        "CPU IQR", "CPU overhead ms/step", "warm-up s (first call)", "clipped: critic cnn / mlp, actor cnn / mlp",
    ]  # fmt: skip
    flags = results["run"]["flags"]
    base, package_class = ALGOS[flags.get("algo", "td3")]
    text = [
        f"# Clipping overhead: {package_class.__name__} vs {base.__name__} (CnnPolicy, 4x84x84 uint8)",
        "",
        describe_line(results["run"]),
        f"Device: {results['run']['device']}; load average (1 min) before and after each batch size: " + ", ".join(
            f"batch {b['batch_size']}: {b['load_average_1_5_15_min']['before'][0]:.1f} to "
            f"{b['load_average_1_5_15_min']['after'][0]:.1f}" for b in results["batches"]) + ".",
        f"{flags['repeats']} interleaved repeats of {flags['gradient_steps']} gradient steps per variant; ratios "
        "are medians (and interquartile ranges) of the per-repeat ratios to base; CPU = process time (one thread).",
        "",
        markdown_table(headers, rows),
    ]
    for name, prof in results.get("profile", {}).items():
        batch = flags["batch_sizes"][0]
        total = prof["total_ms_per_step"]
        text += ["", f"cProfile of `{name}` at batch {batch}: {total:.1f} ms/step under the profiler."]
        if prof["clip_and_step_callees"]:
            text += ["What `grad_clip.clip_and_step` calls (the base algorithm pays optimizer.step too), cumulative ms/step:",
                     ""]  # fmt: skip
            text.append(markdown_table(
                ["function", "calls/step", "cumulative ms/step"],
                [[e["function"], e["calls_per_step"], e["cumulative_ms_per_step"]]
                 for e in prof["clip_and_step_callees"]],
            ))  # fmt: skip
    return "\n".join(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256], help="minibatch sizes to time")
    parser.add_argument("--device", default="cpu", help='device of every model: "cpu", "cuda" or "auto"')
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                        help="variants to time (base, the reference, is always timed)")
    parser.add_argument("--algo", choices=list(ALGOS), default="td3", help="the algorithm whose pair is timed")
    parser.add_argument("--gradient-steps", type=int, default=2, help="gradient steps per timed train() call")
    parser.add_argument("--repeats", type=int, default=40, help="timed calls per variant and batch size")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per variant before timing")
    parser.add_argument("--buffer-size", type=int, default=2000, help="transitions in the shared replay buffer")
    parser.add_argument("--profile-steps", type=int, default=0, help="cProfile this many steps (0: no profile)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the models and of the buffer's content")
    add_common_args(parser, threads=1)
    args = parser.parse_args()
    set_threads(args.threads)

    models = make_models(args.algo, args.seed, args.buffer_size, args.device, args.variants)
    buffer = models["base"].replay_buffer
    assert isinstance(buffer, ReplayBuffer)
    fill_buffer(buffer, args.seed)
    share_buffer(models, buffer)
    device = str(next(iter(models.values())).device)
    name = th.cuda.get_device_name() if device.startswith("cuda") else "CPU"
    results: dict[str, Any] = {"run": {**run_description(args), "device": f"{device} ({name})"}, "batches": []}
    for batch_size in args.batch_sizes:
        results["batches"].append(measure(models, batch_size, args.gradient_steps, args.repeats, args.warmup))
    if args.profile_steps > 0:
        results["profile"] = {
            name: profile(models[name], args.profile_steps, args.batch_sizes[0], top=25) for name in models
        }
    write_results(args.output_dir, "clip_overhead" + ("" if args.algo == "td3" else f"_{args.algo}"), results, to_markdown(results))


if __name__ == "__main__":
    main()
