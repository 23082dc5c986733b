"""Pix2Pix: reference parameter counts, shapes and padding, training, translation, validation, configs."""

from __future__ import annotations

import json

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from genface.callbacks.triplets import TranslationFID, Triplets
from genface.config import instantiate_group
from genface.models import load_module
from genface.models.pix2pix import Pix2Pix, linear_decay
from genface.nets.patchgan import PatchGAN
from genface.nets.pix2pix_unet import UNetGenerator
from helpers import StepRecorder, TinyImages, tiny_trainer


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# ----- parameter counts --------------------------------------------------------------------------------
def test_patchgan_70_counts_the_reference_and_the_lab_with_biases():
    # Reference NLayerDiscriminator(6, ndf=64, n_layers=3, BatchNorm): conv 6->64 with bias, then 64->128,
    # 128->256 (stride 2) and 256->512 (stride 1) without bias, each + BN (2 x C), then 512->1 with bias.
    reference = (
        (6 * 64 * 16 + 64)
        + (64 * 128 * 16 + 256)
        + (128 * 256 * 16 + 512)
        + (256 * 512 * 16 + 1024)
        + (512 * 16 + 1)
    )
    assert reference == 2_768_705
    assert n_params(PatchGAN(in_channels=6, ndf=64, n_layers=3, bias=False)) == 2_768_705
    # the cGAN / Pix2Pix / DDPM lab adds the biases of the three convolutions before batch norm: + 128 + 256 + 512
    assert n_params(PatchGAN(in_channels=6, ndf=64, n_layers=3, bias=True)) == 2_769_601


def test_patchgan_receptive_fields_match_the_labs_table():
    lab_table = {1: 16, 2: 34, 3: 70, 4: 142, 5: 286, 6: 574}
    assert {n: PatchGAN(n_layers=n, ndf=4).receptive_field for n in lab_table} == lab_table


def reference_unet_count(num_downs: int, ngf: int = 64, in_ch: int = 3, out_ch: int = 3) -> int:
    """Parameters of pytorch-CycleGAN-and-pix2pix's UnetGenerator with BatchNorm, block by block.

    Its UnetSkipConnectionBlock(outer, inner) has: a 4x4 down-conv outer->inner without bias (input_nc
    for the outermost), BN(inner) except innermost and outermost, a 4x4 up-conv (2 x inner, or inner for
    the innermost) -> outer without bias + BN(outer), except the outermost whose up-conv has a bias and
    no BN. Blocks: innermost (8ngf, 8ngf); num_downs - 5 x (8ngf, 8ngf); (4ngf, 8ngf); (2ngf, 4ngf);
    (ngf, 2ngf); outermost (out_ch, ngf) with input in_ch. Dropout has no parameters.
    """
    conv = 16  # 4x4 kernels
    total = in_ch * ngf * conv + 2 * ngf * out_ch * conv + out_ch  # outermost
    for outer, inner in [(ngf, 2 * ngf), (2 * ngf, 4 * ngf), (4 * ngf, 8 * ngf)] + [(8 * ngf, 8 * ngf)] * (
        num_downs - 5
    ):
        total += outer * inner * conv + 2 * inner + 2 * inner * outer * conv + 2 * outer
    total += 8 * ngf * 8 * ngf * conv + 8 * ngf * 8 * ngf * conv + 2 * 8 * ngf  # innermost: no down-norm
    return total


def test_unet_256_and_128_count_as_the_reference():
    # Derived above from the reference's layer list: unet_256 (8 downs, ngf 64, batch norm) has
    # 54,413,955 parameters ("54.414 M" in the reference's printout); unet_128 one 12,584,960-parameter
    # (512, 512) block less.
    assert reference_unet_count(8) == 54_413_955 and reference_unet_count(7) == 41_828_995
    assert n_params(UNetGenerator(3, 3, num_downs=8, ngf=64, norm="batch")) == 54_413_955
    assert n_params(UNetGenerator(3, 3, num_downs=7, ngf=64, norm="batch")) == 41_828_995


def test_decoder_dropout_sits_in_the_reference_middle_blocks():
    def dropouts(num_downs: int) -> int:
        return sum(
            isinstance(m, torch.nn.Dropout) for m in UNetGenerator(num_downs=num_downs, ngf=4).modules()
        )

    assert (dropouts(8), dropouts(7), dropouts(5)) == (3, 2, 0)  # num_downs - 5
    assert not any(
        isinstance(m, torch.nn.Dropout) for m in UNetGenerator(num_downs=8, ngf=4, dropout=0).modules()
    )


# ----- shapes, padding, refusals -----------------------------------------------------------------------
@pytest.mark.parametrize("size", [(32, 32), (48, 40), (33, 47)])
def test_unet_keeps_any_size_by_padding(size):
    g = UNetGenerator(1, 3, num_downs=5, ngf=4).eval()
    out = g(torch.randn(2, 1, *size))
    assert out.shape == (2, 3, *size) and out.abs().max() <= 1


def test_too_small_inputs_are_refused_with_the_key_to_change():
    with pytest.raises(ValueError, match=r"num_downs=8.*model.generator.num_downs <= 6 for 64 px"):
        UNetGenerator(num_downs=8, ngf=4)(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="expects 1-channel sources, got 3"):
        UNetGenerator(1, 3, num_downs=4, ngf=4)(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match=r"at least 24x24 px.*model.discriminator.n_layers"):
        PatchGAN(4, ndf=4)(torch.randn(1, 4, 16, 16))
    assert PatchGAN(4, ndf=4)(torch.randn(1, 4, 24, 40)).shape == (1, 1, 1, 3)


# ----- the module --------------------------------------------------------------------------------------
class TinyPairs(pl.LightningDataModule):
    """(1-channel inverted blob, 3-channel blob) pairs: a translation learnable in a few steps."""

    def __init__(self, n: int = 16, resolution: int = 32, batch_size: int = 8) -> None:
        super().__init__()
        targets = TinyImages(n=n, resolution=resolution).images
        self.pairs = TensorDataset(-targets[:, :1], targets)
        self.batch_size, self.resolution, self.channels, self.source_channels = batch_size, resolution, 3, 1
        self.dataset_id = f"tinypairs-{n}-{resolution}"

    def split_dataset(self, split: str, augment: bool = False) -> TensorDataset:
        return self.pairs

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.pairs, batch_size=self.batch_size, shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.pairs, batch_size=self.batch_size)


def tiny_pix2pix(**kw) -> Pix2Pix:
    opt = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 2e-3, "betas": [0.5, 0.999]}
    return Pix2Pix(
        generator={
            "_target_": "genface.nets.pix2pix_unet.UNetGenerator",
            "in_channels": 1,
            "out_channels": 3,
            "num_downs": 5,
            "ngf": 8,
        },
        discriminator={"_target_": "genface.nets.patchgan.PatchGAN", "ndf": 8, "n_layers": 2},
        optimizer_g=opt,
        optimizer_d=dict(opt),
        **kw,
    )


def test_discriminator_sees_source_and_image_channels():
    assert tiny_pix2pix().discriminator.net[0].in_channels == 1 + 3


def test_training_steps_lower_the_l1_term(tmp_path):
    torch.manual_seed(0)
    model, rec = tiny_pix2pix(lr_constant_epochs=10, lr_decay_epochs=0), StepRecorder()
    trainer = tiny_trainer(tmp_path, max_steps=30, limit_val_batches=0, callbacks=[rec])
    trainer.fit(model, datamodule=TinyPairs(n=8, batch_size=8))
    l1 = [r["train/l1_step"] for r in rec.rows]
    assert len(l1) == 15 and all(torch.isfinite(torch.tensor(l1)))
    assert sum(l1[-3:]) / 3 < 0.7 * l1[0], l1


def test_translate_is_deterministic_eval_mode_and_restores_training_mode():
    model = tiny_pix2pix()
    model.train()
    source = torch.randn(3, 1, 40, 40)  # not a multiple of 2**5: padded and cropped back
    a = model.translate(source)
    assert torch.equal(a, model.translate(source)) and a.shape == (3, 3, 40, 40) and a.abs().max() <= 1
    assert model.generator.training  # dropout and batch statistics only while translating are off


def test_linear_decay_is_the_reference_lambda_rule():
    rule = linear_decay(lr_constant_epochs=100, lr_decay_epochs=100)
    assert [rule(e) for e in (0, 99)] == [1.0, 1.0]
    assert rule(100) == pytest.approx(1 - 1 / 101) and rule(199) == pytest.approx(1 / 101)
    assert rule(250) == 0.0


def test_fit_decays_the_learning_rate_and_validates_with_triplets_and_fid(tmp_path):
    torch.manual_seed(0)
    triplets = Triplets(n=3, splits=("train", "val"), dirpath=str(tmp_path / "triplets"))
    fid = TranslationFID(extractor="tiny", kid_subset_size=8, allow_low_n=True)
    model = tiny_pix2pix(lr_constant_epochs=1, lr_decay_epochs=2)
    trainer = tiny_trainer(tmp_path, max_epochs=3, callbacks=[triplets, fid])
    trainer.fit(model, datamodule=TinyPairs(n=16, batch_size=8))
    # after 3 epochs the LR factor is rule(3) = 1 - 3/3 = 0 (the schedule ends with the run)
    assert [opt.param_groups[0]["lr"] for opt in model.optimizers()] == [0.0, 0.0]
    metrics = trainer.callback_metrics
    assert {"val/l1", "val/psnr", "val/ssim", "val/fid", "val/kid_mean"} <= metrics.keys()
    assert 0 < float(metrics["val/psnr"]) < 100 and -1 <= float(metrics["val/ssim"]) <= 1
    # both FID sides hold the 16 validation pairs
    assert fid.last_values["n_fake"] == 16
    assert json.loads((tmp_path / "fid_protocol.json").read_text())["n_real"] == 16
    # source | output | target columns of 32 px with 2 px padding, one row per pair
    assert len(triplets.written) == 6
    with Image.open(triplets.written[-1]) as grid:
        assert grid.size == (3 * 34 + 2, 3 * 34 + 2)


def test_schedule_mismatch_with_max_epochs_warns(tmp_path):
    trainer = tiny_trainer(tmp_path, max_epochs=1, limit_train_batches=1, limit_val_batches=0)
    with pytest.warns(
        UserWarning, match=r"lr_constant_epochs \+ model.lr_decay_epochs = 200 but trainer.max_epochs = 1"
    ):
        trainer.fit(tiny_pix2pix(), datamodule=TinyPairs(n=8, batch_size=8))


def test_checkpoint_round_trip(tmp_path):
    model = tiny_pix2pix()
    trainer = tiny_trainer(tmp_path, max_steps=2, limit_val_batches=0)
    trainer.fit(model, datamodule=TinyPairs(n=8, batch_size=8))
    trainer.save_checkpoint(tmp_path / "p.ckpt")
    loaded = load_module(tmp_path / "p.ckpt")
    assert isinstance(loaded, Pix2Pix)
    source = torch.randn(2, 1, 32, 32)
    assert torch.equal(model.translate(source), loaded.translate(source))


def test_translator_callbacks_refuse_generators(tmp_path):
    from genface.models.dcgan import DCGAN

    dcgan = DCGAN(
        generator={
            "_target_": "genface.nets.dcgan.DCGANGenerator",
            "latent_dim": 4,
            "width": 4,
            "resolution": 16,
        },
        discriminator={"_target_": "genface.nets.dcgan.DCGANDiscriminator", "width": 4, "resolution": 16},
        optimizer_g={"_target_": "torch.optim.Adam", "_partial_": True},
        optimizer_d={"_target_": "torch.optim.Adam", "_partial_": True},
    )
    with pytest.raises(TypeError, match=r"Triplets needs a translator with translate\(source\)"):
        tiny_trainer(tmp_path, max_steps=1, callbacks=[Triplets()]).fit(dcgan, datamodule=TinyImages())


# ----- configs -----------------------------------------------------------------------------------------
def test_model_config_on_paired_data_wires_source_and_target_channels(compose_train):
    cfg = compose_train(
        "model=pix2pix", "data=paired_gray", "data.resolution=32", "model.generator.num_downs=5"
    )
    model = instantiate(cfg.model)
    assert (model.generator.in_channels, model.generator.out_channels) == (1, 3)
    assert model.discriminator.net[0].in_channels == 4


def test_facades_experiment_is_the_reference_recipe_at_the_labs_count(compose_train):
    cfg = compose_train("experiment=pix2pix_facades")
    model = instantiate(cfg.model)
    assert n_params(model.generator) == 54_413_955 and n_params(model.discriminator) == 2_769_601
    reference = instantiate(
        compose_train("experiment=pix2pix_facades", "model.discriminator.bias=false").model
    )
    assert n_params(reference.discriminator) == 2_768_705
    assert (model.hparams.lambda_l1, model.hparams.loss, cfg.data.direction) == (100.0, "bce", "BtoA")
    assert model.hparams.lr_constant_epochs + model.hparams.lr_decay_epochs == cfg.trainer.max_epochs == 200
    callbacks = instantiate_group(cfg.callbacks) + instantiate_group(cfg.metrics)
    assert {type(cb).__name__ for cb in callbacks} >= {"Triplets", "TranslationFID", "FiniteCheckpoint"}
    assert not any(type(cb).__name__ == "SampleGrid" for cb in callbacks)


def test_edges2synthfaces_experiment_builds(compose_train):
    cfg = compose_train("experiment=pix2pix_edges2synthfaces")
    model, dm = instantiate(cfg.model), instantiate(cfg.data)
    assert (dm.task, dm.source_channels, dm.resolution) == ("edges2face", 1, 64)
    assert model.generator.in_channels == 1 and 2**model.generator.num_downs == dm.resolution
    assert cfg.model.lr_constant_epochs + cfg.model.lr_decay_epochs == cfg.trainer.max_epochs
    assert any(isinstance(cb, Triplets) for cb in instantiate_group(cfg.callbacks))


@pytest.mark.parametrize(
    ("option", "channels"), [("paired_gray", 1), ("paired_masked", 4), ("paired_lowres", 3)]
)
def test_edges2synthfaces_recipe_takes_the_other_tasks(compose_train, option, channels):
    cfg = compose_train("experiment=pix2pix_edges2synthfaces", f"data={option}")
    assert instantiate(cfg.data).source_channels == instantiate(cfg.model).generator.in_channels == channels
