"""Tests for mmcourse.recipes.clip: train once, cache by config hash, load, resume after interruption."""
import pytest
import torch

import mmcourse.recipes.cache as cache
import mmcourse.recipes.clip as pretrained
from mmcourse.recipes import (config_hash, digits_clip_config, digits_train_config, load_digits_clip,
                              load_shapes_clip, shapes_clip_config)
from mmcourse.training import Callback, TrainConfig


def tiny_digits(tokenizer=None):
    cfg = digits_clip_config(tokenizer)
    cfg.cnn_channels, cfg.image_width, cfg.text_width, cfg.text_layers, cfg.embed_dim = (8, 16), 16, 16, 1, 8
    return cfg


FAST = dict(epochs=2, progress=False, device="cpu")


def test_train_then_load_from_cache(tmp_path, monkeypatch):
    model, tok, history = load_digits_clip(tiny_digits(), digits_train_config(**FAST), cache_dir=tmp_path)
    assert len(history.loss) == 2 * 10 and "zero_shot_top1" in history.val[-1]
    files = sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".lock")  # lock files stay, empty
    assert len(files) == 1 and files[0].startswith("digits_clip_") and files[0].endswith(".pt")  # no tmp/partial left
    assert not model.training

    def no_training(*args, **kwargs):
        raise AssertionError("should have loaded from the cache")

    monkeypatch.setattr(cache, "fit", no_training)
    again, _, history2 = load_digits_clip(tiny_digits(), digits_train_config(**FAST), cache_dir=tmp_path)
    assert history2.loss == history.loss
    for k, v in model.state_dict().items():
        torch.testing.assert_close(again.state_dict()[k], v)
    # the progress bar or device do not change the model, so they do not change the cache key...
    load_digits_clip(tiny_digits(), digits_train_config(**{**FAST, "progress": True}), cache_dir=tmp_path)
    # ...but anything that does, retrains
    with pytest.raises(AssertionError, match="loaded from the cache"):
        load_digits_clip(tiny_digits(), digits_train_config(**{**FAST, "lr": 1e-3}), cache_dir=tmp_path)
    with pytest.raises(AssertionError, match="loaded from the cache"):
        load_digits_clip(tiny_digits(), digits_train_config(**FAST), cache_dir=tmp_path, force=True)


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MMCOURSE_CACHE", str(tmp_path / "env"))
    assert cache.cache_dir() == tmp_path / "env"
    assert cache.cache_dir(tmp_path / "x") == tmp_path / "x"


def test_config_hash_is_stable_and_sensitive():
    a = config_hash("digits", digits_clip_config(), TrainConfig())
    assert a == config_hash("digits", digits_clip_config(), TrainConfig())
    assert a != config_hash("digits", digits_clip_config(), TrainConfig(lr=2e-3))
    assert len(a) == 12


def test_interrupted_training_resumes_next_call(tmp_path):
    class Interrupt(Callback):
        def on_step_end(self, state):
            if state.global_step == 3:
                raise KeyboardInterrupt

    with pytest.warns(UserWarning, match="interrupted"):
        _, _, part = load_digits_clip(tiny_digits(), digits_train_config(**FAST), cache_dir=tmp_path,
                                      callbacks=[Interrupt()])
    assert part.stopped == "interrupted" and len(part.loss) == 3
    assert any(p.name.endswith(".partial.pt") for p in tmp_path.iterdir())
    _, _, resumed = load_digits_clip(tiny_digits(), digits_train_config(**FAST), cache_dir=tmp_path)
    _, _, fresh = load_digits_clip(tiny_digits(), digits_train_config(**FAST), cache_dir=tmp_path / "other")
    assert resumed.loss == fresh.loss
    assert not any(p.name.endswith(".partial.pt") for p in tmp_path.iterdir())


def test_shapes_model_with_holdout(tmp_path):
    cfg = shapes_clip_config()
    cfg.cnn_channels, cfg.image_width, cfg.text_width, cfg.text_layers, cfg.embed_dim = (8, 8), 16, 16, 1, 8
    model, tok, history = load_shapes_clip(cfg, pretrained.shapes_train_config(epochs=1, progress=False, device="cpu"),
                                           holdout=("red circle",), n_train=256, cache_dir=tmp_path)
    assert len(history.loss) == 1 and 0.0 <= history.val[-1]["zero_shot_top1"] <= 1.0
    assert model.encode_image(torch.rand(2, 3, 32, 32)).shape == (2, 8)
    names = list(tmp_path.glob("*.pt"))
    load_shapes_clip(cfg, pretrained.shapes_train_config(epochs=1, progress=False, device="cpu"),
                     holdout=("blue square",), n_train=256, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.pt"))) == len(names) + 1  # another holdout is another model


@pytest.mark.parametrize("two_objects", [False, True])
def test_shapes_clips_train_with_the_schedule_lesson_06_describes(two_objects, monkeypatch):
    """Lesson 06 contrasts the default 20 epochs (5% warmup) with 15; both Shapes CLIPs use it."""
    seen = {}

    def record(recipe, **kwargs):
        seen["config"] = recipe.train_config
        raise RuntimeError("recorded")

    monkeypatch.setattr(pretrained, "train_or_load", record)
    with pytest.raises(RuntimeError, match="recorded"):
        load_shapes_clip(two_objects=two_objects)
    config = seen["config"]
    assert (config.epochs, config.warmup_fraction, config.lr, config.weight_decay) == (20, 0.05, 4e-3, 0.1)
    assert pretrained.shapes_train_config(epochs=15).epochs == 15


def test_concurrent_requests_train_once(tmp_path):
    """Two processes asking for the same uncached model: one trains, the other waits and loads."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(f"""
        import time
        from mmcourse.recipes import clip_recipe, train_or_load, digits_clip_config, digits_train_config
        from mmcourse.data import digits_dataloaders
        from mmcourse.data.tokenizer import default_tokenizer
        tok = default_tokenizer()
        calls = []
        def make_loader():
            calls.append(1)
            return digits_dataloaders(tok, batch_size=128)[0]
        cfg = digits_train_config(epochs=1, progress=False)
        train_or_load(clip_recipe("race", digits_clip_config(tok), cfg, make_loader, {{"d": 1}}), cache={str(tmp_path)!r})
        print("trained" if calls else "loaded")
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = sorted(p.communicate(timeout=300)[0].strip() for p in procs)
    assert outputs == ["loaded", "trained"]
    assert len(list(tmp_path.glob("race_*.pt"))) == 1


def _conv_model():
    return torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
                               torch.nn.Conv2d(16, 32, 3, stride=2, padding=1), torch.nn.ReLU(),
                               torch.nn.Flatten(), torch.nn.Linear(32 * 16 * 16, 10))


def _conv_loader():
    g = torch.Generator().manual_seed(0)
    images, labels = torch.randn(256, 3, 32, 32, generator=g), torch.randint(0, 10, (256,), generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=128)


def _conv_loss(model, batch):
    return torch.nn.functional.cross_entropy(model(batch[0]), batch[1])


def test_cached_models_do_not_depend_on_the_callers_thread_count(tmp_path):
    """The same weights under 1 and 2 torch threads (lessons 07 and 11 quoted other figures with 2 threads):
    `train_or_load` trains with one thread; plain `fit` shows that the thread count matters."""
    from mmcourse.training import fit

    config = TrainConfig(epochs=3, lr=1e-2, progress=False, device="cpu")
    before = torch.get_num_threads()
    plain, cached = {}, {}
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            torch.manual_seed(0)
            model = _conv_model()
            fit(model, _conv_loader(), config, loss_fn=_conv_loss)
            plain[threads] = model.state_dict()
            recipe = cache.Recipe("conv", _conv_model, {"threads_test": 1}, config, _conv_loader, {"n": 256},
                                  loss_fn=_conv_loss)
            model, _, _ = cache.train_or_load(recipe, cache=tmp_path / str(threads))
            assert torch.get_num_threads() == threads  # the caller's setting is restored
            cached[threads] = model.state_dict()
    finally:
        torch.set_num_threads(before)
    assert any(not torch.equal(plain[1][k], plain[2][k]) for k in plain[1]), "2 threads no longer change the sums"
    for k in cached[1]:
        assert torch.equal(cached[1][k], cached[2][k]), k
        assert torch.equal(cached[1][k], plain[1][k]), k  # and it is the one-thread (reference) model


class _Asked(Exception):
    """Raised by a stand-in loader: which cache the recipe asked its dependency to come from."""


@pytest.mark.parametrize("module, loader, args, cache_arg", [
    ("fusion", "load_vqa_model", ("film",), "cache"),
    ("fusion", "load_itm_model", (), "cache"),
    ("captioner", "load_captioner", ("shapes",), "cache_dir"),
    ("captioner", "load_captioner", ("digits",), "cache_dir"),
    ("assistant", "load_assistant", ("align",), "cache"),
    ("audio", "load_audio_encoder", ("image",), "cache_dir"),
], ids=["vqa", "itm", "captioner-shapes", "captioner-digits", "assistant", "audio"])
def test_a_recipe_loads_what_it_builds_on_from_the_cache_it_was_given(module, loader, args, cache_arg, tmp_path,
                                                                      monkeypatch):
    """A model built on another cached model (a CLIP) must read that model from the cache it was
    asked to use, not from the default one (the ITM and VQA models and the captioner once did)."""
    import importlib

    def asked(*args, **kwargs):
        raise _Asked(kwargs.get("cache_dir"))

    monkeypatch.setenv("MMCOURSE_CACHE", str(tmp_path / "the-default-cache"))
    monkeypatch.setenv("MMCOURSE_SHIPPED_WEIGHTS", "0")  # a model that trains (a shipped one asks for nothing)
    recipe = importlib.import_module(f"mmcourse.recipes.{module}")
    for mod in (importlib.import_module("mmcourse.recipes.clip"), recipe):  # imported at the top or inside
        for name in ("load_shapes_clip", "load_digits_clip"):
            if hasattr(mod, name):
                monkeypatch.setattr(mod, name, asked)
    with pytest.raises(_Asked) as raised:
        getattr(recipe, loader)(*args, **{cache_arg: str(tmp_path / "asked-for")})
    assert raised.value.args[0] == str(tmp_path / "asked-for")
