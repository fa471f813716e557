"""Tests for mmcourse.training.memory: the measured peak is the bytes a call allocates."""
import pytest
import torch
import torch.nn.functional as F

from mmcourse.training import memory_measurable, peak_memory

pytestmark = pytest.mark.skipif(not memory_measurable(), reason="needs Linux with glibc (or CUDA)")
MiB = 2 ** 20


def test_peak_of_known_allocations():
    assert peak_memory(lambda: torch.ones(16 * MiB // 4)) == pytest.approx(16 * MiB, abs=3 * MiB)

    def two_at_once():
        a = torch.ones(8 * MiB // 4)
        b = torch.ones(8 * MiB // 4)
        return a.sum() + b.sum()

    def one_after_another():
        for _ in range(2):
            torch.ones(8 * MiB // 4).sum()

    assert peak_memory(two_at_once) == pytest.approx(16 * MiB, abs=3 * MiB)
    assert peak_memory(one_after_another) == pytest.approx(8 * MiB, abs=3 * MiB)


def test_blocked_loss_needs_less_memory_than_clip_loss():
    from mmcourse.objectives import blocked_clip_loss
    from mmcourse.objectives import clip_loss

    x = F.normalize(torch.randn(2048, 32), dim=-1).requires_grad_()
    y = F.normalize(torch.randn(2048, 32), dim=-1).requires_grad_()
    naive = peak_memory(lambda: clip_loss(x, y, 14.0).backward())
    blocked = peak_memory(lambda: blocked_clip_loss(x, y, 14.0, block_size=128).backward())
    assert naive >= 2 * 2048 ** 2 * 4  # at least the logits and their softmax, (N, N) float32 each
    assert blocked < naive / 8


def test_unmeasurable_device_raises():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ValueError, match="cannot be measured on cuda"):
        peak_memory(lambda: None, device="cuda")
