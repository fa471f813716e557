"""mmcourse.evaluation.analysis against naive loops and hand-computed values."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmcourse.evaluation import analysis


class LinearImage(torch.nn.Module):
    """encode_image = a fixed linear map of the pixels."""

    def __init__(self, shape=(1, 6, 5), dim=4, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = torch.nn.Parameter(torch.randn(dim, torch.Size(shape).numel(), generator=g))

    def encode_image(self, image, normalize=False):
        x = image.flatten(1) @ self.weight.T
        return F.normalize(x, dim=-1) if normalize else x


# ------------------------------------------------------------------------- modality gap
def test_modality_gap_by_hand():
    img = torch.tensor([[3.0, 0.0], [0.0, 5.0]])  # normalised: (1,0), (0,1) -> centroid (.5,.5)
    txt = torch.tensor([[-2.0, 0.0]])  # (-1, 0)
    assert analysis.modality_gap(img, txt) == pytest.approx(((1.5) ** 2 + 0.5 ** 2) ** 0.5)
    x = torch.randn(10, 3)
    assert analysis.modality_gap(x, 7 * x) == pytest.approx(0.0, abs=1e-6)  # scale does not matter
    assert analysis.modality_gap(torch.tensor([[1.0, 0.0]]), torch.tensor([[-1.0, 0.0]])) == pytest.approx(2.0)


def test_modality_gap_errors():
    with pytest.raises(ValueError, match="same embedding size"):
        analysis.modality_gap(torch.randn(3, 4), torch.randn(3, 5))
    with pytest.raises(ValueError, match="NaN"):
        analysis.modality_gap(torch.randn(3, 4), torch.full((3, 4), float("nan")))


# ---------------------------------------------------------------------------- occlusion
def _naive_occlusion(model, image, text, patch, stride, baseline):
    _, h, w = image.shape
    cos = lambda im: F.cosine_similarity(model.encode_image(im[None])[0], text, dim=0)  # noqa: E731
    ref = cos(image)
    total, count = torch.zeros(h, w), torch.zeros(h, w)
    ys = sorted(set(list(range(0, h - patch + 1, stride)) + [h - patch]))
    xs = sorted(set(list(range(0, w - patch + 1, stride)) + [w - patch]))
    for y in ys:
        for x in xs:
            occ = image.clone()
            occ[:, y:y + patch, x:x + patch] = baseline
            drop = ref - cos(occ)
            for i in range(y, y + patch):
                for j in range(x, x + patch):
                    total[i, j] += drop
                    count[i, j] += 1
    return total / count


@pytest.mark.parametrize("patch,stride,baseline", [(1, 1, 0.0), (2, 1, 0.0), (3, 2, -0.5), (2, 2, 0.3)])
def test_occlusion_map_equals_naive_loop(patch, stride, baseline):
    model = LinearImage()
    g = torch.Generator().manual_seed(1)
    image, text = torch.rand(1, 6, 5, generator=g), torch.randn(4, generator=g)
    got = analysis.occlusion_map(model, image, text, patch_size=patch, stride=stride, baseline=baseline, batch_size=7)
    assert got.shape == (6, 5)
    torch.testing.assert_close(got, _naive_occlusion(model, image, text, patch, stride, baseline).detach())
    assert got.abs().max() > 1e-3


def test_occlusion_map_finds_the_pixels_the_model_reads():
    model = LinearImage()
    with torch.no_grad():
        w = model.weight.view(4, 1, 6, 5)
        w[:, :, :3, :] = 0  # the model ignores the top half
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 6, 5, generator=g)
    heat = analysis.occlusion_map(model, image, torch.randn(4, generator=g), patch_size=1)
    assert heat[:3].abs().max() < 1e-6  # zero up to float rounding (batched vs single forward)
    assert heat[3:].abs().max() > 1e-2


def test_occlusion_map_errors():
    model = LinearImage()
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        analysis.occlusion_map(model, torch.rand(1, 1, 6, 5), torch.randn(4))
    with pytest.raises(ValueError, match="patch_size"):
        analysis.occlusion_map(model, torch.rand(1, 6, 5), torch.randn(4), patch_size=7)


# ---------------------------------------------------------------------- calibration
def _naive_ece(probs, labels, n_bins):
    n = len(labels)
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        rows = [i for i in range(n) if lo < probs[i].max() <= hi or (b == 0 and probs[i].max() == 0)]
        if rows:
            acc = sum(int(probs[i].argmax() == labels[i]) for i in rows) / len(rows)
            conf = sum(probs[i].max().item() for i in rows) / len(rows)
            total += len(rows) / n * abs(acc - conf)
    return total


def test_ece_equals_naive_loop_and_hand_values():
    g = torch.Generator().manual_seed(0)
    probs = (3 * torch.randn(200, 5, generator=g)).softmax(-1)
    labels = torch.randint(0, 5, (200,), generator=g)
    assert analysis.expected_calibration_error(probs, labels, 10) == pytest.approx(_naive_ece(probs, labels, 10), abs=1e-6)
    # Always 90% sure, right 3 times out of 4: |0.75 - 0.9| = 0.15.
    p = torch.tensor([[0.9, 0.1]] * 4)
    assert analysis.expected_calibration_error(p, torch.tensor([0, 0, 0, 1])) == pytest.approx(0.15)
    with pytest.raises(ValueError, match="sum to 1"):
        analysis.expected_calibration_error(torch.randn(4, 2), torch.zeros(4, dtype=torch.long))


# -------------------------------------------------------------------------- similarity
def test_image_text_similarity_is_cosine():
    class Model(LinearImage):
        def encode_text(self, input_ids, attention_mask=None, normalize=False):
            return torch.stack([torch.tensor([1.0, i, 0.0, -i]) for i in input_ids[:, 0].tolist()])

    tok = lambda texts: {"input_ids": torch.tensor([[len(t)] for t in texts])}  # noqa: E731
    model = Model()
    images = torch.rand(3, 1, 6, 5)
    sims = analysis.image_text_similarity(model, tok, images, ["ab", "abcd"])
    img = model.encode_image(images).detach()
    for i in range(3):
        for j, t in enumerate(["ab", "abcd"]):
            txt = torch.tensor([1.0, len(t), 0.0, -len(t)])
            assert sims[i, j] == pytest.approx(F.cosine_similarity(img[i], txt, dim=0).item(), abs=1e-6)


# ------------------------------------------------------------------------------ plots
def test_plot_modality_gap_draws_the_centroid_gap():
    import matplotlib

    matplotlib.use("Agg")
    from mmcourse.viz import plot_modality_gap

    g = torch.Generator().manual_seed(0)
    img = torch.randn(50, 8, generator=g) + torch.tensor([3.0] + [0.0] * 7)
    txt = torch.randn(40, 8, generator=g) - torch.tensor([3.0] + [0.0] * 7)
    ax = plot_modality_gap(img, txt)
    assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
    (line,) = [l for l in ax.get_lines() if l.get_label() == "gap between centroids"]
    length = float(torch.tensor(line.get_xydata()).diff(dim=0).norm())
    # The gap is mostly along the first axis, so the projected gap is close to the true one.
    assert length == pytest.approx(analysis.modality_gap(img, txt), rel=0.1)


def test_plot_occlusion_maps_shapes_and_errors():
    import matplotlib

    matplotlib.use("Agg")
    from mmcourse.viz import plot_occlusion_maps

    fig = plot_occlusion_maps(torch.rand(3, 3, 8, 8), torch.randn(3, 8, 8), titles=["a", "b", "c"])
    assert len(fig.axes) == 7  # 2 x 3 panels + colour bar
    assert fig.axes[-1].get_ylabel() == "similarity drop (cosine)"
    with pytest.raises(ValueError, match="3 images but 2 maps"):
        plot_occlusion_maps(torch.rand(3, 1, 8, 8), torch.randn(2, 8, 8))


# ------------------------------------------------------- raw, low-precision and zero embeddings
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_modality_gap_low_precision_and_zero_rows(dtype):
    g = torch.Generator().manual_seed(3)
    img, txt = torch.randn(30, 8, generator=g) * 50, torch.randn(20, 8, generator=g) + 2
    img[0] = 0  # a zero embedding counts as the origin, not NaN
    low = analysis.modality_gap(img.to(dtype), txt.to(dtype))
    ref = analysis.modality_gap(img.to(dtype).double(), txt.to(dtype).double())
    assert low == pytest.approx(ref, abs=5e-3)
    expected = (F.normalize(img.double(), dim=-1).mean(0) - F.normalize(txt.double(), dim=-1).mean(0)).norm().item()
    assert analysis.modality_gap(img, txt) == pytest.approx(expected, abs=1e-6)


def test_occlusion_map_text_side_raw_or_normalised():
    model = LinearImage()
    g = torch.Generator().manual_seed(4)
    image, text = torch.rand(1, 6, 5, generator=g), torch.randn(4, generator=g)
    torch.testing.assert_close(analysis.occlusion_map(model, image, 25 * text),
                               analysis.occlusion_map(model, image, F.normalize(text, dim=0)))
    zero = analysis.occlusion_map(model, image, torch.zeros(4))  # no direction: every drop is 0
    assert torch.equal(zero, torch.zeros(6, 5))


def test_embedding_plots_finite_for_zero_rows_and_collapse():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mmcourse.viz import plot_embeddings_2d, plot_modality_gap

    g = torch.Generator().manual_seed(5)
    img, txt = torch.randn(12, 6, generator=g).half() * 100, torch.randn(8, 6, generator=g).half()
    img[2] = 0
    ax = plot_modality_gap(img, txt)
    assert all(torch.isfinite(torch.tensor(c.get_offsets())).all() for c in ax.collections)
    assert "nan" not in ax.get_title()
    # a collapsed model: every embedding the same direction; 100% of no variance, not nan%
    same = torch.zeros(5, 6)
    same[:, 0] = torch.arange(1.0, 6.0)  # all normalise to e_0 exactly: zero variance (0/0 before)
    ax = plot_embeddings_2d(same, same, torch.zeros(5), torch.zeros(5))
    assert "(100% of the variance)" in ax.get_title()
    plt.close("all")
