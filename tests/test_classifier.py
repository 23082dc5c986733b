"""ResNet-18 classifier: architecture, weights from a path, training, metrics against scikit-learn,
checkpoints (load_module and the FID `classifier` extractor), the report callback, the configs."""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torchvision
from hydra.utils import instantiate
from PIL import Image
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from genface.callbacks.classifier_report import RIGHT, WRONG, ClassifierReport, prediction_captions
from genface.metrics.extractors import ClassifierExtractor
from genface.models import load_module
from genface.models.classifier import Classifier, balanced_thresholds
from genface.nets.resnet import load_pretrained, resnet18
from genface.viz.analysis import LINE_HEIGHT
from helpers import StepRecorder, tiny_trainer

ADAM = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3}


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


class StripesData(pl.LightningDataModule):
    """Images whose attributes are visible: A = bright top rows, B = bright left columns, C = random.

    Mimics a genface DataModule (label_kind, class_names, split_dataset(...).targets)."""

    label_kind = "attributes"

    def __init__(
        self, n: int = 64, resolution: int = 16, batch_size: int = 16, names=("A", "B", "C")
    ) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        targets = (torch.rand(n, 3, generator=g) < torch.tensor([0.5, 0.25, 0.5])).float()
        x = torch.rand(n, 3, resolution, resolution, generator=g) * 0.4 - 1
        x[:, :, : resolution // 4] += 1.5 * targets[:, 0, None, None, None]
        x[:, :, :, : resolution // 4] += 1.5 * targets[:, 1, None, None, None]
        self.x, self.targets = x.clamp(-1, 1), targets
        self.class_names, self.batch_size = list(names), batch_size

    def split_dataset(self, split: str) -> TensorDataset:
        dataset = TensorDataset(self.x, self.targets)
        dataset.targets = self.targets.numpy().astype(np.uint8)
        return dataset

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.split_dataset("train"), batch_size=self.batch_size, shuffle=True, drop_last=True
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.split_dataset("val"), batch_size=self.batch_size)

    test_dataloader = val_dataloader


class SmallConvNet(nn.Module):
    """A few thousand weights instead of ResNet-18's 11 million: the module's mechanics train in seconds."""

    def __init__(self, num_outputs: int, in_channels: int = 3) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten()
        )
        self.fc = nn.Linear(64, num_outputs)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


SMALL = {"_target_": "test_classifier.SmallConvNet"}


def tiny_classifier(**kw) -> Classifier:
    kw.setdefault("net", SMALL)
    kw.setdefault("class_names", ["A", "B", "C"])
    return Classifier(optimizer=ADAM, input_resolution=16, **kw)


# ----- the net ------------------------------------------------------------------------------------
def test_resnet18_matches_torchvision_and_exposes_features():
    net = resnet18(num_outputs=1000)
    assert n_params(net) == 11_689_512  # torchvision's resnet18()
    x = torch.randn(2, 3, 32, 32)
    assert net.features(x).shape == (2, 512) and net.num_features == 512
    torch.testing.assert_close(net(x), net.fc(net.features(x)))
    small = resnet18(num_outputs=40, small_stem=True)
    assert small.conv1.kernel_size == (3, 3) and isinstance(small.maxpool, nn.Identity)
    assert n_params(small) == 11_689_512 - 9408 + 1728 - 513 * 960
    assert resnet18(num_outputs=4, in_channels=1)(torch.randn(2, 1, 16, 16)).shape == (2, 4)


def test_stem_without_maxpool_keeps_the_weights_and_doubles_the_feature_maps(tmp_path):
    pooled = resnet18(num_outputs=3)
    torch.save(pooled.state_dict(), tmp_path / "pooled.pth")
    fine = resnet18(num_outputs=3, maxpool=False, weights_path=str(tmp_path / "pooled.pth"))
    assert n_params(fine) == n_params(pooled) and isinstance(fine.maxpool, nn.Identity)
    torch.testing.assert_close(fine.layer4[1].conv2.weight, pooled.layer4[1].conv2.weight)
    x = torch.randn(1, 3, 64, 64)
    stage1 = lambda net: net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x)))))  # noqa: E731
    assert stage1(pooled).shape[-1] == 16 and stage1(fine).shape[-1] == 32


def test_weights_from_a_path_fit_what_fits(tmp_path):
    source = torchvision.models.resnet18()
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")
    net = resnet18(num_outputs=5, weights_path=str(tmp_path / "resnet18.pth"))
    torch.testing.assert_close(net.layer3[1].conv2.weight, source.layer3[1].conv2.weight)
    grey = resnet18(num_outputs=5, in_channels=1)
    skipped = load_pretrained(grey, tmp_path / "resnet18.pth")
    assert skipped == ["fc.bias", "fc.weight"]
    torch.testing.assert_close(grey.conv1.weight, source.conv1.weight.sum(dim=1, keepdim=True))
    torch.save({"x": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="no residual-stage weight fits"):
        resnet18(num_outputs=5, weights_path=str(tmp_path / "other.pth"))
    with pytest.raises(FileNotFoundError, match="model.net.weights_path"):
        resnet18(num_outputs=5, weights_path=str(tmp_path / "missing.pth"))


# ----- the module -----------------------------------------------------------------------------------
def test_inputs_of_any_size_and_channels_are_resized():
    model = tiny_classifier(net={"_target_": "genface.nets.resnet.resnet18"}).eval()
    for shape in [(2, 3, 16, 16), (2, 3, 40, 40), (2, 1, 8, 8)]:
        assert model(torch.rand(*shape) * 2 - 1).shape == (2, 3)
    p = model.predict_proba(torch.zeros(2, 3, 16, 16))
    assert ((p > 0) & (p < 1)).all() and not torch.allclose(p.sum(1), torch.ones(2))
    classes = tiny_classifier(label_kind="class", net={"_target_": "genface.nets.resnet.resnet18"}).eval()
    torch.testing.assert_close(classes.predict_proba(torch.zeros(2, 3, 16, 16)).sum(1), torch.ones(2))
    assert model.features(torch.zeros(2, 3, 64, 64)).shape == (2, 512)


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="model.label_kind='multi'"):
        tiny_classifier(label_kind="multi")
    with pytest.raises(ValueError, match="model.pos_weight applies to label_kind='attributes'"):
        tiny_classifier(label_kind="class", pos_weight="auto")
    with pytest.raises(ValueError, match="model.net.num_outputs=4 but there are 3 class names"):
        tiny_classifier(net={**SMALL, "num_outputs": 4})
    with pytest.raises(ValueError, match="model.pos_weight has 2 values for 3 attributes"):
        tiny_classifier(pos_weight=[1.0, 2.0])


def test_training_steps_lower_the_loss(tmp_path):
    torch.manual_seed(0)
    model, rec = tiny_classifier(), StepRecorder()
    trainer = tiny_trainer(tmp_path, max_steps=30, limit_val_batches=0, callbacks=[rec])
    trainer.fit(model, datamodule=StripesData(n=32, batch_size=16))
    losses = [r["train/loss_step"] for r in rec.rows]
    assert len(losses) == 30 and sum(losses[-3:]) / 3 < losses[0] - 0.1, losses


def test_names_and_auto_pos_weight_come_from_the_data(tmp_path):
    dm = StripesData(n=32, names=("Smiling", "Male", "Young"))
    model = tiny_classifier(class_names=None, pos_weight="auto")
    assert model.net is None
    trainer = tiny_trainer(tmp_path, max_steps=1, limit_val_batches=0)
    trainer.fit(model, datamodule=dm)
    assert (
        model.class_names == ["Smiling", "Male", "Young"] and model.hparams.class_names == model.class_names
    )
    pos = dm.targets.sum(0)
    torch.testing.assert_close(model.bce_pos_weight, (len(dm.targets) - pos) / pos)
    trainer.save_checkpoint(tmp_path / "c.ckpt")
    loaded = load_module(tmp_path / "c.ckpt")
    assert loaded.class_names == model.class_names
    torch.testing.assert_close(loaded.bce_pos_weight, model.bce_pos_weight)


def test_data_that_does_not_match_is_a_clear_error(tmp_path):
    trainer = tiny_trainer(tmp_path, max_steps=1, limit_val_batches=0)
    with pytest.raises(
        ValueError, match=r"predicts \['A', 'B', 'C'\] but the data provides \['X', 'Y', 'Z'\]"
    ):
        trainer.fit(tiny_classifier(), datamodule=StripesData(names=("X", "Y", "Z")))
    with pytest.raises(ValueError, match="model.label_kind='class' but the data"):
        tiny_trainer(tmp_path, max_steps=1).fit(tiny_classifier(label_kind="class"), datamodule=StripesData())


class FixedNet(nn.Module):
    """Deterministic scores from the mean of the top rows, the left columns and the whole image."""

    def __init__(self, num_outputs: int, in_channels: int = 3) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.scale = nn.Parameter(torch.tensor([3.0, 3.0, 1.0][:num_outputs]))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack(
            [x[:, :, :4].mean((1, 2, 3)), x[:, :, :, :4].mean((1, 2, 3)), x.mean((1, 2, 3))], 1
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.features(x) + 0.3) * self.scale


def test_validation_metrics_match_scikit_learn_and_the_report_is_written(tmp_path):
    dm = StripesData(n=96, batch_size=32)
    model = tiny_classifier(net={"_target_": "test_classifier.FixedNet"})
    report = ClassifierReport(target=0.95)
    tiny_trainer(tmp_path, callbacks=[report]).validate(model, datamodule=dm)
    with torch.no_grad():
        scores = model.predict_proba(dm.x).numpy()
    y, pred = dm.targets.numpy().astype(int), (scores >= 0.5).astype(int)
    got = model.results["val"]
    for j in range(3):
        assert got["acc"][j] == pytest.approx((pred[:, j] == y[:, j]).mean(), abs=1e-6)
        assert got["bal_acc"][j] == pytest.approx(balanced_accuracy_score(y[:, j], pred[:, j]), abs=1e-6)
        assert got["f1"][j] == pytest.approx(f1_score(y[:, j], pred[:, j], zero_division=0), abs=1e-6)
        assert got["auroc"][j] == pytest.approx(roc_auc_score(y[:, j], scores[:, j]), abs=1e-4)
    assert got["bal_acc"][0] > 0.9 and got["bal_acc"][2] < 0.7  # visible vs random attribute
    text = (tmp_path / "report" / "classifier_val.md").read_text()
    assert "| A | 1.000 | 1.000 | 1.000 | 1.000 |" in text and "balanced accuracy below 0.95: C\n" in text
    assert (tmp_path / "report" / "classifier_val.png").is_file()
    csv_rows = (tmp_path / "report" / "classifier_val.csv").read_text().splitlines()
    assert csv_rows[0] == "attribute,acc,bal_acc,f1,auroc" and len(csv_rows) == 4


def test_prediction_captions_colour_right_and_wrong_predictions():
    names = ["A", "B", "C"]
    proba = torch.tensor([[0.9, 0.7, 0.2], [0.1, 0.6, 0.3]])
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    first, second = prediction_captions(proba, targets, names, "attributes", top_k=1)
    assert first == [("A 0.90", RIGHT), ("missed: C", WRONG)]  # only the top one of A and B; C was missed
    assert second == [("B 0.60", RIGHT)]
    assert prediction_captions(proba, targets, names, "attributes")[0][:2] == [
        ("A 0.90", RIGHT),
        ("B 0.70", WRONG),
    ]
    classes = prediction_captions(
        torch.tensor([[0.7, 0.2, 0.1], [0.3, 0.6, 0.1]]), torch.tensor([0, 2]), names, "class"
    )
    assert classes == [[("A 0.70", RIGHT)], [("B 0.60", WRONG), ("true: C", WRONG)]]


def test_test_report_shows_test_faces_captioned_with_predictions(tmp_path):
    dm = StripesData(n=24, batch_size=8)
    model = tiny_classifier(net={"_target_": "test_classifier.FixedNet"})
    report = ClassifierReport(examples=6)
    tiny_trainer(tmp_path, callbacks=[report]).test(model, datamodule=dm, verbose=False)
    path = tmp_path / "report" / "classifier_test_examples.png"
    assert path in report.written
    with torch.no_grad():
        captions = prediction_captions(
            model.predict_proba(dm.x[:6]), dm.targets[:6], ["A", "B", "C"], "attributes"
        )
    # 16 px faces enlarged to 64, cells 140 px wide, 4 per row: 2 rows of face + the longest caption
    cell_height = 64 + LINE_HEIGHT * max(len(c) for c in captions)
    assert Image.open(path).size == (2 + 4 * (140 + 2), 2 + 2 * (cell_height + 2))


class BiasedNet(FixedNet):
    """FixedNet's scores pushed up by 6: at the plain cut (logit 0) attributes A and B are always "present"."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + 6.0


def best_balanced_accuracy(y: np.ndarray, scores: np.ndarray) -> float:
    """Brute force: every cut between (and around) the distinct scores."""
    values = np.unique(scores)
    cuts = np.concatenate([[values[0] - 1], (values[1:] + values[:-1]) / 2, [values[-1] + 1]])
    return max(balanced_accuracy_score(y, scores > c) for c in cuts)


def test_balanced_thresholds_find_the_best_cut_and_keep_ties_together():
    g = torch.Generator().manual_seed(1)
    y = (torch.rand(200, 4, generator=g) < torch.tensor([0.1, 0.5, 0.8, 0.3])).float()
    logits = 2 * y + torch.randn(200, 4, generator=g) - 3  # informative, but biased low
    logits[:, 3] = torch.round(logits[:, 3])  # many ties
    cuts = balanced_thresholds(logits, y)
    for j in range(4):
        scores, labels = logits[:, j].numpy(), y[:, j].numpy().astype(int)
        assert balanced_accuracy_score(labels, scores > cuts[j].item()) == pytest.approx(
            best_balanced_accuracy(labels, scores), abs=1e-9
        )
        assert not np.isin(cuts[j].item(), scores)  # halfway between scores: ties fall on one side
    assert (
        balanced_accuracy_score(y[:, 0], logits[:, 0] > 0)
        < 0.75
        < balanced_accuracy_score(y[:, 0], logits[:, 0] > cuts[0])
    )
    # Absent, always present and uninformative attributes keep the plain cut.
    flat = torch.stack([torch.zeros(50), torch.ones(50), (torch.arange(50) % 2).float()], 1)
    assert balanced_thresholds(torch.randn(50, 3, generator=g) * 0 + 1, flat).tolist() == [0, 0, 0]


def test_calibration_sets_the_cuts_on_validation_and_the_test_split_uses_them(tmp_path):
    dm = StripesData(n=96, batch_size=32)
    plain = tiny_classifier(net={"_target_": "test_classifier.BiasedNet"})
    tiny_trainer(tmp_path).validate(plain, datamodule=dm, verbose=False)
    assert plain.decision_logit.tolist() == [0, 0, 0]
    model = tiny_classifier(net={"_target_": "test_classifier.BiasedNet"}, calibrate=True)
    trainer = tiny_trainer(tmp_path)
    trainer.validate(model, datamodule=dm, verbose=False)
    # Validation judges the plain cut: A and B called present everywhere.
    assert model.results["val"]["bal_acc"][:2] == [0.5, 0.5]
    with torch.no_grad():
        logits = model(dm.x)
    y = dm.targets.numpy().astype(int)
    torch.testing.assert_close(model.decision_logit, balanced_thresholds(logits, dm.targets))
    trainer = tiny_trainer(tmp_path, callbacks=[ClassifierReport()])
    metrics = trainer.test(model, datamodule=dm, verbose=False)[0]
    got = model.results["test"]["bal_acc"]
    cuts = torch.sigmoid(model.decision_logit).tolist()
    assert (
        f"decision cuts (plain probability; calibrated on the validation split, 0.5 = plain): A {cuts[0]:.2f}, "
        in (tmp_path / "report" / "classifier_test.md").read_text()
    )
    for j in range(3):
        assert got[j] == pytest.approx(best_balanced_accuracy(y[:, j], logits[:, j].numpy()), abs=1e-6)
    assert got[0] == 1.0 and got[1] == 1.0 and metrics["test/bal_acc_mean"] > 0.8
    # predict_proba reads p = 0.5 at the cut; the checkpoint keeps the cuts.
    with torch.no_grad():
        present = model.predict_proba(dm.x) > 0.5
    assert torch.equal(present, logits > model.decision_logit)
    trainer.save_checkpoint(tmp_path / "c.ckpt")
    torch.testing.assert_close(load_module(tmp_path / "c.ckpt").decision_logit, model.decision_logit)
    # A checkpoint from before calibration existed loads with the plain cut.
    ckpt = torch.load(tmp_path / "c.ckpt", weights_only=False)
    del ckpt["state_dict"]["decision_logit"]
    torch.save(ckpt, tmp_path / "old.ckpt")
    assert load_module(tmp_path / "old.ckpt").decision_logit.tolist() == [0, 0, 0]


def test_a_single_attribute_classifier_validates_like_a_multi_attribute_one(tmp_path):
    """One attribute (e.g. a Smiling judge): binary metrics, the same table and logged names."""
    dm = StripesData(n=96, batch_size=32)
    loader = DataLoader(TensorDataset(dm.x, dm.targets[:, :1]), batch_size=32)
    model = tiny_classifier(class_names=["A"])
    metrics = tiny_trainer(tmp_path).validate(model, dataloaders=loader, verbose=False)[0]
    with torch.no_grad():
        scores = model.predict_proba(dm.x)[:, 0].numpy()
    y = dm.targets[:, 0].numpy().astype(int)
    got = model.results["val"]
    assert got["bal_acc"] == pytest.approx([balanced_accuracy_score(y, scores >= 0.5)], abs=1e-6)
    assert got["auroc"] == pytest.approx([roc_auc_score(y, scores)], abs=1e-4)
    assert {"val/bal_acc_mean", "val/bal_acc/A", "val/auroc_mean"} <= set(metrics)


def test_class_labels_use_cross_entropy_and_per_class_metrics(tmp_path):
    x = torch.rand(48, 3, 16, 16) * 2 - 1
    y = torch.arange(48) % 3
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    model = tiny_classifier(label_kind="class", net={"_target_": "test_classifier.FixedNet"})
    trainer = tiny_trainer(tmp_path)
    metrics = trainer.test(model, dataloaders=loader, verbose=False)[0]
    pred = model.predict_proba(x).argmax(1).numpy()
    recall = [(pred[y.numpy() == c] == c).mean() for c in range(3)]
    np.testing.assert_allclose(model.results["test"]["acc"], recall, atol=1e-6)
    assert metrics["test/acc_mean"] == pytest.approx(np.mean(recall), abs=1e-6)
    assert set(metrics) >= {"test/loss", "test/bal_acc_mean", "test/bal_acc/B"}


def test_checkpoint_round_trip_and_fid_extractor(tmp_path):
    model = tiny_classifier(net={"_target_": "genface.nets.resnet.resnet18", "small_stem": True})
    trainer = tiny_trainer(tmp_path)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "c.ckpt")
    assert (
        torch.load(tmp_path / "c.ckpt", weights_only=False)["genface_class"]
        == "genface.models.classifier.Classifier"
    )
    loaded = load_module(tmp_path / "c.ckpt")
    model.eval()
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(loaded(x), model(x))
    extractor = ClassifierExtractor(tmp_path / "c.ckpt")
    assert extractor.num_features == 512 and extractor.input_resolution == 16
    # The extractor resizes to input_resolution itself; grey images are repeated to RGB.
    torch.testing.assert_close(extractor(torch.rand(2, 1, 32, 32)).shape, torch.Size([2, 512]))
    torch.testing.assert_close(extractor(x), model.features(x))


@pytest.mark.parametrize("experiment,outputs", [("synthfaces_attr", 33), ("celeba_attr_resnet18_256", 40)])
def test_experiments_build_the_classifier(experiment, outputs, compose_train):
    cfg = compose_train(f"experiment={experiment}")
    model = instantiate(cfg.model)
    assert model.num_outputs == outputs and model.hparams.label_kind == "attributes"
    assert model.input_resolution == cfg.data.resolution
    callbacks = [k for k, v in cfg.callbacks.items() if v is not None]
    assert "classifier_report" in callbacks and "sample_grid" not in callbacks
    assert cfg.callbacks.model_checkpoint.monitor == "val/bal_acc_mean" and cfg.test
