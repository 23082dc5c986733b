"""Small shared pieces for tests: tiny datasets and Trainers that run in seconds on CPU."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset


class TinyImages(pl.LightningDataModule):
    """n random-but-structured images (a bright blob at a random place) in [-1, 1]: learnable in a few steps."""

    def __init__(self, n: int = 32, resolution: int = 16, channels: int = 3, batch_size: int = 8, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        yy, xx = torch.meshgrid(torch.arange(resolution), torch.arange(resolution), indexing="ij")
        centres = torch.randint(resolution // 4, 3 * resolution // 4, (n, 2), generator=g)
        d2 = (yy[None] - centres[:, 0, None, None]) ** 2 + (xx[None] - centres[:, 1, None, None]) ** 2
        blob = torch.exp(-d2.float() / (resolution / 4) ** 2)
        self.images = (blob[:, None].repeat(1, channels, 1, 1) * 2 - 1).float()
        self.targets = torch.zeros(n, 0)
        self.batch_size, self.resolution, self.channels = batch_size, resolution, channels
        self.dataset_id = f"tiny-{n}-{resolution}-{seed}"

    def split_dataset(self, split: str) -> TensorDataset:
        return TensorDataset(self.images, self.targets)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.split_dataset("train"), batch_size=self.batch_size, shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.split_dataset("val"), batch_size=self.batch_size)


class StepRecorder(pl.Callback):
    """Records the step-level logged metrics after every training batch."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.rows.append({k: float(v) for k, v in trainer.callback_metrics.items()})


def tiny_trainer(tmp_path, **kw) -> pl.Trainer:
    defaults = dict(
        default_root_dir=str(tmp_path),
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,  # per-batch values (GAN curves are window means otherwise: log_windowed)
    )
    defaults.update(kw)
    return pl.Trainer(**defaults)


#: Every model family, with the CPU experiment written for it (searches, DDP and smoke tests use these).
FAMILY_EXPERIMENTS = {
    "dcgan": "dcgan_synthfaces",
    "cgan": "cgan_synthfaces",
    "pix2pix": "pix2pix_edges2synthfaces",
    "ddpm": "ddpm_synthfaces",
    "ddgan": "ddgan_synthfaces",
    "vaegan": "vaegan_synthfaces",
    "latent_diffusion": "latent_diffusion_synthfaces",
    "classifier": "synthfaces_attr",
}
