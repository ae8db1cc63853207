"""sb3-td3-cnnclip: TD3 with trustworthy per-group gradient clipping, and CARLA driving environments.

Importing the package registers the ``CarlaScenario{0,1,2}-v0`` Gymnasium environments.
"""

from sb3_td3_cnnclip import envs  # noqa: F401  (registers the CarlaScenario environments)
from sb3_td3_cnnclip.buffers import FrameStackReplayBuffer
from sb3_td3_cnnclip.ddpg_cnnclip import DDPGCnnClip
from sb3_td3_cnnclip.grad_clip import NonFiniteGradientError
from sb3_td3_cnnclip.sac_cnnclip import SACCnnClip
from sb3_td3_cnnclip.td3_cnnclip import TD3CnnClip
from sb3_td3_cnnclip.tqc_cnnclip import TQCCnnClip

__all__ = ["DDPGCnnClip", "FrameStackReplayBuffer", "NonFiniteGradientError", "SACCnnClip", "TD3CnnClip", "TQCCnnClip"]
__version__ = "0.1.0"
