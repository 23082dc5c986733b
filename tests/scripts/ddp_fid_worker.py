"""FID under 2-rank CPU DDP, plus the tiny model/datamodule the FID tests share.

Run as `python ddp_fid_worker.py OUT_JSON CACHE_DIR`: Lightning's ddp launcher re-executes this script
for rank 1 (which is why it cannot run inside pytest); rank 0 writes the logged FID/KID to OUT_JSON.
"""

from __future__ import annotations

import json
import sys

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from genface.callbacks.fid import FIDCallback
from genface.models.base import GenerativeModule

RESOLUTION = 16
N_FAKE = 96
N_REAL = 80
BATCH = 16
KID_SUBSET = 32
SEED = 1234


class LinearGenerator(GenerativeModule):
    """z (8-d) -> tanh(linear) image: the smallest model that honours the Generative contract."""

    def __init__(self, latent_dim: int = 8, resolution: int = RESOLUTION) -> None:
        super().__init__()
        self._latent_dim = latent_dim
        self.resolution = resolution
        self.generator = nn.Linear(latent_dim, 3 * resolution * resolution)

    @property
    def latent_dim(self) -> int:
        return self._latent_dim

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (3, self.resolution, self.resolution)

    def _generate(self, latents: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return torch.tanh(self.generator(latents)).view(-1, *self.image_shape)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, _ = batch
        fake = self._generate(self.sample_latents(len(images)), None)
        return (fake.mean(0) - images.mean(0)).square().mean()

    def validation_step(self, batch, batch_idx: int) -> None:
        """Nothing to validate per batch: the FID callback does the work at epoch end."""

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


class FakeFaces(pl.LightningDataModule):
    """Smooth random RGB images in [-1, 1], a different fixed set per split."""

    dataset_id = "fakefaces16"
    resolution = RESOLUTION
    channels = 3

    def __init__(self, n: int = 96, batch_size: int = BATCH) -> None:
        super().__init__()
        self.n, self.batch_size = n, batch_size

    def split_dataset(self, split: str) -> TensorDataset:
        generator = torch.Generator().manual_seed({"train": 0, "val": 1, "test": 2}[split])
        coarse = torch.randn(self.n, 3, 4, 4, generator=generator)
        images = torch.tanh(nn.functional.interpolate(coarse, size=RESOLUTION, mode="bilinear"))
        return TensorDataset(images, torch.zeros(self.n, dtype=torch.long))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.split_dataset("train"), batch_size=self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.split_dataset("val"), batch_size=self.batch_size)


def build_model() -> LinearGenerator:
    """Identical weights in every process."""
    torch.manual_seed(0)
    return LinearGenerator()


def tiny_fid_callback(cache_dir: str, **overrides) -> FIDCallback:
    kwargs = dict(extractor="tiny", n_fake=N_FAKE, n_real=N_REAL, batch_size=BATCH, kid_subset_size=KID_SUBSET,
                  cache_dir=cache_dir, seed=SEED)
    kwargs.update(overrides)
    return FIDCallback(**kwargs)


def main(out_json: str, cache_dir: str) -> None:
    torch.set_num_threads(1)
    callback = tiny_fid_callback(cache_dir)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=cache_dir,
        callbacks=[callback],
    )
    logged = trainer.validate(build_model(), datamodule=FakeFaces(), verbose=False)[0]
    if trainer.is_global_zero:
        with open(out_json, "w") as f:
            json.dump({"world_size": trainer.world_size, "logged": logged, "values": callback.last_values}, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
