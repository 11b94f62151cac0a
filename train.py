"""Train the AE and the VAE on MNIST (or Fashion-MNIST) with one training loop.

    python train.py                          # AE then VAE, 30 epochs each
    python train.py --model vae --epochs 10  # one model

Each model is saved to <out-dir>/<model>.pt: a dict with model_state, config (models.VAE(**config)
rebuilds it), dataset and history (per-epoch train loss, test loss and seconds).

Why it is fast: the whole split sits on the training device as one float tensor, and every step
indexes a random batch out of it. There is no DataLoader, no per-image transform and no
host-device copy in the loop, and the running loss stays on the device until the epoch ends, so
a GPU never waits for the host. On a CPU with native bf16, the matmuls run in bf16 under autocast
(--precision). benchmark.py measures each of these against the standard loop.
"""
import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torchvision
from torchvision import datasets

import models

DATASETS = {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST}
MODELS = {"ae": models.AE, "vae": models.VAE}
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}
CHECKPOINT_KEYS = {"model", "config", "dataset", "seed", "device", "precision", "versions", "history", "model_state"}
IDX_FILES = "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte"


def number(kind, low, strict=False):
    """An argparse type: a number of the given kind (int or float) that is >= low, or > low if strict."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")
        if not (value > low if strict else value >= low):
            raise argparse.ArgumentTypeError(f"must be {'greater than' if strict else 'at least'} {low}, got {text}")
        return value
    return parse


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a bad flag gets one line (the error and a pointer to --help), not the usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def make_parser(description):
    return OneLineErrorParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def add_common_flags(parser):
    """Flags shared by train.py, evaluate.py and main.py."""
    parser.add_argument("--data-dir", default="data", help="holds MNIST/raw/; downloaded there when missing")
    parser.add_argument("--out-dir", default="results", help="checkpoints and figures")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="auto picks CUDA (or another accelerator) when available")
    parser.add_argument("--seed", type=int, default=0, help="seeds weights, shuffling and sampling")


def add_training_flags(parser):
    parser.add_argument("--epochs", type=number(int, 1), default=30, help="epochs per model")
    parser.add_argument("--batch-size", type=number(int, 1), default=128, help="images per training step")
    parser.add_argument("--lr", type=number(float, 0, strict=True), default=1e-3, help="Adam learning rate")
    parser.add_argument("--latent-dim", type=number(int, 2), default=20,
                        help="size of z (at least 2: the figures plot z0 against z1)")
    parser.add_argument("--beta", type=number(float, 0), default=1.0, help="weight of the VAE's KL term")
    parser.add_argument("--arch", default="mlp", choices=sorted(models.BODIES), help="encoder/decoder body of both models")
    parser.add_argument("--dataset", default="mnist", choices=sorted(DATASETS),
                        help="fashion-mnist reads <data-dir>/FashionMNIST/raw/")
    parser.add_argument("--precision", default="auto", choices=["auto", *PRECISIONS],
                        help="dtype of the training step's matmuls (torch.autocast); auto is bf16 on CPUs with native "
                             "bf16 (AVX512-BF16 or AMX), else fp32. Weights, optimizer and test losses stay fp32")


def parse_args(argv=None):
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("--model", default="both", choices=["ae", "vae", "both"], help="which model(s) to train")
    add_common_flags(parser)
    add_training_flags(parser)
    return parser.parse_args(argv)


def resolve_device(name):
    """'auto' is the current accelerator (CUDA, MPS, ...) if there is one, else the CPU."""
    if name == "auto":
        return torch.accelerator.current_accelerator() if torch.accelerator.is_available() else torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda was asked for, but CUDA is not available here; use --device cpu or auto")
    return torch.device(name)


def resolve_precision(name, device):
    """'auto' is bf16 on CPUs that multiply bf16 natively (x86 with AVX512-BF16 or AMX; torch has no public
    check for these yet), where the matmuls are most of a step. It is fp32 elsewhere: other CPUs emulate
    bf16 (likely slower than fp32), and on GPUs bf16 has not been measured for this small model."""
    if name == "auto":
        native = device.type == "cpu" and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
        return "bf16" if native else "fp32"
    return name


def load_split(dataset, data_dir, train, device):
    """One split as (images, labels) on device; images are float (N, 1, 28, 28) in [0, 1]."""
    try:
        split = DATASETS[dataset](data_dir, train=train, download=True)
    except (RuntimeError, OSError) as error:
        raw_dir = Path(data_dir) / DATASETS[dataset].__name__ / "raw"
        reason = str(error).strip().splitlines()[-1]
        sys.exit(f"error: no {dataset} data in {raw_dir}/ and the download failed ({reason}); "
                 f"put the four uncompressed IDX files there ({IDX_FILES}) or pass --data-dir")
    images = split.data.to(device).unsqueeze(1).float().div_(255)
    return images, split.targets.to(device)


def train_epoch(model, optimizer, images, batch_size, dtype=torch.float32):
    """One pass over the images in a random order; returns the mean loss per image.

    With dtype bfloat16, autocast runs the matmuls in bf16 (close to twice the fp32 speed on hardware
    that has it) while the weights, the optimizer and the loss itself stay in fp32.
    """
    model.train()
    total = torch.zeros((), device=images.device)
    for batch in torch.randperm(len(images), device=images.device).split(batch_size):
        with torch.autocast(images.device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = model.loss(images[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach() * len(batch)
    return total / len(images)


@torch.no_grad()
def evaluate_loss(model, images, batch_size=1000):
    """Mean loss per image over a whole split (for the VAE: one sample of z per image)."""
    model.eval()
    total = sum(model.loss(x) * len(x) for x in images.split(batch_size))
    return total / len(images)


def fit(model, train_images, test_images, args, name, dtype):
    """Train for args.epochs, printing one line per epoch; returns the history."""
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, fused=True)
    history = {"train_loss": [], "test_loss": [], "seconds": []}
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        train_loss = train_epoch(model, optimizer, train_images, args.batch_size, dtype).item()
        seconds = time.perf_counter() - start
        test_loss = evaluate_loss(model, test_images).item()
        if not (math.isfinite(train_loss) and math.isfinite(test_loss)):
            sys.exit(f"error: the {name} loss is not finite at epoch {epoch} (train {train_loss}, test {test_loss}); "
                     f"stopped without writing a checkpoint (try a smaller --lr)")
        print(f"{name:3s} epoch {epoch:3d}/{args.epochs}  train {train_loss:7.2f}  test {test_loss:7.2f}"
              f"  nats/image  {seconds:5.2f} s", flush=True)
        history["train_loss"].append(train_loss)
        history["test_loss"].append(test_loss)
        history["seconds"].append(seconds)
    return history


def library_versions():
    return {"python": platform.python_version(), "torch": str(torch.__version__), "torchvision": torchvision.__version__}


def save_checkpoint(checkpoint, path):
    """Write to a temporary file, then rename: an interrupted run never leaves a broken file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    try:
        torch.save(checkpoint, temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def train(args, names):
    """Train and save each named model ("ae", "vae") on the same data, device and seed."""
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    train_images, _ = load_split(args.dataset, args.data_dir, True, device)
    test_images, _ = load_split(args.dataset, args.data_dir, False, device)
    for name in names:
        torch.manual_seed(args.seed)
        kwargs = {"beta": args.beta} if name == "vae" else {}
        model = MODELS[name](latent_dim=args.latent_dim, arch=args.arch, **kwargs).to(device)
        print(f"training the {args.arch} {name.upper()} on {device} ({precision} matmuls): {args.dataset}, "
              f"{len(train_images)} train / {len(test_images)} test images")
        history = fit(model, train_images, test_images, args, name, PRECISIONS[precision])
        path = Path(args.out_dir) / f"{name}.pt"
        save_checkpoint({"model": name, "config": model.config, "dataset": args.dataset, "seed": args.seed,
                         "device": str(device), "precision": precision, "versions": library_versions(), "history": history,
                         "model_state": model.state_dict()}, path)
        print(f"saved {path}")


def main(argv=None):
    args = parse_args(argv)
    train(args, ["ae", "vae"] if args.model == "both" else [args.model])


if __name__ == "__main__":
    main()
