"""Classifiers, the keyword spotter, saving/loading, and the data pieces the training loop relies on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from leaflab.config import config_from_mapping
from leaflab.data import dataset as data
from leaflab.models import (CompactCNN, EfficientNetB0, KeywordSpotter, build_classifier, build_model,
                            count_parameters, load_trained, save_trained)
from conftest import repo_params
from test_training_support import CLASSES, tiny_params, write_prepared


# ---- classifiers -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("in_channels", [1, 2])
def test_compact_cnn_shapes_and_size(in_channels):
    torch.manual_seed(0)
    net = CompactCNN(in_channels, 35)
    assert net(torch.randn(3, in_channels, 40, 100)).shape == (3, 35)
    assert 100_000 < count_parameters(net) < 300_000
    assert net(torch.randn(2, in_channels, 3, 5)).shape == (2, 35)  # tiny inputs do not break the pooling


def test_efficientnet_b0_is_torchvisions_with_new_stem_and_max_pool_head():
    import torchvision

    torch.manual_seed(0)
    net = EfficientNetB0(in_channels=2, n_classes=35, dropout=0.0)
    reference = torchvision.models.efficientnet_b0(weights=None)
    assert net.features[0][0].in_channels == 2 and net.features[0][0].out_channels == 32
    assert [type(m) for m in net.features[1:]] == [type(m) for m in reference.features[1:]]
    assert net.head.in_features == 1280 and net.head.out_features == 35
    assert abs(count_parameters(net) - 4.05e6) < 0.03e6  # the papers' ~4.05 M
    net.eval()
    with torch.no_grad():
        assert net(torch.randn(2, 2, 40, 100)).shape == (2, 35)


def test_build_classifier_selects_by_config():
    cfg = config_from_mapping(repo_params({"model": {"classifier": "efficientnet_b0"}}))
    assert isinstance(build_classifier(cfg.model, 1, 5), EfficientNetB0)
    cfg = config_from_mapping(repo_params({"model": {"classifier": "compact_cnn", "channels": [4, 8], "dropout": 0.0}}))
    net = build_classifier(cfg.model, 2, 5)
    assert isinstance(net, CompactCNN) and len(net.blocks) == 2


# ---- keyword spotter: forward, save, load ----------------------------------------------------------------------
@pytest.mark.parametrize("compression,channels", [("pcen", 1), ("tbn", 2)])
def test_keyword_spotter_forward_and_round_trip(tmp_path, compression, channels):
    cfg = config_from_mapping(tiny_params())
    variant = "a" if compression == "pcen" else "t"
    torch.manual_seed(0)
    model = build_model(cfg.frontend_config(variant), cfg.model, len(CLASSES))
    assert isinstance(model, KeywordSpotter) and model.frontend.out_channels == channels
    x = torch.randn(4, 2000)
    model.train()
    model(x).sum().backward()  # one training step's worth: batch statistics move, parameters get gradients
    model.eval()
    with torch.no_grad():
        expected = model(x)
    assert expected.shape == (4, len(CLASSES))
    path = tmp_path / "model.pt"
    save_trained(path, model, frontend_config=cfg.frontend_config(variant), model_config=cfg.model,
                 classes=CLASSES, variant=variant, seed=3, params_hash="abc", sample_rate=8000, crop_samples=2000)
    loaded, meta = load_trained(path)
    assert not loaded.training
    assert meta["classes"] == CLASSES and meta["variant"] == variant and meta["seed"] == 3
    assert meta["params_hash"] == "abc" and meta["sample_rate"] == 8000 and meta["crop_samples"] == 2000
    assert meta["model_config"]["channels"] == [8, 16]
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)


def test_load_trained_refuses_a_foreign_file(tmp_path):
    from leaflab.errors import LeaflabError

    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(LeaflabError, match="not a leaflab model file"):
        load_trained(bad)
    with pytest.raises(LeaflabError, match="no trained model"):
        load_trained(tmp_path / "missing.pt")


# ---- data pieces -----------------------------------------------------------------------------------------------
def test_loudness_normalisation_is_the_reference_formula():
    rng = np.random.default_rng(0)
    x = (rng.normal(0, 0.01, (3, 1000))).astype(np.float32)
    x[0] *= 50  # std 0.5: gain 10^(15/20) / 0.5, below the cap
    x[2] *= 1e-4  # very quiet: the gain is capped at max_gain_db
    y = data.loudness_normalize(x, target_db=15.0, max_gain_db=30.0)
    for row_x, row_y in zip(x, y):
        # CPJKU/EfficientLEAF datasets/__init__.py loudness_normalization
        t = torch.from_numpy(row_x)
        gain = np.minimum(10 ** (30 / 20), 10 ** (15 / 20) / (torch.std(t).item() + 1e-9))
        np.testing.assert_allclose(row_y, gain * row_x, rtol=1e-5)
    assert abs(np.std(y[0], ddof=1) - 10 ** (15 / 20)) < 1e-3
    np.testing.assert_allclose(y[2], x[2] * 10 ** 1.5, rtol=1e-5)


def test_training_clips_crop_pad_and_determinism(tmp_path):
    prepared = write_prepared(tmp_path, {"train": 3, "validation": 1, "test": 1}, clip_seconds=0.25)
    long = data.TrainingClips(prepared, "train", crop_samples=1000, seed=0, target_db=15.0, max_gain_db=30.0)
    x0, y0, i0 = long[[5, 1, 3]]
    assert x0.shape == (3, 1000) and x0.dtype == torch.float32 and i0.tolist() == [5, 1, 3]
    assert torch.equal(y0, torch.from_numpy(np.load(prepared / "train_labels.npy")[[5, 1, 3]]))
    again = long[[5, 1, 3]][0]
    assert torch.equal(x0, again)  # same (seed, epoch, index): same crop
    long.set_epoch(1)
    assert not torch.equal(x0, long[[5, 1, 3]][0])  # another epoch: other crops
    short = data.TrainingClips(prepared, "train", crop_samples=3000, seed=0, target_db=15.0, max_gain_db=30.0)
    x, _, _ = short[[0]]
    assert x.shape == (1, 3000) and torch.all(x[0, 2000:] == 0)  # padded at the end


def test_eval_windows_cover_the_clip():
    clip = np.arange(10, dtype=np.int16)
    w = data.eval_windows(clip, 4)
    assert w.shape == (3, 4) and w[2].tolist() == [8, 9, 0, 0]
    assert data.eval_windows(clip, 10).shape == (1, 10)


def test_fixed_example_indices_one_per_class_then_more():
    labels = np.array([2, 0, 0, 1, 2, 1, 0, 3])
    first = data.fixed_example_indices(labels, 4)
    assert sorted(labels[first].tolist()) == [0, 1, 2, 3]
    assert first.tolist() == [1, 3, 0, 7]  # class order, first clip of each
    more = data.fixed_example_indices(labels, 6)
    assert more[:4].tolist() == first.tolist() and len(set(more.tolist())) == 6
    assert len(data.fixed_example_indices(labels, 100)) == len(labels)
    assert np.array_equal(data.fixed_example_indices(labels, 6), more)


def test_check_prepared_names_the_missing_file_and_the_fix(tmp_path):
    from leaflab.errors import LeaflabError

    prepared = write_prepared(tmp_path / "data" / "prepared")
    (prepared / "train.npy").unlink()
    with pytest.raises(LeaflabError, match=r"train\.npy missing: run `dvc repro preprocess`"):
        data.check_prepared(prepared)
