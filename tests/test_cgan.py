"""Conditional GAN: heads, labels, class-by-row grids, training, checkpoints, conditional accuracy."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate

from genface.callbacks.conditional_accuracy import ConditionalAccuracy
from genface.config import instantiate_group
from genface.models import load_generative
from genface.models.cgan import ConditionalGAN
from genface.nets.cgan import HEADS, ConditionalDiscriminator, condition_vector
from genface.nets.dcgan import DCGANGenerator
from helpers import StepRecorder, TinyImages, tiny_trainer

K = 3


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


class TinyLabelled(TinyImages):
    """TinyImages whose blob sits in a corner that depends on the class (or on the attribute bits)."""

    def __init__(self, n: int = 24, label_kind: str = "class", names: list[str] | None = None, **kw) -> None:
        super().__init__(n=n, **kw)
        self.label_kind = label_kind
        self.class_names = names or [f"c{i}" for i in range(K)]
        k = len(self.class_names)
        if label_kind == "class":
            self.targets = torch.arange(n) % k
        else:
            self.targets = ((torch.arange(n)[:, None] >> torch.arange(k)) & 1).float()


def opt() -> dict:
    return {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 2e-3, "betas": [0.5, 0.999]}


def tiny_cgan(head: str = "concat", label_kind: str = "class", k: int = K, **kw) -> ConditionalGAN:
    return ConditionalGAN(
        generator={
            "_target_": "genface.nets.dcgan.DCGANGenerator",
            "latent_dim": 8,
            "width": 8,
            "resolution": 16,
        },
        discriminator={
            "_target_": "genface.nets.cgan.ConditionalDiscriminator",
            "width": 8,
            "resolution": 16,
            "channels": 3,
        },
        optimizer_g=opt(),
        optimizer_d=opt(),
        condition=[f"c{i}" for i in range(k)],
        label_kind=label_kind,
        head=head,
        **kw,
    )


# ----- nets --------------------------------------------------------------------------------------------
def test_generator_takes_one_hot_classes_and_multi_hot_attributes():
    g = DCGANGenerator(latent_dim=8, width=8, resolution=16, num_classes=K)
    # the condition widens the first transposed convolution's input by K: K x (2 * width) more 4x4 kernels at 16 px
    assert n_params(g) - n_params(DCGANGenerator(latent_dim=8, width=8, resolution=16)) == K * 16 * 16
    z = torch.randn(4, 8)
    assert g(z, torch.tensor([0, 1, 2, 0])).shape == (4, 3, 16, 16)
    assert g(z, torch.tensor([[1.0, 0, 1]] * 4)).shape == (4, 3, 16, 16)
    # index labels are one-hot vectors
    g.eval()
    assert torch.equal(g(z, torch.tensor([2] * 4)), g(z, torch.tensor([[0.0, 0, 1]] * 4)))


@pytest.mark.parametrize("head", HEADS)
def test_heads_output_shapes_and_use_of_the_label(head):
    torch.manual_seed(0)
    d = ConditionalDiscriminator(head, num_classes=K, width=8, resolution=16, channels=3).eval()
    x = torch.randn(4, 3, 16, 16)
    a, b = d(x, torch.tensor([0, 1, 2, 0])), d(x, torch.tensor([1, 2, 0, 1]))
    assert a.shape == (4, {"concat": 1, "projection": 1, "multiclass": K + 1, "acgan": 1 + K}[head])
    # concat and projection read the label; the (K+1)-way and AC discriminators classify the image alone
    assert torch.allclose(a, b) == (head in ("multiclass", "acgan"))


def test_projection_head_is_features_dot_label_embedding():
    torch.manual_seed(0)
    d = ConditionalDiscriminator("projection", num_classes=K, width=8, resolution=16, channels=3).eval()
    x = torch.randn(2, 3, 16, 16)
    h = d.features(x).flatten(1)
    expected = d.out(d.features(x)).flatten(1)[:, 0] + h @ d.embed.weight[:, 1]
    assert torch.allclose(d(x, torch.tensor([1, 1]))[:, 0], expected, atol=1e-5)


def test_condition_vector_and_bad_label_shapes():
    assert torch.equal(condition_vector(torch.tensor([2, 0]), 3), torch.tensor([[0.0, 0, 1], [1, 0, 0]]))
    with pytest.raises(ValueError, match=r"condition vectors \(N, 3\)"):
        condition_vector(torch.zeros(2, 4), 3)
    with pytest.raises(ValueError, match="not a discriminator head"):
        ConditionalDiscriminator("wgan", num_classes=3)


# ----- module: configuration errors, labels, grids -----------------------------------------------------
def test_multiclass_head_refuses_attributes_and_other_losses():
    with pytest.raises(ValueError, match="needs class labels"):
        tiny_cgan("multiclass", label_kind="attributes")
    with pytest.raises(ValueError, match="model.loss must be 'bce'"):
        tiny_cgan("multiclass", loss="hinge")
    with pytest.raises(ValueError, match=r"model.head='sn'.*concat, projection, multiclass, acgan"):
        tiny_cgan("sn")


def test_default_labels_give_one_condition_per_grid_row():
    # SampleGrid draws num_classes images per row: row r is class r mod K ...
    assert tiny_cgan().default_labels(9).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert tiny_cgan().default_labels(10).tolist()[-1] == 0
    # ... or attribute combination r mod 2**K (bits of r, first attribute lowest)
    labels = tiny_cgan("projection", label_kind="attributes", k=2).default_labels(8)
    assert labels.tolist() == [[0, 0], [0, 0], [1, 0], [1, 0], [0, 1], [0, 1], [1, 1], [1, 1]]


def test_generate_is_deterministic_needs_labels_and_checks_them():
    model = tiny_cgan().eval()
    z = model.sample_latents(6, generator=torch.Generator().manual_seed(1))
    y = model.default_labels(6)
    a = model.generate(z, y)
    assert torch.equal(a, model.generate(z, y)) and a.shape == (6, 3, 16, 16) and a.abs().max() <= 1
    assert not torch.equal(a, model.generate(z, (y + 1) % K))  # the label matters
    with pytest.raises(ValueError, match="pass `labels`"):
        model.generate(z)
    with pytest.raises(ValueError, match=r"must lie in \[0, 3\)"):
        model.generate(z, torch.full((6,), 3))
    with pytest.raises(ValueError, match=r"labels must be \(N, 3\) 0/1 vectors"):
        tiny_cgan("acgan", label_kind="attributes").generate(z, y)


# ----- training ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("head", "label_kind"), [(h, "class") for h in HEADS] + [("acgan", "attributes")])
def test_training_steps_lower_the_discriminator_loss(tmp_path, head, label_kind):
    torch.manual_seed(0)
    model, rec = tiny_cgan(head, label_kind=label_kind), StepRecorder()
    dm = TinyLabelled(n=16, batch_size=16, label_kind=label_kind)
    # one batch = one D step + one G step = 2 Lightning steps
    tiny_trainer(tmp_path, max_steps=24, limit_val_batches=0, callbacks=[rec]).fit(model, datamodule=dm)
    losses = [r["train/loss_d_step"] for r in rec.rows]
    assert len(losses) == 12 and all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-4:]) / 4 < losses[0] - 0.1, losses


def test_fit_refuses_data_with_other_labels(tmp_path):
    dm = TinyLabelled(n=16, batch_size=8, label_kind="attributes", names=["Smiling", "Male", "Bald"])
    with pytest.raises(
        ValueError, match=r"conditioned on class \['c0', 'c1', 'c2'\].*attributes \['Smiling'"
    ):
        tiny_trainer(tmp_path, max_steps=2).fit(tiny_cgan(), datamodule=dm)


def test_validation_logs_discriminator_accuracy_and_checkpoint_round_trip_with_ema(tmp_path):
    model = tiny_cgan("acgan", ema_decay=0.9)
    trainer = tiny_trainer(tmp_path, max_steps=4)
    trainer.fit(model, datamodule=TinyLabelled(n=16, batch_size=8))
    assert {"val/d_real", "val/d_class_acc"} <= trainer.callback_metrics.keys()
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    loaded = load_generative(tmp_path / "m.ckpt")
    assert isinstance(loaded, ConditionalGAN) and loaded.ema is not None and loaded.head == "acgan"
    z, y = model.sample_latents(3, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2])
    assert torch.equal(model.generate(z, y), loaded.generate(z, y))
    with torch.no_grad():
        live = model.generator.eval()(z, y)
    assert not torch.allclose(live, model.generate(z, y))  # generate() uses the EMA weights


# ----- conditional accuracy ----------------------------------------------------------------------------
class OracleClassifier(pl.LightningModule):
    """Stand-in for genface's Classifier (same interface) that reads what `painted` models paint: class
    `ci` as the brightness level i of K, attribute `ci` as the sign of channel i. Names that are not
    `c<i>` read channel 0. Its outputs follow its own `class_names` order."""

    def __init__(self, class_names: list[str], label_kind: str = "class", input_resolution: int = 8) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.class_names, self.label_kind, self.input_resolution = class_names, label_kind, input_resolution
        self.painted_index = [int(name[1:]) if name.startswith("c") else 0 for name in class_names]
        self.scale = torch.nn.Parameter(torch.ones(()))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-1] == self.input_resolution  # the callback resizes to the classifier's input size
        return x.mean((2, 3)) * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.label_kind == "attributes":
            return self.features(x)[:, self.painted_index] * 50
        levels = torch.tensor(self.painted_index).float() * 2 / (K - 1) - 1
        return -((self.features(x)[:, :1] - levels) ** 2) * 100

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        logits = self(x)
        return torch.sigmoid(logits) if self.label_kind == "attributes" else logits.softmax(1)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["genface_class"] = f"{type(self).__module__}.{type(self).__qualname__}"


def painted(model: ConditionalGAN, shift: int = 0) -> ConditionalGAN:
    """Replace the generator's output by the condition painted as brightness (wrong by `shift` classes)."""

    def paint(latents: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        n = len(latents)
        if model.label_kind == "class":
            level = ((labels + shift) % model.num_classes).float() * 2 / (model.num_classes - 1) - 1
            return level[:, None, None, None].expand(n, 3, 16, 16)
        return (labels * 2 - 1)[:, :, None, None].expand(n, model.num_classes, 16, 16)

    model._generate = paint
    return model


def painted_without_c2(model: ConditionalGAN) -> ConditionalGAN:
    painting = model._generate

    def paint(latents: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        images = painting(latents, labels).clone()
        images[:, 2] = -1
        return images

    model._generate = paint
    return model


def test_conditional_accuracy_counts_hits_and_maps_classifier_names():
    model, names = painted(tiny_cgan()), ["c0", "c1", "c2"]
    cb = ConditionalAccuracy(classifier_path=None, n=27, batch_size=7)
    cb.classifier = cb.attach(OracleClassifier(names), model)
    # [full matches, samples, hits per class, samples per class]
    assert cb.counts(model).tolist() == [27, 27, 9, 9, 9, 9, 9, 9]
    assert cb.counts(painted(tiny_cgan(), shift=1))[0] == 0  # every sample shows the next class
    # a classifier with more classes, in another order: matched by name
    cb.classifier = cb.attach(OracleClassifier(["c9", "c2", "c0", "c1"]), model)
    assert cb.counts(model)[0] == 27
    with pytest.raises(ValueError, match=r"does not know \['c2'\]"):
        cb.attach(OracleClassifier(["c0", "c1", "x"]), model)
    with pytest.raises(ValueError, match="predicts attributes but the model is conditioned on class"):
        cb.attach(OracleClassifier(names, "attributes"), model)


def test_conditional_accuracy_on_attributes_needs_every_attribute_right():
    model = painted(tiny_cgan("projection", label_kind="attributes"))
    cb = ConditionalAccuracy(classifier_path=None, n=24)
    # an all-attribute classifier, in another order: matched by name
    cb.classifier = cb.attach(OracleClassifier(["c2", "x", "c0", "c1"], "attributes"), model)
    assert cb.counts(model).tolist() == [24] * 2 + [24] * 3 + [24] * 3
    # a classifier that is right about c0 and c1 but always says c2 is absent: only combinations
    # without c2 (rows 0-3 of every 8, i.e. 12 of 24 samples) match in full
    cb.classifier = cb.attach(OracleClassifier(["c0", "c1", "c2"], "attributes"), painted_without_c2(model))
    counts = cb.counts(model)
    assert counts[0] == 12 and counts[2:5].tolist() == [24, 24, 12]


def test_conditional_accuracy_is_logged_from_a_classifier_checkpoint(tmp_path):
    oracle = OracleClassifier(["c0", "c1", "c2"])
    checkpoint = {
        "state_dict": oracle.state_dict(),
        "hyper_parameters": dict(oracle.hparams),
        "pytorch-lightning_version": pl.__version__,
    }
    oracle.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, tmp_path / "oracle.ckpt")
    cb = ConditionalAccuracy(classifier_path=str(tmp_path / "oracle.ckpt"), n=12)
    trainer = tiny_trainer(tmp_path, max_steps=4, callbacks=[cb])  # one epoch of 2 batches, then validation
    trainer.fit(painted(tiny_cgan()), datamodule=TinyLabelled(n=16, batch_size=8))
    assert trainer.callback_metrics["val/cond_acc"] == 1.0
    assert trainer.callback_metrics["val/cond_acc/c1"] == 1.0
    # the real data does not paint labels: the ceiling is whatever the oracle makes of the blobs
    assert 0.0 <= float(trainer.callback_metrics["val/cond_acc_real"]) <= 1.0


def test_conditional_accuracy_without_classifier_warns_and_stays_off(tmp_path):
    cb = ConditionalAccuracy(classifier_path=None)
    trainer = tiny_trainer(tmp_path, max_steps=2, callbacks=[cb])
    with pytest.warns(UserWarning, match="classifier_path"):
        trainer.fit(tiny_cgan(), datamodule=TinyLabelled(n=16, batch_size=8))
    assert "val/cond_acc" not in trainer.callback_metrics


# ----- configs -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("head", HEADS)
def test_model_config_builds_every_head_on_digits(compose_train, head):
    cfg = compose_train("model=cgan", "data=digits", f"model.head={head}")
    model = instantiate(cfg.model)
    assert model.num_classes == 10 and model.discriminator.head == head
    assert model.image_shape == (1, 32, 32)


@pytest.mark.parametrize(
    ("experiment", "head", "label_kind"),
    [
        ("cgan_mnist", "concat", "class"),
        ("cgan_multiclass_mnist", "multiclass", "class"),
        ("cgan_synthfaces", "projection", "attributes"),
    ],
)
def test_experiments_build_model_data_and_callbacks(compose_train, experiment, head, label_kind):
    cfg = compose_train(f"experiment={experiment}")
    model = instantiate(cfg.model)
    assert (model.head, model.label_kind, cfg.task_name) == (head, label_kind, experiment)
    dm = instantiate(cfg.data)
    assert dm.class_names == model.condition and dm.label_kind == label_kind
    callbacks = instantiate_group(cfg.callbacks)
    assert any(isinstance(cb, ConditionalAccuracy) for cb in callbacks)
