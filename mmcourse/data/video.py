"""Digit clips: 8-frame videos of a handwritten digit moving left or right, appearing or
disappearing, with captions ("a 3 moving left.").

The four motions come in time-reversed pairs, exactly: a clip moving left is a clip moving right
played backwards, a disappearing digit an appearing one played backwards. So the *set* of frames
never tells the direction — only their order does. That is the property lesson 13 uses to show
that averaging frame features (CLIP4Clip's mean pooling) cannot tell left from right.

    clips = DigitClips("train", n=1200)   # clips.videos (1200, 8, 1, 8, 8), clips.motions (1200,)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from mmcourse.data import zero_shot_metadata as meta
from mmcourse.data.loaders import _SPLIT_ID, _check_split

MOTIONS = ("moving left", "moving right", "appearing", "disappearing")
NUM_FRAMES = 8
MAX_SHIFT = 1.5  # pixels: a moving digit goes from -1.5 to +1.5 px (or back) across the clip


def _translate(image: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) images shifted right by `shifts` (B,) pixels (fractional: bilinear), zeros enter."""
    B, _, H, W = image.shape
    theta = torch.zeros(B, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = -2.0 * shifts / W  # affine_grid works in [-1, 1] coordinates: W pixels span 2
    grid = F.affine_grid(theta, list(image.shape), align_corners=False)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def make_clips(images: torch.Tensor, motions: torch.Tensor, frames: int = NUM_FRAMES) -> torch.Tensor:
    """Videos of `images` performing `motions`.

    Args:
        images: (B, C, H, W) float images in [0, 1].
        motions: (B,) long indices into `MOTIONS`.
        frames: T, frames per clip (at least 2).

    Returns:
        (B, T, C, H, W) float clips. Moving: shifted linearly from -MAX_SHIFT to +MAX_SHIFT pixels
        (right) or back (left); appearing: brightness 0 -> 1 linearly; disappearing: 1 -> 0.
        Motion 0 is exactly motion 1 reversed in time, motion 3 exactly motion 2 reversed.

    Raises:
        ValueError: shapes that disagree, a motion outside 0..3, or frames < 2.
    """
    if images.dim() != 4:
        raise ValueError(f"images must have shape (B, C, H, W), got {tuple(images.shape)}")
    if motions.shape != (len(images),):
        raise ValueError(f"motions must have shape ({len(images)},), one per image, got {tuple(motions.shape)}")
    if len(motions) and (motions.min() < 0 or motions.max() >= len(MOTIONS)):
        raise ValueError(f"motions must index MOTIONS {MOTIONS}, got values outside 0..{len(MOTIONS) - 1}")
    if not isinstance(frames, int) or frames < 2:
        raise ValueError(f"frames must be an int >= 2, got {frames!r}")
    B = len(images)
    ramp = torch.linspace(0, 1, frames)  # (T,)
    forward = torch.empty(B, frames, *images.shape[1:])  # each clip in its "forward" direction
    moving = motions <= 1
    if moving.any():
        shifts = (2 * ramp - 1) * MAX_SHIFT  # (T,) -MAX_SHIFT .. +MAX_SHIFT: moving right
        x = images[moving]  # (b, C, H, W)
        b = len(x)
        moved = _translate(x.repeat_interleave(frames, 0), shifts.repeat(b))  # (b*T, C, H, W)
        forward[moving] = moved.view(b, frames, *images.shape[1:])
    if (~moving).any():
        forward[~moving] = images[~moving, None] * ramp.view(1, frames, 1, 1, 1)  # appearing
    reverse = (motions == 0) | (motions == 3)  # moving left, disappearing: the forward clip backwards
    forward[reverse] = forward[reverse].flip(1)
    return forward


class DigitClips:
    """Clips of the digits of one `CaptionedDigits` split, each with a motion and a caption.

    Args:
        split: "train", "val" or "test": the digit images come from that split of the digits.
        n: number of clips (motions balanced: they cycle, then are shuffled; images drawn at random).
        seed: the data seed (also the digits' split seed).
        frames: T.

    Attributes:
        videos: (n, T, 1, 8, 8) float; labels: (n,) digit; motions: (n,) index into `MOTIONS`;
        captions: list of n strings such as "a 3 moving left.".
    """

    def __init__(self, split: str = "train", n: int = 1000, seed: int = 0, frames: int = NUM_FRAMES):
        from mmcourse.data.digits import CaptionedDigits

        self.split = _check_split(split)
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        digits = CaptionedDigits(split, seed=seed)
        g = torch.Generator().manual_seed(1000 * seed + 13 * _SPLIT_ID[split] + 8)
        pick = torch.randint(len(digits), (n,), generator=g)
        self.labels = digits.labels[pick]  # (n,)
        self.motions = (torch.arange(n) % len(MOTIONS))[torch.randperm(n, generator=g)]  # (n,)
        self.videos = make_clips(digits.images[pick], self.motions, frames)  # (n, T, 1, 8, 8)
        self.captions = [f"a {meta.DIGIT_NUMERALS[d]} {MOTIONS[m]}." for d, m in
                         zip(self.labels.tolist(), self.motions.tolist())]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"video": self.videos[i], "label": int(self.labels[i]), "motion": int(self.motions[i]),
                "caption": self.captions[i]}

    def __repr__(self) -> str:
        return f"DigitClips(split={self.split!r}, n={len(self)}, frames={self.videos.shape[1]})"
