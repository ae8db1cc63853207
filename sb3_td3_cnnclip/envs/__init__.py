"""Driving environments ``CarlaScenario{0,1,2}-v0`` (registered on import) and their simulator backends.

The CARLA and highway-env backends are optional extras, imported only when an environment is built.
"""

from sb3_td3_cnnclip.envs.backend import Backend, Frame
from sb3_td3_cnnclip.envs.config import SCENARIO_NPCS, RewardWeights, ScenarioConfig, make_config
from sb3_td3_cnnclip.envs.driving_env import DrivingEnv, TimeLimitReason
from sb3_td3_cnnclip.envs.errors import MissingExtraError, SimulatorUnavailableError
from sb3_td3_cnnclip.envs.registration import SCENARIO_IDS, register_envs

register_envs()

__all__ = [
    "SCENARIO_IDS",
    "SCENARIO_NPCS",
    "Backend",
    "DrivingEnv",
    "Frame",
    "MissingExtraError",
    "RewardWeights",
    "ScenarioConfig",
    "SimulatorUnavailableError",
    "TimeLimitReason",
    "make_config",
    "register_envs",
]
