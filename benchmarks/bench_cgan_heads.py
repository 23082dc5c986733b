"""cGAN discriminator heads on digits: does the cGAN / Pix2Pix / DDPM lab's (K+1)-way discriminator reduce ambiguity?

The cGAN / Pix2Pix / DDPM lab claims that a (K+1)-class discriminator (10 digits + "generated") "improves image quality and
reduces digit ambiguity" compared with a real/fake discriminator that sees the label. This trains the
same conditional DCGAN (width 32, 16 px, batch 64, Adam 2e-4 β1 0.5, BCE) on scikit-learn's digits with
the `concat`, `multiclass` and `projection` heads for the same number of steps from the same seeds, then
measures on 1,000 samples (100 per digit, fixed latents):

- conditional accuracy: share of samples that an independently trained digit classifier assigns the
  requested digit (genface's `Classifier` with a small CNN, trained on the real train split; its test
  accuracy is the ceiling);
- KID and FID in that classifier's 64-d feature space against the real train split (cheap on CPU and
  digit-aware; NOT Inception numbers, comparable only within this table).

Results: benchmarks/out/cgan_heads.json and a section appended to benchmarks/README.md.
    python -m benchmarks.bench_cgan_heads [--steps 500] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from benchmarks.common import record
from genface.callbacks.conditional_accuracy import ConditionalAccuracy
from genface.data import DigitsDataModule
from genface.metrics.fidkid import frechet_distance, kernel_inception_distance
from genface.metrics.scoring import generate_fake_batches
from genface.models.cgan import ConditionalGAN
from genface.models.classifier import Classifier

HEADS = ("concat", "multiclass", "projection")
RES, WIDTH, BATCH, NZ, N_FAKE = 16, 32, 64, 100, 1000
README = Path(__file__).parent / "README.md"


def trainer(max_steps: int = -1, max_epochs: int | None = None) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu", devices=1, max_steps=max_steps, max_epochs=max_epochs, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0,
    )


def train_classifier(dm: DigitsDataModule, epochs: int) -> tuple[Classifier, float]:
    pl.seed_everything(0, workers=True)
    classifier = Classifier(
        net={"_target_": "genface.nets.smallcnn.SmallCNN", "in_channels": 1},
        optimizer={"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 3e-3, "weight_decay": 1e-4},
        label_kind="class",
        class_names=dm.class_names,
        input_resolution=RES,
    )
    trainer(max_epochs=epochs).fit(classifier, datamodule=dm)
    classifier.eval()
    loader = DataLoader(dm.split_dataset("test"), batch_size=256)
    with torch.no_grad():
        hits = [(classifier(x).argmax(1) == y).float() for x, y in loader]
    return classifier, float(torch.cat(hits).mean())


def cgan(head: str) -> ConditionalGAN:
    opt = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 2e-4, "betas": [0.5, 0.999]}
    return ConditionalGAN(
        generator={"_target_": "genface.nets.dcgan.DCGANGenerator", "latent_dim": NZ, "width": WIDTH,
                   "resolution": RES, "channels": 1},
        discriminator={"_target_": "genface.nets.cgan.ConditionalDiscriminator", "width": WIDTH,
                       "resolution": RES, "channels": 1},
        optimizer_g=opt, optimizer_d=dict(opt), condition=[str(d) for d in range(10)], head=head,
    )


@torch.no_grad()
def features(classifier: Classifier, batches) -> torch.Tensor:
    return torch.cat([classifier.features(x) for x in batches]).double()


def evaluate(model: ConditionalGAN, classifier: Classifier, real: torch.Tensor) -> dict:
    accuracy = ConditionalAccuracy(classifier_path=None, n=N_FAKE, batch_size=250, seed=1234)
    accuracy.classifier = accuracy.attach(classifier, model)
    counts = accuracy.counts(model)
    fake = features(classifier, generate_fake_batches(model, N_FAKE, 250, seed=1234))
    kid, kid_std = kernel_inception_distance(real, fake, subsets=100, subset_size=500)
    fid = frechet_distance(real.mean(0), torch.cov(real.T), fake.mean(0), torch.cov(fake.T))
    per_class = (counts[2:12] / counts[12:]).tolist()
    return {"cond_acc": float(counts[0] / counts[1]), "per_class": per_class, "kid": kid, "kid_std": kid_std,
            "fid_clf": fid}


def run(steps: int, seeds: list[int], classifier_epochs: int) -> dict:
    # One thread: on a shared 2-core machine a second intra-op thread mostly spin-waits (measured: 8x the CPU
    # time for the same steps), and the nets are tiny.
    torch.set_num_threads(1)
    dm = DigitsDataModule(resolution=RES, channels=1, batch_size=BATCH)
    t0 = time.perf_counter()
    classifier, test_acc = train_classifier(dm, classifier_epochs)
    real_loader = DataLoader(dm.split_dataset("train"), batch_size=512)
    real = features(classifier, (x for x, _ in real_loader))
    results: dict[str, list[dict]] = {head: [] for head in HEADS}
    for seed in seeds:
        for head in HEADS:
            pl.seed_everything(seed, workers=True)
            model = cgan(head)
            start = time.perf_counter()
            trainer(max_steps=2 * steps).fit(model, datamodule=dm)  # D + G step = 2 Lightning steps
            row = evaluate(model, classifier, real)
            row.update(seed=seed, train_s=round(time.perf_counter() - start, 1))
            results[head].append(row)
            print(head, seed, {k: v for k, v in row.items() if k != "per_class"}, flush=True)
    summary = {
        head: {
            key: float(np.mean([r[key] for r in rows])) for key in ("cond_acc", "kid", "fid_clf")
        } | {"per_class": np.mean([r["per_class"] for r in rows], axis=0).round(3).tolist()}
        for head, rows in results.items()
    }
    return {
        "data": f"sklearn digits, {RES} px, train split {len(dm.split_dataset('train'))} images",
        "model": f"DCGAN G/D width {WIDTH}, nz {NZ}, batch {BATCH}, Adam 2e-4 (0.5, 0.999), bce",
        "steps": steps,
        "seeds": seeds,
        "n_fake": N_FAKE,
        "classifier": f"genface Classifier + SmallCNN, {classifier_epochs} epochs, test accuracy {test_acc:.3f}",
        "classifier_test_acc": test_acc,
        "runs": results,
        "summary": summary,
        "total_s": round(time.perf_counter() - t0, 1),
    }


def readme_section(result: dict) -> str:
    lines = [
        "",
        "## cGAN discriminator heads on digits (`bench_cgan_heads.py`)",
        "",
        f"{result['date']}, {result['machine']}. {result['data']}; {result['model']}; {result['steps']} "
        f"generator steps per run, seeds {result['seeds']}; {result['n_fake']} samples (100 per digit) per run. "
        f"Conditional accuracy by an independent classifier ({result['classifier']}). KID / FID in that "
        "classifier's 64-d feature space against the real train split: comparable only within this table, "
        "not Inception numbers. Mean over seeds (per-seed values in `out/cgan_heads.json`); lower KID/FID is better.",
        "",
        "| head | conditional accuracy | KID (classifier features) | FID (classifier features) | worst digits (accuracy) |",
        "|---|---|---|---|---|",
    ]
    for head, s in result["summary"].items():
        worst = sorted(range(10), key=lambda d: s["per_class"][d])[:3]
        worst_text = ", ".join(f"{d}: {s['per_class'][d]:.2f}" for d in worst)
        seeds = ", ".join(f"{r['cond_acc']:.3f}" for r in result["runs"][head])
        lines.append(
            f"| `{head}` | {s['cond_acc']:.3f} ({seeds}) | {s['kid']:.4f} | {s['fid_clf']:.2f} | {worst_text} |"
        )
    summary = result["summary"]
    by_acc = sorted(summary, key=lambda h: -summary[h]["cond_acc"])
    by_kid = sorted(summary, key=lambda h: summary[h]["kid"])
    reduces = summary["multiclass"]["cond_acc"] > summary["concat"]["cond_acc"]
    lines += [
        "",
        f"Reading: conditional accuracy ranks {' > '.join(f'`{h}`' for h in by_acc)}; KID ranks "
        f"{' < '.join(f'`{h}`' for h in by_kid)} (lower is better). The cGAN / Pix2Pix / DDPM lab's claim that the (K+1)-way "
        f"discriminator reduces digit ambiguity is {'supported' if reduces else 'not supported'} here against "
        "`concat`, its real/fake counterpart (conditional accuracy). Caveat: the (K+1)-way objective trains G to be "
        "classified as the requested digit, which is close to what conditional accuracy measures; KID in the "
        "same feature space also reflects diversity.",
        "",
        f"Total wall time {result['total_s']:.0f} s (classifier training included).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--classifier-epochs", type=int, default=8)
    parser.add_argument("--no-readme", action="store_true", help="do not append the table to benchmarks/README.md")
    args = parser.parse_args()
    result = record("cgan_heads", run(args.steps, args.seeds, args.classifier_epochs))
    if not args.no_readme:
        text = README.read_text() if README.is_file() else "# Benchmarks\n"
        README.write_text(text.rstrip("\n") + "\n" + readme_section(result))


if __name__ == "__main__":
    main()
