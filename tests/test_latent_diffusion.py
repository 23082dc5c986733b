"""Latent diffusion: the frozen first stage, the latent scale, the contract, labels and CFG, both flat-latent
denoisers (residual MLP, conditional U-Net), denoising paths and per-class GIFs, latent pictures, checkpoints and
configs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from genface.callbacks.denoising_path import DenoisingPath
from genface.callbacks.latent_pictures import LatentPictures
from genface.models import load_generative
from genface.models.latent_diffusion import LatentDiffusion, class_grid, encode_dataset
from genface.nets.latent_denoiser import LatentDenoiser, LatentUNet
from genface.viz.diffusion import path_strip
from genface.viz.latents import latent_scatter, project_2d
from helpers import StepRecorder, TinyImages, tiny_trainer
from test_vaegan import TinySmiling, ae_config, tiny_vaegan

RES = 16
ADAM = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 2e-3}
MLP = {"_target_": "genface.nets.latent_denoiser.LatentDenoiser", "dim": 16, "hidden": 32, "num_blocks": 2}
FLAT_UNET = {
    "_target_": "genface.nets.latent_denoiser.LatentUNet",
    "dim": 16,
    "hidden": 8,
    "mult": [1, 2],
    "num_blocks": 1,
}


pytestmark = pytest.mark.usefixtures("one_thread")


def fit(model, tmp_path, steps: int, dm=None, **kw):
    recorder = StepRecorder()
    kw = {"limit_val_batches": 0, "max_epochs": 1, **kw}
    callbacks = [recorder, *kw.pop("callbacks", [])]
    trainer = tiny_trainer(tmp_path, limit_train_batches=steps, callbacks=callbacks, **kw)
    trainer.fit(model, dm or TinySmiling(n=32, resolution=RES))
    return trainer, recorder


@pytest.fixture(scope="module")
def ae_ckpts(tmp_path_factory) -> dict[str, str]:
    """First-stage checkpoints (flat 16-d and spatial 4x8x8 latents), one training step each."""
    tmp = tmp_path_factory.mktemp("first_stage")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    paths = {}
    for name, cfg in {"flat": ae_config(), "spatial": ae_config(latent_dim=None, z_channels=4)}.items():
        model = tiny_vaegan(gan=False, autoencoder=cfg)
        trainer = tiny_trainer(tmp, max_epochs=1, limit_train_batches=1, limit_val_batches=0)
        trainer.fit(model, TinyImages(n=8, resolution=RES))
        trainer.save_checkpoint(tmp / f"{name}.ckpt")
        paths[name] = str(tmp / f"{name}.ckpt")
    torch.set_num_threads(before)
    return paths


def tiny_ldm(ckpt: str, **kw) -> LatentDiffusion:
    args = dict(
        net=MLP,
        optimizer=ADAM,
        first_stage_ckpt=ckpt,
        schedule={"kind": "linear", "T": 100},
        sample_steps=4,
        ema_decay=None,
        num_classes=2,
    )
    args.update(kw)
    model = LatentDiffusion(**args)
    model.setup("fit")
    return model


def perturbed(model: LatentDiffusion, seed: int = 0) -> LatentDiffusion:
    """Move the denoiser off its zero-initialised output, which would hide the labels' effect."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


# ----- the denoiser -----------------------------------------------------------------------------------
def test_latent_denoiser_shapes_and_errors():
    net = LatentDenoiser(dim=16, hidden=32, num_blocks=2, num_classes=2)
    x, t = torch.randn(3, 16), torch.tensor([0, 5, 99])
    assert torch.equal(net(x, t, torch.tensor([0, 1, 2])), torch.zeros(3, 16))  # zero-initialised output
    with pytest.raises(ValueError, match=r"expects latents \(B, 16\)"):
        net(torch.randn(3, 8), t)
    with pytest.raises(ValueError, match="built with num_classes=0"):
        LatentDenoiser(dim=16, hidden=8, num_blocks=1)(x, t, torch.zeros(3, dtype=torch.long))


def test_latent_unet_shapes_errors_and_size():
    net = LatentUNet(dim=16, hidden=8, mult=(1, 2, 4), num_blocks=2, num_classes=2)
    x, t = torch.randn(3, 16), torch.tensor([0, 5, 99])
    assert torch.equal(net(x, t, torch.tensor([0, 1, 2])), torch.zeros(3, 16))  # zero-initialised output
    assert [m.out_features for m in net.widen] == [16, 32] and [m.out_features for m in net.narrow] == [8, 16]
    with pytest.raises(ValueError, match=r"LatentUNet expects latents \(B, 16\)"):
        net(torch.randn(3, 8), t)
    with pytest.raises(ValueError, match="built with num_classes=0"):
        LatentUNet(dim=16, hidden=8)(x, t, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="every mult must be >= 1"):
        LatentUNet(dim=16, mult=(1, 0))
    # the study's sizes (model=latent_diffusion_flat_unet, 2 classes): widths 256-512-1024, time features 256
    study = LatentUNet(
        dim=256, hidden=256, mult=(1, 2, 4), num_blocks=1, num_classes=2, dropout=0.1, time_dim=256
    )
    assert sum(p.numel() for p in study.parameters()) == 18_374_656


def test_latent_unet_uses_its_skip_connections_time_and_label():
    torch.manual_seed(0)
    net = perturbed_net(LatentUNet(dim=16, hidden=8, mult=(1, 2), num_blocks=1, num_classes=2)).eval()
    x, t = torch.randn(2, 16), torch.tensor([10, 10])
    out = net(x, t, torch.tensor([0, 0]))
    assert not torch.allclose(out, net(x, t, torch.tensor([1, 1])))
    assert not torch.allclose(out, net(x, torch.tensor([90, 90]), torch.tensor([0, 0])))
    out.sum().backward()
    assert all(m.weight.grad is not None and m.weight.grad.abs().sum() > 0 for m in net.merge)


def perturbed_net(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return net


def test_latent_unet_denoiser_trains_and_generates_deterministically(ae_ckpts, tmp_path):
    torch.manual_seed(0)
    model = tiny_ldm(ae_ckpts["flat"], net=FLAT_UNET)
    assert isinstance(model.net, LatentUNet) and model.net.num_classes == 2
    before = [p.detach().clone() for p in model.net.parameters()]
    _, rec = fit(model, tmp_path, steps=2)
    assert np.isfinite(rec.rows[-1]["train/loss_step"])
    assert not all(torch.equal(a, b) for a, b in zip(before, model.net.parameters()))
    z = model.sample_latents(3, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 0])
    images = model.generate(z, labels)
    assert images.shape == (3, 3, RES, RES) and images.abs().max() <= 1
    assert torch.equal(images, model.generate(z, labels))


# ----- first stage --------------------------------------------------------------------------------------
def test_first_stage_errors(ae_ckpts, tmp_path):
    with pytest.raises(ValueError, match="model.first_stage_ckpt is required"):
        tiny_ldm(None)
    with pytest.raises(FileNotFoundError, match="model.first_stage_ckpt: no checkpoint at"):
        tiny_ldm(str(tmp_path / "missing.ckpt"))
    with pytest.raises(
        ValueError, match=r"model.net does not fit the first stage's latents of shape \(4, 8, 8\)"
    ):
        tiny_ldm(ae_ckpts["spatial"])
    ldm = LatentDiffusion(net=MLP, optimizer=ADAM, first_stage_ckpt=ae_ckpts["flat"])  # no setup yet
    with pytest.raises(RuntimeError, match="first stage is not loaded yet"):
        _ = ldm.latent_dim


def test_first_stage_is_frozen_during_training(ae_ckpts, tmp_path):
    model = tiny_ldm(ae_ckpts["flat"])
    before = {k: v.clone() for k, v in model.first_stage.state_dict().items()}
    net_before = [p.detach().clone() for p in model.net.parameters()]
    fit(model, tmp_path, steps=3)
    assert not any(p.requires_grad or p.grad is not None for p in model.first_stage.parameters())
    assert not model.first_stage.training and model.net.training
    assert all(torch.equal(v, model.first_stage.state_dict()[k]) for k, v in before.items())
    assert not all(torch.equal(a, b) for a, b in zip(net_before, model.net.parameters()))


def test_latent_scale_is_one_over_std_of_the_first_batch(ae_ckpts, tmp_path):
    model = tiny_ldm(ae_ckpts["flat"], sample_posterior=False)
    assert float(model.latent_scale) == 0.0
    seen = []
    encode = model.stage_one.encode
    model.stage_one.encode = lambda x: seen.append(x.clone()) or encode(x)
    fit(model, tmp_path, steps=2)
    expected = 1.0 / float(encode(seen[0]).mode().std())
    assert len(seen) == 2 and float(model.latent_scale) == pytest.approx(expected, rel=1e-5)


def test_latent_scale_is_restored_from_the_checkpoint_and_not_remeasured(ae_ckpts, tmp_path):
    model = tiny_ldm(ae_ckpts["flat"])
    trainer, _ = fit(model, tmp_path, steps=1)
    scale = float(model.latent_scale)
    assert scale > 0
    trainer.save_checkpoint(tmp_path / "ldm.ckpt")
    loaded = load_generative(tmp_path / "ldm.ckpt")
    assert isinstance(loaded, LatentDiffusion) and float(loaded.latent_scale) == scale
    fit(loaded, tmp_path, steps=2)  # resumed training keeps the scale it was trained with
    assert float(loaded.latent_scale) == scale


def test_fixed_latent_scale_is_used_as_given(ae_ckpts, tmp_path):
    model = tiny_ldm(ae_ckpts["flat"], latent_scale=0.5)
    fit(model, tmp_path, steps=1)
    assert float(model.latent_scale) == 0.5
    with pytest.raises(ValueError, match="model.latent_scale must be > 0"):
        tiny_ldm(ae_ckpts["flat"], latent_scale=-1.0)


# ----- the contract -------------------------------------------------------------------------------------
def test_generate_is_deterministic_and_survives_a_checkpoint_without_the_first_stage_file(ae_ckpts, tmp_path):
    import shutil

    ckpt = tmp_path / "ae.ckpt"
    shutil.copy(ae_ckpts["flat"], ckpt)
    model = perturbed(tiny_ldm(str(ckpt), latent_scale=0.7, ema_decay=0.9))
    trainer, _ = fit(model, tmp_path, steps=1)
    trainer.save_checkpoint(tmp_path / "ldm.ckpt")
    ckpt.unlink()  # the LDM checkpoint carries the first stage itself
    z = model.sample_latents(4, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 0, 1])
    assert z.shape == (4, 16) and model.latent_dim == 16
    images = model.generate(z, labels)
    assert images.shape == (4, 3, RES, RES) and images.abs().max() <= 1
    assert torch.equal(images, model.generate(z, labels))
    loaded = load_generative(tmp_path / "ldm.ckpt")
    assert loaded.ema is not None
    assert torch.allclose(loaded.generate(z, labels), images, atol=1e-5)
    with pytest.raises(ValueError, match="is conditional: pass `labels`"):
        loaded.generate(z)


def test_conditional_sampling_passes_the_labels_and_the_null_label(ae_ckpts):
    """The denoiser sees exactly the requested labels (and the null class for CFG's unconditional half)."""
    model = perturbed(tiny_ldm(ae_ckpts["flat"], latent_scale=1.0, guidance_scale=3.0))
    seen = []
    forward = model.net.forward
    model.net.forward = lambda x, t, y=None: seen.append(y.clone()) or forward(x, t, y)
    z = model.sample_latents(3, generator=torch.Generator().manual_seed(0))
    model.generate(z, torch.tensor([1, 0, 1]))
    assert len(seen) == model.sample_steps
    assert all(y.tolist() == [1, 0, 1, 2, 2, 2] for y in seen)
    model.net.forward = forward
    smiling = model.generate(z, torch.ones(3, 1))  # one binary attribute, as data.attributes=[Smiling] gives
    assert torch.equal(smiling, model.generate(z, torch.ones(3, dtype=torch.long)))
    assert not torch.allclose(smiling, model.generate(z, torch.zeros(3, dtype=torch.long)))


def test_samplers_and_path(ae_ckpts):
    model = perturbed(tiny_ldm(ae_ckpts["flat"], latent_scale=1.0))
    labels = torch.tensor([0, 1])
    z = model.sample_latents(2, generator=torch.Generator().manual_seed(0))
    images, path = model.generate_with_path(z, labels)
    assert torch.allclose(images, model.generate(z, labels), atol=1e-6)
    assert [t for t, _, _ in path] == [99, 74, 49, 24]
    assert all(x_t.shape == (2, 3, RES, RES) and x0.shape == x_t.shape for _, x_t, x0 in path)
    assert path_strip(path, n_rows=2, columns=4).ndim == 3
    for sampler, eta in (("ancestral", 0.0), ("ddim", 1.0)):
        model.sampler, model.eta = sampler, eta
        out = model.generate(z, labels)
        assert out.shape == (2, 3, RES, RES) and out.abs().max() <= 1
        assert torch.equal(out, model.generate(z, labels)) and not torch.allclose(out, images)


def test_spatial_latents_with_a_unet(ae_ckpts, tmp_path):
    unet = {
        "_target_": "genface.nets.unet.UNet", "in_channels": 4, "out_channels": 4, "resolution": 8,
        "base_channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [4],
    }  # fmt: skip
    model = tiny_ldm(ae_ckpts["spatial"], net=unet)
    assert model.latent_shape == (4, 8, 8) and model.latent_dim == 256
    _, rec = fit(model, tmp_path, steps=2)
    assert np.isfinite(rec.rows[-1]["train/loss_step"])
    assert model.generate(model.sample_latents(2), torch.tensor([0, 1])).shape == (2, 3, RES, RES)


# ----- pictures -----------------------------------------------------------------------------------------
def test_projections_and_scatter(tmp_path):
    rng = np.random.default_rng(0)
    latents = np.concatenate([rng.normal(0, 1, (20, 8)), rng.normal(6, 1, (20, 8))])
    labels = np.repeat([0, 1], 20)
    for method in ("pca", "tsne"):
        points = project_2d(latents, method)
        assert points.shape == (40, 2)
        centre0, centre1 = points[labels == 0].mean(0), points[labels == 1].mean(0)
        spread = points[labels == 0].std(0).mean()
        assert np.linalg.norm(centre0 - centre1) > 2 * spread  # separated classes stay separated
        assert latent_scatter(latents, labels, tmp_path / f"{method}.png", method, ["a", "b"]).is_file()
    with pytest.raises(ValueError, match="projection method 'umap'"):
        project_2d(latents, "umap")


def test_denoising_path_writes_one_gif_per_class(ae_ckpts, tmp_path):
    """The study's animation per class: 50 frames at 15 fps (GIF stores 60 ms), the same latents with label k; the
    mixed-label strip and GIF stay."""
    model = perturbed(tiny_ldm(ae_ckpts["flat"], sample_steps=50))
    out = tmp_path / "s"
    callback = DenoisingPath(n=2, columns=3, class_names=["Not Smiling", "Smiling"], dirpath=str(out))
    fit(model, tmp_path, steps=1, callbacks=[callback])
    assert (out / "path_epoch_0000.png").is_file() and (out / "path_epoch_0000.gif").is_file()
    finals = []
    for k in (0, 1):
        with Image.open(out / f"path_class{k}_epoch_0000.gif") as gif:
            assert gif.n_frames == 50
            assert abs(gif.info["duration"] - 1000 / 15) <= 10
            gif.seek(49)
            finals.append(np.asarray(gif.convert("RGB")))
    assert not np.array_equal(*finals)  # the label changes the samples
    with pytest.raises(ValueError, match="has 1 names for 2 classes"):
        DenoisingPath(class_names=["x"]).on_fit_start(None, model)
    with pytest.raises(ValueError, match="gif_frames must be >= 2"):
        DenoisingPath(gif_frames=1)


def test_denoising_path_makes_no_class_gifs_for_unconditional_models(ae_ckpts, tmp_path):
    model = tiny_ldm(ae_ckpts["flat"], num_classes=0)
    fit(model, tmp_path, steps=1, callbacks=[DenoisingPath(n=2, columns=3, dirpath=str(tmp_path / "s"))])
    assert (tmp_path / "s" / "path_epoch_0000.gif").is_file()
    assert not list((tmp_path / "s").glob("path_class*"))


def test_latent_pictures_callback(ae_ckpts, tmp_path):
    model = perturbed(tiny_ldm(ae_ckpts["flat"]))
    pictures = LatentPictures(
        class_names=["Not Smiling", "Smiling"], n_per_class=3, dirpath=str(tmp_path / "s")
    )
    fit(model, tmp_path, steps=1, callbacks=[pictures])
    grid = Image.open(tmp_path / "s" / "classes_epoch_0000.png")
    assert grid.width > 3 * RES and grid.height > 2 * RES
    assert (tmp_path / "s" / "latents_tsne_epoch_0000.png").is_file()
    assert (tmp_path / "s" / "latents_pca_epoch_0000.png").is_file()
    rows = class_grid(model, ["a", "b"], 2)
    assert rows.ndim == 3 and rows.shape[2] == 3
    latents, labels = encode_dataset(
        model, torch.utils.data.DataLoader(TinySmiling(n=12).split_dataset("val"), 4), 10
    )
    assert latents.shape == (10, 16) and labels.tolist() == [0, 1] * 5
    with pytest.raises(ValueError, match="has 1 names for 2 classes"):
        LatentPictures(class_names=["x"]).on_fit_start(None, model)


# ----- configs ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name",
    ["latent_diffusion", "latent_diffusion_tiny", "latent_diffusion_unet", "latent_diffusion_flat_unet"],
)
def test_model_configs_instantiate_without_a_first_stage(name, compose_train):
    model = instantiate(compose_train(f"model={name}").model)
    assert model.first_stage is None and not model.hparams.clip_x0


def test_synthfaces_pair_composes_into_a_trainable_model(ae_ckpts, compose_train, tmp_path):
    ae = instantiate(compose_train("experiment=vaegan_synthfaces").model)
    assert ae.latent_shape == (64,) and ae.hparams.center_weight > 0 and ae.class_head.out_features == 2
    cfg = compose_train("experiment=latent_diffusion_synthfaces", f"model.first_stage_ckpt={ae_ckpts['flat']}",
                        "model.net.dim=16")  # fmt: skip
    assert cfg.data.attributes == ["Smiling"] and cfg.callbacks.latent_pictures.class_names == [
        "Not Smiling",
        "Smiling",
    ]
    model = instantiate(cfg.model)
    model.setup("fit")
    assert model.num_classes == 2 and model.hparams.first_stage["latent_dim"] == 16
    seed = compose_train("experiment=latent_diffusion_smiling_celeba64", f"data.root={tmp_path}")
    assert seed.model.net.dim == 256 and seed.model.num_classes == 2
    net = instantiate(seed.model.net, num_classes=seed.model.num_classes)
    assert isinstance(net, LatentUNet) and sum(p.numel() for p in net.parameters()) == 18_374_656
    assert seed.callbacks.denoising_path.class_names == ["Not Smiling", "Smiling"]
    assert (seed.callbacks.denoising_path.gif_frames, seed.callbacks.denoising_path.fps) == (50, 15)
    assert cfg.model.net._target_.endswith("LatentDenoiser")  # the CPU recipe keeps its residual MLP


# ----- ground truth on synthfaces --------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_smiling_condition_is_honoured_on_synthfaces(compose_train, tmp_path):
    """The CPU pair (vaegan_synthfaces, then latent_diffusion_synthfaces) on fewer faces, judged by a ResNet-18
    trained on synthfaces' real Smiling labels: the share of Smiling=1 samples judged Smiling is far above the
    share for Smiling=0. The judge learns from the training faces and their stage-one reconstructions (same
    labels): stage two can only draw what stage one decodes, and a judge that saw crisp faces only called every
    blurry mouth "not smiling" (measured: 0 % of reconstructions of smiling faces). Figures print with -s."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    from genface.models.classifier import Classifier

    pl.seed_everything(0)
    data = ("data.n=4000", f"data.root={tmp_path}/sf", "data.num_workers=0")
    stage_one = compose_train("experiment=vaegan_synthfaces", *data)
    dm = instantiate(stage_one.data)
    vae = instantiate(stage_one.model)
    trainer = tiny_trainer(tmp_path / "ae", max_epochs=6, limit_val_batches=0)
    trainer.fit(vae, dm)
    ae_ckpt = tmp_path / "ae.ckpt"
    trainer.save_checkpoint(ae_ckpt)

    everything = lambda split: next(iter(DataLoader(dm.split_dataset(split), batch_size=100_000)))  # noqa: E731
    (train_x, train_y), (test_x, test_y) = everything("train"), everything("test")
    train_rec = torch.cat([vae.reconstruct(b) for b in train_x.split(256)])
    judge = Classifier(
        net={"_target_": "genface.nets.resnet.resnet18", "in_channels": 3},
        optimizer={"_target_": "torch.optim.Adam", "_partial_": True, "lr": 2e-3},
        label_kind="attributes", class_names=["Smiling"], input_resolution=32,
    )  # fmt: skip
    both = TensorDataset(torch.cat([train_x, train_rec]), torch.cat([train_y, train_y]))
    tiny_trainer(tmp_path / "judge", max_epochs=8).fit(judge, DataLoader(both, batch_size=64, shuffle=True))
    judge.eval()
    smiling = test_y[:, 0] > 0.5
    with torch.no_grad():
        acc = {
            name: float(((judge.predict_proba(x)[:, 0] > 0.5) == smiling).float().mean())
            for name, x in (("real", test_x), ("reconstructed", vae.reconstruct(test_x)))
        }

    stage_two = compose_train(
        "experiment=latent_diffusion_synthfaces", *data, f"model.first_stage_ckpt={ae_ckpt}"
    )
    ldm = instantiate(stage_two.model)
    tiny_trainer(tmp_path / "ldm", max_epochs=40, limit_val_batches=0).fit(ldm, dm)
    ldm.eval()
    n = 256
    shares = {}
    for label in (0, 1):
        z = ldm.sample_latents(n, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            images = ldm.generate(z, torch.full((n,), label, dtype=torch.long))
            shares[label] = float((judge.predict_proba(images)[:, 0] > 0.5).float().mean())
    print(f"judge accuracy on test faces {acc['real']:.3f}, on their reconstructions {acc['reconstructed']:.3f}; "
          f"judged Smiling: label 1 {shares[1]:.3f}, label 0 {shares[0]:.3f}")  # fmt: skip
    assert acc["real"] > 0.8 and acc["reconstructed"] > 0.8, acc
    assert shares[1] > shares[0] + 0.4, shares
