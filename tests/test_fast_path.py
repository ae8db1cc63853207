"""The fast path (``compile_update=True``) on the CPU: the skip of a non-finite step decided on the device by the fused
optimizer, counted and raised once per train() call, one host read per call, and the eager path's updates.

Most tests here run the fast path with its loss functions left eager (``eager_losses``): they check the optimizer
step and the bookkeeping, which torch.compile does not touch, in a few seconds instead of a compilation's minute; the
compiled losses are checked against the eager ones in ``test_update_speed.py`` (marked slow).
"""

from __future__ import annotations

import copy
import math
import sys
from collections import Counter

import numpy as np
import pytest
import torch as th
from test_update_speed import FAST, SMALL_CNN, assert_same_updates_within_rounding, make_model, parameters_vector

from sb3_td3_cnnclip import NonFiniteGradientError, TD3CnnClip
from sb3_td3_cnnclip.cnnclip import CnnClipMixin
from sb3_td3_cnnclip.envs.toy import ToyImageEnv
from sb3_td3_cnnclip.grad_clip import ParamGroup, clip_and_step, clip_and_step_on_device

#: the Tensor methods that read a value back to the host
HOST_READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy", "__array__")
#: the fused optimizers whose step honours ``found_inf``
FUSED = [th.optim.Adam, th.optim.AdamW, th.optim.SGD, th.optim.Adagrad]


@pytest.fixture
def eager_losses(monkeypatch):
    """Models built from here on run ``compile_update=True`` with their loss functions uncompiled."""
    monkeypatch.setattr(CnnClipMixin, "_compiled", lambda self, loss_fn: loss_fn)


def optimizer_state(optimizer: th.optim.Optimizer) -> list[th.Tensor]:
    """Every tensor of the optimizer's state (Adam: step, exp_avg, exp_avg_sq of each parameter), in order."""
    return [value.clone() for state in optimizer.state_dict()["state"].values() for value in state.values()]


def all_equal(want: list[th.Tensor], got: list[th.Tensor]) -> bool:
    return len(want) == len(got) and all(th.equal(w, g) for w, g in zip(want, got))


@pytest.mark.parametrize("optimizer_class", FUSED)
def test_a_fused_step_with_a_nonfinite_norm_leaves_weights_and_optimizer_state_unchanged(optimizer_class):
    gen = th.Generator().manual_seed(0)
    params = [th.nn.Parameter(th.randn(3000, generator=gen)), th.nn.Parameter(th.randn(5, 7, generator=gen))]
    kwargs = {"momentum": 0.9} if optimizer_class is th.optim.SGD else {}
    optimizer = optimizer_class(params, lr=0.1, fused=True, **kwargs)
    groups = [ParamGroup("critic_cnn", params[:1], 1.0), ParamGroup("critic_mlp", params[1:], None)]
    for bad in (None, math.nan, math.inf, None):
        for param in params:
            param.grad = th.randn(param.shape, generator=gen)
        if bad is not None:
            params[1].grad[2, 3] = bad
        weights, state = [p.detach().clone() for p in params], optimizer_state(optimizer)
        norms, found_inf = clip_and_step_on_device(optimizer, groups)
        assert found_inf.dtype == th.float32 and found_inf.item() == float(bad is not None)
        assert all_equal(weights, list(params)) == (bad is not None)
        assert all_equal(state, optimizer_state(optimizer)) == (bad is not None)
        assert not hasattr(optimizer, "found_inf")  # a later step() of someone else's does not skip
    if optimizer_class is not th.optim.SGD:  # two steps taken, two skipped: the step count did not move on a skip
        assert optimizer.state_dict()["state"][0]["step"].item() == 2


@pytest.mark.parametrize("optimizer_class", FUSED)
def test_a_finite_fused_step_on_the_device_equals_the_eager_step_bit_for_bit(optimizer_class):
    def stepped(step_fn):
        gen = th.Generator().manual_seed(1)
        param = th.nn.Parameter(th.randn(3000, generator=gen))
        optimizer = optimizer_class([param], lr=0.1, fused=True)
        for _ in range(3):
            param.grad = th.randn(3000, generator=gen) * 10
            norms = step_fn(optimizer, [ParamGroup("actor_mlp", [param], 1.0)])[0]
        return param.detach(), optimizer_state(optimizer), norms["actor_mlp"]

    (want, want_state, want_norms), (got, got_state, got_norms) = map(stepped, (clip_and_step, clip_and_step_on_device))
    assert th.equal(want, got) and all_equal(want_state, got_state)
    assert [float(w) for w in want_norms] == [float(g) for g in got_norms] and got_norms[1] <= 1.0 < got_norms[0]


def test_a_norm_that_overflows_float32_on_the_cpu_is_skipped_on_the_device():
    """The documented difference: the eager path measures it again in float64 and clips it
    (``test_finite_gradients_beyond_float32_chunk_range_are_clipped_not_skipped``); deciding that needs the host."""
    weight = th.nn.Parameter(th.zeros(3000))
    weight.grad = th.full((3000,), 1e20)
    optimizer = th.optim.SGD([weight], lr=1.0, fused=True)
    norms, found_inf = clip_and_step_on_device(optimizer, [ParamGroup("critic_mlp", [weight], 1.0)])
    assert found_inf.item() == 1.0 and math.isinf(norms["critic_mlp"][0].item())
    assert th.equal(weight.detach(), th.zeros(3000))


def poison(model: TD3CnnClip, network: str, at_updates: dict[int, float]) -> None:
    """Make the gradient of one of ``network``'s MLP weights ``value`` (NaN or inf) during the updates given."""
    param = next((model.critic.q_networks[0] if network == "critic" else model.actor.mu).parameters())
    param.register_hook(lambda grad: th.full_like(grad, at_updates[model._n_updates])
                        if model._n_updates in at_updates else grad)  # fmt: skip


def poisoned_pair() -> list[TD3CnnClip]:
    """The eager path (with the fast path's fused Adam, for bit-equal steps) and the fast path, from the same weights
    and replay buffer, with the same non-finite gradients injected into both networks."""
    eager = make_model(policy_delay=2, policy_kwargs={**SMALL_CNN, "optimizer_kwargs": {"fused": True}})
    fast = make_model(policy_delay=2, compile_update=True)
    for model in (eager, fast):
        model.learn(30)  # fills the buffer, no update yet (learning_starts=40)
        poison(model, "critic", {3: math.nan, 8: math.inf, 9: math.nan})
        poison(model, "actor", {6: math.inf, 8: math.nan})  # actor updates are the even ones
    fast.replay_buffer = eager.replay_buffer
    assert th.equal(parameters_vector(eager), parameters_vector(fast))
    return [eager, fast]


def train_seeded(model: TD3CnnClip, gradient_steps: int) -> None:
    np.random.seed(gradient_steps)
    th.manual_seed(gradient_steps)
    model.train(gradient_steps=gradient_steps, batch_size=16)


def test_the_device_skip_gives_the_eager_skips_weights_adam_state_counters_and_statistics(eager_losses):
    models = poisoned_pair()
    for gradient_steps in (4, 1, 7):  # updates 1-12 in three calls; non-finite at 3, 6, 8 (both networks), 9
        for model in models:
            train_seeded(model, gradient_steps)
    eager, fast = models
    assert eager.nonfinite_skips == fast.nonfinite_skips == {"actor": 2, "critic": 3}
    assert th.equal(parameters_vector(eager), parameters_vector(fast))
    assert all(th.isfinite(p).all() for p in fast.policy.parameters())
    for network in ("actor", "critic"):
        optimizers = [getattr(model, network).optimizer for model in models]
        assert all_equal(*map(optimizer_state, optimizers))
    assert optimizers[0].state_dict()["state"][0]["step"].item() == 12 - 3  # critic: 12 updates, 3 skipped
    skipped = {u: [n for n in ("critic", "actor") if s.get(f"{n}_skipped")] for s in fast.update_stats
               if (u := s["n_updates"]) in (3, 6, 8, 9)}  # fmt: skip
    assert skipped == {3: ["critic"], 6: ["actor"], 8: ["critic", "actor"], 9: ["critic"]}
    assert "critic_mlp_after" not in fast.update_stats[2] and "actor_mlp_after" in fast.update_stats[3]
    for want, got in zip(eager.update_stats, fast.update_stats, strict=True):
        assert list(got) == list(want)  # the same keys, in the same order
        np.testing.assert_equal(got, want)  # the same values, NaN and inf included
    np.testing.assert_equal(fast.logger.name_to_value, eager.logger.name_to_value)


def test_raise_on_the_fast_path_raises_after_the_call_naming_the_skipped_updates(eager_losses):
    skip, fast = (make_model(policy_delay=2, compile_update=True, on_nonfinite_grad=action) for action in ("skip", "raise"))
    for model in (skip, fast):
        model.learn(30)  # no update yet
        poison(model, "critic", {3: math.nan, 5: math.inf})  # critic-only updates (policy_delay=2)
    fast.replay_buffer = skip.replay_buffer
    for model in (skip, fast):
        train_seeded(model, 2)
    weights, adam = parameters_vector(fast), optimizer_state(fast.critic.optimizer)
    with pytest.raises(NonFiniteGradientError, match=r"update\(s\) \{3: \['critic'\]\}.* never changed"):
        train_seeded(fast, 1)  # update 3 alone: nothing changed
    assert th.equal(parameters_vector(fast), weights) and all_equal(adam, optimizer_state(fast.critic.optimizer))
    assert fast.nonfinite_skips == {"actor": 0, "critic": 1} and fast.update_stats[-1]["critic_skipped"] == 1.0
    train_seeded(skip, 1)
    with pytest.raises(NonFiniteGradientError, match=r"\{5: \['critic'\]\}"):
        train_seeded(fast, 4)  # updates 4-7: the call runs to its end, as "skip" would, then raises
    train_seeded(skip, 4)
    assert [s["n_updates"] for s in fast.update_stats] == list(range(1, 8))
    assert th.equal(parameters_vector(fast), parameters_vector(skip))
    assert fast.nonfinite_skips == skip.nonfinite_skips == {"actor": 0, "critic": 2}


def test_the_fast_paths_steps_equal_the_default_paths_within_rounding(eager_losses):
    """The default path steps SB3's Adam, the fast path the fused Adam: the same update, rounded differently."""
    assert_same_updates_within_rounding(make_model(), make_model(compile_update=True))


@pytest.mark.parametrize("poisoned", [False, True])
def test_the_fast_path_reads_the_host_once_per_train_call(eager_losses, monkeypatch, poisoned):
    """Every host read during train(), by anyone (the package, SB3, torch's optimizers): one, the statistics'
    ``tolist``; on the default path also one ``bool`` per optimizer step and Adam's step counts."""
    model = make_model(compile_update=True, policy_delay=1)
    model.learn(50)
    if poisoned:
        poison(model, "critic", {model._n_updates + 2: math.nan})
    reads: Counter[str] = Counter()

    def counting(method: str):
        original = getattr(th.Tensor, method)

        def wrapper(self, *args, **kwargs):
            reads[f"{method} in {sys._getframe(1).f_code.co_filename.rsplit('/', 1)[-1]}"] += 1
            return original(self, *args, **kwargs)

        return wrapper

    for method in HOST_READS:
        monkeypatch.setattr(th.Tensor, method, counting(method))
    model.train(gradient_steps=5, batch_size=16)
    monkeypatch.undo()
    assert reads == {"tolist in update_stats.py": 1}
    assert model.nonfinite_skips["critic"] == int(poisoned)


def test_compile_update_makes_the_optimizers_fused_and_refuses_one_without_a_fused_step():
    for model in (make_model(compile_update=True), make_model(compile_update=True, critic_trained_encoder=True)):
        assert model.actor.optimizer.defaults["fused"] and model.critic.optimizer.defaults["fused"]
    assert make_model().critic.optimizer.defaults["fused"] is None  # the default path keeps SB3's Adam
    adamw = make_model(compile_update=True, policy_kwargs={**SMALL_CNN, "optimizer_class": th.optim.AdamW})
    assert isinstance(adamw.actor.optimizer, th.optim.AdamW) and adamw.actor.optimizer.defaults["fused"]
    for policy_kwargs in ({"optimizer_class": th.optim.RMSprop}, {"optimizer_kwargs": {"fused": False}}):
        with pytest.raises(ValueError, match="compile_update=True skips a non-finite optimizer step on the device"):
            TD3CnnClip("CnnPolicy", ToyImageEnv(), compile_update=True, policy_kwargs={**SMALL_CNN, **policy_kwargs}, **FAST)


def test_a_model_saved_with_the_fast_path_loads_with_fused_optimizers(eager_losses, tmp_path):
    model = make_model(compile_update=True)
    model.learn(50)
    model.save(tmp_path / "model")
    loaded = TD3CnnClip.load(tmp_path / "model", env=ToyImageEnv(), device="cpu")
    assert loaded.critic.optimizer.defaults["fused"]
    assert all_equal(optimizer_state(model.critic.optimizer), optimizer_state(loaded.critic.optimizer))
    loaded.learn(10, reset_num_timesteps=False)
    assert all(th.isfinite(p).all() for p in loaded.policy.parameters())
