"""Train the AE and the VAE on MNIST (or Fashion-MNIST) with one training loop.

    python train.py                          # AE then VAE, 30 epochs each
    python train.py --model vae --epochs 10  # one model

Each model is saved to <out-dir>/<model>.pt: a dict with model_state, config (models.VAE(**config)
rebuilds it), dataset and history (per-epoch train loss, test loss and seconds).

Why it is fast: the whole split sits on the training device as one float tensor, and every step
indexes a random batch out of it. There is no DataLoader, no per-image transform and no
host-device copy in the loop, and the running loss stays on the device until the epoch ends, so
the host never blocks on the device inside an epoch. benchmark.py measures this against the
standard loop. The lesson is the first half of this file; the flag parsing and checks are below it
and in cli.py.
"""
import math
import time

import torch

import cli
import models

MODELS = {"ae": models.AE, "vae": models.VAE}


def load_split(dataset, data_dir, train, device):
    """One split as (images, labels) on device; images are float (N, 1, 28, 28) in [0, 1]."""
    split = cli.open_dataset(dataset, data_dir, train)
    images = split.data.to(device).unsqueeze(1).float().div_(255)
    return images, split.targets.to(device)


def binarize_once(images, seed=0):
    """A fixed 0/1 draw of each pixel, x ~ Bernoulli(intensity): the binarized test split."""
    generator = torch.Generator(images.device).manual_seed(seed)
    return torch.bernoulli(images, generator=generator)


def train_epoch(model, optimizer, images, batch_size, binarize=False):
    """One pass over the images in a random order; returns the mean loss per image."""
    model.train()
    total = torch.zeros((), device=images.device)
    for batch in torch.randperm(len(images), device=images.device).split(batch_size):
        x = images[batch]
        if binarize:
            x = torch.bernoulli(x)  # dynamic binarization: fresh 0/1 pixels at every step
        loss = model.loss(x)
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


def fit(model, train_images, test_images, args, name):
    """Train for args.epochs, printing one line per epoch; returns the history."""
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, fused=True)
    history = {"train_loss": [], "test_loss": [], "seconds": []}
    for epoch in range(1, args.epochs + 1):
        with cli.on_interrupt(f"{name.upper()} epoch {epoch}/{args.epochs}, not saved; "
                              f"files already in {args.out_dir}/ are untouched"):
            start = time.perf_counter()
            train_loss = train_epoch(model, optimizer, train_images, args.batch_size, args.binarize).item()
            seconds = time.perf_counter() - start
            test_loss = evaluate_loss(model, test_images).item()
            if not (math.isfinite(train_loss) and math.isfinite(test_loss)):
                cli.fail(f"the {name} loss is not finite at epoch {epoch} (train {train_loss}, test {test_loss}); "
                         f"stopped without writing a checkpoint (try a smaller --lr)")
            print(f"{name:3s} epoch {epoch:3d}/{args.epochs}  train {train_loss:7.2f}  test {test_loss:7.2f}"
                  f"  nats/image  {seconds:5.2f} s", flush=True)
            history["train_loss"].append(train_loss)
            history["test_loss"].append(test_loss)
            history["seconds"].append(seconds)
    return history


def train(args, names):
    """Train and save each named model ("ae", "vae") on the same data, device and seed."""
    out_dir = cli.writable_dir(args.out_dir)
    device = cli.resolve_device(args.device)
    train_images, _ = load_split(args.dataset, args.data_dir, True, device)
    test_images, _ = load_split(args.dataset, args.data_dir, False, device)
    if args.binarize:
        test_images = binarize_once(test_images)
    for name in names:
        torch.manual_seed(args.seed)
        kwargs = {"beta": args.beta} if name == "vae" else {}
        model = MODELS[name](latent_dim=args.latent_dim, arch=args.arch, **kwargs).to(device)
        print(f"training the {args.arch} {name.upper()} on {device}: {args.dataset}"
              f"{' (binarized)' if args.binarize else ''}, {len(train_images)} train / {len(test_images)} test images")
        history = fit(model, train_images, test_images, args, name)
        save_checkpoint({"model": name, "config": model.config, "dataset": args.dataset, "binarize": args.binarize,
                         "seed": args.seed, "device": str(device), "versions": cli.library_versions(),
                         "history": history, "model_state": model.state_dict()}, out_dir / f"{name}.pt")


# Plumbing: the checkpoint format and the command line.

CHECKPOINT_KEYS = {"model", "config", "dataset", "binarize", "seed", "device", "versions", "history", "model_state"}


def save_checkpoint(checkpoint, path):
    """Written atomically: an interrupted or failed save never leaves a broken file."""
    with cli.on_interrupt(f"while saving {path}, which is as it was (checkpoints are written whole or not at all)"):
        cli.write_atomically(path, lambda temporary: torch.save(checkpoint, temporary))
    print(f"saved {path}")


def parse_args(argv=None):
    parser = cli.make_parser(__doc__.splitlines()[0])
    parser.add_argument("--model", default="both", choices=["ae", "vae", "both"], help="which model(s) to train")
    cli.add_common_flags(parser)
    cli.add_training_flags(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    train(args, ["ae", "vae"] if args.model == "both" else [args.model])


if __name__ == "__main__":
    cli.run(main)
