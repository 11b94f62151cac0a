"""Epoch time of train.py's loop against the standard DataLoader loop, side by side in one run.

    python benchmark.py --data-dir ../shared/data     # prints the table and writes results/benchmark.json

Three loops train the same VAE (batch 128, Adam, fp32) one epoch at a time, taking turns, so any
drift in the machine's speed hits all of them alike; each adds one change to the loop before it:

  standard   the tutorial loop: torchvision's MNIST with transforms.ToTensor() behind a shuffling
             DataLoader (one PIL image -> tensor conversion per sample, batches collated on the
             host, copied to the device, loss.item() every step), with the default Adam
  tensors    train.py's loop (the split preloaded on the device, random batches indexed out of
             it) with the default Adam
  train.py   the same with the fused Adam that train.py uses
"""
import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torchvision import datasets, transforms

import models
import train


def standard_epoch(model, optimizer, loader, device):
    model.train()
    total = 0.0
    for x, _ in loader:
        x = x.to(device)
        loss = model.loss(x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += loss.item() * len(x)
    return total / len(loader.dataset)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="data", help="holds MNIST/raw/")
    parser.add_argument("--device", default="auto", help="as in train.py")
    parser.add_argument("--rounds", type=int, default=3, help="epochs of each loop")
    parser.add_argument("--batch-size", type=int, default=128, help="images per step")
    parser.add_argument("--out", default="results/benchmark.json", help="where the table is written")
    args = train.parse_flags(parser, argv, {"rounds": 1, "batch_size": 1})

    device = train.resolve_device(args.device)
    images, labels = train.load_split("mnist", args.data_dir, True, device)
    dataset = datasets.MNIST(args.data_dir, train=True, transform=transforms.ToTensor())
    on_gpu = device.type == "cuda"
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True,
                                         num_workers=1 if on_gpu else 0, pin_memory=on_gpu)

    def make(fused):
        torch.manual_seed(0)
        model = models.VAE().to(device)
        return model, torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused)

    def tensor_epoch(model, optimizer):
        return train.train_epoch(model, optimizer, images, labels, args.batch_size).item()

    loops = {
        "standard": (make(None), lambda model, optimizer: standard_epoch(model, optimizer, loader, device)),
        "tensors": (make(None), tensor_epoch),
        "train.py": (make(True), tensor_epoch),
    }
    seconds = {name: [] for name in loops}
    print(f"one epoch of the VAE on {device}, batch {args.batch_size}; seconds per epoch:")
    print("round  " + "  ".join(f"{name:>9s}" for name in loops))
    for round_number in range(1, args.rounds + 1):
        for name, ((model, optimizer), epoch) in loops.items():
            start = time.perf_counter()
            epoch(model, optimizer)
            seconds[name].append(time.perf_counter() - start)
        print(f"{round_number:5d}  " + "  ".join(f"{seconds[name][-1]:9.2f}" for name in loops), flush=True)
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    print("median " + "  ".join(f"{medians[name]:9.2f}" for name in loops))
    ratios = {name: medians[name] / medians["standard"] for name in loops}
    for name in list(loops)[1:]:
        print(f"{name} / standard: {ratios[name]:.2f} (1/{1 / ratios[name]:.1f})")
    report = {"device": str(device), "machine": train.machine(), "batch_size": args.batch_size, "rounds": args.rounds,
              "seconds_per_epoch": seconds, "median_seconds": medians, "ratio_to_standard": ratios}
    train.write_atomically(Path(args.out), lambda temporary: temporary.write_text(json.dumps(report, indent=2) + "\n"))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    train.run(main)
