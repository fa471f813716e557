"""The shipped weights (`mmcourse/recipes/weights`): where `train_or_load` looks, and whether the files
are the ones the recipes make (keys, manifest, and one model retrained from scratch)."""
import json
import shutil

import pytest
import torch

import mmcourse.recipes.cache as cache
from mmcourse.classroom import weights
from mmcourse.training import TrainConfig
from mmcourse.training.checkpoint import load_checkpoint


def _model():
    return torch.nn.Linear(4, 2)


def _loader():
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 4, generator=g), torch.randint(0, 2, (64,), generator=g))
    return torch.utils.data.DataLoader(data, batch_size=16)


def _loss(model, batch):
    return torch.nn.functional.cross_entropy(model(batch[0]), batch[1])


def _recipe(lr=0.1):
    config = TrainConfig(epochs=2, lr=lr, progress=False, device="cpu")
    return cache.Recipe("tiny", _model, {"width": 4}, config, _loader, {"n": 64}, loss_fn=_loss)


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """A shipped-weights folder holding the tiny recipe's model, trained elsewhere; an empty default cache."""
    folder, trained_in = tmp_path / "shipped", tmp_path / "elsewhere"
    monkeypatch.setenv("MMCOURSE_SHIPPED_WEIGHTS", "1")
    model, _, path = cache.train_or_load(_recipe(), cache=trained_in)
    folder.mkdir()
    shutil.copy(path, folder / path.name)
    monkeypatch.setattr(cache, "SHIPPED_WEIGHTS", folder)
    monkeypatch.setenv("MMCOURSE_CACHE", str(tmp_path / "cache"))
    return folder / path.name, model


def _no_training(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("trained instead of loading")

    monkeypatch.setattr(cache, "fit", fail)


def test_an_uncached_model_loads_from_the_shipped_weights(shipped, monkeypatch):
    path, trained = shipped
    _no_training(monkeypatch)
    model, history, source = cache.train_or_load(_recipe())
    assert source == path and len(history.loss) == 8
    for k, v in trained.state_dict().items():
        assert torch.equal(model.state_dict()[k], v)
    assert not (cache.cache_dir() / path.name).exists()  # loading copies nothing into the learner's cache


def test_the_learners_own_model_wins_over_the_shipped_one(shipped, monkeypatch):
    path, _ = shipped
    own, _, own_path = cache.train_or_load(_recipe(), shipped=False)  # trained here: lesson 04's way
    assert own_path == cache.cache_dir() / path.name
    _no_training(monkeypatch)
    assert cache.train_or_load(_recipe()).path == own_path


@pytest.mark.parametrize("how", ["env 0", "force", "shipped=False", "another recipe"])
def test_the_shipped_weights_are_skipped_when_asked_or_when_the_recipe_changed(shipped, monkeypatch, how):
    recipe, kwargs = _recipe(), {}
    if how == "env 0":
        monkeypatch.setenv("MMCOURSE_SHIPPED_WEIGHTS", "0")
    elif how == "force":
        kwargs["force"] = True
    elif how == "shipped=False":
        kwargs["shipped"] = False
    else:
        recipe = _recipe(lr=0.05)  # a changed recipe has another key: the shipped file is not its model
    _no_training(monkeypatch)
    with pytest.raises(AssertionError, match="trained instead of loading"):
        cache.train_or_load(recipe, **kwargs)


def test_required_mode_names_a_model_missing_from_the_shipped_weights(shipped, monkeypatch):
    monkeypatch.setenv("MMCOURSE_SHIPPED_WEIGHTS", "required")
    assert cache.train_or_load(_recipe()).path == shipped[0]  # shipped: loads
    with pytest.raises(cache.ShippedWeightsMissing, match=r"tiny_\w+\.pt: .*make weights"):
        cache.train_or_load(_recipe(lr=0.05))  # a lesson model the course should ship: an error, not 1 min of training
    # a model a test or a learner trains into a cache of their own is not a shipped one: it trains
    model, _, path = cache.train_or_load(_recipe(lr=0.05), cache=shipped[0].parent.parent / "own")
    assert path.exists()


@pytest.mark.parametrize("value", ["yes", "2", "requried"])
def test_an_unknown_shipped_weights_setting_is_named(monkeypatch, value):
    monkeypatch.setenv("MMCOURSE_SHIPPED_WEIGHTS", value)
    with pytest.raises(ValueError, match=f"MMCOURSE_SHIPPED_WEIGHTS='{value}'.*required"):
        cache.train_or_load(_recipe(), cache="unused")


def test_the_callers_random_state_is_untouched_whether_the_model_is_trained_or_loaded(shipped):
    draws = []
    for _ in ("trains", "loads from the cache", "loads the shipped file"):
        torch.manual_seed(123)
        cache.train_or_load(_recipe(lr=0.05) if len(draws) < 2 else _recipe())
        draws.append(torch.rand(3))
    torch.manual_seed(123)
    expected = torch.rand(3)
    for got in draws:
        assert torch.equal(got, expected)


# ------------------------------------------------------------------------------ the course's files

def test_the_manifest_matches_the_shipped_files():
    assert weights.manifest_problems() == []
    manifest = json.loads((cache.SHIPPED_WEIGHTS / weights.MANIFEST).read_text())
    # built on the reference setup: one thread, torch's CPU kernels capped at AVX2 (course.reference_cpu_env)
    assert manifest["trained_with"] == {"torch": torch.__version__.split("+")[0], "threads": 1, "cpu": "avx2"}
    assert len(manifest["files"]) >= 20


def test_a_changed_or_unlisted_file_is_named(tmp_path):
    for p in weights.shipped_files()[:2]:
        shutil.copy(p, tmp_path / p.name)
    written = weights.write_manifest(tmp_path)
    assert written["trained_with"]["cpu"] == weights.REFERENCE_ENV.get("ATEN_CPU_CAPABILITY", "native")
    assert weights.manifest_problems(tmp_path) == []
    first, second = weights.shipped_files(tmp_path)
    first.write_bytes(first.read_bytes()[:-1] + b"x")
    second.unlink()
    (tmp_path / "extra_0123456789ab.pt").write_bytes(b"")
    problems = weights.manifest_problems(tmp_path)
    assert [p.split(":")[0] for p in problems] == ["extra_0123456789ab.pt", second.name, first.name], problems
    assert all("make weights" in p for p in problems)


def test_every_shipped_file_is_named_by_the_key_of_what_it_holds():
    """A shipped model's file name is its recipe's key, recomputed here from the settings, training config
    and data saved inside it: a stale key (e.g. after a CACHE_VERSION bump) or a renamed file fails."""
    for path in weights.shipped_files():
        saved = load_checkpoint(path)
        name, key = path.stem.rsplit("_", 1)
        train_key = {k: v for k, v in saved["train_config"].items() if k not in ("device", "progress", "log_every")}
        assert cache.config_hash(name, saved["settings"], train_key, saved["data"]) == key, path.name
        assert saved["history"]["loss"], path.name  # a trained model, with the history lessons plot


def test_a_shipped_model_is_what_its_recipe_trains_from_scratch(tmp_path, monkeypatch):
    """Lesson 12's CLIP on clean pairs, retrained here with shipped weights off, equals the shipped file."""
    from mmcourse.data.noisy_pairs import clean_pairs
    from mmcourse.recipes.data_cleaning import train_on_pairs

    shipped_model, _, shipped_history = train_on_pairs(clean_pairs("train"))  # lesson 12's call, as it ships
    monkeypatch.setenv("MMCOURSE_SHIPPED_WEIGHTS", "0")
    model, _, history = train_on_pairs(clean_pairs("train"), cache_dir=tmp_path)
    assert list(tmp_path.glob("pairs_clip_*.pt")), "trained here, not loaded"
    assert history.loss == pytest.approx(shipped_history.loss, rel=1e-4)
    for k, v in shipped_model.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=1e-4, atol=1e-5, msg=k)


def _notebook(path, source):
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source)]
    nbformat.write(nb, str(path))
    return path


TRAINS_TINY = """
import torch
from mmcourse.recipes.cache import Recipe, train_or_load
from mmcourse.training import TrainConfig

data = torch.utils.data.TensorDataset(torch.randn(32, 4, generator=torch.Generator().manual_seed(0)), torch.zeros(32, dtype=torch.long))
recipe = Recipe("tiny_built", lambda: torch.nn.Linear(4, 2), {"width": 4}, TrainConfig(epochs=1, progress=False, device="cpu"),
                lambda: torch.utils.data.DataLoader(data, batch_size=8), {"n": 32},
                loss_fn=lambda model, batch: torch.nn.functional.cross_entropy(model(batch[0]), batch[1]))
print(train_or_load(recipe).path.name)
"""


def test_make_weights_ships_exactly_what_the_notebooks_trained(tmp_path, capsys):
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "stale_0123456789ab.pt").write_bytes(b"old")
    nb = _notebook(tmp_path / "01_trains.ipynb", TRAINS_TINY)
    assert weights.build([nb], tmp_path / "cache", folder) == 0
    shipped_now = [p.name for p in weights.shipped_files(folder)]
    assert len(shipped_now) == 1 and shipped_now[0].startswith("tiny_built_")  # the stale one is gone
    assert weights.manifest_problems(folder) == []
    assert "1 models" in capsys.readouterr().out


def test_make_weights_leaves_the_folder_alone_when_a_notebook_fails(tmp_path):
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "kept_0123456789ab.pt").write_bytes(b"old")
    good = _notebook(tmp_path / "01_trains.ipynb", TRAINS_TINY)
    bad = _notebook(tmp_path / "02_fails.ipynb", "raise RuntimeError('broken lesson')")
    assert weights.build([good, bad], tmp_path / "cache", folder) == 1
    assert [p.name for p in weights.shipped_files(folder)] == ["kept_0123456789ab.pt"]
