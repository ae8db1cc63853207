"""ExplosionEarlyStopping on tiny TD3CnnClip / TD3 toy-env runs: silent when healthy, stops on divergence."""

import json
import math

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3 import DDPG, SAC, TD3
from stable_baselines3.common.logger import configure

from sb3_td3_cnnclip import TD3CnnClip
from sb3_td3_cnnclip.callbacks import ExplosionEarlyStopping
from sb3_td3_cnnclip.callbacks.explosion import STATS_CHECKS
from sb3_td3_cnnclip.encoders import BoundedNatureCNN
from sb3_td3_cnnclip.envs.toy import ToyImageEnv

#: bound on the toy env's |reward| at reward_scale 1: (1.3^2 + 1.2^2) + 1
TOY_R_MAX = 4.2
ALL_CHECKS = ["nonfinite_loss", "nonfinite_grad", "actor_loss", "q_bound", "grad_norm", "feature_norm",
              "feature_growth", "q_gap", "dead_actor"]  # fmt: skip


class NanRewardAfter(gym.Wrapper):
    """Returns a NaN reward from step ``after`` on."""

    def __init__(self, env: gym.Env, after: int) -> None:
        super().__init__(env)
        self.after = after
        self.steps = 0

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.steps += 1
        return obs, math.nan if self.steps >= self.after else reward, terminated, truncated, info


def toy_model(tmp_path, algo=TD3CnnClip, lr=1e-4, bounded=True, reward_scale=1.0, env=None, **kwargs):
    """A tiny model of the toy env logging JSON lines to ``tmp_path`` (the callback's default log_dir)."""
    policy_kwargs = dict(features_extractor_kwargs=dict(features_dim=32), net_arch=[32, 32])
    if bounded:
        policy_kwargs["features_extractor_class"] = BoundedNatureCNN
    env = ToyImageEnv(size=36, reward_scale=reward_scale) if env is None else env
    model = algo(
        "CnnPolicy", env, learning_rate=lr, batch_size=16, buffer_size=1000, learning_starts=50,
        policy_kwargs=policy_kwargs, seed=0, **kwargs,
    )  # fmt: skip
    model.set_logger(configure(str(tmp_path), ["json"]))
    return model


def dumps(tmp_path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "progress.json").read_text().splitlines()]


def test_healthy_run_never_fires_and_logs_zero_alerts(tmp_path):
    model = toy_model(tmp_path)
    callback = ExplosionEarlyStopping(r_max=TOY_R_MAX)
    model.learn(300, callback=callback, log_interval=1)
    assert model.num_timesteps == 300
    assert (callback.triggered, callback.reason) == ([], None)
    assert callback.checks == ALL_CHECKS
    assert callback.alerts == dict.fromkeys(ALL_CHECKS, 0)
    rows = dumps(tmp_path)
    assert len(rows) == 6  # one per 50-step episode
    for row in rows:
        assert {key: row[key] for key in row if key.startswith("alerts/")} == {f"alerts/{c}": 0 for c in ALL_CHECKS}
    assert not (tmp_path / "explosion.json").exists()


def check_stopped(tmp_path, callback, model, check, total):
    """The run stopped early on ``check`` and left a report, a log entry and a loadable last-healthy model."""
    assert model.num_timesteps < total
    assert check in callback.triggered
    report = json.loads((tmp_path / "explosion.json").read_text())
    assert report["checks"] == callback.triggered and report["reason"] == callback.reason
    assert report["num_timesteps"] == model.num_timesteps - 1  # found after train(), stopped at the next env step
    assert report["alerts"][check] >= 1
    last = dumps(tmp_path)[-1]
    assert last[f"alerts/{check}"] == report["alerts"][check] and last["alerts/reason"] == callback.reason
    return report


@pytest.mark.parametrize(
    ("overrides", "check"),
    [
        (dict(reward_scale=1e6), "grad_norm"),  # critic gradients ~1e6 against a limit of 10
        (dict(lr=0.1, bounded=False), "feature_norm"),  # the actor's CNN features reach ~1e6
    ],
)
def test_divergence_stops_and_saves_the_last_healthy_model(tmp_path, overrides, check):
    model = toy_model(tmp_path, **overrides)
    initial = {k: v.clone() for k, v in model.policy.state_dict().items()}
    callback = ExplosionEarlyStopping(r_max=TOY_R_MAX, window=20, snapshot_freq=10_000)
    with pytest.warns(RuntimeWarning, match="stopped training"):
        model.learn(400, callback=callback)
    report = check_stopped(tmp_path, callback, model, check, 400)
    # With snapshot_freq beyond the run, the last healthy model is the one training started from.
    assert report["last_healthy"] == {"path": str(tmp_path / "last_healthy.zip"), "num_timesteps": 0, "n_updates": 0,
                                      "progress_remaining": 1.0}
    # Both the saved model and the model learn() returns are the last healthy one.
    for policy in (TD3CnnClip.load(tmp_path / "last_healthy.zip").policy, model.policy):
        for key, value in policy.state_dict().items():
            assert th.equal(value, initial[key]), key


def test_snapshot_is_the_last_healthy_check(tmp_path):
    model = toy_model(tmp_path, env=NanRewardAfter(ToyImageEnv(size=36), after=200))
    snapshots = []
    callback = ExplosionEarlyStopping(r_max=TOY_R_MAX, snapshot_freq=40)
    take = callback._take_snapshot

    def recording_snapshot():
        take()
        snapshots.append((model._n_updates, {k: v.clone() for k, v in model.policy.state_dict().items()}))

    callback._take_snapshot = recording_snapshot
    with pytest.warns(RuntimeWarning, match="non-finite loss"):
        model.learn(400, callback=callback)
    report = check_stopped(tmp_path, callback, model, "nonfinite_loss", 400)
    assert [n for n, _ in snapshots] == [0, 40, 80, 120]  # every 40 updates while healthy, none after the NaN
    assert report["last_healthy"]["n_updates"] == 120
    loaded = TD3CnnClip.load(tmp_path / "last_healthy.zip")
    for key, value in loaded.policy.state_dict().items():
        assert th.equal(value, snapshots[-1][1][key]), key


def test_nonfinite_gradients_every_step_stop(tmp_path):
    model = toy_model(tmp_path)
    for param in model.actor.mu.parameters():
        param.register_hook(lambda grad: grad * math.nan)
    callback = ExplosionEarlyStopping(r_max=TOY_R_MAX, window=10)
    with pytest.warns(RuntimeWarning, match="actor's gradient was NaN or infinite on each of its last 10"):
        model.learn(400, callback=callback)
    check_stopped(tmp_path, callback, model, "nonfinite_grad", 400)
    assert model.nonfinite_skips["actor"] == 10  # stopped at the 10th skipped actor step


def test_dead_actor_stops_and_names_the_cause(tmp_path):
    # lr 1e-3 with NatureCNN: the actor's features grow, its tanh saturates and its MLP gradient becomes exactly 0.
    model = toy_model(tmp_path, lr=1e-3, bounded=False, pre_tanh_penalty=0.0)
    callback = ExplosionEarlyStopping(r_max=TOY_R_MAX, feature_growth=None, window=20)
    with pytest.warns(RuntimeWarning, match="dead actor"):
        model.learn(400, callback=callback)
    check_stopped(tmp_path, callback, model, "dead_actor", 400)
    assert callback.triggered == ["dead_actor"]
    assert "exactly zero on 20" in callback.reason or "saturated on 20" in callback.reason
    assert "tanh saturated" in callback.reason and "set TD3CnnClip's pre_tanh_penalty=0.01" in callback.reason
    assert "BoundedNatureCNN" not in callback.reason  # a bounded encoder was measured not to keep the actor alive
    actor_updates = [s for s in model.update_stats if "actor_loss" in s][-20:]
    assert all(s["actor_mlp_before"] == 0 or s["actor_saturation"] > 0.9 for s in actor_updates)


def test_dead_actor_warn_mode_keeps_training(tmp_path):
    model = toy_model(tmp_path, lr=1e-3, bounded=False, pre_tanh_penalty=0.0)
    callback = ExplosionEarlyStopping(r_max=TOY_R_MAX, feature_growth=None, window=20, dead_actor="warn")
    with pytest.warns(RuntimeWarning, match="dead actor") as record:
        model.learn(300, callback=callback, log_interval=1)
    model.dump_logs()  # as the CLI does: the updates (and alerts) since the last dump of learn()
    assert model.num_timesteps == 300 and callback.triggered == []
    assert len([w for w in record if "dead actor" in str(w.message)]) == 1  # warned once
    assert callback.alerts["dead_actor"] >= 2  # then counted every further window
    assert dumps(tmp_path)[-1]["alerts/dead_actor"] == callback.alerts["dead_actor"]


def test_dead_actor_off_removes_the_check(tmp_path):
    callback = ExplosionEarlyStopping(dead_actor="off", q_gap_fraction=None, nonfinite_grad=False)
    assert callback.checks == ["nonfinite_loss", "actor_loss", "q_bound", "grad_norm", "feature_norm", "feature_growth"]


@pytest.mark.parametrize("algo", [TD3, DDPG, SAC])
def test_plain_sb3_runs_the_loss_checks_only(tmp_path, algo):
    model = toy_model(tmp_path, algo=algo, env=NanRewardAfter(ToyImageEnv(size=36), after=100))
    callback = ExplosionEarlyStopping(r_max=TOY_R_MAX)
    with pytest.warns(UserWarning, match=f"{algo.__name__} keeps no per-update statistics"):
        with pytest.warns(RuntimeWarning, match="non-finite loss"):
            model.learn(400, callback=callback)
    assert callback.checks == [c for c in ALL_CHECKS if c not in STATS_CHECKS]
    check_stopped(tmp_path, callback, model, "nonfinite_loss", 400)
    assert np.isfinite(algo.load(tmp_path / "last_healthy.zip").policy.parameters_to_vector()).all()


def test_plain_td3_healthy_run_never_fires(tmp_path):
    model = toy_model(tmp_path, algo=TD3)
    callback = ExplosionEarlyStopping(r_max=TOY_R_MAX)
    with pytest.warns(UserWarning, match="TD3 keeps no per-update statistics"):
        model.learn(300, callback=callback, log_interval=1)
    assert model.num_timesteps == 300 and callback.triggered == []
    assert {key: value for key, value in dumps(tmp_path)[-1].items() if key.startswith("alerts/")} == {
        "alerts/nonfinite_loss": 0, "alerts/actor_loss": 0, "alerts/q_bound": 0,
    }  # fmt: skip


def test_q_checks_need_r_max(tmp_path):
    model = toy_model(tmp_path)
    callback = ExplosionEarlyStopping()
    with pytest.warns(UserWarning, match=r"skips the checks \['q_bound', 'q_gap'\]: r_max is unknown"):
        model.learn(60, callback=callback, log_interval=1)
    assert "q_bound" not in callback.checks and "alerts/q_bound" not in dumps(tmp_path)[-1]


def test_q_bound_reads_max_abs_reward_from_the_env(tmp_path):
    env = ToyImageEnv(size=36)
    env.max_abs_reward = 0.001  # a bound the critic's estimates will pass
    model = toy_model(tmp_path, env=env, gamma=0.5)
    callback = ExplosionEarlyStopping()
    with pytest.warns(RuntimeWarning, match=r"exceeds 1.5 x r_max/\(1-gamma\) = 0.003"):
        model.learn(400, callback=callback)
    assert callback.q_bound == pytest.approx(0.002)
    check_stopped(tmp_path, callback, model, "q_bound", 400)


@pytest.mark.parametrize(
    "kwargs",
    [dict(dead_actor="maybe"), dict(window=0), dict(snapshot_freq=1.5), dict(grad_norm_factor=-1.0),
     dict(r_max=math.inf), dict(saturation_threshold=0.0)],
)  # fmt: skip
def test_invalid_parameters_are_rejected(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        ExplosionEarlyStopping(**kwargs)


def test_every_update_of_a_long_train_call_is_checked(tmp_path, force_q):
    # 60 gradient steps per train() call against a history of 20: update 5 would leave update_stats unchecked
    model = toy_model(tmp_path, train_freq=60, gradient_steps=-1, stats_history=20)
    force_q(model, at_update=5, value=1e9, on="replay")
    callback = ExplosionEarlyStopping(r_max=TOY_R_MAX)
    with pytest.warns(RuntimeWarning, match=r"update 5: \|Q\| = 1e\+09"):
        model.learn(200, callback=callback)
    assert callback.triggered == ["q_bound"]
    assert len(model.update_stats) >= 60  # the history grew to hold a whole train() call


def test_updates_that_left_update_stats_unchecked_raise(tmp_path):
    model = toy_model(tmp_path, stats_history=20)
    callback = ExplosionEarlyStopping(r_max=TOY_R_MAX)
    model.learn(60, callback=callback)
    model.train(15, batch_size=16)  # two train() calls outside learn(): 30 updates since the last check
    model.train(15, batch_size=16)
    with pytest.raises(RuntimeError, match=r"Updates 11 to 20 left model.update_stats before they were checked"):
        callback.on_rollout_start()


def test_an_update_interrupted_inside_train_is_not_an_eviction(tmp_path):
    """Ctrl-C inside train() counts an update that never finished: the callback's end of training must not raise."""
    model = toy_model(tmp_path)
    callback = ExplosionEarlyStopping(r_max=TOY_R_MAX)
    model.learn(60, callback=callback)
    checked = callback._last_update
    model.replay_buffer.sample = lambda *args, **kwargs: (_ for _ in ()).throw(KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt):
        model.train(1, batch_size=16)
    assert model._n_updates == checked + 1 and model.update_stats[-1]["n_updates"] == checked
    callback.on_rollout_start()  # nothing new to check, no error
    assert callback.triggered == []


def test_last_healthy_checkpoint_carries_the_snapshot_counters(tmp_path):
    model = toy_model(tmp_path, env=NanRewardAfter(ToyImageEnv(size=36), after=200), lr=lambda p: 1e-4 * p)
    callback = ExplosionEarlyStopping(r_max=TOY_R_MAX, snapshot_freq=40)
    counters = []
    take = callback._take_snapshot

    def recording_snapshot():
        take()
        counters.append((model._n_updates, model.num_timesteps, model._current_progress_remaining))

    callback._take_snapshot = recording_snapshot
    with pytest.warns(RuntimeWarning, match="non-finite loss"):
        model.learn(400, callback=callback)
    loaded = TD3CnnClip.load(tmp_path / "last_healthy.zip")
    assert counters[-1][0] == 120
    assert (loaded._n_updates, loaded.num_timesteps, loaded._current_progress_remaining) == counters[-1]
    assert (model._n_updates, model.num_timesteps) != counters[-1][:2]  # the model that stopped went further
    report = json.loads((tmp_path / "explosion.json").read_text())["last_healthy"]
    assert (report["n_updates"], report["num_timesteps"]) == counters[-1][:2]


def test_a_trigger_at_training_end_gives_a_stopped_status(tmp_path, monkeypatch):
    from functools import partial

    from sb3_td3_cnnclip import cli, session

    # the only actor update (update 2) is the last train() of learn(), checked in _on_training_end
    monkeypatch.setattr(session, "ExplosionEarlyStopping", partial(ExplosionEarlyStopping, max_abs_actor_loss=1e-12))
    flags = ["--simulator", "surrogate", "--max-timesteps", "12", "--learning-starts", "10", "--batch-size", "4",
             "--buffer-size", "20", "--seed", "1", "--verbose", "0", "--no-progress-bar", "--log-dir", str(tmp_path)]  # fmt: skip
    with pytest.warns(RuntimeWarning, match=r"update 2: \|actor loss\|"):
        assert cli.main(["train", *flags]) == 0
    run_dir = tmp_path / "TD3CnnClip_1"
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "stopped_early" and "update 2: |actor loss|" in result["stop_reason"]
    assert result["num_timesteps"] == 12
    loaded = TD3CnnClip.load(run_dir / "last_healthy.zip")
    assert (loaded._n_updates, loaded.num_timesteps) == (0, 0)


#: one healthy update's statistics, as TD3CnnClip keeps them (an actor update)
HEALTHY = {"critic_loss": 0.1, "q_replay": 1.0, "q_abs_max": 2.0, "critic_feature_norm": 5.0, "critic_cnn_before": 1.0,
           "critic_cnn_after": 1.0, "critic_mlp_before": 1.0, "critic_mlp_after": 1.0, "actor_loss": -1.0,
           "q_policy_gap": 0.1, "actor_saturation": 0.0, "actor_feature_norm": 5.0, "actor_cnn_before": 0.1,
           "actor_cnn_after": 0.1, "actor_mlp_before": 0.5, "actor_mlp_after": 0.5}  # fmt: skip


def started(tmp_path, **kwargs):
    """An untrained toy model and a callback whose training has started: feed it statistics with :func:`feed`."""
    model = toy_model(tmp_path)
    callback = ExplosionEarlyStopping(**kwargs)
    callback.init_callback(model)
    callback.on_training_start({}, {})
    return model, callback


def feed(model, callback, *changes: dict) -> None:
    """Append one update per dict of changes to HEALTHY, as one train() call would, and let the callback check them."""
    for change in changes:
        model._n_updates += 1
        model.update_stats.append({"n_updates": model._n_updates, **HEALTHY, **change})
    callback.on_rollout_start()


def test_the_last_dump_holds_the_final_alert_counts(tmp_path):
    model, callback = started(tmp_path, r_max=TOY_R_MAX, window=2, dead_actor="warn")
    with pytest.warns(RuntimeWarning, match="dead actor"):
        feed(model, callback, {"actor_saturation": 1.0}, {"actor_saturation": 1.0})
    model.logger.dump(1)
    callback.on_training_end()
    model.logger.dump(2)  # the dump after learn()
    assert callback.alerts["dead_actor"] == 1
    assert dumps(tmp_path)[-1]["alerts/dead_actor"] == 1


@pytest.mark.parametrize(
    ("check", "kwargs", "bad", "streak"),
    [
        # |actor loss| over max_abs_actor_loss (q_bound off: it would fire on the same value)
        ("actor_loss", dict(q_bound_factor=None), {"actor_loss": -2e6, "q_abs_max": 2e6}, 1),
        # Q(s, pi(s)) - Q(s, a) above 0.5 x the Q bound 420 on `window` actor updates, below q_bound's 630
        ("q_gap", dict(window=5), {"q_policy_gap": 300.0, "actor_loss": -300.0, "q_abs_max": 300.0}, 5),
    ],
)
def test_each_check_fires_on_its_own_statistic(tmp_path, check, kwargs, bad, streak):
    model, callback = started(tmp_path, r_max=TOY_R_MAX, snapshot_freq=10_000, **kwargs)
    half = {key: value / 2 for key, value in bad.items()}  # below the threshold: silent
    feed(model, callback, *[half] * 10, *[bad] * (streak - 1))
    assert callback.triggered == [] and sum(callback.alerts.values()) == 0
    with pytest.warns(RuntimeWarning, match=f"update {10 + streak}: "):
        feed(model, callback, bad)
    assert callback.triggered == [check]


def test_feature_growth_fires_over_its_window(tmp_path):
    model, callback = started(tmp_path / "slow", r_max=TOY_R_MAX, window=5)
    # 99x over 5 updates, then 150 / 2 = 75x: silent
    feed(model, callback, *[{"actor_feature_norm": n} for n in [1.0, 2.0, 4.0, 8.0, 16.0, 99.0, 150.0]])
    assert callback.triggered == []
    model, callback = started(tmp_path / "fast", r_max=TOY_R_MAX, window=5)
    with pytest.warns(RuntimeWarning, match=r"actor CNN feature norm grew 150x in 5 updates \(1 -> 150\)"):
        feed(model, callback, *[{"actor_feature_norm": n} for n in [1.0, 2.0, 4.0, 8.0, 16.0, 150.0]])
    assert callback.triggered == ["feature_growth"]


def test_snapshot_only_while_no_check_is_on_a_streak(tmp_path):
    model, callback = started(tmp_path, r_max=TOY_R_MAX, window=5, snapshot_freq=1)
    feed(model, callback, {})
    assert callback._snapshot_at["n_updates"] == 1
    for _ in range(3):  # a q_gap streak of 3 (< window): no alert yet, and no snapshot of a suspect model
        feed(model, callback, {"q_policy_gap": 300.0})
        assert callback._snapshot_at["n_updates"] == 1
    feed(model, callback, {})  # the streak ends: healthy again
    assert callback._snapshot_at["n_updates"] == 5 and callback.triggered == []
