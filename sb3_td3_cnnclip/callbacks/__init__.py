"""Stable-Baselines3 callbacks for driving with TD3 (they work with any SB3 algorithm, combined in a ``CallbackList``).

- :class:`ScenarioCallback`: sets the scenario of the envs at training start, optionally a curriculum.
- :class:`ExplosionEarlyStopping`: stops a diverging run, says why, keeps the last healthy model.
- :class:`DrivingMetricsCallback`: logs per-episode driving figures under ``driving/``.
- :class:`UpdateStatsWriter`: writes every gradient update's statistics of ``TD3CnnClip`` under ``debug/``.

Example::

    from stable_baselines3.common.callbacks import CallbackList
    from sb3_td3_cnnclip import TD3CnnClip
    from sb3_td3_cnnclip.callbacks import DrivingMetricsCallback, ExplosionEarlyStopping, ScenarioCallback

    model = TD3CnnClip("BoundedCnnPolicy", "CarlaScenario0-v0", tensorboard_log="runs")
    callbacks = CallbackList([
        ScenarioCallback(scenarios=(0, 1, 2), advance_every=20_000, seed=0),
        ExplosionEarlyStopping(),
        DrivingMetricsCallback(),
    ])
    model.learn(60_000, callback=callbacks)

See each class for its parameters, defaults and logged keys.
"""

from sb3_td3_cnnclip.callbacks.driving_metrics import DrivingMetricsCallback
from sb3_td3_cnnclip.callbacks.explosion import ExplosionEarlyStopping
from sb3_td3_cnnclip.callbacks.scenario import ScenarioCallback
from sb3_td3_cnnclip.callbacks.update_stats import UpdateStatsWriter

__all__ = ["DrivingMetricsCallback", "ExplosionEarlyStopping", "ScenarioCallback", "UpdateStatsWriter"]
