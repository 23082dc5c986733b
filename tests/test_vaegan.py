"""VAE-GAN first stage: shapes (both decoders), losses (KL warm-up, GAN switch, epoch stages, adaptive weight also
under a GradScaler, centre, perceptual), training lowers the reconstruction error, validation metrics,
reconstruction grids, checkpoints and configs."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from genface.callbacks.reconstruction_grid import ReconstructionGrid
from genface.data.labels import class_index
from genface.losses import VGGPerceptual
from genface.models import load_generative
from genface.models.vaegan import VAEGAN, stage_factor
from genface.nets.autoencoder import AutoencoderKL, DiagonalGaussian
from helpers import StepRecorder, TinyImages, tiny_trainer

RES = 16
ADAM = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 2e-3}


pytestmark = pytest.mark.usefixtures("one_thread")


def ae_config(**kw) -> dict:
    cfg = {
        "_target_": "genface.nets.autoencoder.AutoencoderKL",
        "channels": 3,
        "resolution": RES,
        "base_channels": 8,
        "channel_mult": [1, 2],
        "num_res_blocks": 1,
        "attention_resolutions": [8],
        "latent_dim": 16,
    }
    cfg.update(kw)
    return cfg


def tiny_vaegan(gan: bool = True, **kw) -> VAEGAN:
    args = dict(autoencoder=ae_config(), optimizer_ae=ADAM)
    if gan:
        args.update(
            discriminator={
                "_target_": "genface.nets.patchgan.PatchGAN",
                "in_channels": 3,
                "ndf": 8,
                "n_layers": 2,
            },
            optimizer_d=ADAM,
        )
    args.update(kw)
    return VAEGAN(**args)


class TinySmiling(TinyImages):
    """TinyImages with one binary attribute (N, 1) float, declared like a genface DataModule (Smiling)."""

    label_kind = "attributes"
    num_classes = 1

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.targets = (torch.arange(len(self.images)) % 2).float()[:, None]


def fit(model, tmp_path, steps: int, dm=None, **kw):
    """`steps` training batches per epoch (max_steps would count both optimisers' steps), no validation
    unless asked for."""
    recorder = StepRecorder()
    kw = {"limit_val_batches": 0, "max_epochs": 1, **kw}
    callbacks = [recorder, *kw.pop("callbacks", [])]
    trainer = tiny_trainer(tmp_path, limit_train_batches=steps, callbacks=callbacks, **kw)
    trainer.fit(model, dm or TinyImages(n=32, resolution=RES))
    return trainer, recorder


# ----- the network ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kw", "shape"), [({"latent_dim": 16}, (16,)), ({"latent_dim": None, "z_channels": 4}, (4, 8, 8))]
)
def test_vaegan_shapes(kw, shape):
    net = instantiate(ae_config(**kw))
    assert net.latent_shape == shape
    x = torch.rand(2, 3, RES, RES) * 2 - 1
    posterior = net.encode(x)
    assert posterior.mean.shape == (2, *shape) and posterior.logvar.shape == (2, *shape)
    assert net.decode(posterior.mode()).shape == x.shape
    rec, _ = net(x)
    assert rec.shape == x.shape


def test_flat_and_spatial_latents_differ_only_in_the_heads():
    """The VAE-GAN latent-diffusion study's layout at 64 px (256 channels at 8x8, 256-d latent) against the spatial 4x8x8 variant."""
    count = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    flat = AutoencoderKL(3, 64, 64, (1, 2, 4, 4), 1, (16,), latent_dim=256)
    spatial = AutoencoderKL(3, 64, 64, (1, 2, 4, 4), 1, (16,), z_channels=4)
    assert (flat.latent_shape, spatial.latent_shape) == ((256,), (4, 8, 8))
    c, side, d, z = 256, 8, 256, 4
    conv = lambda cin, cout: cin * cout * 9 + cout  # noqa: E731
    flat_heads = conv(c, c) + (c * side * side + 1) * 2 * d + (d + 1) * c * side * side
    spatial_heads = conv(c, 2 * z) + conv(z, c)
    assert count(flat) - count(spatial) == flat_heads - spatial_heads


def test_default_decoder_keeps_the_layout_of_earlier_checkpoints():
    """upsample=interpolate (the default) builds the decoder every trained checkpoint has: same modules, same keys."""
    net = instantiate(ae_config())
    assert [type(m).__name__ for m in net.decoder] == [
        "Linear", "Unflatten", "ResBlock", "AttentionBlock", "ResBlock", "ResBlock", "AttentionBlock", "ResBlock",
        "AttentionBlock", "Upsample", "Conv2d", "ResBlock", "ResBlock", "GroupNorm", "SiLU", "Conv2d",
    ]  # fmt: skip
    keys = net.decoder.state_dict().keys()
    assert len(keys) == 76
    assert sorted({k.split(".")[0] for k in keys}, key=int) == [
        "0", "2", "3", "4", "5", "6", "7", "8", "10", "11", "12", "13", "15",
    ]  # fmt: skip
    assert net.state_dict().keys() == instantiate(ae_config(upsample="interpolate")).state_dict().keys()


def test_transposed_decoder_shapes_and_parameter_count():
    """upsample=transposed: a 4x4 stride-2 ConvTranspose2d replaces nearest + 3x3 conv, 7·C² more weights each."""
    count = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    net = instantiate(ae_config(upsample="transposed"))
    kinds = [type(m).__name__ for m in net.decoder]
    assert "ConvTranspose2d" in kinds and "Upsample" not in kinds
    x = torch.rand(2, 3, RES, RES) * 2 - 1
    assert net.decode(net.encode(x).mode()).shape == x.shape
    assert net.last_layer is net.decoder[-1].weight
    assert count(net) - count(instantiate(ae_config())) == 7 * 16**2  # one up-sampling at width 16
    study = AutoencoderKL(3, 64, 64, (1, 2, 4, 4), 1, (16,), latent_dim=256, upsample="transposed")
    assert count(study) == 30_466_371  # vaegan_celeba64: up-samplings at widths 256, 256, 128
    assert count(study) - count(AutoencoderKL(3, 64, 64, (1, 2, 4, 4), 1, (16,), latent_dim=256)) == 7 * (
        256**2 + 256**2 + 128**2
    )
    with pytest.raises(
        ValueError, match=r"autoencoder.upsample='bilinear' is not allowed; allowed: interpolate, transposed"
    ):
        AutoencoderKL(upsample="bilinear")


def test_vaegan_errors():
    with pytest.raises(ValueError, match="resolution divisible by 2"):
        AutoencoderKL(resolution=18, channel_mult=(1, 2, 2))
    net = instantiate(ae_config())
    with pytest.raises(ValueError, match=r"expects images \(N, 3, 16, 16\)"):
        net.encode(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"expects latents \(N, 16\)"):
        net.decode(torch.zeros(1, 8))


def test_diagonal_gaussian():
    standard = DiagonalGaussian(torch.zeros(3, 5), torch.zeros(3, 5))
    assert torch.allclose(standard.kl(), torch.zeros(3))
    shifted = DiagonalGaussian(torch.ones(3, 5), torch.zeros(3, 5))
    assert torch.allclose(shifted.kl(), torch.full((3,), 2.5))  # 0.5 · sum(mean²)
    a = standard.sample(torch.Generator().manual_seed(0))
    b = standard.sample(torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and not torch.equal(a, standard.mode())


def vgg_weights(tmp_path, up_to: int = 8):
    """A random VGG16 `features` state dict up to layer `up_to`, saved as torchvision names it."""
    from genface.losses import _VGG16_CFG

    layers, ch = [], 3
    for v in _VGG16_CFG:
        if len(layers) > up_to:
            break
        layers += (
            [torch.nn.MaxPool2d(2)] if v == "M" else [torch.nn.Conv2d(ch, v, 3, padding=1), torch.nn.ReLU()]
        )
        ch = v if v != "M" else ch
    state = {f"features.{k}": v for k, v in torch.nn.Sequential(*layers).state_dict().items()}
    path = tmp_path / "vgg.pth"
    torch.save(state, path)
    return path


def test_perceptual_loads_weights_from_a_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.perceptual.weights: no VGG16 weights file"):
        VGGPerceptual(tmp_path / "missing.pth")
    path = vgg_weights(tmp_path, up_to=3)
    with pytest.raises(ValueError, match="lacks VGG16 keys"):
        VGGPerceptual(path, taps=(3, 8))
    loss = VGGPerceptual(path, taps=(3,))
    x, y = torch.rand(2, 3, RES, RES) * 2 - 1, torch.rand(2, 3, RES, RES) * 2 - 1
    assert torch.allclose(loss(x, x), torch.zeros(2)) and (loss(x, y) > 0).all()
    assert not any(p.requires_grad for p in loss.parameters())


def test_perceptual_is_off_without_weights_and_on_with_them(tmp_path):
    assert tiny_vaegan().perceptual is None
    model = tiny_vaegan(perceptual={"weights": str(vgg_weights(tmp_path)), "weight": 1.0, "taps": [3, 8]})
    x = torch.rand(2, 3, RES, RES) * 2 - 1
    rec = x.flip(0)
    assert model.reconstruction_loss(rec, x) > tiny_vaegan().reconstruction_loss(rec, x)


# ----- the module -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"rec_loss": "huber"}, r"model.rec_loss='huber'.*l1, l2"),
        ({"gan_loss": "wgan"}, r"model.gan_loss='wgan'"),
        ({"optimizer_d": None}, r"model.discriminator and model.optimizer_d must both be set"),
        ({"center_weight": 1.0}, r"center_weight > 0 needs labelled classes"),
        ({"class_weight": 1.0, "num_classes": 1}, r"class_weight > 0 needs labelled classes"),
        ({"kl_weight": -1.0}, r"must be >= 0"),
        (
            {"stages": {"gan": 1, "perceptual": 2}},
            r"model.stages.perceptual: unknown loss 'perceptual'; allowed: kl, class, center, gan",
        ),
        (
            {"stages": {"kl": 2}, "kl_warmup_steps": 100},
            r"model.stages.kl and model.kl_warmup_steps=100 both schedule",
        ),
        ({"stages": {"gan": 2}, "disc_start": 10}, r"set model.disc_start=0 to schedule it by epochs"),
        (
            {"stages": {"class": 2}},
            r"model.stages.class schedules a loss that is off: set model.class_weight > 0",
        ),
        ({"stages": {"gan": 2}, "discriminator": None, "optimizer_d": None}, r"model.discriminator is null"),
        (
            {"stages": {"kl": {"start_epoch": 1, "ramp": 2}}},
            r"model.stages.kl needs start_epoch and may have ramp_epochs",
        ),
        ({"stages": {"kl": -1}}, r"model.stages.kl: start_epoch and ramp_epochs must be integers >= 0"),
        ({"stages": [{"kl": 1}]}, r"model.stages must map losses"),
    ],
)
def test_vaegan_config_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        tiny_vaegan(**kw)


def test_class_index():
    assert class_index(torch.tensor([[0.0], [1.0]]), 2).tolist() == [0, 1]
    assert class_index(torch.tensor([2, 0]), 3).tolist() == [2, 0]
    with pytest.raises(ValueError, match=r"must lie in \[0, 2\)"):
        class_index(torch.tensor([2]), 2)
    with pytest.raises(ValueError, match="one binary attribute"):
        class_index(torch.zeros(2, 3), 2)


def test_kl_warmup_is_linear():
    model = tiny_vaegan(kl_weight=0.1, kl_warmup_steps=10)
    weights = []
    for step in (0, 5, 10, 20):
        model.ae_steps.fill_(step)  # as a resumed run restores it; the run re-reads it when training starts
        model.on_train_start()
        weights.append(model.kl_weight_now())
    assert weights == pytest.approx([0.0, 0.05, 0.1, 0.1])


def test_adaptive_weight_is_the_gradient_norm_ratio():
    model = tiny_vaegan(disc_weight=0.5)
    x = torch.rand(2, 3, RES, RES) * 2 - 1
    rec = model.decode(model.encode(x).mode())
    rec_loss = (rec - x).abs().mean()
    g_loss = -model.discriminator(rec).mean()
    w = model.autoencoder.last_layer
    (g1,) = torch.autograd.grad(rec_loss, w, retain_graph=True)
    (g2,) = torch.autograd.grad(g_loss, w, retain_graph=True)
    expected = 0.5 * g1.norm() / (g2.norm() + 1e-4)
    assert torch.allclose(model.adaptive_weight(rec_loss, g_loss), expected)


def test_stage_factor_switches_or_ramps_from_its_epoch():
    assert [stage_factor(2, 0, e) for e in range(4)] == [0.0, 0.0, 1.0, 1.0]
    assert [stage_factor(1, 4, e) for e in range(7)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_stages_switch_the_weights_on_at_their_epochs_and_log_them(tmp_path):
    """Reconstruction alone in epoch 0, KL ramped in from epoch 1 over 2 epochs, class from 1, centre and GAN from 2:
    the weights are 0 before their epoch and on from it (train/w_*), and D trains only once the GAN is on."""
    stages = {"kl": {"start_epoch": 1, "ramp_epochs": 2}, "class": 1, "center": {"start_epoch": 2}, "gan": 2}
    model = tiny_vaegan(
        num_classes=2, class_weight=0.5, center_weight=0.1, kl_weight=0.1, kl_warmup_steps=0, disc_start=0,
        stages=stages,
    )  # fmt: skip
    d_params = lambda: [p.detach().clone() for p in model.discriminator.parameters()]  # noqa: E731
    d_before = d_params()
    trainer, rec = fit(model, tmp_path, steps=1, max_epochs=2, dm=TinySmiling(n=32, resolution=RES))
    assert all(torch.equal(a, b) for a, b in zip(d_before, model.discriminator.parameters()))
    assert not any("train/d_weight_step" in row for row in rec.rows)
    trainer.fit_loop.max_epochs = 3
    trainer.fit(model, TinySmiling(n=32, resolution=RES))  # resumes at epoch 2, where centre and GAN start
    weights = [{k: row[f"train/w_{k}"] for k in ("kl", "class", "center", "gan")} for row in rec.rows]
    assert weights == [
        {"kl": 0.0, "class": 0.0, "center": 0.0, "gan": 0.0},
        {"kl": pytest.approx(0.05), "class": 0.5, "center": 0.0, "gan": 0.0},
        {"kl": pytest.approx(0.1), "class": 0.5, "center": pytest.approx(0.1), "gan": 1.0},
    ]
    assert "train/d_weight_step" in rec.rows[-1]
    assert not all(torch.equal(a, b) for a, b in zip(d_before, model.discriminator.parameters()))


def test_default_schedule_is_by_steps_and_logged(tmp_path):
    model = tiny_vaegan(kl_weight=0.1, kl_warmup_steps=2, disc_start=1)
    assert model.stages == {} and model.hparams.stages is None
    _, rec = fit(model, tmp_path, steps=3)
    assert [row["train/w_kl"] for row in rec.rows] == pytest.approx([0.0, 0.05, 0.1])
    assert [row["train/w_gan"] for row in rec.rows] == [0.0, 1.0, 1.0]
    assert "train/w_class" not in rec.rows[0]  # no class head, no class weight


def _losses(model: VAEGAN, x: torch.Tensor, k: float) -> tuple[torch.Tensor, torch.Tensor]:
    from genface.losses import generator_loss

    rec = model.decode(model.encode(x).mode())
    return k * model.reconstruction_loss(rec, x), k * generator_loss("hinge", model.discriminator(rec))


def test_adaptive_weight_of_scaled_losses_equals_the_unscaled_one():
    torch.manual_seed(0)
    model = tiny_vaegan(disc_weight=0.5)
    rec_loss, g_loss = _losses(model, torch.rand(2, 3, RES, RES) * 2 - 1, 1.0)
    plain = model.adaptive_weight(rec_loss, g_loss)
    assert plain > 0
    for scale in (2.0**8, 2.0**16, torch.tensor(2.0**12)):
        assert torch.allclose(model.adaptive_weight(rec_loss, g_loss, scale=scale), plain, rtol=1e-6)


def test_adaptive_weight_under_float16_needs_the_grad_scaler_scale():
    """Under float16 autocast small gradients underflow (here: losses x 1e-5, as for large images and batches, where
    each pixel's gradient is tiny); taken of the losses times the GradScaler's scale, the weight matches float32."""
    torch.manual_seed(0)
    model = tiny_vaegan(disc_weight=1.0)
    x = torch.rand(4, 3, RES, RES) * 2 - 1
    reference = float(model.adaptive_weight(*_losses(model, x, 1e-5)))
    with torch.autocast("cpu", dtype=torch.float16):
        losses = _losses(model, x, 1e-5)
        unscaled = float(model.adaptive_weight(*losses, scale=1.0))
        scaled = float(model.adaptive_weight(*losses, scale=2.0**12))
    assert scaled == pytest.approx(reference, rel=0.02)
    assert abs(unscaled - reference) > 0.5 * reference


def test_16_mixed_training_takes_the_adaptive_weight_with_the_scalers_scale(tmp_path):
    from pytorch_lightning.plugins.precision import MixedPrecision

    torch.manual_seed(0)
    model = tiny_vaegan(disc_start=0)
    scales = []
    adaptive = model.adaptive_weight
    model.adaptive_weight = lambda r, g: scales.append(float(model.loss_scale())) or adaptive(r, g)
    plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=2.0**10))
    _, rec = fit(model, tmp_path, steps=2, plugins=[plugin])
    assert scales and scales[0] == 2.0**10
    assert all(row["train/d_weight_step"] > 0 for row in rec.rows)
    assert float(tiny_vaegan().loss_scale()) == 1.0  # no trainer, no scaler


def test_gan_switches_on_at_disc_start(tmp_path):
    model = tiny_vaegan(disc_start=3)
    d_before = [p.detach().clone() for p in model.discriminator.parameters()]
    _, rec = fit(model, tmp_path, steps=2)
    assert all(torch.equal(a, b) for a, b in zip(d_before, model.discriminator.parameters()))
    assert not any("train/loss_d_step" in row for row in rec.rows)
    model = tiny_vaegan(disc_start=1)
    d_before = [p.detach().clone() for p in model.discriminator.parameters()]
    _, rec = fit(model, tmp_path, steps=3)
    assert not all(torch.equal(a, b) for a, b in zip(d_before, model.discriminator.parameters()))
    assert "train/loss_d_step" not in rec.rows[0] and "train/d_weight_step" in rec.rows[-1]
    assert int(model.ae_steps) == 3


def test_training_lowers_reconstruction_error(tmp_path):
    torch.manual_seed(0)
    model = tiny_vaegan(gan=False)
    x = TinyImages(n=32, resolution=RES).images
    before = float((model.reconstruct(x) - x).abs().mean())
    fit(model, tmp_path, steps=4, max_epochs=8)
    after = float((model.reconstruct(x) - x).abs().mean())
    assert after < 0.7 * before


def test_center_loss_pulls_means_towards_class_centres(tmp_path):
    model = tiny_vaegan(gan=False, num_classes=2, center_weight=1.0)
    assert model.centres.shape == (2, 16)
    _, rec = fit(model, tmp_path, steps=4, dm=TinySmiling(n=32, resolution=RES))
    assert "train/center_step" in rec.rows[-1]
    assert model.centres.abs().sum() > 0  # the centres are learned with the autoencoder


class MarkedSmiling(TinySmiling):
    """TinySmiling whose class-1 images carry a 2x2 mark in a corner: a tiny pixel footprint, like a smile."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.images[self.targets[:, 0] == 1, :, :2, :2] = 1.0


def test_class_loss_makes_the_latent_carry_the_class(tmp_path):
    """The linear head on the latent mean is trained with the autoencoder; with it the class becomes linearly
    readable from the latent (val/latent_acc), and the cross-entropy falls."""
    torch.manual_seed(0)
    model = tiny_vaegan(gan=False, num_classes=2, class_weight=1.0)
    assert model.class_head.in_features == 16
    dm = MarkedSmiling(n=32, resolution=RES)
    trainer, rec = fit(model, tmp_path, steps=4, max_epochs=10, dm=dm, limit_val_batches=4)
    ce = [row["train/latent_ce_step"] for row in rec.rows]
    assert sum(ce[-4:]) < 0.5 * sum(ce[:4])
    assert float(trainer.callback_metrics["val/latent_acc"]) >= 0.9
    params = {id(p) for group in model.configure_optimizers().param_groups for p in group["params"]}
    assert {id(p) for p in model.class_head.parameters()} <= params


def test_validation_logs_reconstruction_metrics_and_grid(tmp_path):
    model = tiny_vaegan(gan=False)
    grid = ReconstructionGrid(n=4, dirpath=str(tmp_path / "samples"))
    trainer, _ = fit(model, tmp_path, steps=2, limit_val_batches=1, callbacks=[grid])
    metrics = trainer.callback_metrics
    assert {"val/l1", "val/psnr", "val/ssim"} <= set(metrics)
    assert 0 < float(metrics["val/psnr"]) < 60 and -1 <= float(metrics["val/ssim"]) <= 1
    picture = Image.open(tmp_path / "samples" / "recon_epoch_0000.png")
    assert picture.height > 2 * RES and picture.width >= 4 * RES  # originals over reconstructions


def test_reconstruction_fid_is_logged_and_zero_for_a_perfect_autoencoder(tmp_path):
    """rFID (metrics.fid.source=reconstructions): reconstructions of the real split against its statistics."""
    from genface.callbacks.fid import FIDCallback

    def rfid_callback() -> FIDCallback:
        return FIDCallback(
            extractor="tiny", n_fake=16, n_real=16, batch_size=8, kid_subset_size=8, allow_low_n=True,
            source="reconstructions", cache_dir=str(tmp_path / "fid"),
        )  # fmt: skip

    model = tiny_vaegan(gan=False)
    trainer, _ = fit(model, tmp_path / "a", steps=2, limit_val_batches=1, callbacks=[rfid_callback()])
    rfid = float(trainer.callback_metrics["val/rfid"])
    assert rfid > 1e-3 and "val/fid" not in trainer.callback_metrics
    assert "val/rkid_mean" in trainer.callback_metrics
    assert (tmp_path / "a" / "rfid_protocol.json").is_file()

    perfect = tiny_vaegan(gan=False)
    perfect.reconstruct = lambda x: x  # the identity is a perfect autoencoder: rFID 0
    trainer, _ = fit(perfect, tmp_path / "b", steps=1, limit_val_batches=1, callbacks=[rfid_callback()])
    assert abs(float(trainer.callback_metrics["val/rfid"])) < 1e-3 < rfid

    with pytest.raises(ValueError, match="metrics.fid.source='latents' is not allowed; allowed: samples"):
        FIDCallback(extractor="tiny", source="latents")


def test_generative_contract_and_checkpoint_round_trip(tmp_path):
    model = tiny_vaegan(disc_start=1)
    trainer, _ = fit(model, tmp_path, steps=2)
    path = tmp_path / "ae.ckpt"
    trainer.save_checkpoint(path)
    z = model.sample_latents(3, generator=torch.Generator().manual_seed(0))
    assert z.shape == (3, model.latent_dim)
    images = model.generate(z)
    assert images.shape == (3, *model.image_shape) and images.abs().max() <= 1
    assert torch.equal(images, model.generate(z))
    loaded = load_generative(path)
    assert isinstance(loaded, VAEGAN) and int(loaded.ae_steps) == 2
    assert torch.allclose(loaded.generate(z), images, atol=1e-6)


# ----- configs ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["vaegan", "vaegan_tiny"])
def test_model_configs_instantiate(name, compose_train):
    cfg = compose_train(f"model={name}", "data.resolution=32")
    model = instantiate(cfg.model)
    assert model.image_shape == (3, 32, 32) and model.perceptual is None


def test_vaegan_celeba64_autoencoder_experiment(compose_train, tmp_path):
    cfg = compose_train("experiment=vaegan_celeba64", f"data.root={tmp_path}")
    assert cfg.data.attributes == ["Smiling"] and cfg.model.autoencoder.latent_dim == 256
    assert cfg.callbacks.reconstruction_grid._target_.endswith("ReconstructionGrid")
    model = instantiate(cfg.model)
    assert model.latent_shape == (256,) and model.image_shape == (3, 64, 64)
    assert model.stages == {"kl": (20, 20), "class": (40, 20), "center": (60, 20), "gan": (80, 0)}
    assert any(isinstance(m, torch.nn.ConvTranspose2d) for m in model.autoencoder.decoder)
    assert cfg.trainer.max_epochs > 80  # the GAN stage is reached


def test_vaegan_synthfaces_keeps_its_step_schedule_and_decoder(compose_train):
    """The CPU recipe's measured numbers came from the step schedule and the interpolating decoder."""
    cfg = compose_train("experiment=vaegan_synthfaces")
    assert cfg.model.stages is None and cfg.model.autoencoder.upsample == "interpolate"
    assert (cfg.model.kl_warmup_steps, cfg.model.disc_start) == (300, 600)
