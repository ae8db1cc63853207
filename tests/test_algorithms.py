"""Every algorithm of the package against its base: exact setting bit for bit, the clip invariant recomputed here,
non-finite skips, save/load and evaluation."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch as th
from sb3_contrib import TQC
from stable_baselines3 import DDPG, SAC, TD3
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

from sb3_td3_cnnclip import DDPGCnnClip, SACCnnClip, TD3CnnClip, TQCCnnClip
from sb3_td3_cnnclip.envs.toy import ToyImageEnv
from sb3_td3_cnnclip.policies import DetachedEncoder

SMALL_CNN = {"features_extractor_kwargs": {"features_dim": 16}, "net_arch": [32, 32]}
FAST = {"buffer_size": 600, "learning_starts": 40, "batch_size": 16, "seed": 3}
LIMITS = ("actor_cnn_max_grad_norm", "actor_mlp_max_grad_norm", "critic_cnn_max_grad_norm", "critic_mlp_max_grad_norm")
#: the documented setting whose updates are exactly the base algorithm's
EXACT = {**dict.fromkeys(LIMITS), "pre_tanh_penalty": 0.0, "channels_last": False}
#: each class and its base algorithm
BASES = {TD3CnnClip: TD3, SACCnnClip: SAC, DDPGCnnClip: DDPG, TQCCnnClip: TQC}
ALGOS = list(BASES)
#: policy -> (env factory, policy_kwargs)
POLICIES = {
    "CnnPolicy": (ToyImageEnv, SMALL_CNN),
    "MultiInputPolicy": (lambda: ToyImageEnv(dict_obs=True), {"net_arch": [32, 32]}),
    "MlpPolicy": (lambda: make_vec_env("Pendulum-v1", n_envs=1, seed=0), {"net_arch": [32, 32]}),
}


def make_model(algo, policy="CnnPolicy", env=None, **kwargs):
    make_env, policy_kwargs = POLICIES[policy]
    env = make_env() if env is None else env
    return algo(policy, env, policy_kwargs=dict(policy_kwargs), **{**FAST, **kwargs})  # SB3 writes into the dict


def algorithm_tensors(model) -> dict[str, th.Tensor]:
    """Every learned tensor of a model: the policy's state and SAC's log entropy coefficient."""
    tensors = dict(model.policy.state_dict())
    if getattr(model, "log_ent_coef", None) is not None:
        tensors["log_ent_coef"] = model.log_ent_coef
    return tensors


@pytest.mark.parametrize("policy", list(POLICIES))
@pytest.mark.parametrize("algo", ALGOS, ids=lambda algo: algo.__name__)
def test_exact_setting_is_the_base_algorithm_bit_for_bit(algo, policy):
    # SB3 seeds the global RNGs when a model is built: build and train one model after the other
    reference = make_model(BASES[algo], policy).learn(70)
    model = make_model(algo, policy, **EXACT).learn(70)
    assert model._n_updates == reference._n_updates == 30
    want, got = algorithm_tensors(reference), algorithm_tensors(model)
    assert want.keys() == got.keys()
    for key in want:
        assert th.equal(want[key], got[key]), key
    assert reference.logger.name_to_value["train/critic_loss"] == model.logger.name_to_value["train/critic_loss"]


@pytest.mark.parametrize("algo", ALGOS, ids=lambda algo: algo.__name__)
def test_exact_setting_with_n_step_returns_is_the_base_algorithm_bit_for_bit(algo):
    """n-step targets from the package's frame-stack buffer against SB3's NStepReplayBuffer."""
    reference = make_model(BASES[algo], n_steps=3).learn(70)
    model = make_model(algo, n_steps=3, **EXACT).learn(70)
    assert type(reference.replay_buffer).__name__ == "NStepReplayBuffer"
    want, got = algorithm_tensors(reference), algorithm_tensors(model)
    assert model._n_updates == reference._n_updates == 30
    for key in want:
        assert th.equal(want[key], got[key]), key


def norms_at_step(model) -> dict[str, list[float]]:
    """Each group's gradient norm in float64, recorded every time an optimizer is about to step; the groups are
    rebuilt here from the networks' modules (CNN: the features extractor's parameters), not from the code under test.
    The learned entropy coefficient's optimizer is recorded as the group ``ent_coef``."""
    seen: dict[str, list[float]] = {}

    def watch(prefix: str, optimizer: th.optim.Optimizer, cnn_ids: set[int]) -> None:
        def hook(optimizer, args, kwargs):
            params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            for part, members in (("cnn", [p for p in params if id(p) in cnn_ids]),
                                  ("mlp", [p for p in params if id(p) not in cnn_ids])):  # fmt: skip
                if members:
                    name = f"{prefix}_{part}" if prefix != "ent_coef" else prefix
                    norm = math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in members))
                    seen.setdefault(name, []).append(norm)

        optimizer.register_step_pre_hook(hook)

    for network in ("actor", "critic"):
        module = getattr(model, network)
        watch(network, module.optimizer, {id(p) for p in module.features_extractor.parameters()})
    if getattr(model, "ent_coef_optimizer", None) is not None:
        watch("ent_coef", model.ent_coef_optimizer, set())
    return seen


@pytest.mark.parametrize("algo", ALGOS, ids=lambda algo: algo.__name__)
def test_after_norm_at_step_time_is_within_the_limit(algo):
    limits = {"actor_cnn_max_grad_norm": 0.05, "actor_mlp_max_grad_norm": 0.02,
              "critic_cnn_max_grad_norm": 0.5, "critic_mlp_max_grad_norm": 0.3}  # fmt: skip
    model = make_model(algo, env=ToyImageEnv(reward_scale=1e4), **limits)
    seen = norms_at_step(model)
    model.learn(100)
    stats = list(model.update_stats)
    assert len(stats) == model._n_updates == 60
    for name in ("actor_cnn", "actor_mlp", "critic_cnn", "critic_mlp"):
        logged = [s[f"{name}_after"] for s in stats if f"{name}_after" in s]
        assert len(logged) == len(seen[name]) > 0
        np.testing.assert_allclose(logged, seen[name], rtol=1e-6)  # group_norm is within 1e-7 of float64
        assert max(seen[name]) <= limits[f"{name}_max_grad_norm"]
        assert sum(s[f"{name}_after"] < s[f"{name}_before"] for s in stats if f"{name}_after" in s) > 0  # clipped
    if algo in (SACCnnClip, TQCCnnClip):  # the entropy coefficient is measured, never clipped: its gradient steps as it came
        logged = [s["ent_coef_before"] for s in stats]
        np.testing.assert_allclose(logged, seen["ent_coef"], rtol=1e-6)
        assert [s["ent_coef_after"] for s in stats] == logged
        assert min(logged) > max(limits.values())  # larger than any limit: a clip would have shown


def poison_once(model, at_update: int) -> None:
    """Make the critic's gradient NaN during update number ``at_update``."""
    param = next(model.critic.q_networks[0].parameters())
    param.register_hook(lambda grad: grad * math.nan if model._n_updates == at_update else grad)


@pytest.mark.parametrize("algo", ALGOS, ids=lambda algo: algo.__name__)
def test_nonfinite_critic_gradient_is_skipped_and_counted(algo):
    model = make_model(algo)
    poison_once(model, at_update=5)
    model.learn(70)
    assert model.nonfinite_skips["critic"] == 1 and sum(model.nonfinite_skips.values()) == 1
    assert [s["n_updates"] for s in model.update_stats if s.get("critic_skipped")] == [5]
    assert all(th.isfinite(p).all() for p in algorithm_tensors(model).values())
    assert model.critic.optimizer.state_dict()["state"][0]["step"] == model._n_updates - 1


@pytest.mark.parametrize("algo", ALGOS, ids=lambda algo: algo.__name__)
def test_save_load_evaluate_and_load_the_base_algorithms_zip(algo, tmp_path):
    model = make_model(algo, actor_cnn_max_grad_norm=0.25, critic_mlp_max_grad_norm=None).learn(60)
    model.save(tmp_path / "model")
    loaded = algo.load(tmp_path / "model", env=ToyImageEnv())
    assert (loaded.actor_cnn_max_grad_norm, loaded.critic_mlp_max_grad_norm) == (0.25, None)
    assert {g.name: g.max_norm for g in loaded._actor_groups}["actor_cnn"] == 0.25
    want, got = algorithm_tensors(model), algorithm_tensors(loaded)
    assert all(th.equal(want[key], got[key]) for key in want)
    loaded.learn(20, reset_num_timesteps=False)
    assert loaded._n_updates > model._n_updates and loaded.update_stats
    mean_reward, _ = evaluate_policy(loaded, loaded.get_env(), n_eval_episodes=2)
    assert np.isfinite(mean_reward)
    make_model(BASES[algo]).save(tmp_path / "base")
    from_base = algo.load(tmp_path / "base", env=ToyImageEnv())
    assert from_base.actor_cnn_max_grad_norm == 1.0
    from_base.learn(50)
    assert from_base.update_stats


def fixed_batch(model, size: int = 16):
    """Make every replay sample of ``model`` return one batch, and return it."""
    batch = model.replay_buffer.sample(size)
    model.replay_buffer.sample = lambda *args, **kwargs: batch
    return batch


def test_sac_actor_gradient_is_sacs_loss_plus_the_pre_tanh_penalty():
    """At the actor's step, its gradient is that of SAC's actor loss plus coef * mean(mean_action ** 2), computed
    here by hand with the update's own noise (the first draw of the update) and the critic after its step."""
    coef, ent_coef = 0.5, 0.1
    model = make_model(SACCnnClip, ent_coef=ent_coef, **{**EXACT, "pre_tanh_penalty": coef}).learn(60)
    batch = fixed_batch(model)
    rng = th.get_rng_state()
    checked = []

    def check(optimizer, args, kwargs):
        actor, critic = copy.deepcopy(model.actor), copy.deepcopy(model.critic)
        th.set_rng_state(rng)
        actions, log_prob = actor.action_log_prob(batch.observations)
        mean = actor.mu(actor.latent_pi(actor.extract_features(batch.observations, actor.features_extractor)))
        q = th.cat(critic(batch.observations, actions), dim=1).min(dim=1, keepdim=True).values
        loss = (ent_coef * log_prob.reshape(-1, 1) - q).mean() + coef * mean.pow(2).mean()
        loss.backward()
        for got, want in zip(model.actor.parameters(), actor.parameters(), strict=True):
            th.testing.assert_close(got.grad, want.grad)
        checked.append(loss.item())

    model.actor.optimizer.register_step_pre_hook(check)
    model.train(gradient_steps=1, batch_size=16)
    assert len(checked) == 1
    assert model.update_stats[-1]["actor_loss"] == pytest.approx(checked[0], rel=1e-6)


def test_sac_dead_actor_signals_are_those_of_the_mean_action():
    model = make_model(SACCnnClip).learn(50)
    batch = fixed_batch(model)
    with th.no_grad():
        model.actor.mu.weight.zero_()
        model.actor.mu.bias.copy_(th.tensor([20.0, 1.5]))  # tanh(20) is a bound, tanh(1.5) = 0.905 is not
        features = model.actor.features_extractor(batch.observations.float() / 255.0)
    model.train(gradient_steps=1, batch_size=16)
    stats = model.update_stats[-1]
    assert stats["actor_saturation"] == 0.5
    assert stats["actor_pre_tanh_abs"] == pytest.approx(10.75, rel=1e-6)
    assert stats["actor_feature_norm"] == pytest.approx(features.norm(dim=1).mean().item(), rel=1e-5)


def test_sac_with_a_fixed_entropy_coefficient_has_no_entropy_group():
    model = make_model(SACCnnClip, ent_coef=0.1).learn(60)
    assert model.ent_coef_optimizer is None and set(model.nonfinite_skips) == {"actor", "critic"}
    assert {g.name for g in model._groups} == {"actor_cnn", "actor_mlp", "critic_cnn", "critic_mlp"}
    assert all("ent_coef_before" not in s and s["ent_coef"] == pytest.approx(0.1) for s in model.update_stats)
    assert "train/ent_coef_loss" not in model.logger.name_to_value
    assert not [key for key in model.logger.name_to_value if key.startswith("train/ent_coef_")]


def test_sac_refuses_compile_update():
    with pytest.raises(ValueError, match="compile_update=True is not available for SACCnnClip"):
        make_model(SACCnnClip, compile_update=True)


def test_sac_critic_trained_encoder_is_trained_by_the_critic_only():
    model = make_model(SACCnnClip, critic_trained_encoder=True)
    encoder = model.critic.features_extractor
    assert isinstance(model.actor.features_extractor, DetachedEncoder)
    assert model.actor.features_extractor.encoder is encoder
    assert [g.name for g in model._actor_groups] == ["actor_mlp"]
    phase = {"now": "before the critic's step"}
    model.critic.optimizer.register_step_post_hook(lambda *_: phase.update(now="after the critic's step"))
    model.actor.optimizer.register_step_post_hook(lambda *_: phase.update(now="before the critic's step"))
    reached = []
    for param in encoder.parameters():
        param.register_post_accumulate_grad_hook(lambda _: reached.append(phase["now"]))
    before = [p.detach().clone() for p in encoder.parameters()]
    model.learn(60)
    assert reached and set(reached) == {"before the critic's step"}  # the critic's loss only, never the actor's
    assert any(not th.equal(b, p) for b, p in zip(before, encoder.parameters()))


def test_ddpg_keeps_ddpgs_settings_and_its_own_penalty_default():
    model = make_model(DDPGCnnClip)
    assert (model.policy_delay, model.target_noise_clip, len(model.critic.q_networks)) == (1, 0.0, 1)
    assert model.pre_tanh_penalty == 0.01 == make_model(TD3CnnClip).pre_tanh_penalty  # measured for each
    with pytest.raises(TypeError, match="policy_delay"):
        make_model(DDPGCnnClip, policy_delay=2)  # as DDPG itself


def test_tqc_critic_statistics_read_the_quantiles():
    model = make_model(TQCCnnClip).learn(60)
    batch = fixed_batch(model)
    with th.no_grad():  # the weights of the coming critic loss (the entropy step before it leaves the critic alone)
        quantiles = model.critic(batch.observations, batch.actions)
    assert quantiles.shape == (16, 2, 25)
    model.train(gradient_steps=1, batch_size=16)
    stats = model.update_stats[-1]
    assert stats["q_replay"] == pytest.approx(quantiles[:, 0].mean().item(), rel=1e-5)
    assert stats["q_abs_max"] == pytest.approx(quantiles.abs().max().item(), rel=1e-5)
