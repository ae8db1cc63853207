"""TD3CnnClip: clipped norms at optimizer-step time, equivalence with TD3, non-finite gradients, policies, save/load."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch as th
from stable_baselines3 import TD3
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.logger import configure
from stable_baselines3.common.torch_layers import NatureCNN

from sb3_td3_cnnclip import NonFiniteGradientError, TD3CnnClip, cnnclip
from sb3_td3_cnnclip.envs.toy import ToyImageEnv
from sb3_td3_cnnclip.grad_clip import ParamGroup, clip_and_step, group_norm
from sb3_td3_cnnclip.report import load_scalars

SMALL_CNN = {"features_extractor_kwargs": {"features_dim": 16}, "net_arch": [32, 32]}
FAST = {"buffer_size": 600, "learning_starts": 40, "batch_size": 16, "seed": 3}
GROUPS = ("actor_cnn", "actor_mlp", "critic_cnn", "critic_mlp")
#: the documented setting whose updates are exactly TD3's
EXACT_TD3 = {**dict.fromkeys((f"{g}_max_grad_norm" for g in GROUPS), None), "pre_tanh_penalty": 0.0, "channels_last": False}


def make_model(algo=TD3CnnClip, env=None, policy="CnnPolicy", policy_kwargs=None, **kwargs):
    env = ToyImageEnv() if env is None else env
    policy_kwargs = SMALL_CNN if policy_kwargs is None and policy != "MlpPolicy" else policy_kwargs
    return algo(policy, env, policy_kwargs=policy_kwargs, **{**FAST, **kwargs})


def reference_norms(model, by_update: dict[tuple[int, str], float] | None = None) -> dict[str, list[float]]:
    """Record each group's gradient norm, in float64, every time an optimizer is about to step.

    The groups are rebuilt here from the policy's modules, independently of the code under test.

    :param by_update: if given, also filled with ``(update number, group) -> norm``
    """
    seen: dict[str, list[float]] = {name: [] for name in GROUPS}

    def watch(network: str, module) -> None:
        cnn_ids = {id(p) for p in module.features_extractor.parameters()}

        def hook(optimizer, args, kwargs):
            params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            for part, members in (("cnn", [p for p in params if id(p) in cnn_ids]),
                                  ("mlp", [p for p in params if id(p) not in cnn_ids])):  # fmt: skip
                if members:
                    seen[f"{network}_{part}"].append(math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in members)))
                    if by_update is not None:
                        by_update[model._n_updates, f"{network}_{part}"] = seen[f"{network}_{part}"][-1]

        module.optimizer.register_step_pre_hook(hook)

    watch("actor", model.actor)
    watch("critic", model.critic)
    return seen


@pytest.mark.parametrize("reward_scale", [1.0, 1e4])
def test_after_norm_at_step_time_is_logged_and_within_limit(reward_scale):
    limits = {"actor_cnn_max_grad_norm": 0.05, "actor_mlp_max_grad_norm": 0.02,
              "critic_cnn_max_grad_norm": 0.5, "critic_mlp_max_grad_norm": 0.3}  # fmt: skip
    model = make_model(env=ToyImageEnv(reward_scale=reward_scale), **limits)
    seen = reference_norms(model)
    model.learn(120)
    stats = list(model.update_stats)
    assert len(stats) == model._n_updates > 0
    for name in GROUPS:
        logged = [s[f"{name}_after"] for s in stats if f"{name}_after" in s]
        assert len(logged) == len(seen[name]) > 0
        np.testing.assert_allclose(logged, seen[name], rtol=1e-6)  # group_norm is within 1e-7 of float64
        assert max(seen[name]) <= limits[f"{name}_max_grad_norm"]
    if reward_scale > 1:  # huge rewards give huge gradients: every critic update is clipped
        assert all(s["critic_mlp_before"] > limits["critic_mlp_max_grad_norm"] for s in stats)
        assert all(s["critic_mlp_after"] < s["critic_mlp_before"] for s in stats)


def test_huge_gradients_are_clipped_to_just_below_the_limit():
    model = make_model(env=ToyImageEnv(reward_scale=1e6))
    seen = reference_norms(model)
    model.learn(100)
    for name in ("critic_cnn", "critic_mlp"):
        assert all(0.999 * model.__dict__[f"{name}_max_grad_norm"] < n <= model.__dict__[f"{name}_max_grad_norm"]
                   for n in seen[name])  # fmt: skip


def test_only_the_groups_over_their_limit_are_clipped_and_measured_again():
    """The host reads every norm once and clips only the groups above their limits: the others keep their gradients
    bit for bit and log their norm before as their norm after."""
    gen = th.Generator().manual_seed(0)
    over, under, unlimited = (th.nn.Parameter(th.zeros(n)) for n in (500, 300, 200))
    for param in (over, under, unlimited):
        param.grad = th.randn(param.shape, generator=gen)
    original = {id(param): param.grad.clone() for param in (over, under, unlimited)}
    exact = {id(param): th.linalg.vector_norm(param.grad.double()).item() for param in (over, under, unlimited)}
    groups = [ParamGroup("critic_cnn", [over], 1.0), ParamGroup("critic_mlp", [under], 100.0),
              ParamGroup("actor_mlp", [unlimited], None)]  # fmt: skip
    norms, stepped = clip_and_step(th.optim.SGD([over, under, unlimited], lr=0.0), groups)
    assert stepped
    before, after = norms["critic_cnn"]
    assert before == pytest.approx(exact[id(over)], rel=1e-7) and before > 1.0
    assert after.item() == pytest.approx(th.linalg.vector_norm(over.grad.double()).item(), rel=1e-7)
    assert 0.999 < after.item() <= 1.0
    for name, param in (("critic_mlp", under), ("actor_mlp", unlimited)):
        assert th.equal(param.grad, original[id(param)])
        assert norms[name][0] == norms[name][1] == pytest.approx(exact[id(param)], rel=1e-7)


def test_finite_gradients_beyond_float32_chunk_range_are_clipped_not_skipped():
    """Elements of 1e20 overflow a float32 sum of squares; the gradient is finite, so it is clipped and stepped."""
    weight = th.nn.Parameter(th.zeros(3000, dtype=th.float32))
    weight.grad = th.full((3000,), 1e20)
    optimizer = th.optim.SGD([weight], lr=1.0)
    norms, stepped = clip_and_step(optimizer, [ParamGroup("critic_mlp", [weight], 1.0)])
    before, after = norms["critic_mlp"]
    assert stepped
    assert before == pytest.approx(math.sqrt(3000) * 1e20, rel=1e-6)
    assert 0.999 < th.linalg.vector_norm(weight.grad.double()).item() <= 1.0
    assert after.item() <= 1.0


def test_actor_statistics_only_on_actor_updates():
    model = make_model(policy_delay=3)
    model.learn(100)
    stats = list(model.update_stats)
    for s in stats:
        actor_step = s["n_updates"] % 3 == 0
        for key in ("actor_cnn_before", "actor_mlp_after", "actor_loss", "actor_saturation"):
            assert (key in s) == actor_step
        assert "critic_cnn_after" in s
    # the logged mean is over actor updates only (no zero for critic-only steps)
    model.logger.dump(model.num_timesteps)
    model.train(gradient_steps=6, batch_size=16)
    recent = [s["actor_mlp_before"] for s in list(model.update_stats)[-6:] if "actor_mlp_before" in s]
    assert len(recent) == 2
    assert model.logger.name_to_value["train/actor_mlp_grad_before"] == pytest.approx(np.mean(recent))
    assert model.logger.name_to_value["train/actor_mlp_grad_before_max"] == pytest.approx(max(recent))


def test_logged_keys_fit_stdout_and_are_unique():
    model = make_model()
    model.learn(80)
    model.train(gradient_steps=2, batch_size=16)
    keys = [k for k in model.logger.name_to_value if k.startswith("train/")]
    assert all(len(k) <= 36 for k in keys), [k for k in keys if len(k) > 36]
    for name in GROUPS:
        for suffix in ("grad_before", "grad_before_max", "grad_after", "grad_after_max", "clip_frac"):
            assert f"train/{name}_{suffix}" in keys


@pytest.mark.parametrize("kwargs", [{}, {"policy_delay": 1, "gradient_steps": 2}, {"optimize_memory_usage": True,
                                                                                     "replay_buffer_kwargs": {"handle_timeout_termination": False}}])  # fmt: skip
def test_without_limits_matches_td3_update_for_update(kwargs):
    # SB3 seeds the global RNGs when a model is built: build and train one model after the other
    reference = make_model(TD3, **kwargs).learn(100)
    model = make_model(TD3CnnClip, **EXACT_TD3, **kwargs).learn(100)
    assert_same_as_td3(reference, model)


def test_dict_observations_without_limits_match_td3_update_for_update():
    kwargs = {"policy": "MultiInputPolicy", "policy_kwargs": {"net_arch": [32, 32]}}
    reference = make_model(TD3, env=ToyImageEnv(dict_obs=True), **kwargs).learn(100)
    model = make_model(TD3CnnClip, env=ToyImageEnv(dict_obs=True), **kwargs, **EXACT_TD3).learn(100)
    assert_same_as_td3(reference, model)


def assert_same_as_td3(reference: TD3, model: TD3CnnClip) -> None:
    """The same number of updates, bit-identical weights and the same last critic loss."""
    assert model._n_updates == reference._n_updates > 0
    ref_state, state = reference.policy.state_dict(), model.policy.state_dict()
    assert ref_state.keys() == state.keys()
    for key in ref_state:
        assert th.equal(ref_state[key], state[key]), key
    assert reference.logger.name_to_value["train/critic_loss"] == model.logger.name_to_value["train/critic_loss"]


@pytest.mark.parametrize("change", [{"critic_mlp_max_grad_norm": 1e-3}, {"pre_tanh_penalty": 0.01}])
def test_clipping_or_the_penalty_changes_the_updates(change):
    reference = make_model(TD3).learn(100)
    model = make_model(TD3CnnClip, **{**EXACT_TD3, **change}).learn(100)
    assert not all(th.equal(a, b) for a, b in zip(reference.policy.parameters(), model.policy.parameters()))


def test_default_penalty_is_the_measured_prevention(tmp_path):
    from sb3_td3_cnnclip.config_file import TrainConfig

    model = make_model()
    assert model.pre_tanh_penalty == 0.01
    assert TrainConfig().pre_tanh_penalty is None  # the command line's default: the class's (test_cli checks the models)
    # a zip saved with the exact-TD3 setting keeps it; a plain TD3 zip gets the default
    make_model(pre_tanh_penalty=0.0).save(tmp_path / "td3_setting")
    assert TD3CnnClip.load(tmp_path / "td3_setting").pre_tanh_penalty == 0.0
    make_model(TD3).save(tmp_path / "td3")
    assert TD3CnnClip.load(tmp_path / "td3").pre_tanh_penalty == 0.01


def poison_once(model, at_update: int) -> None:
    """Make the critic's gradient NaN during update number ``at_update``."""
    param = next(model.critic.q_networks[0].parameters())
    param.register_hook(lambda grad: grad * math.nan if model._n_updates == at_update else grad)


def test_nonfinite_gradient_is_skipped_and_counted():
    model = make_model()
    poison_once(model, at_update=5)
    model.learn(100)
    assert model.nonfinite_skips == {"actor": 0, "critic": 1}
    skipped = [s for s in model.update_stats if s.get("critic_skipped")]
    assert [s["n_updates"] for s in skipped] == [5]
    assert "critic_cnn_after" not in skipped[0]
    assert all(th.isfinite(p).all() for p in model.policy.parameters())
    assert model.critic.optimizer.state_dict()["state"][0]["step"] == model._n_updates - 1


def test_nonfinite_gradient_raises_when_asked():
    model = make_model(on_nonfinite_grad="raise")
    poison_once(model, at_update=3)  # both optimizers have stepped by then
    saved = {}

    def save_state(grad):  # during update 3's critic backward: the state the raise must leave untouched
        if model._n_updates == 3 and not saved:
            saved["weights"] = copy.deepcopy(model.policy.state_dict())
            saved["adam"] = copy.deepcopy([model.critic.optimizer.state_dict(), model.actor.optimizer.state_dict()])
        return grad

    next(model.critic.q_networks[0].parameters()).register_hook(save_state)
    with pytest.raises(NonFiniteGradientError, match="Non-finite"):
        model.learn(100)
    assert model._n_updates == 3
    for key, value in model.policy.state_dict().items():
        assert th.equal(value, saved["weights"][key]), key
    for now, then in zip([model.critic.optimizer.state_dict(), model.actor.optimizer.state_dict()], saved["adam"]):
        assert now["state"].keys() == then["state"].keys() and now["state"]
        for index, state in now["state"].items():
            for name, value in state.items():
                assert th.equal(value, then["state"][index][name]), (index, name)


def group_names(model) -> set[str]:
    return {g.name for g in (*model._actor_groups, *model._critic_groups)}


def test_mlp_policy_has_no_cnn_group_and_logs_none():
    env = make_vec_env("Pendulum-v1", n_envs=1, seed=0)
    model = make_model(env=env, policy="MlpPolicy")
    model.learn(80)
    assert group_names(model) == {"actor_mlp", "critic_mlp"}
    assert not [k for k in model.logger.name_to_value if "cnn" in k]
    assert all("actor_cnn_before" not in s and "critic_cnn_before" not in s for s in model.update_stats)


def test_shared_features_extractor_gives_the_critic_cnn_no_gradient():
    model = make_model(policy_kwargs={**SMALL_CNN, "share_features_extractor": True})
    seen = reference_norms(model)
    model.learn(80)
    # SB3 hands the shared CNN to the critic's optimizer too, but computes critic features without gradient
    assert seen["critic_cnn"] == [] and len(seen["actor_cnn"]) > 0
    assert all("critic_cnn_before" not in s for s in model.update_stats)
    assert not [k for k in model.logger.name_to_value if "critic_cnn" in k]


def test_multi_input_policy_groups_the_combined_extractor():
    model = make_model(env=ToyImageEnv(dict_obs=True), policy="MultiInputPolicy",
                       policy_kwargs={"net_arch": [32], "features_extractor_kwargs": {"cnn_output_dim": 16}})  # fmt: skip
    seen = reference_norms(model)
    model.learn(80)
    assert group_names(model) == set(GROUPS)
    cnn_ids = {id(p) for p in model.actor.features_extractor.extractors["image"].parameters()}
    (actor_cnn,) = [g for g in model._actor_groups if g.name == "actor_cnn"]
    assert cnn_ids == {id(p) for p in actor_cnn.params}
    assert len(seen["actor_cnn"]) == len([s for s in model.update_stats if "actor_cnn_after" in s]) > 0


class TinyCNN(NatureCNN):
    """A custom features extractor: only the class changes, the grouping must follow the module."""


def test_custom_features_extractor_is_the_cnn_group():
    model = make_model(policy_kwargs={**SMALL_CNN, "features_extractor_class": TinyCNN})
    (critic_cnn,) = [g for g in model._critic_groups if g.name == "critic_cnn"]
    assert {id(p) for p in critic_cnn.params} == {id(p) for p in model.critic.features_extractor.parameters()}
    assert isinstance(model.critic.features_extractor, TinyCNN)


@pytest.mark.parametrize("value", [0, -1.0, math.nan, math.inf, "1.0", True])
def test_bad_limit_raises(value):
    with pytest.raises(ValueError, match="critic_mlp_max_grad_norm"):
        make_model(critic_mlp_max_grad_norm=value)


def test_unknown_nonfinite_action_raises():
    with pytest.raises(ValueError, match="on_nonfinite_grad"):
        make_model(on_nonfinite_grad="ignore")


def test_save_load_keeps_limits_and_accepts_new_ones(tmp_path):
    model = make_model(actor_cnn_max_grad_norm=0.25, critic_mlp_max_grad_norm=None, on_nonfinite_grad="raise")
    model.learn(60)
    model.save(tmp_path / "model")
    loaded = TD3CnnClip.load(tmp_path / "model", env=ToyImageEnv())
    assert (loaded.actor_cnn_max_grad_norm, loaded.critic_mlp_max_grad_norm) == (0.25, None)
    assert loaded.on_nonfinite_grad == "raise"
    assert {g.name: g.max_norm for g in loaded._actor_groups}["actor_cnn"] == 0.25
    for a, b in zip(model.policy.parameters(), loaded.policy.parameters()):
        assert th.equal(a, b)
    changed = TD3CnnClip.load(tmp_path / "model", actor_cnn_max_grad_norm=0.5)
    assert {g.name: g.max_norm for g in changed._actor_groups}["actor_cnn"] == 0.5
    custom = TD3CnnClip.load(tmp_path / "model", custom_objects={"critic_cnn_max_grad_norm": 3.0})
    assert custom.critic_cnn_max_grad_norm == 3.0
    with pytest.raises(ValueError, match="actor_mlp_max_grad_norm"):
        TD3CnnClip.load(tmp_path / "model", actor_mlp_max_grad_norm=-2)


def test_loads_a_plain_td3_model_with_default_limits(tmp_path):
    make_model(TD3).save(tmp_path / "td3")
    loaded = TD3CnnClip.load(tmp_path / "td3", env=ToyImageEnv())
    assert loaded.actor_cnn_max_grad_norm == 1.0
    loaded.learn(60)
    assert loaded.update_stats


def test_drop_in_with_vecenv_continued_learning_and_evaluation(tmp_path):
    env = make_vec_env(ToyImageEnv, n_envs=3, seed=0)
    model = make_model(env=env, train_freq=2, gradient_steps=2)
    model.learn(90)
    steps, updates = model.num_timesteps, model._n_updates
    model.learn(60, reset_num_timesteps=False)
    assert model.num_timesteps >= steps + 60 and model._n_updates > updates
    mean_reward, _ = evaluate_policy(model, env, n_eval_episodes=3)
    assert np.isfinite(mean_reward)
    action, _ = model.predict(env.observation_space.sample(), deterministic=True)
    assert action.shape == (2,)
    copy.deepcopy(model.policy)  # pipelines that copy the policy (e.g. for evaluation) still can
    other = make_model(env=env)
    other.set_parameters(model.get_parameters())
    for a, b in zip(model.policy.parameters(), other.policy.parameters()):
        assert th.equal(a, b)


@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e8])
def test_group_norm_matches_float64_and_propagates_nan(scale):
    gen = th.Generator().manual_seed(0)
    grads = [th.randn(n, generator=gen) * th.rand(n, generator=gen) ** 4 * scale for n in (300_000, 1024, 1025, 1)]
    exact = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads))
    assert group_norm(grads).item() == pytest.approx(exact, rel=1e-7)
    grads[0][7] = math.nan
    assert math.isnan(group_norm(grads).item())


@pytest.mark.parametrize("kwargs", [{"actor_lr_scale": 0}, {"actor_lr_scale": -1.0}, {"actor_lr_scale": None},
                                    {"pre_tanh_penalty": -0.1}, {"pre_tanh_penalty": math.inf}])  # fmt: skip
def test_bad_prevention_settings_raise(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        make_model(**kwargs)


def test_actor_lr_scale_scales_only_the_actor():
    model = make_model(actor_lr_scale=0.1, learning_rate=1e-3)
    model.learn(60)
    assert model.actor.optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)
    assert model.critic.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)


def test_pre_tanh_penalty_adds_its_gradient_to_the_actor_loss():
    """At the actor's step, its gradient is that of -Q1(s, pi(s)) + coef * mean(pre_tanh^2), computed here by hand."""
    coef = 0.5
    model = make_model(policy_delay=1, **{**EXACT_TD3, "pre_tanh_penalty": coef})
    model.learn(60)
    batch = model.replay_buffer.sample(16)
    model.replay_buffer.sample = lambda *args, **kwargs: batch
    checked = []

    def check(optimizer, args, kwargs):
        actor = copy.deepcopy(model.actor)
        actor.zero_grad()
        *body, _tanh = actor.mu
        pre = th.nn.Sequential(*body)(actor.extract_features(batch.observations, actor.features_extractor))
        loss = -model.critic.q1_forward(batch.observations, th.tanh(pre)).mean() + coef * pre.pow(2).mean()
        loss.backward()
        for got, want in zip(model.actor.parameters(), actor.parameters()):
            th.testing.assert_close(got.grad, want.grad)
        checked.append(loss.item())

    model.actor.optimizer.register_step_pre_hook(check)
    model.train(gradient_steps=2, batch_size=16)
    assert len(checked) == 2
    copy.deepcopy(model.policy)  # no autograd graph is left in the hooks
    assert [s["actor_loss"] for s in list(model.update_stats)[-2:]] == pytest.approx(checked)


def test_default_buffer_fits_and_positional_arguments_keep_td3_order():
    model = TD3CnnClip("CnnPolicy", ToyImageEnv(), 5e-4, 700, 30, policy_kwargs=SMALL_CNN)
    assert (model.learning_rate, model.buffer_size, model.learning_starts) == (5e-4, 700, 30)
    assert TD3CnnClip("CnnPolicy", ToyImageEnv(), policy_kwargs=SMALL_CNN).buffer_size == 200_000


def test_q_policy_gap_compares_one_critic():
    """The gap is Q1(s, pi(s)) - Q1(s, a_replay) with the critic the actor loss uses (after the critic's step)."""
    model = make_model(policy_delay=1)
    model.learn(60)
    batch = model.replay_buffer.sample(16)
    model.replay_buffer.sample = lambda *args, **kwargs: batch
    gaps = []

    def recompute(optimizer, args, kwargs):  # the critic has stepped, the actor not yet
        with th.no_grad():
            q_pi = model.critic.q1_forward(batch.observations, model.actor(batch.observations))
            gaps.append((q_pi.mean() - model.critic.q1_forward(batch.observations, batch.actions).mean()).item())

    model.actor.optimizer.register_step_pre_hook(recompute)
    model.train(gradient_steps=3, batch_size=16)
    logged = [s["q_policy_gap"] for s in list(model.update_stats)[-3:]]
    assert logged == pytest.approx(gaps, rel=1e-5, abs=1e-6)
    assert min(abs(g) for g in gaps) > 1e-4  # not vacuous


def test_logged_values_are_aggregates_of_independent_recomputations(tmp_path, monkeypatch):
    """Every per-dump value, read back from TensorBoard as the report reads it, against values recomputed here."""
    limits = {"actor_cnn_max_grad_norm": 0.03, "actor_mlp_max_grad_norm": 0.18,  # about the median norms:
              "critic_cnn_max_grad_norm": 0.19, "critic_mlp_max_grad_norm": 0.56}  # some updates clipped, some not
    model = make_model(learning_rate=lambda progress: 1e-3 * progress, actor_lr_scale=0.5, **limits)
    model.set_logger(configure(str(tmp_path), ["tensorboard"]))
    poison_once(model, at_update=5)
    after: dict[tuple[int, str], float] = {}
    reference_norms(model, after)
    expected: dict[int, dict[str, float]] = {}  # update -> independent figures

    cnn = {id(p): f"{net}_cnn" for net in ("actor", "critic") for p in getattr(model, net).features_extractor.parameters()}
    clip_and_step = cnnclip.clip_and_step

    def recording_clip(optimizer, groups, *args, **kwargs):  # BEFORE in float64 from the raw gradients, where over the limit
        network = "actor" if optimizer is model.actor.optimizer else "critic"
        squares: dict[str, float] = {}
        for p in (p for g in optimizer.param_groups for p in g["params"] if p.grad is not None):
            group = cnn.get(id(p), f"{network}_mlp")
            squares[group] = squares.get(group, 0.0) + float((p.grad.double() ** 2).sum())
        for group, square in squares.items():
            if math.sqrt(square) > limits[f"{group}_max_grad_norm"] * (1 - 1e-6):  # the clip's aim, just below the limit
                expected[model._n_updates][f"{group}_before"] = math.sqrt(square)
        return clip_and_step(optimizer, groups, *args, **kwargs)

    monkeypatch.setattr(cnnclip, "clip_and_step", recording_clip)
    sample = model.replay_buffer.sample
    batches = {}

    def recording_sample(*args, **kwargs):  # the critic's figures, with the weights of the critic loss
        batch = batches[model._n_updates] = sample(*args, **kwargs)
        with th.no_grad():
            q1, q2 = model.critic(batch.observations, batch.actions)
            features = model.critic.extract_features(batch.observations, model.critic.features_extractor)
        expected[model._n_updates] = {"q_replay": q1.mean().item(), "q_abs_max": max(q1.abs().max(), q2.abs().max()).item(),
                                      "critic_feature_norm": features.norm(dim=1).mean().item()}  # fmt: skip
        return batch

    monkeypatch.setattr(model.replay_buffer, "sample", recording_sample)

    def gap(optimizer, args, kwargs):  # the critic has stepped, the actor not yet
        batch = batches[model._n_updates]
        with th.no_grad():
            q_pi = model.critic.q1_forward(batch.observations, model.actor(batch.observations)).mean()
            q_rep = model.critic.q1_forward(batch.observations, batch.actions).mean()
        expected[model._n_updates]["q_policy_gap"] = (q_pi - q_rep).item()
        expected[model._n_updates]["actor_learning_rate"] = optimizer.param_groups[0]["lr"]

    model.actor.optimizer.register_step_pre_hook(gap)
    dumped = []  # the last update of each dump
    dump = model.logger.dump
    monkeypatch.setattr(model.logger, "dump", lambda step=0: (dumped.append(model._n_updates), dump(step)))
    model.learn(150, log_interval=1)  # dumps at the episode ends 50, 100, 150, before that step's train()
    model.dump_logs()  # as the CLI does
    assert dumped == [9, 59, 109, 110] and model.nonfinite_skips["critic"] == 1

    def per_dump(figure):  # figure(update) -> value or None, aggregated over each dump that has one
        means, maxima, sums = [], [], []
        for first, last in zip([0, *dumped], dumped):
            values = [v for u in range(first + 1, last + 1) if (v := figure(u)) is not None]
            if values:
                means.append(np.mean(values)), maxima.append(max(values)), sums.append(sum(values))
        return {"mean": means, "max": maxima, "sum": sums}

    scalars = load_scalars(tmp_path)
    checks = {"q_replay": per_dump(lambda u: expected[u]["q_replay"])["mean"],
              "q_abs_max": per_dump(lambda u: expected[u]["q_abs_max"])["max"],
              "critic_feature_norm": per_dump(lambda u: expected[u]["critic_feature_norm"])["mean"],
              "q_policy_gap": per_dump(lambda u: expected[u].get("q_policy_gap"))["mean"],
              "critic_nonfinite_skips": per_dump(lambda u: float(u == 5))["sum"],
              "actor_nonfinite_skips": per_dump(lambda u: 0.0)["sum"]}  # fmt: skip
    clipped_and_not = set()
    for group in GROUPS:
        def clip_of(update, group=group):
            if (update, group) not in after:  # no step: a critic-only update for the actor, or the skipped step
                return None
            before = expected[update].get(f"{group}_before", after[update, group])  # not clipped: BEFORE = AFTER
            clipped_and_not.add((group, f"{group}_before" in expected[update]))
            return before, after[update, group]

        checks[f"{group}_clip_frac"] = per_dump(lambda u: None if (c := clip_of(u)) is None else float(c[1] < c[0]))["mean"]
        checks[f"{group}_clip_ratio"] = per_dump(lambda u: None if (c := clip_of(u)) is None else c[1] / c[0])["mean"]
    for key, values in checks.items():
        np.testing.assert_allclose(scalars[f"train/{key}"].values, values, rtol=1e-5, atol=1e-7, err_msg=key)
    assert len(clipped_and_not) == 2 * len(GROUPS)  # every group was clipped on some updates and not on others
    # the actor's rate, at each actor step and as logged at each dump, is the schedule's times actor_lr_scale
    critic_lr = 1e-3 * np.array([1 - (40 + u) / 150 for u in range(1, 111)])  # update u trains after step 40 + u
    actor_lr = [expected[u].get("actor_learning_rate") for u in range(1, 111)]
    np.testing.assert_allclose([lr for lr in actor_lr if lr is not None], 0.5 * critic_lr[1::2], rtol=1e-6)
    np.testing.assert_allclose(scalars["train/actor_learning_rate"].values, 0.5 * scalars["train/learning_rate"].values, rtol=1e-6)
