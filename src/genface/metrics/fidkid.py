"""FID and KID as one torchmetrics Metric: fake features accumulate (and sync across ranks), the real
side comes from cached `RealStats`."""

from __future__ import annotations

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from genface.metrics.extractors import FeatureExtractor
from genface.metrics.stats import KID_MAX_FEATURES, RealStats, accumulate_features, mean_cov


def frechet_distance(mu1: torch.Tensor, cov1: torch.Tensor, mu2: torch.Tensor, cov2: torch.Tensor) -> float:
    """‖μ1-μ2‖² + tr(Σ1) + tr(Σ2) - 2 tr((Σ1 Σ2)^½) in float64.

    tr((Σ1 Σ2)^½) equals the sum of square roots of the eigenvalues of the symmetric PSD matrix
    Σ1^½ Σ2 Σ1^½, so it is computed with symmetric eigen-solvers: no complex intermediate, hence none of
    the "large imaginary component" failures that scipy.linalg.sqrtm(Σ1 Σ2) gives on
    rank-deficient covariances (DLStudio's DG1 study). Round-off negatives are clipped to 0.
    """
    mu1, cov1, mu2, cov2 = (t.double() for t in (mu1, cov1, mu2, cov2))
    eigval, eigvec = torch.linalg.eigh(cov1)
    sqrt_cov1 = (eigvec * eigval.clamp_min(0).sqrt()) @ eigvec.T
    inner = sqrt_cov1 @ cov2 @ sqrt_cov1
    trace_sqrt = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp_min(0).sqrt().sum()
    value = (mu1 - mu2).square().sum() + cov1.trace() + cov2.trace() - 2 * trace_sqrt
    return float(value)


def kernel_inception_distance(
    real: torch.Tensor, fake: torch.Tensor, subsets: int, subset_size: int, seed: int = 0
) -> tuple[float, float]:
    """Unbiased MMD² with the polynomial kernel (x·y/D + 1)³, mean and std over random subsets.

    `subset_size` is clamped to the smaller side; subsets are drawn without replacement from a fixed
    seed, so the value is deterministic given the features.
    """
    m = min(subset_size, len(real), len(fake))
    if m < 2:
        raise ValueError(f"KID needs at least 2 features per side, got {len(real)} real and {len(fake)} fake")
    real, fake = real.double(), fake.double()
    d = real.shape[1]
    generator = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(subsets):
        x = fake[torch.randperm(len(fake), generator=generator)[:m].to(fake.device)]
        y = real[torch.randperm(len(real), generator=generator)[:m].to(real.device)]
        k_xx = (x @ x.T / d + 1) ** 3
        k_yy = (y @ y.T / d + 1) ** 3
        k_xy = (x @ y.T / d + 1) ** 3
        off_diagonal = (k_xx.sum() - k_xx.trace() + k_yy.sum() - k_yy.trace()) / (m * (m - 1))
        values.append(off_diagonal - 2 * k_xy.mean())
    stacked = torch.stack(values)
    return float(stacked.mean()), float(stacked.std(unbiased=False))


class FIDKID(Metric):
    """FID + KID of generated images against precomputed real statistics.

    Fake-side states (Σx, Σxxᵀ, count in float64; a feature sample for KID) are summed/concatenated
    across ranks in `compute`. The real side is set with `set_real` and is deliberately not a state:
    every rank loads the same statistics, and syncing them would count them world_size times.
    """

    higher_is_better = False
    is_differentiable = False
    full_state_update = False

    def __init__(
        self,
        extractor: FeatureExtractor,
        kid_subsets: int = 100,
        kid_subset_size: int = 1000,
        kid_max_features: int = KID_MAX_FEATURES,
        allow_low_n: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.extractor = extractor
        self.kid_subsets = kid_subsets
        self.kid_subset_size = kid_subset_size
        self.kid_max_features = kid_max_features
        self.allow_low_n = allow_low_n
        self.real: RealStats | None = None
        d = extractor.num_features
        self.add_state("fake_sum", torch.zeros(d, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("fake_outer", torch.zeros(d, d, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("fake_n", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("fake_features", [], dist_reduce_fx="cat")

    def set_real(self, stats: RealStats) -> None:
        if stats.protocol != self.extractor.protocol:
            raise ValueError(f"real statistics were computed with {stats.protocol!r}, not {self.extractor.protocol!r}")
        self.real = stats

    def update(self, images: torch.Tensor) -> None:
        feats = self.extractor(images).to(self.fake_sum.device)
        accumulate_features(feats, self.fake_sum, self.fake_outer, self.fake_features, self.kid_max_features)
        self.fake_n += feats.shape[0]

    def check_n(self, side: str, n: int) -> None:
        """Refuse FID from fewer samples than feature dimensions unless `allow_low_n`."""
        d = self.extractor.num_features
        if n < 2:
            raise ValueError(f"FID needs at least 2 {side} images, got {n}")
        if n < d and not self.allow_low_n:
            raise ValueError(
                f"FID with n_{side}={n} < {d} features is refused: the {d}x{d} covariance is rank-deficient, "
                "FID is strongly biased upwards and not comparable with other N (DLStudio's DG1 study hit 'large imaginary "
                f"component' failures below 2048 samples). Use at least {d} {side} images, or pass "
                "allow_low_n=True (config: metrics.fid.allow_low_n=true; `genface evaluate allow_low_n=true`) "
                "to compute it anyway, comparable only at the same N."
            )

    def compute(self) -> dict[str, float | int]:
        if self.real is None:
            raise RuntimeError("FIDKID.compute() needs the real statistics: call set_real(stats) first")
        n_fake = int(self.fake_n.item())
        self.check_n("fake", n_fake)
        self.check_n("real", self.real.n)
        device = self.fake_sum.device
        fake_mean, fake_cov = mean_cov(self.fake_sum, self.fake_outer, n_fake)
        real_mean = torch.from_numpy(self.real.mean).to(device)
        real_cov = torch.from_numpy(self.real.cov).to(device)
        fid = frechet_distance(real_mean, real_cov, fake_mean, fake_cov)
        fake_features = dim_zero_cat(self.fake_features)[: self.kid_max_features]
        real_features = torch.from_numpy(self.real.features).to(device)
        kid_mean, kid_std = kernel_inception_distance(real_features, fake_features, self.kid_subsets,
                                                      self.kid_subset_size)
        return {"fid": fid, "kid_mean": kid_mean, "kid_std": kid_std, "n_fake": n_fake}
