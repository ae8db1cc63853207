"""What every algorithm of the package adds to its SB3 / sb3-contrib base, whatever the algorithm's own losses.

:class:`CnnClipMixin` holds the parameter groups (CNN / MLP of the actor and of the critic), the clip of each group
with its exact norms measured before ``optimizer.step()``, the non-finite skip, the per-update statistics kept on the
device and read once per ``train()`` call, the dead-actor signals, and the update's options (each batch preprocessed
once, ``channels_last``, ``bf16_encoders``, random shift, the critic-trained encoder, ``torch.compile``). An
algorithm class puts it before its base (``class TD3CnnClip(CnnClipMixin, TD3)``) and writes only its ``train()``
and its losses, with one :meth:`CnnClipMixin._clip_and_step` per network.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common import preprocessing
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.noise import ActionNoise
from stable_baselines3.common.policies import BaseModel, BasePolicy, ContinuousCritic
from stable_baselines3.common.torch_layers import CombinedExtractor, NatureCNN
from stable_baselines3.common.type_aliases import GymEnv, ReplayBufferSamples
from torch import nn

from sb3_td3_cnnclip.augmentation import image_keys, shift_observations
from sb3_td3_cnnclip.buffers import default_replay_buffer_class
from sb3_td3_cnnclip.encoders import BoundedCombinedExtractor, BoundedNatureCNN, TrunkNatureCNN
from sb3_td3_cnnclip.grad_clip import (
    NONFINITE_ACTIONS,
    NonFiniteGradientError,
    ParamGroup,
    check_max_norm,
    clip_and_step,
    clip_and_step_on_device,
    split_cnn_mlp,
)
from sb3_td3_cnnclip.policies import DetachedEncoder, ObservationKey, use_critic_encoder
from sb3_td3_cnnclip.update_stats import UpdateStatsAccumulator, record_update

#: an action this close to a bound of [-1, 1] counts as saturated
SATURATION_EPS = 1e-3
#: the values of ``warmup_actions``
WARMUP_ACTIONS = ("random", "scripted", "autopilot")
#: the env method each demonstration warm-up calls (through ``VecEnv.env_method``)
WARMUP_ENV_METHODS = {"scripted": "scripted_action", "autopilot": "set_autopilot"}
#: features extractors whose forward works on convolution outputs of any memory layout (``channels_last=None``)
LAYOUT_AGNOSTIC_EXTRACTORS = (
    NatureCNN, CombinedExtractor, BoundedNatureCNN, TrunkNatureCNN, BoundedCombinedExtractor, DetachedEncoder
)


def polyak_update(params: Iterable[th.Tensor], target_params: Iterable[th.Tensor], tau: float) -> None:
    """SB3's :func:`~stable_baselines3.common.utils.polyak_update`, ``target = (1 - tau) * target + tau * param``
    by the same two in-place operations, each run once over the whole list (``torch._foreach_mul_``,
    ``torch._foreach_add_``) instead of once per tensor: the same result bit for bit on the CPU (tested; on CUDA the
    test runs where a GPU is), and on a GPU a few multi-tensor kernel launches instead of two per tensor.

    :param params: the parameters (or buffers) to move towards
    :param target_params: the target parameters, updated in place
    :param tau: the soft update coefficient, in ``[0, 1]`` (1.0 copies)
    """
    params, target_params = list(params), list(target_params)
    if len(params) != len(target_params):
        raise ValueError(f"polyak_update got {len(params)} parameters for {len(target_params)} target parameters.")
    if params:  # the foreach operations refuse an empty list (a network without batch norm has no running stats)
        with th.no_grad():
            th._foreach_mul_(target_params, 1 - tau)
            th._foreach_add_(target_params, params, alpha=tau)


def dead_feature_fraction(features: th.Tensor) -> th.Tensor:
    """Fraction of a batch's features that are exactly 0 on every sample, such as a ReLU unit of NatureCNN's last
    layer inactive on the whole batch: it passes no gradient to its weights on that batch (a dead unit, on every
    batch, never learns again; see "Logged keys" in the docs for how many the driving runs had).

    :param features: the features extractor's units (see :func:`feature_units`), one row per sample
    :return: the fraction, a 0-dim float32 tensor
    """
    return (features.flatten(1) == 0).all(dim=0).float().mean()


def feature_units(extractor: nn.Module) -> nn.Module:
    """The module whose outputs are a features extractor's units, where :func:`dead_feature_fraction` looks for dead
    ones: a :class:`~sb3_td3_cnnclip.encoders.BoundedNatureCNN`'s linear layer (with its ReLU; the LayerNorm and
    tanh after it leave no output exactly 0, even where every unit is dead), else the extractor itself.

    :param extractor: a features extractor
    :return: the module to watch
    """
    return extractor.linear if isinstance(extractor, BoundedNatureCNN) else extractor


def _layout_agnostic(extractor: nn.Module) -> bool:
    """Whether a features extractor computes the same from ``channels_last`` images and weights: one of
    :data:`LAYOUT_AGNOSTIC_EXTRACTORS`, or an :class:`~sb3_td3_cnnclip.policies.ObservationKey` of one or of a
    vector entry (which has no memory layout)."""
    if isinstance(extractor, ObservationKey):
        return len(extractor.entry_space.shape) == 1 or _layout_agnostic(extractor.extractor)
    return type(extractor) in LAYOUT_AGNOSTIC_EXTRACTORS


class _OutputCapture:
    """Keeps a reference to the last output (or, with ``capture_input``, input) of a module.

    :param module: the module to watch
    :param capture_input: capture the module's first input instead of its output (the pre-tanh of a ``Tanh``)
    :param keep_graph: keep the value in the autograd graph (for a loss term); the owner must then reset
        ``value`` to ``None`` after use, since a module holding a non-leaf tensor cannot be deep-copied
    """

    def __init__(self, module: nn.Module, capture_input: bool = False, keep_graph: bool = False) -> None:
        self.value: th.Tensor | None = None
        self.capture_input = capture_input
        self.keep_graph = keep_graph
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, inputs: tuple[th.Tensor, ...], output: th.Tensor) -> None:
        value = inputs[0] if self.capture_input else output
        self.value = value if self.keep_graph else value.detach()


def _units_capture(extractor: nn.Module, features: _OutputCapture) -> _OutputCapture:
    """The capture of an extractor's units (:func:`feature_units`): ``features``, the capture of the extractor's
    output, when the units are that output, else a capture of the layer inside it (no second hook on one module).

    :param extractor: the features extractor
    :param features: the capture of its output
    """
    units = feature_units(extractor)
    return features if units is extractor else _OutputCapture(units)


class CnnClipMixin:
    """
    Per-group gradient clipping with honest logs, and the update's options, for an SB3 off-policy actor-critic.

    ``train()`` clips the gradients of four parameter groups with distinct limits and logs each group's total L2
    norm before and after clipping, measured before ``optimizer.step()``. The CNN group of a network is the
    parameters of its features extractor, the MLP group everything else its optimizer updates. Groups without
    parameters (``MlpPolicy``'s CNN, the critic's CNN with ``share_features_extractor=True``) are neither clipped nor
    logged. With all four limits ``None``, ``pre_tanh_penalty=0`` and ``channels_last=False`` (and the other options
    at their defaults) the updates are exactly those of the base algorithm, bit for bit.

    The keywords below are this mixin's; every other parameter is the base algorithm's (see its docstring).

    :param actor_cnn_max_grad_norm: limit of the actor CNN's gradient norm (``None``: measure, do not clip)
    :param actor_mlp_max_grad_norm: limit of the actor MLP's gradient norm (``None``: measure, do not clip)
    :param critic_cnn_max_grad_norm: limit of the critic CNN's gradient norm (``None``: measure, do not clip)
    :param critic_mlp_max_grad_norm: limit of the critic MLP's gradient norm (``None``: measure, do not clip)
    :param on_nonfinite_grad: ``"skip"`` (zero the gradients, skip that optimizer step, count it) or ``"raise"``
        (:class:`~sb3_td3_cnnclip.grad_clip.NonFiniteGradientError`) when a gradient is NaN or infinite
    :param actor_lr_scale: the actor's learning rate is this times the learning-rate schedule's (the critic's);
        below 1 it keeps an image actor from saturating its tanh (see ``docs/algorithms.md``, Preventing a dead
        actor). 1.0 is the base algorithm.
    :param pre_tanh_penalty: coefficient of ``mean(pre_tanh ** 2)`` added to the actor loss (DrQ-style), which
        keeps the actor's output out of tanh saturation; the pre-tanh is that of the actor's deterministic (mean)
        action. 0.0 is the base algorithm's actor loss. ``None``: the class's ``default_pre_tanh_penalty``.
    :param random_shift_pad: random-shift augmentation (DrQ's ``image_pad``): each image observation and next
        observation of a sampled batch is shifted by its own random integer offsets in ``[-pad, pad]`` pixels,
        border replicated (:mod:`sb3_td3_cnnclip.augmentation`), before the networks see it. 0 is the base algorithm.
    :param critic_trained_encoder: the DrQ-v2 encoder arrangement
        (:func:`~sb3_td3_cnnclip.policies.use_critic_encoder`): one image encoder, trained by the critic's loss
        only, whose features the actor reads without gradient. The actor-CNN group is then empty (neither clipped
        nor logged) and ``critic_cnn_max_grad_norm`` limits the only CNN. False is the base algorithm.
    :param compile_update: the fast path: a gradient step that reads nothing back to the host. The update's loss
        functions (forward and backward) run through ``torch.compile`` (on CUDA with ``mode="reduce-overhead"``,
        i.e. CUDA graphs), where the class supports it, and the optimizers are torch's fused ones (``fused=True`` is
        added to ``optimizer_kwargs``; an optimizer without a fused step is an error), whose ``found_inf`` skips a
        non-finite step on the device (:func:`~sb3_td3_cnnclip.grad_clip.clip_and_step_on_device`). The skips are
        counted, and ``on_nonfinite_grad="raise"`` raises, once per ``train()`` call, when the statistics are read:
        "raise" then raises at the end of the call, naming the updates whose steps were skipped (those steps never
        changed the weights or the optimizer's state; the call's other updates ran). On the CPU a gradient norm
        that overflows float32 (an element above about 1e19) counts as non-finite there, where the eager path
        measures it again in float64 and clips it. The first updates pay the compilation (tens of seconds on a CPU,
        see ``docs/algorithms.md``, Update speed); results equal the eager path's within float rounding, not bit for
        bit. False is the base algorithm.
    :param channels_last: keep the networks' convolution weights in ``torch.channels_last`` memory layout, which
        oneDNN runs faster on a CPU than the default layout (see ``docs/algorithms.md``, Update speed, for the
        measured update time). The arithmetic is the base algorithm's; only the order of the convolutions' float
        sums differs, so the weights match within float rounding, not bit for bit. ``None`` (default): on when the
        model is on the CPU and every features extractor is SB3's ``NatureCNN`` / ``CombinedExtractor`` or this
        package's bounded ones (a custom extractor that calls ``.view()`` on a convolution's output would fail in
        that layout: pass True to opt in).
        False is the base algorithm.
    :param bf16_encoders: run the features extractors (the CNNs) in ``train()`` under
        ``torch.autocast(dtype=torch.bfloat16)``: their convolutions and linear layers compute in bfloat16, which
        CPUs with AMX / AVX512-BF16 and GPUs with bfloat16 tensor cores run much faster, and their features are cast
        back to float32 for the MLP heads. Weights, gradients, their norms and clipping, Adam, the losses and the
        Q-values stay float32; ``predict()`` and rollouts stay float32. Reduced precision: the updates equal
        float32's only within bfloat16 rounding (see ``docs/algorithms.md``, Update speed, for the tolerance
        tested). False is the base algorithm.
    :param warmup_actions: where the actions of the warm-up (the first ``learning_starts`` steps, before any
        update) come from: ``"random"`` (uniform over the action space, the base algorithm) or ``"scripted"`` (the
        env's own scripted driver, ``env.scripted_action()``, plus the ``action_noise``; the surrogate
        ``CarlaScenario`` envs have one, see :mod:`sb3_td3_cnnclip.envs.expert`): demonstrations in the replay
        buffer on the same budget of simulator steps; or ``"autopilot"`` (the simulator's own driver steers, through
        the env's ``set_autopilot(True)``: CARLA's Traffic Manager on the CARLA backend, the scripted driver tick by
        tick on the surrogate; the replay buffer stores the action the env reports in ``info["applied_action"]``,
        not the sampled one, and no action noise; the autopilot is switched off at the first step after the
        warm-up). ``"random"`` is the base algorithm.
    :param stats_history: number of per-update statistics kept in ``update_stats`` for callbacks; a ``train()`` call
        with more gradient steps enlarges the history to hold all of them, so that a callback reading after each
        ``train()`` sees every update
    """

    #: ``pre_tanh_penalty`` when none is given: the base algorithm's actor loss, unless a measurement of the
    #: algorithm's dead-actor rate set another value (see each class)
    default_pre_tanh_penalty: ClassVar[float] = 0.0
    #: the actor and critic classes whose forward ``train()`` runs from a batch preprocessed once (the base's own)
    preprocessed_actor_class: type[BasePolicy]
    preprocessed_critic_class: type[BaseModel] = ContinuousCritic

    def __init__(
        self,
        policy: str | type[BasePolicy],
        env: GymEnv | str,
        learning_rate: Any,
        buffer_size: int,
        *args: Any,
        actor_cnn_max_grad_norm: float | None = 1.0,
        actor_mlp_max_grad_norm: float | None = 1.0,
        critic_cnn_max_grad_norm: float | None = 10.0,
        critic_mlp_max_grad_norm: float | None = 10.0,
        on_nonfinite_grad: str = "skip",
        actor_lr_scale: float = 1.0,
        pre_tanh_penalty: float | None = None,
        random_shift_pad: int = 0,
        critic_trained_encoder: bool = False,
        compile_update: bool = False,
        channels_last: bool | None = None,
        bf16_encoders: bool = False,
        warmup_actions: str = "random",
        stats_history: int = 1000,
        _init_setup_model: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(  # type: ignore[call-arg]
            policy, env, learning_rate, buffer_size, *args, _init_setup_model=False, **kwargs
        )
        self.actor_cnn_max_grad_norm = actor_cnn_max_grad_norm
        self.actor_mlp_max_grad_norm = actor_mlp_max_grad_norm
        self.critic_cnn_max_grad_norm = critic_cnn_max_grad_norm
        self.critic_mlp_max_grad_norm = critic_mlp_max_grad_norm
        self.on_nonfinite_grad = on_nonfinite_grad
        self.actor_lr_scale = actor_lr_scale
        self.pre_tanh_penalty = self.default_pre_tanh_penalty if pre_tanh_penalty is None else pre_tanh_penalty
        self.random_shift_pad = random_shift_pad
        self.critic_trained_encoder = critic_trained_encoder
        self.compile_update = compile_update
        self.channels_last = channels_last
        self.bf16_encoders = bf16_encoders
        self.warmup_actions = warmup_actions
        self.stats_history = stats_history
        #: optimizer steps skipped for a non-finite gradient since the model was created, per network
        self.nonfinite_skips = {"actor": 0, "critic": 0}
        if _init_setup_model:
            self._setup_model()

    def _setup_model(self) -> None:
        # Validated here rather than in __init__ so that limits passed to load() or custom_objects are checked too.
        for name in ("actor_cnn", "actor_mlp", "critic_cnn", "critic_mlp"):
            key = f"{name}_max_grad_norm"
            setattr(self, key, check_max_norm(key, getattr(self, key)))
        if self.on_nonfinite_grad not in NONFINITE_ACTIONS:
            raise ValueError(f"on_nonfinite_grad={self.on_nonfinite_grad!r} is unknown; choose one of {NONFINITE_ACTIONS}.")
        for key, smallest, base in (("actor_lr_scale", "positive", 1.0), ("pre_tanh_penalty", "non-negative", 0.0)):
            value = getattr(self, key)
            valid = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
            if not valid or value < 0 or (value == 0 and smallest == "positive"):
                raise ValueError(f"{key}={value!r} must be a {smallest} finite number (the base algorithm: {base}).")
        self._check_learning_options()
        if self.warmup_actions not in WARMUP_ACTIONS:
            raise ValueError(f"warmup_actions={self.warmup_actions!r} is unknown; choose one of {WARMUP_ACTIONS}.")
        if self.warmup_actions != "random" and not isinstance(self.action_space, spaces.Box):
            raise ValueError(
                f"warmup_actions={self.warmup_actions!r} needs a Box action space, not {self.action_space}.")
        if self.replay_buffer_class is None:
            self.replay_buffer_class = default_replay_buffer_class(self.observation_space, self.optimize_memory_usage)
            if self.replay_buffer_class is not None and self.n_steps > 1:  # as SB3 sets up its NStepReplayBuffer
                self.replay_buffer_kwargs = {"n_steps": self.n_steps, "gamma": self.gamma, **self.replay_buffer_kwargs}
        self._check_compile_update()
        with warnings.catch_warnings():
            if self.replay_buffer_kwargs.get("n_steps") == self.n_steps:  # SB3's "n_steps is ignored" is untrue here
                warnings.filterwarnings("ignore", message=r"`n_steps=\d+` is ignored because a custom")
            super()._setup_model()  # type: ignore[misc]
        if self.critic_trained_encoder:
            self._use_critic_encoder()
        self._channels_last_active = self._use_channels_last()
        if self._channels_last_active:  # in place: the optimizers keep the same parameter objects
            self.policy.to(memory_format=th.channels_last)
        self._find_preprocessing()
        self._check_bf16_encoders()
        self._build_groups()
        if self.pre_tanh_penalty > 0 and self._pre_tanh is None:
            raise ValueError(
                f"pre_tanh_penalty needs the actor's pre-tanh, which {type(self).__name__} finds in SB3's actors; this "
                f"policy's actor ({type(self.actor).__name__}) has none where it looks. Use pre_tanh_penalty=0."
            )
        #: statistics of the most recent updates, newest last, one dict per gradient step (keys: ``docs/algorithms.md``)
        self.update_stats: deque[dict[str, float]] = deque(maxlen=self.stats_history)
        self._stats = UpdateStatsAccumulator()

    def _use_critic_encoder(self) -> None:
        """Set up ``critic_trained_encoder=True`` (see :func:`~sb3_td3_cnnclip.policies.use_critic_encoder`)."""
        use_critic_encoder(self.policy)

    def _pre_tanh_module(self) -> tuple[nn.Module, bool] | None:
        """Where the actor's pre-tanh (of its deterministic action) is: a module and whether it is that module's
        input (``True``) or output (``False``); ``None`` when the actor has none."""
        raise NotImplementedError

    def _check_compile_update(self) -> None:
        """Validate ``compile_update``; give the optimizers ``fused=True``, which its on-device skip of a non-finite
        step needs (:func:`~sb3_td3_cnnclip.grad_clip.clip_and_step_on_device`)."""
        if not isinstance(self.compile_update, bool):
            raise ValueError(f"compile_update={self.compile_update!r} must be True or False.")
        if not self.compile_update:
            return
        if not th._dynamo.is_dynamo_supported():
            raise RuntimeError(
                f"compile_update=True needs torch.compile, which torch {th.__version__} does not support on this "
                "Python or platform. Use compile_update=False (the same update, run eagerly)."
            )
        optimizer_class = self.policy_kwargs.get("optimizer_class", th.optim.Adam)
        optimizer_kwargs = {"fused": True, **self.policy_kwargs.get("optimizer_kwargs", {})}
        if "fused" not in inspect.signature(optimizer_class).parameters or optimizer_kwargs["fused"] is not True:
            raise ValueError(
                f"compile_update=True skips a non-finite optimizer step on the device, through the found_inf of a "
                f"torch optimizer with fused=True; {optimizer_class.__name__} with optimizer_kwargs "
                f"{self.policy_kwargs.get('optimizer_kwargs', {})} has no fused step. Use torch.optim.Adam (the "
                "default), AdamW, SGD or Adagrad without fused=False, or compile_update=False."
            )
        self.policy_kwargs = {**self.policy_kwargs, "optimizer_kwargs": optimizer_kwargs}

    def _use_channels_last(self) -> bool:
        """Validate ``channels_last`` and resolve ``None`` for this model's device and features extractors."""
        if self.channels_last is not None and not isinstance(self.channels_last, bool):
            raise ValueError(f"channels_last={self.channels_last!r} must be None (automatic), True or False.")
        if self.channels_last is not None:
            return self.channels_last
        extractors = (self.actor.features_extractor, self.critic.features_extractor)
        return self.device.type == "cpu" and all(_layout_agnostic(extractor) for extractor in extractors)

    def _find_preprocessing(self) -> None:
        """Decide whether ``train()`` preprocesses each batch once.

        SB3's networks preprocess their input in every call (``preprocess_obs``: ``uint8`` images to floats in
        [0, 1], ``.float()`` or one-hot for the other entries), four or five times per batch in an update (the
        networks on the next observations, on the observations, the critic's features for the actor loss), each
        image a fresh batch-sized float tensor. With the base algorithm's own actor and critic classes
        (``preprocessed_actor_class``, ``preprocessed_critic_class``), ``train()`` preprocesses each batch once
        instead, the very same values, and runs the networks from their features extractors on
        (:meth:`_features`, :meth:`_critic_forward` and the class's actor forward). Other actor or critic classes
        keep SB3's per-call path.
        """
        actors = [net for net in (self.actor, getattr(self, "actor_target", None)) if net is not None]
        critics = (self.critic, self.critic_target)
        self._preprocess_once = all(type(net) is self.preprocessed_actor_class for net in actors) and all(
            type(net) is self.preprocessed_critic_class for net in critics
        )
        #: the image entries (``[None]``: the whole Box) that SB3 normalises, normalised here once per batch
        normalizes = self.policy.normalize_images
        self._normalize_keys = image_keys(self.observation_space, preprocessing.is_image_space) if normalizes else []

    def _check_bf16_encoders(self) -> None:
        """Validate ``bf16_encoders`` for this model's networks and device."""
        if not isinstance(self.bf16_encoders, bool):
            raise ValueError(f"bf16_encoders={self.bf16_encoders!r} must be True or False.")
        if not self.bf16_encoders:
            return
        if not self._preprocess_once:
            raise ValueError(
                f"bf16_encoders=True runs SB3's {self.preprocessed_actor_class.__name__} and "
                f"{self.preprocessed_critic_class.__name__} from their features extractors; this policy's actor "
                f"({type(self.actor).__name__}) or critic ({type(self.critic).__name__}) is of another class. "
                "Use bf16_encoders=False."
            )
        if self.device.type == "cuda" and not th.cuda.is_bf16_supported():
            raise ValueError(f"bf16_encoders=True: the GPU {th.cuda.get_device_name(self.device)} has no bfloat16 "
                             "support. Use bf16_encoders=False.")  # fmt: skip
        if self.device.type == "cpu" and not th.ops.mkldnn._is_mkldnn_bf16_supported():
            warnings.warn(
                "bf16_encoders=True on a CPU without bfloat16 instructions (AVX512-BF16 / AMX): torch emulates "
                "bfloat16 there, which is likely slower than float32. Consider bf16_encoders=False.",
                stacklevel=2,
            )

    def _preprocess(self, observations: th.Tensor | dict[str, th.Tensor]) -> th.Tensor | dict[str, th.Tensor]:
        """SB3's ``preprocess_obs`` of a batch, with normalised images in the convolutions' memory layout."""
        space = self.observation_space
        if isinstance(space, spaces.Dict):
            return {key: self._preprocess_entry(value, space[key], key) for key, value in observations.items()}
        return self._preprocess_entry(observations, space, None)

    def _preprocess_entry(self, observations: th.Tensor, space: spaces.Space, key: str | None) -> th.Tensor:
        if key not in self._normalize_keys:
            return preprocessing.preprocess_obs(observations, space, normalize_images=self.policy.normalize_images)
        if self._channels_last_active:
            observations = observations.contiguous(memory_format=th.channels_last)
        return observations.to(th.float32, copy=True).div_(255.0)  # SB3's obs.float() / 255.0, with one allocation

    def _features(self, net: BaseModel, observations: th.Tensor | dict[str, th.Tensor]) -> th.Tensor:
        """``net.extract_features(observations, net.features_extractor)`` for a batch from :meth:`_prepare_batch`."""
        if not self._preprocess_once:
            return net.extract_features(observations, net.features_extractor)
        if not self.bf16_encoders:
            return net.features_extractor(observations)
        with th.autocast(self.device.type, dtype=th.bfloat16):
            features = net.features_extractor(observations)
        return features.float()

    def _critic_heads(self, critic: BaseModel, qvalue_input: th.Tensor) -> Any:
        """The critic's Q-networks on ``cat([features, actions])``, as its ``forward`` returns them (a tuple of Q
        values for SB3's ``ContinuousCritic``)."""
        return tuple(q_net(qvalue_input) for q_net in critic.q_networks)

    def _critic_forward(
        self, critic: BaseModel, observations: th.Tensor | dict[str, th.Tensor], actions: th.Tensor
    ) -> Any:
        """``critic(observations, actions)`` for a batch from :meth:`_prepare_batch` (the critic's ``forward``,
        without recording a graph for the features under ``no_grad``)."""
        if not self._preprocess_once:
            return critic(observations, actions)
        with th.set_grad_enabled(th.is_grad_enabled() and not critic.share_features_extractor):
            features = self._features(critic, observations)
        return self._critic_heads(critic, th.cat([features, actions], dim=1))

    def _compiled(self, loss_fn: Callable[..., tuple[th.Tensor, dict[str, th.Tensor]]]) -> Callable:
        """``loss_fn`` through ``torch.compile``; on CUDA as CUDA graphs, whose outputs are copied out of the graph's
        memory before the next replay overwrites them."""
        # SB3's preprocess_obs asks is_image_space(observation_space) on every forward; its numpy comparisons would
        # break the graph at each network call. The answer depends only on the space, which a model keeps.
        th._dynamo.assume_constant_result(preprocessing.is_image_space)
        if self.device.type != "cuda":
            return th.compile(loss_fn)
        graphed = th.compile(loss_fn, mode="reduce-overhead")

        def run(*args: Any) -> tuple[th.Tensor, dict[str, th.Tensor]]:
            th.compiler.cudagraph_mark_step_begin()
            loss, stats = graphed(*args)
            return loss, {key: value.clone() for key, value in stats.items()}

        return run

    def _setup_learn(self, *args: Any, **kwargs: Any) -> Any:
        method = WARMUP_ENV_METHODS.get(self.warmup_actions)
        if method is not None and self.env is not None and not self.env.has_attr(method):
            raise ValueError(
                f"warmup_actions={self.warmup_actions!r} needs envs with a {method}() method, as the CarlaScenario "
                "envs have; this model's env has none. Use warmup_actions='random'."
            )
        #: whether the envs' autopilot is on (``None``: not known, set at the next step)
        self._autopilot: bool | None = None
        return super()._setup_learn(*args, **kwargs)  # type: ignore[misc]

    def learn(self, *args: Any, **kwargs: Any) -> Any:
        """The base algorithm's ``learn``; one that returns inside a ``warmup_actions="autopilot"`` warm-up switches
        the envs' autopilot off, so that they drive the actions they are given again.

        :return: the model
        """
        model = super().learn(*args, **kwargs)  # type: ignore[misc]
        if self._autopilot:
            self.env.env_method("set_autopilot", False)
            self._autopilot = False
        return model

    def _sample_action(
        self, learning_starts: int, action_noise: ActionNoise | None = None, n_envs: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        """The base algorithm's exploration action, except during a ``warmup_actions="scripted"`` warm-up, where it
        is the env's scripted driver's plus ``action_noise``. A ``warmup_actions="autopilot"`` warm-up switches the
        envs' autopilot on (the env ignores the action; :meth:`_store_transition` stores what it applied), and the
        first step after it switches the autopilot off.

        :return: the action for the env and the scaled action that the replay buffer stores
        """
        if self.warmup_actions == "autopilot" and self._autopilot != (self.num_timesteps < learning_starts):
            self._autopilot = self.num_timesteps < learning_starts
            self.env.env_method("set_autopilot", self._autopilot)
        if self.warmup_actions != "scripted" or self.num_timesteps >= learning_starts:
            return super()._sample_action(learning_starts, action_noise, n_envs)  # type: ignore[misc]
        scaled_action = self.policy.scale_action(np.stack(self.env.env_method("scripted_action")))
        if action_noise is not None:
            scaled_action = np.clip(scaled_action + action_noise(), -1, 1)
        return self.policy.unscale_action(scaled_action), scaled_action

    def _store_transition(
        self,
        replay_buffer: ReplayBuffer,
        buffer_action: np.ndarray,
        new_obs: np.ndarray | dict[str, np.ndarray],
        reward: np.ndarray,
        dones: np.ndarray,
        infos: list[dict[str, Any]],
    ) -> None:
        """SB3's, storing the action the envs applied (``info["applied_action"]``, scaled) while their autopilot
        drives (``warmup_actions="autopilot"``) instead of the sampled one, which they ignored."""
        if self._autopilot:
            if any("applied_action" not in info for info in infos):
                raise ValueError(
                    "warmup_actions='autopilot' stores the action each env reports it applied, info['applied_action'] "
                    f"(as the CarlaScenario envs do); an env's step gave only {sorted(infos[0])}."
                )
            buffer_action = self.policy.scale_action(np.stack([info["applied_action"] for info in infos]))
        super()._store_transition(replay_buffer, buffer_action, new_obs, reward, dones, infos)  # type: ignore[misc]

    def _check_learning_options(self) -> None:
        """Validate ``random_shift_pad`` and ``critic_trained_encoder`` and find the images to shift."""
        if not isinstance(self.critic_trained_encoder, bool):
            raise ValueError(f"critic_trained_encoder={self.critic_trained_encoder!r} must be True or False.")
        pad = self.random_shift_pad
        if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
            raise ValueError(
                f"random_shift_pad={pad!r} must be a non-negative int (pixels; 4 in DrQ, 0 is the base algorithm)."
            )
        #: the observation entries random_shift_pad shifts ([None] for an image Box)
        self._shift_keys = image_keys(self.observation_space) if pad > 0 else []
        space = self.observation_space
        sides = [min((space if key is None else space[key]).shape[1:]) for key in self._shift_keys]
        if pad > 0 and not sides:
            raise ValueError(
                f"random_shift_pad={pad} shifts images, but the observation space {space} has no 3-D (channels, "
                "height, width) Box. Use random_shift_pad=0."
            )
        if sides and pad >= min(sides):
            raise ValueError(f"random_shift_pad={pad} must be smaller than the images' sides ({min(sides)} pixels).")

    def _sample_batch(self, batch_size: int) -> tuple[ReplayBufferSamples, th.Tensor | float]:
        """Sample a batch from the replay buffer, prepared for the networks (:meth:`_prepare_batch`).

        :param batch_size: the number of transitions
        :return: the batch and its discounts (``replay_data.discounts`` of n-step replay, else ``gamma``)
        """
        replay_data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)  # type: ignore[union-attr]
        discounts = replay_data.discounts if replay_data.discounts is not None else self.gamma
        return self._prepare_batch(replay_data), discounts

    def _prepare_batch(self, replay_data: ReplayBufferSamples) -> ReplayBufferSamples:
        """Random-shift the images of the observations and of the next observations, with independent offsets (DrQ,
        when ``random_shift_pad > 0``), then preprocess them once (see :meth:`_find_preprocessing`)."""

        def prepare(observations: th.Tensor | dict[str, th.Tensor]) -> th.Tensor | dict[str, th.Tensor]:
            if self.random_shift_pad > 0:
                observations = shift_observations(observations, self._shift_keys, self.random_shift_pad)
            return self._preprocess(observations) if self._preprocess_once else observations

        return replay_data._replace(
            observations=prepare(replay_data.observations), next_observations=prepare(replay_data.next_observations)
        )

    def _build_groups(self) -> None:
        """Partition the optimizers' parameters into the four groups and watch the features and the pre-tanh."""
        self._actor_groups = split_cnn_mlp(
            "actor", self.actor.optimizer, self.actor.features_extractor,
            self.actor_cnn_max_grad_norm, self.actor_mlp_max_grad_norm,
        )  # fmt: skip
        self._critic_groups = split_cnn_mlp(
            "critic", self.critic.optimizer, self.critic.features_extractor,
            self.critic_cnn_max_grad_norm, self.critic_mlp_max_grad_norm,
        )  # fmt: skip
        #: every group measured, in the order they are logged
        self._groups: list[ParamGroup] = [*self._critic_groups, *self._actor_groups]
        self._actor_features = _OutputCapture(self.actor.features_extractor)
        self._critic_features = _OutputCapture(self.critic.features_extractor)
        self._actor_units = _units_capture(self.actor.features_extractor, self._actor_features)
        self._critic_units = _units_capture(self.critic.features_extractor, self._critic_features)
        found = self._pre_tanh_module()
        self._pre_tanh = None
        if found is not None:
            module, is_input = found
            self._pre_tanh = _OutputCapture(module, capture_input=is_input, keep_graph=self.pre_tanh_penalty > 0)

    def _excluded_save_params(self) -> list[str]:
        return [  # noqa: RUF005
            *super()._excluded_save_params(),  # type: ignore[misc]
            "_actor_groups", "_critic_groups", "_groups", "_actor_features", "_critic_features", "_actor_units",
            "_critic_units", "_pre_tanh",
            "update_stats", "_stats", "_autopilot",
        ]  # fmt: skip

    def _update_learning_rate(self, optimizers: list[th.optim.Optimizer] | th.optim.Optimizer) -> None:
        super()._update_learning_rate(optimizers)  # type: ignore[misc]
        if self.actor_lr_scale != 1.0:
            for group in self.actor.optimizer.param_groups:
                group["lr"] *= self.actor_lr_scale
            self.logger.record("train/actor_learning_rate", self.actor.optimizer.param_groups[0]["lr"])

    def _critic_stats(
        self, first_q: th.Tensor, q_values: Sequence[th.Tensor], critic_loss: th.Tensor
    ) -> dict[str, th.Tensor]:
        """The critic's statistics of one update, as 0-dim tensors.

        :param first_q: the first critic's estimates on the replay actions (the critic an actor loss reads)
        :param q_values: every estimate of every critic on the replay actions
        :param critic_loss: the critic loss
        :return: ``q_replay`` (mean of ``first_q``), ``q_abs_max``, ``critic_feature_norm``,
            ``critic_dead_features`` (see :func:`dead_feature_fraction`), ``critic_loss``
        """
        with th.no_grad():
            return {
                "q_replay": first_q.mean(),
                "q_abs_max": th.stack([q.abs().max() for q in q_values]).max(),
                "critic_feature_norm": self._critic_features.value.float().flatten(1).norm(dim=1).mean(),
                "critic_dead_features": dead_feature_fraction(self._critic_units.value),
                "critic_loss": critic_loss.detach(),
            }

    def _actor_stats(self, actions: th.Tensor) -> dict[str, th.Tensor]:
        """The dead-actor signals of the actor's forward just run, as 0-dim tensors.

        :param actions: the actor's deterministic actions, squashed into [-1, 1]
        :return: ``actor_saturation`` (fraction of action elements within ``SATURATION_EPS`` of a bound),
            ``actor_feature_norm``, ``actor_dead_features`` (see :func:`dead_feature_fraction`) and, when the actor
            has one, ``actor_pre_tanh_abs`` (mean ``|pre-tanh|``)
        """
        with th.no_grad():
            stats = {
                "actor_saturation": (actions.abs() > 1.0 - SATURATION_EPS).float().mean(),
                "actor_feature_norm": self._actor_features.value.float().flatten(1).norm(dim=1).mean(),
                "actor_dead_features": dead_feature_fraction(self._actor_units.value),
            }
            if self._pre_tanh is not None:
                stats["actor_pre_tanh_abs"] = self._pre_tanh.value.abs().mean()
        return stats

    def _pre_tanh_penalty_loss(self) -> th.Tensor:
        """``pre_tanh_penalty * mean(pre_tanh ** 2)`` of the actor's forward just run (call when the penalty is on)."""
        penalty = self.pre_tanh_penalty * self._pre_tanh.value.pow(2).mean()
        self._pre_tanh.value = None  # release the graph (see _OutputCapture)
        return penalty

    def _clip_and_step(
        self, network: str, optimizer: th.optim.Optimizer, groups: list[ParamGroup], stats: dict
    ) -> None:
        """Clip, measure and step one network, writing its group norms (and a skip, if any) into ``stats``.

        With ``compile_update=True`` the skip of a non-finite step is decided on the device
        (:func:`~sb3_td3_cnnclip.grad_clip.clip_and_step_on_device`): ``stats`` then holds every group's norms and
        the skip flag as tensors, and :meth:`_read_update_stats` settles them once per ``train()`` call.
        """
        if self.compile_update:
            norms, skipped = clip_and_step_on_device(optimizer, groups)
        else:
            norms, stepped = clip_and_step(optimizer, groups, self.on_nonfinite_grad)
            skipped = None if stepped else 1.0
        for name, (before, after) in norms.items():
            stats[f"{name}_before"] = before
            if after is not None:
                stats[f"{name}_after"] = after
        if skipped is not None:
            stats[f"{network}_skipped"] = skipped

    def _settle_skips(self, stats: dict[str, float]) -> dict[str, float]:
        """Count an update's skipped optimizer steps in ``nonfinite_skips``, and give its statistics the keys of an
        eager update: ``<network>_skipped`` (1.0) only for a skipped step, and no AFTER norm of a skipped network."""
        skipped = [network for network in self.nonfinite_skips if stats.get(f"{network}_skipped")]
        for network in skipped:
            self.nonfinite_skips[network] += 1
        drop = {f"{network}_skipped" for network in self.nonfinite_skips if network not in skipped}
        drop |= {f"{group.name}_after" for group in self._groups if group.name.startswith(tuple(skipped))}
        return {key: value for key, value in stats.items() if key not in drop}

    def _read_update_stats(self, gradient_steps: int) -> list[dict[str, float]]:
        """Read this call's statistics, count its skipped steps, append them to ``update_stats`` (enlarged to hold
        them) and log them."""
        if gradient_steps > self.update_stats.maxlen:  # keep every update of this call for the callbacks
            self.update_stats = deque(self.update_stats, maxlen=gradient_steps)
        updates = [self._settle_skips(stats) for stats in self._stats.read()]
        group_names = [group.name for group in self._groups]
        for stats in updates:
            self.update_stats.append(stats)
            record_update(self.logger, stats, group_names, list(self.nonfinite_skips))
        return updates

    def _raise_on_skipped_steps(self, updates: list[dict[str, float]]) -> None:
        """With ``on_nonfinite_grad="raise"`` on the path that skips on the device (``compile_update=True``), raise
        :class:`~sb3_td3_cnnclip.grad_clip.NonFiniteGradientError` naming the updates whose steps were skipped.

        :param updates: this ``train()`` call's statistics, as :meth:`_read_update_stats` returns them
        """
        if self.on_nonfinite_grad != "raise":
            return
        skipped = {int(stats["n_updates"]): [network for network in self.nonfinite_skips if f"{network}_skipped" in stats]
                   for stats in updates}  # fmt: skip
        skipped = {update: networks for update, networks in skipped.items() if networks}
        if skipped:
            raise NonFiniteGradientError(
                f"Non-finite gradient norm(s) in update(s) {skipped} (update number: networks); those optimizer steps "
                "were skipped on the device, their weights and optimizer state never changed, and the rest of the "
                "train() call ran. Lower the learning rate or reward scale, or pass on_nonfinite_grad=\"skip\" to "
                "skip such steps."
            )
