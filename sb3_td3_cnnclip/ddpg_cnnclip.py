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
    (learning rate, ``buffer_size=200_000``). With all four limits ``None``, ``pre_tanh_penalty=0`` and
    ``channels_last=False`` the updates are exactly those of :class:`~stable_baselines3.DDPG`, bit for bit.
    Every other parameter is DDPG's (see its docstring).

    :param pre_tanh_penalty: defaults to 0.01, as TD3CnnClip's, by a measurement of DDPG's own: on 4x48x48 image
        observations (``benchmarks/results/dead_actor_algos.md``, 1000 steps, 3 seeds), DDPG's actor died on every
        seed without it (its MLP gradient exactly 0 on 927-928 of 936 updates, every action on a bound) and stayed
        alive on every seed with it (no zero gradient, no saturation); on the surrogate ``CarlaScenario0-v0`` the
        same on 2 seeds (dead on 923-927 of 936 updates without, alive with). 0.0 is DDPG's actor loss.
    """

    default_pre_tanh_penalty = 0.01
