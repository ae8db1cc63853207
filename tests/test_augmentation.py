"""Random-shift augmentation (DrQ): the function, and ``TD3CnnClip(random_shift_pad=...)`` applying it in ``train()``."""

from __future__ import annotations

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from torch.nn import functional as F

from sb3_td3_cnnclip import TD3CnnClip
from sb3_td3_cnnclip.augmentation import image_keys, random_shift, shift_observations
from sb3_td3_cnnclip.envs.toy import ToyImageEnv

SMALL_CNN = {"features_extractor_kwargs": {"features_dim": 16}, "net_arch": [32, 32]}
FAST = {"buffer_size": 600, "learning_starts": 40, "batch_size": 16, "seed": 3}


def random_images(batch: int = 32, channels: int = 3, height: int = 12, width: int = 10, seed: int = 0) -> th.Tensor:
    return th.randint(0, 256, (batch, channels, height, width), dtype=th.uint8, generator=th.Generator().manual_seed(seed))


def offsets(images: th.Tensor, shifted: th.Tensor, pad: int) -> list[tuple[int, int]]:
    """For each sample, the (dy, dx) whose crop of the replicate-padded input equals the output (fails if none)."""
    padded = F.pad(images.double(), (pad, pad, pad, pad), mode="replicate")
    height, width = images.shape[-2:]
    found = []
    for i in range(len(images)):
        matches = [
            (dy - pad, dx - pad)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            if th.equal(padded[i, :, dy : dy + height, dx : dx + width], shifted[i].double())
        ]
        assert matches, f"sample {i} is not a crop of its padded image"
        found.append(matches[0])
    return found


@pytest.mark.parametrize("dtype", [th.uint8, th.float32])
def test_shift_keeps_shape_dtype_device_and_is_a_crop_of_the_padded_image(dtype):
    images = random_images().to(dtype)
    shifted = random_shift(images, 4, generator=th.Generator().manual_seed(1))
    assert shifted.shape == images.shape and shifted.dtype == dtype and shifted.device == images.device
    offsets(images, shifted, 4)


def test_shifts_are_per_sample_and_cover_the_whole_range():
    pad = 2
    image = random_images(batch=1, channels=1, height=9, width=9)
    images = image.expand(600, -1, -1, -1).contiguous()  # one image, many draws
    found = offsets(images, random_shift(images, pad, generator=th.Generator().manual_seed(2)), pad)
    assert set(found) == {(dy, dx) for dy in range(-pad, pad + 1) for dx in range(-pad, pad + 1)}


def test_pad_zero_is_identity_and_bad_shape_raises():
    images = random_images()
    assert random_shift(images, 0) is images
    with pytest.raises(ValueError, match="channel-first images"):
        random_shift(images[0], 4)


@pytest.mark.skipif(not th.cuda.is_available(), reason="no CUDA device on this machine")
def test_shift_runs_on_the_images_device():
    images = random_images().cuda()
    shifted = random_shift(images, 4)
    assert shifted.device == images.device
    offsets(images.cpu(), shifted.cpu(), 4)


def test_dict_observations_shift_only_their_images():
    space = spaces.Dict({
        "image": spaces.Box(0, 255, (3, 12, 10), np.uint8), "vector": spaces.Box(-1, 1, (3,), np.float32),
    })  # fmt: skip
    assert image_keys(space) == ["image"]
    assert image_keys(space["image"]) == [None] and image_keys(space["vector"]) == []
    batch = {"image": random_images(), "vector": th.rand(32, 3)}
    shifted = shift_observations(batch, ["image"], 3)
    assert shifted["vector"] is batch["vector"]
    assert not th.equal(shifted["image"], batch["image"])
    offsets(batch["image"], shifted["image"], 3)


def critic_inputs(model: TD3CnnClip) -> list[th.Tensor]:
    """Record what the critic's features extractor receives (observations already divided by 255)."""
    seen: list[th.Tensor] = []
    model.critic.features_extractor.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    return seen


@pytest.mark.parametrize("pad", [0, 4])
def test_train_shifts_observations_and_next_observations_independently(pad):
    model = TD3CnnClip("CnnPolicy", ToyImageEnv(), policy_kwargs=SMALL_CNN, random_shift_pad=pad, **FAST)
    model.learn(60)
    batch = model.replay_buffer.sample(16)
    model.replay_buffer.sample = lambda *args, **kwargs: batch
    seen = critic_inputs(model)
    model.train(1, batch_size=16)
    # the critic's encoder sees the observations (twice on an actor-update step); the target critic's the next ones
    images = (seen[0] * 255).round().to(th.uint8)
    if pad == 0:
        assert th.equal(images, batch.observations)
    else:
        found = offsets(batch.observations, images, pad)
        assert len(set(found)) > 1 and not th.equal(images, batch.observations)
    targets = []
    model.critic_target.features_extractor.register_forward_pre_hook(lambda module, args: targets.append(args[0]))
    model.train(1, batch_size=16)
    next_images = (targets[0] * 255).round().to(th.uint8)
    found_next = offsets(batch.next_observations, next_images, pad)
    assert pad == 0 or len(set(found_next)) > 1


def test_train_shifts_the_image_of_dict_observations():
    model = TD3CnnClip("MultiInputPolicy", ToyImageEnv(dict_obs=True), random_shift_pad=4,
                       policy_kwargs={"net_arch": [32], "features_extractor_kwargs": {"cnn_output_dim": 16}}, **FAST)  # fmt: skip
    assert model._shift_keys == ["image"]
    model.learn(60)
    batch = model.replay_buffer.sample(16)
    model.replay_buffer.sample = lambda *args, **kwargs: batch
    seen = critic_inputs(model)
    model.train(1, batch_size=16)
    assert th.equal(seen[0]["vector"], batch.observations["vector"])
    offsets(batch.observations["image"], (seen[0]["image"] * 255).round().to(th.uint8), 4)


@pytest.mark.parametrize("pad", [-1, 1.5, True, "4", 36])
def test_bad_pad_raises(pad):
    with pytest.raises(ValueError, match="random_shift_pad"):
        TD3CnnClip("CnnPolicy", ToyImageEnv(), policy_kwargs=SMALL_CNN, random_shift_pad=pad, **FAST)


def test_pad_without_images_raises():
    with pytest.raises(ValueError, match="no 3-D"):
        TD3CnnClip("MlpPolicy", "Pendulum-v1", random_shift_pad=4, **FAST)


def test_pad_survives_save_and_load(tmp_path):
    model = TD3CnnClip("CnnPolicy", ToyImageEnv(), policy_kwargs=SMALL_CNN, random_shift_pad=4, **FAST)
    model.save(tmp_path / "model.zip")
    loaded = TD3CnnClip.load(tmp_path / "model.zip")
    assert loaded.random_shift_pad == 4 and loaded._shift_keys == [None]
