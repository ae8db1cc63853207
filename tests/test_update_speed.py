"""The update's savings: no critic-CNN backward in the actor loss, statistics read once per train() call, each batch
preprocessed once, channels_last convolutions, the compiled update."""

from __future__ import annotations

import math
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch as th
from stable_baselines3 import TD3
from stable_baselines3.common import policies as sb3_policies
from stable_baselines3.common.preprocessing import preprocess_obs
from stable_baselines3.common.torch_layers import NatureCNN
from stable_baselines3.td3.policies import Actor, CnnPolicy
from test_td3_cnnclip import EXACT_TD3, poison_once, reference_norms

from sb3_td3_cnnclip import NonFiniteGradientError, TD3CnnClip
from sb3_td3_cnnclip.encoders import TrunkNatureCNN
from sb3_td3_cnnclip.envs.toy import ToyImageEnv
from sb3_td3_cnnclip.grad_clip import group_norm
from sb3_td3_cnnclip.update_stats import UpdateStatsAccumulator

SMALL_CNN = {"features_extractor_kwargs": {"features_dim": 16}, "net_arch": [32, 32]}
FAST = {"buffer_size": 600, "learning_starts": 40, "batch_size": 16, "seed": 3, "device": "cpu"}  # cuda: when asked
CUDA = pytest.mark.skipif(not th.cuda.is_available(), reason="needs CUDA")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]
PACKAGE = str(Path(__file__).resolve().parent.parent / "sb3_td3_cnnclip")


def make_model(**kwargs) -> TD3CnnClip:
    return TD3CnnClip("CnnPolicy", ToyImageEnv(), **{"policy_kwargs": SMALL_CNN, **FAST, **kwargs})


def test_actor_backward_leaves_no_gradient_on_the_critic_cnn():
    model = make_model(policy_delay=1)
    model.learn(50)
    phase = {"now": "critic"}
    reached: dict[str, list[str]] = {"critic_cnn": [], "critic_q1": []}
    model.actor.optimizer.register_step_post_hook(lambda *_: phase.update(now="critic"))
    model.critic.optimizer.register_step_post_hook(lambda *_: phase.update(now="actor"))
    for name, module in (("critic_cnn", model.critic.features_extractor), ("critic_q1", model.critic.q_networks[0])):
        for param in module.parameters():
            param.register_post_accumulate_grad_hook(lambda _, name=name: reached[name].append(phase["now"]))
    model.train(gradient_steps=3, batch_size=16)
    assert reached["critic_cnn"].count("critic") > 0 and "actor" not in reached["critic_cnn"]
    assert reached["critic_q1"].count("actor") > 0  # the hooks do see the actor's backward


class CustomActor(Actor):
    """An actor class of a user's own (SB3's, renamed): train() must run it through its forward()."""


class CustomActorPolicy(CnnPolicy):
    def make_actor(self, features_extractor=None) -> CustomActor:
        actor_kwargs = self._update_features_extractor(self.actor_kwargs, features_extractor)
        return CustomActor(**actor_kwargs).to(self.device)


def count_preprocessing(monkeypatch) -> list[int]:
    """Count the calls of SB3's preprocess_obs made by the networks' extract_features."""
    calls = [0]

    def counting(*args, **kwargs):
        calls[0] += 1
        return preprocess_obs(*args, **kwargs)

    monkeypatch.setattr(sb3_policies, "preprocess_obs", counting)
    return calls


@pytest.mark.parametrize("policy", ["CnnPolicy", CustomActorPolicy])
def test_each_batch_is_preprocessed_once_and_the_updates_stay_td3s(policy, monkeypatch):
    """SB3's networks preprocess (normalise) the images in each of the five network calls of an update; train()
    does it once per batch with SB3's Actor and ContinuousCritic, and keeps SB3's path for other classes. Both are
    bit-identical to TD3 in the exact-TD3 setting."""
    exact_td3 = {**EXACT_TD3, "policy_delay": 1}
    # SB3 seeds the global RNGs when a model is built: build and train one model after the other
    reference = TD3(policy, ToyImageEnv(), **{"policy_kwargs": SMALL_CNN, **FAST, "policy_delay": 1}).learn(60)
    model = TD3CnnClip(policy, ToyImageEnv(), **{"policy_kwargs": SMALL_CNN, **FAST, **exact_td3})
    assert model._preprocess_once == (policy == "CnnPolicy")
    calls = count_preprocessing(monkeypatch)
    model.learn(60)
    predicted = 60 - FAST["learning_starts"]  # one predict() per env step after the random warm-up
    assert model._n_updates == 20 and calls[0] == predicted + (0 if policy == "CnnPolicy" else 5 * 20)
    for want, got in zip(reference.policy.parameters(), model.policy.parameters(), strict=True):
        assert th.equal(want, got)


def test_statistics_are_read_once_per_train_call_and_each_step_decides_once(monkeypatch):
    """The package's own host reads in a train() call: one ``tolist`` of the statistics, and one ``tolist`` of the
    group norms per optimizer step (from which the host decides whether to step and which groups to clip); on CUDA
    each is a wait for the GPU."""
    model = make_model(policy_delay=1)
    model.learn(50)
    calls = {"item": 0, "tolist": 0, "__bool__": 0}

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
    assert calls == {"item": 0, "tolist": 1 + 10, "__bool__": 0}  # policy_delay=1: a critic and an actor step per update
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


@CUDA
@pytest.mark.parametrize(
    ("kwargs", "waits_per_step"), [({}, 1), ({"bf16_encoders": True}, 1), ({"compile_update": True}, 0)]
)
def test_train_waits_for_the_gpu_per_step_as_its_path_says_and_a_fixed_number_per_call(kwargs, waits_per_step):
    """With the replay batch already on the GPU, the host waits for the GPU once per optimizer step on the default
    path (the decision to skip a non-finite step; SB3's TD3 waits once per loss for its ``.item()``), never inside a
    gradient step on the fast path (``compile_update=True`` decides the skip on the device), and a fixed number of
    times per call (the statistics, read back together): a per-update ``.item()`` or host copy anywhere else would
    add waits. Each call size is measured three times and its fewest waits compared: on an H200, measured once
    each, a call of 2 updates showed one wait more than a call of 8 (a wait that does not grow with the updates)."""
    from sb3_td3_cnnclip.device_buffer import DeviceReplayBuffer

    model = make_model(device="cuda", replay_buffer_class=DeviceReplayBuffer, **kwargs)
    model.learn(50)
    model.train(gradient_steps=8, batch_size=16)  # anything done once (a compile, a CUDA graph's recording)
    steps = {"now": 0}
    for optimizer in (model.actor.optimizer, model.critic.optimizer):
        optimizer.register_step_post_hook(lambda *_: steps.update(now=steps["now"] + 1))
    extra_waits: dict[int, list[int]] = {2: [], 8: []}
    for gradient_steps in (2, 8) * 3:
        steps["now"] = 0
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            th.cuda.set_sync_debug_mode("warn")
            try:
                model.train(gradient_steps=gradient_steps, batch_size=16)
            finally:
                th.cuda.set_sync_debug_mode("default")
        waits = sum("synchroniz" in str(w.message) for w in caught)
        assert steps["now"] >= gradient_steps
        extra_waits[gradient_steps].append(waits - waits_per_step * steps["now"])
    assert min(extra_waits[2]) == min(extra_waits[8]) >= 1, extra_waits


def parameters_vector(model: TD3CnnClip) -> th.Tensor:
    return th.cat([p.detach().reshape(-1) for p in model.policy.parameters()])


def assert_same_updates_within_rounding(reference: TD3CnnClip, model: TD3CnnClip, gradient_steps: int = 20) -> None:
    """Train both models from the same weights on the same batches and noise; their parameters and every
    statistic must agree within 1e-5 (relative) afterwards."""
    for each in (reference, model):
        each.learn(30)  # fills the buffer, no update yet (learning_starts=40)
    model.replay_buffer = reference.replay_buffer
    initial = parameters_vector(reference)
    assert th.equal(initial, parameters_vector(model))
    for each in (reference, model):
        np.random.seed(0)
        th.manual_seed(0)
        each.train(gradient_steps=gradient_steps, batch_size=16)
    want, got = parameters_vector(reference), parameters_vector(model)
    assert not th.equal(want, initial)  # learned
    assert (got - want).norm() <= 1e-5 * want.norm()
    for want_stats, got_stats in zip(reference.update_stats, model.update_stats, strict=True):
        assert got_stats.keys() == want_stats.keys()
        assert got_stats == pytest.approx(want_stats, rel=1e-5, abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_compiled_update_matches_eager_and_keeps_the_clip_invariant(device, monkeypatch):
    monkeypatch.setattr(th.backends.cudnn, "allow_tf32", False)  # the same float32 arithmetic on both paths
    limits = {"critic_cnn_max_grad_norm": 0.05, "critic_mlp_max_grad_norm": 0.1, "actor_mlp_max_grad_norm": 0.01}
    models = [make_model(compile_update=compiled, device=device, **limits) for compiled in (False, True)]
    seen = reference_norms(models[1])
    assert_same_updates_within_rounding(*models)
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
    loaded = TD3CnnClip.load(tmp_path / "model", env=ToyImageEnv(), device="cpu")
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


def conv_weights(model: TD3CnnClip) -> list[th.Tensor]:
    """The convolution weights with more than one input channel (with one, both layouts have the same strides)."""
    return [p for p in model.policy.parameters() if p.dim() == 4 and p.shape[1] > 1]


def is_channels_last(tensor: th.Tensor) -> bool:
    return tensor.is_contiguous(memory_format=th.channels_last) and not tensor.is_contiguous()


class ViewCNN(NatureCNN):
    """A custom extractor whose forward assumes the default layout (``.view`` on a convolution's output)."""

    def forward(self, observations: th.Tensor) -> th.Tensor:
        conv_out = self.cnn[:-1](observations.float() / 255.0)
        return self.linear(conv_out.view(conv_out.shape[0], -1))


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, True),  # CPU, SB3's NatureCNN: on by default
        ({"critic_trained_encoder": True}, True),
        ({"policy_kwargs": {**SMALL_CNN, "features_extractor_class": TrunkNatureCNN}}, True),  # the package's own
        ({"policy_kwargs": {**SMALL_CNN, "features_extractor_class": ViewCNN}}, False),  # unknown extractor: off
        ({"policy_kwargs": {**SMALL_CNN, "features_extractor_class": ViewCNN}, "channels_last": False}, False),
        ({"channels_last": False}, False),
    ],
)
def test_channels_last_default_is_on_for_known_extractors_on_the_cpu(kwargs, expected):
    model = make_model(**kwargs)
    weights = conv_weights(model)
    assert len(weights) > 0 and all(is_channels_last(p) == expected for p in weights)
    model.learn(50)  # the optimizers step the converted parameters, Adam's state follows their layout
    assert all(is_channels_last(p) == expected for p in conv_weights(model))
    states = [model.critic.optimizer.state[p]["exp_avg"] for p in conv_weights(model) if p in model.critic.optimizer.state]
    assert len(states) > 0 and all(is_channels_last(s) == expected for s in states)


def test_channels_last_breaks_a_view_on_a_convolution_output_hence_off_by_default_for_it():
    policy_kwargs = {**SMALL_CNN, "features_extractor_class": ViewCNN}  # 64x64: the last conv output is 4x4
    model = TD3CnnClip("CnnPolicy", ToyImageEnv(size=64), policy_kwargs=policy_kwargs, channels_last=True, **FAST)
    with pytest.raises(RuntimeError, match="view size is not compatible"):
        model.learn(50)


@pytest.mark.parametrize("device", DEVICES)
def test_channels_last_update_equals_the_default_layout_within_rounding(device, monkeypatch):
    monkeypatch.setattr(th.backends.cudnn, "allow_tf32", False)  # the same float32 arithmetic in both layouts
    models = [make_model(channels_last=layout, device=device) for layout in (False, True)]
    for model, layout in zip(models, (False, True)):
        assert all(is_channels_last(p) == layout for p in conv_weights(model))
    assert_same_updates_within_rounding(*models)


def test_channels_last_model_saves_and_loads_in_its_layout(tmp_path):
    model = make_model()
    model.learn(50)
    model.save(tmp_path / "model")
    loaded = TD3CnnClip.load(tmp_path / "model", env=ToyImageEnv(), device="cpu")
    assert loaded.channels_last is None and all(is_channels_last(p) for p in conv_weights(loaded))
    assert th.equal(parameters_vector(loaded), parameters_vector(model))
    loaded.learn(10, reset_num_timesteps=False)
    assert all(is_channels_last(p) for p in conv_weights(loaded))


def test_channels_last_must_be_none_or_a_bool():
    with pytest.raises(ValueError, match="channels_last='on' must be None \\(automatic\\), True or False"):
        make_model(channels_last="on")


def gradient_of_first_update(model: TD3CnnClip) -> th.Tensor:
    """The critic's and the actor's gradients at their first optimizer step of ``train(1)``, as one vector."""
    grads: list[th.Tensor] = []
    for optimizer in (model.critic.optimizer, model.actor.optimizer):
        params = [p for group in optimizer.param_groups for p in group["params"]]
        optimizer.register_step_pre_hook(lambda *_, params=params: grads.extend(p.grad.reshape(-1).clone() for p in params))
    np.random.seed(0)
    th.manual_seed(0)
    model.train(gradient_steps=1, batch_size=16)
    return th.cat(grads)


def test_bf16_encoders_compute_the_cnns_in_bfloat16_and_the_rest_in_float32():
    models = [make_model(policy_delay=1, bf16_encoders=bf16) for bf16 in (False, True)]
    for model in models:
        model.learn(30)  # fills the buffer, no update yet
    models[1].replay_buffer = models[0].replay_buffer
    dtypes: dict[str, set[th.dtype]] = {"conv": set(), "head": set()}
    for net in (models[1].critic, models[1].actor):
        net.features_extractor.cnn[0].register_forward_hook(lambda m, i, out: dtypes["conv"].add(out.dtype))
    models[1].critic.q_networks[0].register_forward_pre_hook(lambda m, inputs: dtypes["head"].add(inputs[0].dtype))
    models[1].actor.mu.register_forward_pre_hook(lambda m, inputs: dtypes["head"].add(inputs[0].dtype))
    want, got = (gradient_of_first_update(model) for model in models)
    assert dtypes == {"conv": {th.bfloat16}, "head": {th.float32}}
    assert all(p.dtype == th.float32 for p in models[1].policy.parameters())
    # bfloat16 keeps 8 significant bits (0.4 % per rounding): the gradients agree to about 1 % (measured 0.5-0.9 %)
    assert (got - want).norm() <= 3e-2 * want.norm()
    assert not th.equal(got, want)  # it did compute in bfloat16
    assert models[1].predict(models[1].env.reset())[0].dtype == np.float32


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_encoders_keep_the_clip_invariant_and_are_saved(device, tmp_path):
    limits = {"critic_cnn_max_grad_norm": 0.05, "critic_mlp_max_grad_norm": 0.1, "actor_mlp_max_grad_norm": 0.01}
    model = make_model(bf16_encoders=True, device=device, **limits)
    seen = reference_norms(model)
    model.learn(80)
    for name, limit in limits.items():
        group = name.removesuffix("_max_grad_norm")
        assert len(seen[group]) > 0 and max(seen[group]) <= limit
    assert all(math.isfinite(value) for stats in model.update_stats for value in stats.values())
    model.save(tmp_path / "model")
    assert TD3CnnClip.load(tmp_path / "model", device=device).bf16_encoders is True


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bf16_encoders": "yes"}, "bf16_encoders='yes' must be True or False"),
        ({"bf16_encoders": True, "policy": CustomActorPolicy}, "runs SB3's Actor and ContinuousCritic"),
    ],
)
def test_bad_bf16_encoders_raise(kwargs, message):
    policy = kwargs.pop("policy", "CnnPolicy")
    with pytest.raises(ValueError, match=message):
        TD3CnnClip(policy, ToyImageEnv(), policy_kwargs=SMALL_CNN, **FAST, **kwargs)


def test_bf16_encoders_warn_on_a_cpu_without_bfloat16(monkeypatch):
    monkeypatch.setattr(th.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    with pytest.warns(UserWarning, match="CPU without bfloat16 instructions"):
        make_model(bf16_encoders=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("tau", [0.005, 1.0])
def test_polyak_update_in_one_foreach_call_per_list_equals_sb3s_bit_for_bit(tau, device):
    from stable_baselines3.common.utils import polyak_update as sb3_polyak_update

    from sb3_td3_cnnclip.cnnclip import polyak_update

    generator = th.Generator().manual_seed(0)
    shapes = [(32, 4, 8, 8), (32,), (7, 3), ()]
    params = [th.randn(shape, generator=generator).to(device) for shape in shapes]
    targets = [th.randn(shape, generator=generator).to(device) for shape in shapes]
    want = [t.clone() for t in targets]
    sb3_polyak_update(params, want, tau)
    polyak_update(params, targets, tau)
    assert all(th.equal(got, expected) for got, expected in zip(targets, want, strict=True))
    assert not th.equal(targets[0], params[0]) if tau < 1 else th.equal(targets[0], params[0])
    polyak_update([], [], tau)  # a network without batch norm has no running statistics to copy
    with pytest.raises(ValueError, match="2 parameters for 1 target"):
        polyak_update(params[:2], targets[:1], tau)
