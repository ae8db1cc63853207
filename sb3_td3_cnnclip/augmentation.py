"""Random-shift image augmentation (DrQ, DrQ-v2): pad each image by repeating its border, crop it back at random.

Each sample of a batch is shifted by its own integer offsets ``(dy, dx)``, drawn uniformly from
``[-pad, pad]``, with the border pixels repeated where the shifted image leaves the frame: the output equals a
crop of the replicate-padded input, exactly, in the input's dtype. It is computed as one ``gather`` with clamped
indices (no padded copy), on the batch's device, so ``uint8`` replay observations stay ``uint8`` and are
normalised afterwards by the policy as usual.
"""

from __future__ import annotations

from collections.abc import Callable

import torch as th
from gymnasium import spaces


def random_shift(images: th.Tensor, pad: int, generator: th.Generator | None = None) -> th.Tensor:
    """Shift every image of a batch by its own random integer offsets, replicating the border.

    :param images: a batch of channel-first images, shape ``(batch, channels, height, width)``, any dtype
    :param pad: the largest shift in pixels in each direction (DrQ uses 4 on 84x84 frames); 0 returns ``images``
    :param generator: random generator for the offsets (``None``: torch's global one for the images' device)
    :return: the shifted batch, same shape, dtype and device
    """
    if images.dim() != 4:
        raise ValueError(
            f"random_shift needs a batch of channel-first images (batch, channels, height, width); got shape "
            f"{tuple(images.shape)}."
        )
    if pad == 0:
        return images
    batch, channels, height, width = images.shape
    device = images.device
    shifts = th.randint(-pad, pad + 1, (2, batch, 1), device=device, generator=generator)
    rows = (th.arange(height, device=device) + shifts[0]).clamp_(0, height - 1)  # (batch, height)
    cols = (th.arange(width, device=device) + shifts[1]).clamp_(0, width - 1)  # (batch, width)
    index = (rows[:, :, None] * width + cols[:, None, :]).view(batch, 1, height * width)
    shifted = images.reshape(batch, channels, height * width).gather(2, index.expand(batch, channels, -1))
    return shifted.view(batch, channels, height, width)


def _is_image(space: spaces.Space) -> bool:
    return isinstance(space, spaces.Box) and len(space.shape) == 3


def image_keys(
    observation_space: spaces.Space, is_image: Callable[[spaces.Space], bool] = _is_image
) -> list[str | None]:
    """The image entries of an observation space.

    :param observation_space: a ``Box`` or a ``Dict`` observation space (as stored in the replay buffer)
    :param is_image: what counts as an image (default: a 3-D ``Box``, i.e. a channel-first image, the entries
        :func:`random_shift` applies to)
    :return: ``[None]`` for an image ``Box``, the image keys of a ``Dict``, ``[]`` when there is no image
    """
    if isinstance(observation_space, spaces.Dict):
        return [key for key, space in observation_space.spaces.items() if is_image(space)]
    return [None] if is_image(observation_space) else []


def shift_observations(
    observations: th.Tensor | dict[str, th.Tensor], keys: list[str | None], pad: int
) -> th.Tensor | dict[str, th.Tensor]:
    """Apply :func:`random_shift` to the image entries of a batch of observations, with independent offsets.

    :param observations: a batch tensor, or a dict of batch tensors (Dict observations)
    :param keys: the image entries, from :func:`image_keys`
    :param pad: the largest shift in pixels
    :return: the batch with its images shifted (a new dict for Dict observations; other entries unchanged)
    """
    if not isinstance(observations, dict):
        return random_shift(observations, pad) if keys == [None] else observations
    return {key: random_shift(value, pad) if key in keys else value for key, value in observations.items()}
