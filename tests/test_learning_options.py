"""The sample-efficiency options of ``TD3CnnClip``: the DrQ-v2 critic-trained encoder, and SB3's n-step returns."""

from __future__ import annotations

import pytest
import torch as th
from torch.nn import functional as F

from sb3_td3_cnnclip import FrameStackReplayBuffer, TD3CnnClip
from sb3_td3_cnnclip.envs.toy import ToyImageEnv
from sb3_td3_cnnclip.policies import DetachedEncoder

SMALL_CNN = {"features_extractor_kwargs": {"features_dim": 16}, "net_arch": [32, 32]}
FAST = {"buffer_size": 600, "learning_starts": 40, "batch_size": 16, "seed": 3}


def make_model(**kwargs) -> TD3CnnClip:
    return TD3CnnClip("CnnPolicy", ToyImageEnv(), policy_kwargs=SMALL_CNN, **{**FAST, **kwargs})


def encoder_grads_at_step(model: TD3CnnClip) -> list[tuple[str, float]]:
    """Before every optimizer step, which network steps and the total |gradient| on the critic's encoder."""
    seen: list[tuple[str, float]] = []
    encoder = list(model.critic.features_extractor.parameters())
    for network in ("actor", "critic"):
        optimizer = getattr(model, network).optimizer
        step = optimizer.step

        def recording_step(*args, _network=network, _step=step, **kwargs):
            seen.append((_network, sum(float(p.grad.abs().sum()) for p in encoder if p.grad is not None)))
            return _step(*args, **kwargs)

        optimizer.step = recording_step
    return seen


def test_critic_trained_encoder_is_trained_by_the_critic_only():
    model = make_model(critic_trained_encoder=True)
    encoder = model.critic.features_extractor
    assert isinstance(model.actor.features_extractor, DetachedEncoder)
    assert model.actor.features_extractor.encoder is encoder
    assert model.actor_target.features_extractor.encoder is model.critic_target.features_extractor
    in_actor_optimizer = {id(p) for group in model.actor.optimizer.param_groups for p in group["params"]}
    assert not in_actor_optimizer & {id(p) for p in encoder.parameters()}
    before = [p.detach().clone() for p in encoder.parameters()]
    seen = encoder_grads_at_step(model)
    model.learn(80)
    # the critic's loss gives the encoder a gradient; the actor's gives it none (train() clears the critic's
    # gradients after the critic's step, so anything here at the actor's step would come from the actor's loss)
    assert all(grad > 0 for network, grad in seen if network == "critic")
    actor_steps = [i for i, (network, _) in enumerate(seen) if network == "actor"]
    assert actor_steps and all(seen[i - 1][0] == "critic" and seen[i][1] == 0 for i in actor_steps)
    assert any(not th.equal(b, p) for b, p in zip(before, encoder.parameters()))


def test_actor_loss_gives_the_encoder_no_gradient_and_the_critic_loss_does():
    model = make_model(critic_trained_encoder=True)
    model.learn(60)
    batch = model.replay_buffer.sample(16)
    encoder = list(model.critic.features_extractor.parameters())
    model.policy.zero_grad(set_to_none=True)
    (-model.critic.q1_forward(batch.observations, model.actor(batch.observations)).mean()).backward()
    assert all(p.grad is None for p in encoder)
    assert all(p.grad is not None for p in model.actor.mu.parameters())
    q1, q2 = model.critic(batch.observations, batch.actions)
    (F.mse_loss(q1, batch.rewards) + F.mse_loss(q2, batch.rewards)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder)


def test_critic_trained_encoder_has_one_cnn_group_limited_by_the_critic_cnn_limit():
    model = make_model(critic_trained_encoder=True, critic_cnn_max_grad_norm=1e-3)
    model.learn(80)
    assert [g.name for g in model._actor_groups] == ["actor_mlp"]
    assert {g.name for g in model._critic_groups} == {"critic_cnn", "critic_mlp"}
    assert not [key for key in model.logger.name_to_value if "actor_cnn" in key]
    assert all(s["critic_cnn_after"] <= 1e-3 for s in model.update_stats if "critic_cnn_after" in s)
    # one CNN trained instead of two: the optimizers hold one encoder fewer than TD3's
    td3 = make_model()
    optimized = [
        sum(p.numel() for network in (m.actor, m.critic) for g in network.optimizer.param_groups for p in g["params"])
        for m in (model, td3)
    ]
    assert optimized[1] - optimized[0] == sum(p.numel() for p in td3.actor.features_extractor.parameters())


def test_critic_trained_encoder_survives_save_and_load(tmp_path):
    model = make_model(critic_trained_encoder=True)
    model.learn(60)
    model.save(tmp_path / "model.zip")
    loaded = TD3CnnClip.load(tmp_path / "model.zip", env=ToyImageEnv())
    assert loaded.critic_trained_encoder
    assert loaded.actor.features_extractor.encoder is loaded.critic.features_extractor
    observations = model.replay_buffer.sample(8).observations
    with th.no_grad():
        assert th.equal(model.actor(observations), loaded.actor(observations))
    for saved, restored in zip(model.critic.features_extractor.parameters(), loaded.critic.features_extractor.parameters()):
        assert th.equal(saved, restored)
    loaded.learn(50)


def test_critic_trained_encoder_with_dict_observations():
    model = TD3CnnClip("MultiInputPolicy", ToyImageEnv(dict_obs=True), critic_trained_encoder=True,
                       policy_kwargs={"net_arch": [32], "features_extractor_kwargs": {"cnn_output_dim": 16}}, **FAST)  # fmt: skip
    model.learn(60)
    assert [g.name for g in model._actor_groups] == ["actor_mlp"]


@pytest.mark.parametrize(
    ("policy", "kwargs", "match"),
    [
        ("CnnPolicy", {"policy_kwargs": {**SMALL_CNN, "share_features_extractor": True}}, "share_features_extractor"),
        ("MlpPolicy", {}, "features extractor with parameters"),
        ("CnnPolicy", {"policy_kwargs": SMALL_CNN, "critic_trained_encoder": 1}, "True or False"),
    ],
)
def test_critic_trained_encoder_bad_settings_raise(policy, kwargs, match):
    env = "Pendulum-v1" if policy == "MlpPolicy" else ToyImageEnv()
    kwargs = {"critic_trained_encoder": True, **kwargs}
    with pytest.raises(ValueError, match=match):
        TD3CnnClip(policy, env, **{**FAST, **kwargs})


def expected_critic_loss(model: TD3CnnClip, batch) -> float:
    """TD3's critic loss on ``batch`` with the batch's own discounts (target policy noise 0)."""
    with th.no_grad():
        next_actions = model.actor_target(batch.next_observations).clamp(-1, 1)
        next_q = th.min(th.cat(model.critic_target(batch.next_observations, next_actions), dim=1), dim=1, keepdim=True)[0]
        target = batch.rewards + (1 - batch.dones) * batch.discounts * next_q
        return sum(F.mse_loss(q, target) for q in model.critic(batch.observations, batch.actions)).item()


def test_n_step_returns_use_the_sampled_discounts():
    model = make_model(n_steps=3, gamma=0.9, target_policy_noise=0.0)
    assert isinstance(model.replay_buffer, FrameStackReplayBuffer) and model.replay_buffer.n_steps == 3
    model.learn(100)
    batch = model.replay_buffer.sample(64)
    # no episode ends inside 3 steps here (episodes last 50 steps and only truncate), so most discounts are gamma**3
    powers = th.tensor([0.9, 0.9**2, 0.9**3])
    closest = (batch.discounts - powers).abs().argmin(dim=1)
    assert th.allclose(batch.discounts.flatten(), powers[closest])
    assert (closest == 2).float().mean() > 0.5
    batch = batch._replace(discounts=th.rand_like(batch.discounts))
    model.replay_buffer.sample = lambda *args, **kwargs: batch
    expected = expected_critic_loss(model, batch)
    assert expected != pytest.approx(expected_critic_loss(model, batch._replace(discounts=th.full_like(batch.discounts, 0.9))))
    model.train(1, batch_size=64)
    assert model.update_stats[-1]["critic_loss"] == pytest.approx(expected, rel=1e-5)
