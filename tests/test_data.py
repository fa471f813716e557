"""Offline datasets: digits split and captions, procedurally rendered Shapes with held-out
combinations, and the collate function."""
import itertools

import numpy as np
import pytest
import torch

from mmcourse.data import zero_shot_metadata as meta
from mmcourse.data import (SHAPES_CLASSNAMES, CaptionedDigits, Shapes, digits_dataloaders, load_digit_arrays,
                           make_collate, make_digits_splits, render_objects, shapes_dataloaders)
from mmcourse.data.tokenizer import default_tokenizer


def template_of(caption: str, templates, names) -> str | None:
    """Which template (filled with one of `names`) produced `caption`."""
    for t, n in itertools.product(templates, names):
        if t.format(n) == caption:
            return t
    return None


# ------------------------------------------------------------------------------ digits
def test_digit_arrays_equal_sklearn():
    from sklearn.datasets import load_digits

    ref = load_digits()
    images, labels = load_digit_arrays()
    np.testing.assert_array_equal(images, ref.images.astype(np.uint8))
    np.testing.assert_array_equal(labels, ref.target)


def test_split_sizes_disjoint_stratified_and_seeded():
    s = make_digits_splits(seed=0)
    sizes = {k: len(v) for k, v in s.items()}
    assert sizes == {"train": 1259, "val": 179, "test": 359}
    all_idx = np.concatenate(list(s.values()))
    assert len(np.unique(all_idx)) == 1797 and all_idx.min() == 0 and all_idx.max() == 1796
    _, labels = load_digit_arrays()
    for split, frac in zip(("train", "val", "test"), (0.7, 0.1, 0.2)):
        counts = np.bincount(labels[s[split]], minlength=10)
        expected = frac * np.bincount(labels)
        assert np.abs(counts - expected).max() <= 1, split
    again, other = make_digits_splits(seed=0), make_digits_splits(seed=1)
    assert all(np.array_equal(s[k], again[k]) for k in s)
    assert not np.array_equal(s["test"], other["test"])
    with pytest.raises(ValueError, match="fractions"):
        make_digits_splits(fractions=(0.5, 0.5, 0.5))


def test_digit_images_and_labels():
    ds = CaptionedDigits("test")
    images, labels = load_digit_arrays()
    idx = ds.indices.numpy()
    torch.testing.assert_close(ds.images, torch.from_numpy(images[idx]).float().unsqueeze(1) / 16)
    assert ds.images.shape == (359, 1, 8, 8) and ds.images.min() >= 0 and ds.images.max() <= 1
    assert ds.labels.tolist() == labels[idx].tolist()
    item = ds[5]
    assert item["image"].shape == (1, 8, 8) and item["label"] == int(labels[idx[5]]) and item["index"] == 5
    big = CaptionedDigits("test", image_size=16)
    assert big.images.shape == (359, 1, 16, 16) and 0 <= big.images.min() and big.images.max() <= 1
    # Upsampling keeps the picture: averaging 2x2 blocks gives back something close to the original.
    down = torch.nn.functional.avg_pool2d(big.images, 2).flatten()
    assert torch.corrcoef(torch.stack([down, ds.images.flatten()]))[0, 1] > 0.9


def test_digit_captions_use_the_split_templates():
    train, test = CaptionedDigits("train"), CaptionedDigits("test")
    assert set(meta.DIGIT_TEMPLATES_TRAIN).isdisjoint(meta.DIGIT_TEMPLATES_HELDOUT)
    torch.manual_seed(0)
    seen_forms = set()
    for ds, templates in ((train, meta.DIGIT_TEMPLATES_TRAIN), (test, meta.DIGIT_TEMPLATES_HELDOUT)):
        for i in range(0, len(ds), 7):
            item = ds[i]
            label = item["label"]
            names = (meta.DIGIT_CLASSNAMES[label], meta.DIGIT_NUMERALS[label])
            t = template_of(item["caption"], templates, names)
            assert t is not None, item["caption"]
            seen_forms.add(meta.DIGIT_NUMERALS[label] in item["caption"])
    assert seen_forms == {True, False}  # both the word and the numeral forms occur
    only_words = CaptionedDigits("val", numerals=False)
    assert all(template_of(only_words[i]["caption"], meta.DIGIT_TEMPLATES_HELDOUT,
                           [meta.DIGIT_CLASSNAMES[only_words[i]["label"]]]) for i in range(len(only_words)))


def test_digit_captions_fixed_for_eval_random_but_seeded_for_train():
    test = CaptionedDigits("test")
    assert [test[i]["caption"] for i in range(20)] == [test[i]["caption"] for i in range(20)]
    assert len({test[i]["caption"] for i in range(len(test))}) > 40
    train = CaptionedDigits("train")
    torch.manual_seed(3)
    first = [train[0]["caption"] for _ in range(30)]
    torch.manual_seed(3)
    assert [train[0]["caption"] for _ in range(30)] == first
    assert len(set(first)) > 5  # a new phrasing on each read
    explicit = CaptionedDigits("train", templates=["digit {}"], random_captions=False, numerals=False)
    assert explicit[0]["caption"] == f"digit {meta.DIGIT_CLASSNAMES[explicit[0]['label']]}"


def test_digit_augmentation_changes_train_images_only():
    torch.manual_seed(0)
    aug = CaptionedDigits("train", augment=True)
    reads = torch.stack([aug[0]["image"] for _ in range(10)])  # (10, 1, 8, 8)
    assert reads.shape == (10, 1, 8, 8) and reads.min() >= 0
    assert not any(torch.equal(r, aug.images[0]) for r in reads)
    assert (reads - aug.images[0]).abs().mean() < 0.3  # mild: still the same digit
    test = CaptionedDigits("test", augment=True)
    assert torch.equal(test[0]["image"], test.images[0])


@pytest.mark.parametrize("kwargs, match", [
    ({"split": "training"}, "unknown split"),
    ({"image_size": 4}, "image_size"),
    ({"templates": "heldout-ish"}, "templates must be"),
    ({"templates": ["no placeholder"]}, "has none of the fields"),
    ({"templates": []}, "templates is empty"),
])
def test_digits_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CaptionedDigits(**kwargs)


def test_digits_index_error():
    with pytest.raises(IndexError):
        CaptionedDigits("val")[179]


# ------------------------------------------------------------------------------ shapes
def test_shapes_deterministic_and_splits_differ():
    a, b = Shapes("val", n=200, seed=4), Shapes("val", n=200, seed=4)
    torch.testing.assert_close(a.images, b.images)
    assert [a[i]["caption"] for i in range(50)] == [b[i]["caption"] for i in range(50)]
    c = Shapes("test", n=200, seed=4)
    assert not torch.equal(a.images, c.images)
    assert a.images.shape == (200, 3, 32, 32) and a.images.min() >= 0 and a.images.max() <= 1
    assert len(Shapes("test")) == 2000


def test_shapes_paint_the_named_colour_at_the_centre():
    for two in (False, True):
        ds = Shapes("test", n=300, two_objects=two)
        objects = [(ds.centre, ds.colour)] + ([(ds.centre2, ds.colour2)] if two else [])
        rgb = torch.tensor([meta.COLOUR_RGB[c] for c in meta.COLOUR_NAMES])
        for centre, colour in objects:
            x, y = centre[:, 0].long(), centre[:, 1].long()  # the pixel containing the centre
            torch.testing.assert_close(ds.images[torch.arange(ds.n), :, y, x], rgb[colour])
        # Background stays black: the painted area is a small part of the image.
        lit = (ds.images.amax(1) > 0).float().mean((1, 2))
        assert lit.max() < 0.45 and lit.min() > 0.03


def test_shapes_are_distinguishable():
    n = len(meta.SHAPE_NAMES)
    centre, radius = torch.full((n, 2), 16.0), torch.full((n,), 6.0)
    masks = render_objects(torch.arange(n), torch.zeros(n, dtype=torch.long), centre, radius).amax(1) > 0.5
    for i, j in itertools.combinations(range(n), 2):
        iou = (masks[i] & masks[j]).sum() / (masks[i] | masks[j]).sum()
        assert iou < 0.88, (meta.SHAPE_NAMES[i], meta.SHAPE_NAMES[j], float(iou))
    area = masks.float().sum((1, 2))
    assert area.max() / area.min() < 1.8  # similar sizes: shape, not area, tells them apart


def test_shapes_captions_name_the_attributes():
    ds = Shapes("train", n=300)
    torch.manual_seed(0)
    for i in range(0, 300, 5):
        cap, a = ds[i]["caption"], ds.attributes(i)
        assert f"{a['colour']} {a['shape']}" in cap or f"{a['shape']} coloured {a['colour']}" in cap \
            or (a["shape"] in cap and cap.endswith(f"is {a['colour']}."))
        assert ds[i]["label"] == SHAPES_CLASSNAMES.index(f"{a['colour']} {a['shape']}")
    assert ds.classnames[int(ds.labels[0])] == f"{ds.attributes(0)['colour']} {ds.attributes(0)['shape']}"


def test_two_object_relations_are_true():
    ds = Shapes("val", n=400, two_objects=True)
    for i in range(ds.n):
        a = ds.attributes(i)
        (x1, y1), (x2, y2) = ds.centre[i].tolist(), ds.centre2[i].tolist()
        expected = {"to the left of": x1 < x2 - 5, "to the right of": x1 > x2 + 5, "above": y1 < y2 - 5, "below": y1 > y2 + 5}
        assert expected[a["relation"]], (a, (x1, y1), (x2, y2))
        assert (a["colour"], a["shape"]) != (a["colour2"], a["shape2"])
        cap = ds[i]["caption"]
        assert a["relation"] in cap and cap.index(a["shape"]) < cap.index(a["relation"]) < cap.rindex(a["shape2"])
    assert {ds.attributes(i)["relation"] for i in range(ds.n)} == set(meta.RELATION_NAMES)


@pytest.mark.parametrize("two", [False, True])
def test_holdout_absent_from_train_and_val_present_in_test(two):
    holdout = [("red", "circle"), "blue square"]
    pairs = {("red", "circle"), ("blue", "square")}

    def combos(ds):
        out = {(meta.COLOUR_NAMES[c], meta.SHAPE_NAMES[s]) for c, s in zip(ds.colour.tolist(), ds.shape.tolist())}
        if two:
            out |= {(meta.COLOUR_NAMES[c], meta.SHAPE_NAMES[s]) for c, s in zip(ds.colour2.tolist(), ds.shape2.tolist())}
        return out

    train = Shapes("train", n=1500, holdout=holdout, two_objects=two)
    val = Shapes("val", n=500, holdout=holdout, two_objects=two)
    test = Shapes("test", n=1000, holdout=holdout, two_objects=two)
    assert train.holdout == (("red", "circle"), ("blue", "square"))
    assert combos(train).isdisjoint(pairs) and combos(val).isdisjoint(pairs)
    assert len(combos(train)) == 24 - 2
    assert pairs <= combos(test) and len(combos(test)) == 24
    assert train.holdout_labels.tolist() == [SHAPES_CLASSNAMES.index("red circle"), SHAPES_CLASSNAMES.index("blue square")]
    assert not train.is_heldout.any() and not val.is_heldout.any()
    held = test.is_heldout
    assert 0 < held.sum() < test.n
    for i in range(0, test.n, 7):  # agrees with the attribute names
        a = test.attributes(i)
        names = {(a["colour"], a["shape"])} | ({(a["colour2"], a["shape2"])} if two else set())
        assert bool(held[i]) == bool(names & pairs)
    torch.manual_seed(0)
    captions = " ".join(train[i]["caption"] for i in range(train.n))
    assert "red circle" not in captions and "blue square" not in captions
    assert "red circle" in " ".join(test[i]["caption"] for i in range(test.n))


@pytest.mark.parametrize("kwargs, match", [
    ({"split": "dev"}, "unknown split"),
    ({"holdout": [("purple", "circle")]}, "unknown colour 'purple'"),
    ({"holdout": [("red", "hexagon")]}, "unknown shape 'hexagon'"),
    ({"holdout": ["circle"]}, "pairs"),
    ({"holdout": [(c, s) for c in meta.COLOUR_NAMES for s in meta.SHAPE_NAMES]}, "every colour"),
    ({"n": 0}, "n must be"),
    ({"holdout": [(c, s) for c in meta.COLOUR_NAMES for s in meta.SHAPE_NAMES][1:], "two_objects": True},
     "at least two"),
    ({"image_size": 8}, "image_size"),
    ({"templates": ["a {colour} thing"], "two_objects": True}, "has none of the fields"),
])
def test_shapes_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Shapes(**kwargs)


# ------------------------------------------------------------------------------ batching
def test_collate_batches_and_tokenizes():
    tok = default_tokenizer()
    ds = Shapes("val", n=10, two_objects=True)
    batch = make_collate(tok)([ds[i] for i in range(6)])
    assert batch["image"].shape == (6, 3, 32, 32) and batch["image"].dtype == torch.float32
    ref = tok(batch["caption"])  # padded to context_length
    longest = int(ref["attention_mask"].sum(1).max())
    assert longest < tok.context_length and batch["input_ids"].shape == (6, longest)  # padded to the longest caption
    torch.testing.assert_close(batch["input_ids"], ref["input_ids"][:, :longest])
    torch.testing.assert_close(batch["attention_mask"], ref["attention_mask"][:, :longest])
    assert batch["attention_mask"][:, -1].any()  # no column of padding only
    fixed = make_collate(tok, pad_to_longest=False)([ds[i] for i in range(6)])
    torch.testing.assert_close(fixed["input_ids"], ref["input_ids"])

    def left_padding(captions):  # real tokens last: cutting after the longest would drop them
        out = tok(captions)
        return {k: v.flip(1) for k, v in out.items()}
    with pytest.raises(ValueError, match="pads on the right"):
        make_collate(left_padding)([ds[i] for i in range(6)])
    assert make_collate(left_padding, pad_to_longest=False)([ds[i] for i in range(6)])["input_ids"].shape == (6, 20)
    assert batch["input_ids"].dtype == batch["attention_mask"].dtype == batch["label"].dtype == torch.long
    assert batch["label"].tolist() == ds.labels[:6].tolist() and batch["index"].tolist() == list(range(6))
    assert batch["caption"] == [ds[i]["caption"] for i in range(6)]
    assert list(batch) == ["image", "input_ids", "attention_mask", "label", "index", "caption"]  # lesson 03 prints them
    with pytest.raises(ValueError, match="empty batch"):
        make_collate(tok)([])
    with pytest.raises(ValueError, match="callable"):
        make_collate("not a tokenizer")
    # items that carry features computed in advance instead of the image: stacked as they are
    items = [{**{k: v for k, v in ds[i].items() if k != "image"}, "image_features": torch.full((4, 2), float(i))}
             for i in range(3)]
    batch = make_collate(tok)(items)
    assert "image" not in batch and batch["image_features"].shape == (3, 4, 2)
    assert batch["image_features"][:, 0, 0].tolist() == [0.0, 1.0, 2.0]


def test_digits_dataloaders_cover_splits_and_shuffle_by_seed():
    train, val, test = digits_dataloaders(batch_size=128)
    assert [len(dl.dataset) for dl in (train, val, test)] == [1259, 179, 359]
    seen = torch.cat([b["index"] for b in test])
    assert seen.tolist() == list(range(359))  # eval loaders keep order
    first = next(iter(train))["index"]
    assert first.shape == (128,) and not torch.equal(first, torch.arange(128))
    again = next(iter(digits_dataloaders(batch_size=128)[0]))["index"]
    torch.testing.assert_close(first, again)
    other = next(iter(digits_dataloaders(batch_size=128, seed=1)[0]))["index"]
    assert not torch.equal(first, other)
    with pytest.raises(ValueError, match="batch_size"):
        digits_dataloaders(batch_size=0)


def test_shapes_dataloaders_pass_options():
    train, val, test = shapes_dataloaders(batch_size=64, holdout=["red circle"], n=100)
    b = next(iter(train))
    longest = max(len(default_tokenizer().encode(c)) for c in b["caption"])  # [SOT] ... [EOT]
    assert b["image"].shape == (64, 3, 32, 32) and b["input_ids"].shape == (64, longest)
    assert train.dataset.holdout == (("red", "circle"),) and len(test.dataset) == 100


# ------------------------------------------------------------------------------ the image grid
def test_show_image_grid_rows_and_captions():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mmcourse.viz import show_image_grid

    ds = Shapes("val", n=11)
    captions = [ds[i]["caption"] for i in range(11)]
    fig = show_image_grid(ds.images[:11], captions, nrow=4, title="grid")
    assert len(fig.axes) == 3 and fig._suptitle.get_text() == "grid"
    shown = [t.get_text().replace("\n", " ") for ax in fig.axes for t in ax.get_xticklabels()]
    assert shown == captions  # every caption under its image, in order, wrapped but complete
    first = fig.axes[0].images[0].get_array()
    assert first.shape[0] == 32 + 2 * 2 and first.shape[1] == 4 * (32 + 2) + 2  # make_grid with 2-pixel borders
    np.testing.assert_allclose(first[2:34, 2:34], ds.images[0].permute(1, 2, 0).numpy())
    assert fig.axes[2].images[0].get_array().shape[1] == 3 * (32 + 2) + 2  # a short last row keeps cell width
    grey = show_image_grid(CaptionedDigits("val").images[:3], title="digits")
    assert grey.axes[0].images[0].get_array().shape == (10, 28, 3) and not grey.axes[0].get_xticklabels()
    plt.close("all")
    with pytest.raises(ValueError, match="captions has 2 entries"):
        show_image_grid(ds.images[:3], captions[:2])
    with pytest.raises(ValueError, match="C = 1 or 3"):
        show_image_grid(torch.zeros(2, 8, 8))
