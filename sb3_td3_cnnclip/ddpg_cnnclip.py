"""DDPG with per-group gradient clipping and honest gradient logs: SB3's DDPG is TD3 without its tricks, and so is
this class TD3CnnClip's update with DDPG's settings."""

from __future__ import annotations

from stable_baselines3 import DDPG

from sb3_td3_cnnclip.td3_cnnclip import TD3CnnClip


class DDPGCnnClip(TD3CnnClip, DDPG):
    """
    DDPG whose ``train()`` clips the gradients of four parameter groups (actor CNN / actor MLP / critic CNN / critic
    MLP) with distinct limits and logs each group's total L2 norm before and after clipping, measured before
    ``optimizer.step()`` (:class:`~sb3_td3_cnnclip.cnnclip.CnnClipMixin`, whose docstring lists the keywords it
    adds). SB3's DDPG is its TD3 with ``policy_delay=1``, no target policy smoothing and one critic; this class is
    :class:`~sb3_td3_cnnclip.TD3CnnClip` with those settings, as DDPG passes them, and TD3CnnClip's defaults
    (learning rate, ``buffer_size=200_000``). With all four limits ``None``, ``pre_tanh_penalty=0`` (the default)
    and ``channels_last=False`` the updates are exactly those of :class:`~stable_baselines3.DDPG`, bit for bit.
    Every other parameter is DDPG's (see its docstring).

    :param pre_tanh_penalty: defaults to 0.0 (DDPG's actor loss): the measurement that set TD3CnnClip's default was
        made on TD3 and is not carried over to another algorithm without one of its own
    """

    default_pre_tanh_penalty = 0.0
