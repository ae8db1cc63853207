"""The update's exact savings: no critic-CNN backward in the actor loss, statistics read once per train() call."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch as th
from test_td3_cnnclip import poison_once, reference_norms

from sb3_td3_cnnclip import NonFiniteGradientError, TD3CnnClip
from sb3_td3_cnnclip.envs.toy import ToyImageEnv
from sb3_td3_cnnclip.grad_clip import group_norm
from sb3_td3_cnnclip.update_stats import UpdateStatsAccumulator

SMALL_CNN = {"features_extractor_kwargs": {"features_dim": 16}, "net_arch": [32, 32]}
FAST = {"buffer_size": 600, "learning_starts": 40, "batch_size": 16, "seed": 3}
CUDA = pytest.mark.skipif(not th.cuda.is_available(), reason="needs CUDA")
PACKAGE = str(Path(__file__).resolve().parent.parent / "sb3_td3_cnnclip")


def make_model(**kwargs) -> TD3CnnClip:
    return TD3CnnClip("CnnPolicy", ToyImageEnv(), policy_kwargs=SMALL_CNN, **{**FAST, **kwargs})


def test_actor_backward_leaves_no_gradient_on_the_critic_cnn():
    model = make_model(policy_delay=1)
    model.learn(50)
    phase = {"now": "critic"}
    reached: dict[str, list[str]] = {"critic_cnn": [], "critic_q1": []}
    model.critic.register_forward_pre_hook(lambda *_: phase.update(now="critic"))
    model.critic.optimizer.register_step_post_hook(lambda *_: phase.update(now="actor"))
    for name, module in (("critic_cnn", model.critic.features_extractor), ("critic_q1", model.critic.q_networks[0])):
        for param in module.parameters():
            param.register_post_accumulate_grad_hook(lambda _, name=name: reached[name].append(phase["now"]))
    model.train(gradient_steps=3, batch_size=16)
    assert reached["critic_cnn"].count("critic") > 0 and "actor" not in reached["critic_cnn"]
    assert reached["critic_q1"].count("actor") > 0  # the hooks do see the actor's backward


def test_statistics_are_read_once_per_train_call(monkeypatch):
    model = make_model(policy_delay=1)
    model.learn(50)
    calls = {"item": 0, "tolist": 0}

    def counting(method: str):
        original = getattr(th.Tensor, method)

        def wrapper(self, *args, **kwargs):
            if sys._getframe(1).f_code.co_filename.startswith(PACKAGE):
                calls[method] += 1
            return original(self, *args, **kwargs)

        return wrapper

    for method in calls:
        monkeypatch.setattr(th.Tensor, method, counting(method))
    model.train(gradient_steps=5, batch_size=16)
    assert calls == {"item": 0, "tolist": 1}
    last = model._n_updates
    assert [s["n_updates"] for s in list(model.update_stats)[-5:]] == list(range(last - 4, last + 1))


def test_accumulator_reads_what_item_would_in_the_order_written():
    stats = UpdateStatsAccumulator()
    values = [th.tensor(0.1, dtype=th.float32), th.tensor(1 / 3, dtype=th.float64), th.tensor(math.inf)]
    stats.add({"n_updates": 7, "a": values[0], "skipped": 1.0, "b": values[1]})
    stats.add({"n_updates": 8, "c": values[2]})
    read = stats.read()
    assert read == [{"n_updates": 7, "a": values[0].item(), "skipped": 1.0, "b": values[1].item()},
                    {"n_updates": 8, "c": math.inf}]  # fmt: skip
    assert [list(s) for s in read] == [["n_updates", "a", "skipped", "b"], ["n_updates", "c"]]
    stats.add({"n_updates": 9})
    assert stats.read() == [{"n_updates": 9}]
    assert stats.read() == []


@CUDA
def test_group_norm_on_cuda_matches_float64():
    gen = th.Generator().manual_seed(0)
    grads = [th.randn(n, generator=gen) * th.rand(n, generator=gen) ** 4 for n in (300_000, 1024, 1025, 1)]
    exact = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads))
    assert group_norm([g.cuda() for g in grads]).item() == pytest.approx(exact, rel=1e-7)


def parameters_vector(model: TD3CnnClip) -> th.Tensor:
    return th.cat([p.detach().reshape(-1) for p in model.policy.parameters()])


@pytest.mark.slow
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_compiled_update_matches_eager_and_keeps_the_clip_invariant(device, monkeypatch):
    monkeypatch.setattr(th.backends.cudnn, "allow_tf32", False)  # the same float32 arithmetic on both paths
    limits = {"critic_cnn_max_grad_norm": 0.05, "critic_mlp_max_grad_norm": 0.1, "actor_mlp_max_grad_norm": 0.01}
    models = [make_model(compile_update=compiled, device=device, **limits) for compiled in (False, True)]
    for model in models:
        model.learn(30)  # fills the buffer, no update yet (learning_starts=40)
    models[1].replay_buffer = models[0].replay_buffer
    assert th.equal(parameters_vector(models[0]), parameters_vector(models[1]))
    seen = reference_norms(models[1])
    for model in models:  # the same batches and target noise
        np.random.seed(0)
        th.manual_seed(0)
        model.train(gradient_steps=20, batch_size=16)
    eager, compiled = parameters_vector(models[0]), parameters_vector(models[1])
    assert (compiled - eager).norm() <= 1e-5 * eager.norm()
    for want, got in zip(models[0].update_stats, models[1].update_stats, strict=True):
        assert got.keys() == want.keys()
        assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
    clipped = [s for s in models[1].update_stats if s["critic_mlp_after"] < s["critic_mlp_before"]]
    assert len(clipped) > 10  # the limits fire
    for name, limit in limits.items():
        group = name.removesuffix("_max_grad_norm")
        assert len(seen[group]) > 0 and max(seen[group]) <= limit


@pytest.mark.slow
def test_compiled_model_continues_learning_after_save_and_load(tmp_path):
    model = make_model(compile_update=True)
    model.learn(50)
    updates = model._n_updates
    model.learn(10, reset_num_timesteps=False)
    assert model._n_updates > updates
    model.save(tmp_path / "model")
    loaded = TD3CnnClip.load(tmp_path / "model", env=ToyImageEnv())
    assert loaded.compile_update is True
    assert th.equal(parameters_vector(loaded), parameters_vector(model))
    loaded.learn(10, reset_num_timesteps=False)
    assert loaded._n_updates > model._n_updates
    assert all(th.isfinite(p).all() for p in loaded.policy.parameters())


def test_compile_update_must_be_a_bool():
    with pytest.raises(ValueError, match="compile_update='yes' must be True or False"):
        make_model(compile_update="yes")


def test_compile_update_without_torch_compile_support_raises(monkeypatch):
    monkeypatch.setattr(th._dynamo, "is_dynamo_supported", lambda: False)
    with pytest.raises(RuntimeError, match="compile_update=True needs torch.compile"):
        make_model(compile_update=True)
    make_model(compile_update=False)  # the eager update needs nothing


@pytest.mark.parametrize("failure", ["nonfinite", "sampling"])
def test_an_exception_keeps_the_completed_updates_of_the_call(failure):
    model = make_model(on_nonfinite_grad="raise")
    model.learn(30)  # no update yet (learning_starts=40)
    if failure == "nonfinite":
        poison_once(model, at_update=3)
        error = NonFiniteGradientError
    else:
        sample, error = model.replay_buffer.sample, KeyboardInterrupt

        def interrupted(*args, **kwargs):
            if model._n_updates == 3:
                raise KeyboardInterrupt
            return sample(*args, **kwargs)

        model.replay_buffer.sample = interrupted
    with pytest.raises(error):
        model.train(gradient_steps=5, batch_size=16)
    assert [s["n_updates"] for s in model.update_stats] == [1, 2]
    assert model.logger.name_to_value["train/critic_mlp_grad_before_max"] == max(
        s["critic_mlp_before"] for s in model.update_stats
    )
