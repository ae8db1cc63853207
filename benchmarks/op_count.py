"""Operations per gradient step of SB3's TD3 and of TD3CnnClip's default path, counted on the CPU.

On a GPU this network's update is bound by kernel launches (``gpu_update_speed.sh`` counts them on a card). Without
one, the aten operations that ``train()`` dispatches are the proxy: every operation is counted by a
``TorchDispatchMode`` except views and host reads, which launch no kernel. The package's group norm is counted in
its CUDA form (one ``torch._foreach_norm`` per group; on the CPU it sums float32 chunks instead), and
``TD3CnnClip`` runs with ``channels_last=False``, its CUDA default. Adam is not fused on the CPU, so both models pay
its per-parameter operations here, unlike on a GPU: compare the difference between the two, not the totals.

Run: ``python benchmarks/op_count.py`` (under a minute)
"""

from __future__ import annotations

import argparse
import collections
from typing import Any

import torch as th
from common import add_common_args, describe_line, markdown_table, run_description, set_threads, write_results
from stable_baselines3 import TD3
from stable_baselines3.common.logger import Logger
from torch.utils._python_dispatch import TorchDispatchMode

from sb3_td3_cnnclip import TD3CnnClip, grad_clip
from sb3_td3_cnnclip.envs.toy import ToyImageEnv

#: operations that launch no kernel on a device: views, and reads of a value by the host
NO_KERNEL = {"view", "_unsafe_view", "slice", "select", "detach", "t", "transpose", "permute", "reshape", "expand",
             "alias", "unsqueeze", "squeeze", "as_strided", "split", "unbind", "lift_fresh",
             "_local_scalar_dense"}  # fmt: skip


class OperationCounter(TorchDispatchMode):
    """Counts the aten operations dispatched inside it, by name, leaving out :data:`NO_KERNEL`."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        name = func.overloadpacket.__name__
        if name not in NO_KERNEL:
            self.counts[name] += 1
        return func(*args, **(kwargs or {}))


def count(model: TD3 | TD3CnnClip, gradient_steps: int, batch_size: int) -> collections.Counter[str]:
    """The operations of one ``train()`` call after a warm-up call.

    :param model: the model, its buffer filled
    :param gradient_steps: gradient steps of the counted call
    :param batch_size: minibatch size
    :return: the counts by operation name, over the whole call
    """
    model.train(gradient_steps=2, batch_size=batch_size)
    with OperationCounter() as counter:
        model.train(gradient_steps=gradient_steps, batch_size=batch_size)
    return counter.counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32, help="minibatch size")
    parser.add_argument("--gradient-steps", type=int, default=20, help="gradient steps of the counted call")
    parser.add_argument("--seed", type=int, default=0, help="seed of the models")
    add_common_args(parser, threads=1)
    args = parser.parse_args()
    set_threads(args.threads)
    grad_clip.group_norm = grad_clip.foreach_group_norm  # the CUDA form, whatever the device

    results: dict[str, Any] = {"run": run_description(args), "models": {}}
    for name, cls, kwargs in (("td3", TD3, {}), ("clip", TD3CnnClip, {"channels_last": False})):
        model = cls("CnnPolicy", ToyImageEnv(size=84, channels=4), buffer_size=500, learning_starts=200,
                    seed=args.seed, device="cpu", **kwargs)  # fmt: skip
        model.set_logger(Logger(folder=None, output_formats=[]))
        model.learn(200)
        counts = count(model, args.gradient_steps, args.batch_size)
        results["models"][name] = {"per_step": sum(counts.values()) / args.gradient_steps,
                                   "by_operation": dict(counts.most_common())}  # fmt: skip
        print(f"{name}: {results['models'][name]['per_step']:.1f} operations per gradient step", flush=True)
    rows = [[name, f"{m['per_step']:.1f}"] for name, m in results["models"].items()]
    markdown = "\n".join([
        "# Operations per gradient step (CPU count, group norms in their CUDA form)", "", describe_line(results["run"]),
        f"Batch {args.batch_size}; one train() call of {args.gradient_steps} gradient steps after a warm-up call; "
        "views and host reads left out. TD3CnnClip with its defaults and channels_last=False.", "",
        markdown_table(["model", "operations per gradient step"], rows),
    ])  # fmt: skip
    write_results(args.output_dir, "op_count", results, markdown)


if __name__ == "__main__":
    main()
