"""LightningDataModules and Datasets of genface, plus the prepared-array cache (see :mod:`genface.data.cache`)."""

from genface.data.base import ImageDataModule
from genface.data.celeba import CELEBA_ATTRIBUTES, CelebADataModule
from genface.data.celebahq import CelebAHQDataModule
from genface.data.datasets import ImageDataset
from genface.data.digits import DigitsDataModule
from genface.data.folder import ImageFolderDataModule
from genface.data.images import CorruptImageError
from genface.data.mnist import MNISTDataModule
from genface.data.synthfaces import SynthFacesDataModule

__all__ = [
    "CELEBA_ATTRIBUTES",
    "CelebADataModule",
    "CelebAHQDataModule",
    "CorruptImageError",
    "DigitsDataModule",
    "ImageDataModule",
    "ImageDataset",
    "ImageFolderDataModule",
    "MNISTDataModule",
    "SynthFacesDataModule",
]
