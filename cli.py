"""Plumbing shared by the scripts: flags, devices, data files, safe writes and one-line failures.

None of this is part of the lesson. It exists so that every expected failure (a bad flag, no data,
a damaged file, an output folder that cannot be written, Ctrl-C) stops with one line that says what
to do, before any work is done where that is possible, and so that no interrupted run leaves a
half-written file behind.
"""
import argparse
import contextlib
import math
import platform
import sys
import tempfile
from pathlib import Path

import torch
import torchvision
from torchvision import datasets

import models

DATASETS = {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST}
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def fail(message):
    """Stop the script with one line on stderr and exit status 1."""
    sys.exit(f"error: {message}")


def last_line(error):
    """The last non-empty line of an exception's message, or its type when it has none."""
    lines = str(error).strip().splitlines()
    return lines[-1] if lines else type(error).__name__


def run(main):
    """Run a script's main(): Ctrl-C stops it with one line and exit status 130, not a traceback."""
    try:
        main()
    except KeyboardInterrupt as interrupt:
        print(f"interrupted{': ' + str(interrupt) if str(interrupt) else ''}", file=sys.stderr)
        sys.exit(130)


@contextlib.contextmanager
def on_interrupt(what):
    """Say what was being done if Ctrl-C lands inside this block (run() prints it)."""
    try:
        yield
    except KeyboardInterrupt:
        raise KeyboardInterrupt(what) from None


# Flags.

def number(kind, low, strict=False):
    """An argparse type: a finite number of the given kind (int or float) that is >= low, or > low if strict."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")
        if not math.isfinite(value) or not (value > low if strict else value >= low):
            raise argparse.ArgumentTypeError(f"must be {'greater than' if strict else 'at least'} {low}, got {text}")
        return value
    return parse


def device_name(text):
    """An argparse type: 'auto' or any device string torch knows (cpu, cuda, cuda:1, mps, xpu, ...)."""
    if text == "auto":
        return text
    try:
        torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device torch knows (try auto, cpu, cuda, cuda:1, mps)")
    return text


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a bad flag gets one line (the error and a pointer to --help), not the usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def make_parser(description):
    return OneLineErrorParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def add_common_flags(parser):
    """Flags shared by train.py, evaluate.py and main.py."""
    parser.add_argument("--data-dir", default="data", help="holds MNIST/raw/; downloaded there when missing")
    parser.add_argument("--out-dir", default="results", help="checkpoints, figures and metrics.json")
    parser.add_argument("--device", default="auto", type=device_name,
                        help="auto picks the accelerator (CUDA, MPS, ...) when there is one; or cpu, cuda:1, ...")
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
    parser.add_argument("--binarize", action="store_true",
                        help="train on 0/1 pixels drawn afresh each step, test on a fixed draw: a true likelihood")


def add_evaluation_flags(parser):
    parser.add_argument("--iw-samples", type=number(int, 1), default=50,
                        help="importance samples per test image for the VAE's log-likelihood bound L_k")


# Devices and versions.

def resolve_device(name):
    """'auto' is the current accelerator (CUDA, MPS, ...) if there is one, else the CPU."""
    accelerator = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    if name == "auto":
        return accelerator or torch.device("cpu")
    device = torch.device(name)
    if device.type == "cpu":
        return device
    if accelerator is None or accelerator.type != device.type or (device.index or 0) >= torch.accelerator.device_count():
        fail(f"--device {name} is not available here (this machine has {accelerator or 'no accelerator'}); "
             f"use --device auto or cpu")
    return device


def library_versions():
    return {"python": platform.python_version(), "torch": str(torch.__version__), "torchvision": torchvision.__version__}


# Files.

def writable_dir(path, flag="--out-dir"):
    """Create the folder if needed and prove a file can be written there, before any work is done."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        fail(f"{flag} {path} is a file, not a folder; pass another {flag}")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        fail(f"{flag} {path} cannot be written ({error.strerror or last_line(error)}); pass another {flag}")
    return path


def write_atomically(path, write):
    """Call write(temporary path), then rename it over path: a failed or interrupted write leaves the old
    file as it was and no partial file. The temporary name keeps the suffix that savers read the format from."""
    path = Path(path)
    temporary = path.with_name(f"{path.stem}.tmp{path.suffix}")
    try:
        write(temporary)
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)


def check_idx_file(path):
    """An IDX file's size must match its header (magic 0, 0, 0x08, rank; big-endian sizes); fail if not."""
    size = path.stat().st_size
    with open(path, "rb") as file:
        header = file.read(4)
        rank = header[3] if len(header) == 4 and header[:3] == b"\x00\x00\x08" else 0
        shape = [int.from_bytes(file.read(4), "big") for _ in range(rank)]
    expected = 4 + 4 * rank + math.prod(shape) if rank else None
    if expected != size:
        found = f"{size} bytes where its header promises {expected}" if expected else "no IDX header"
        fail(f"{path} is damaged ({found}); delete it to download it again, or replace it with the original file")


def open_dataset(dataset, data_dir, train):
    """torchvision's dataset for one split. Files already in <data-dir>/<Name>/raw/ are checked, never
    downloaded again; missing ones are downloaded, and a failure says where to put them instead."""
    raw_dir = Path(data_dir) / DATASETS[dataset].__name__ / "raw"
    present = all((raw_dir / name).is_file() for name in IDX_FILES)
    if present:
        for name in IDX_FILES:
            check_idx_file(raw_dir / name)
    try:
        return DATASETS[dataset](data_dir, train=train, download=not present)
    except (RuntimeError, OSError, ValueError) as error:
        if present:
            fail(f"cannot read the {dataset} files in {raw_dir}/ ({last_line(error)}); replace them with the originals")
        fail(f"no {dataset} data in {raw_dir}/ and the download failed ({last_line(error)}); "
             f"put the four uncompressed IDX files there ({', '.join(IDX_FILES)}) or pass --data-dir")
