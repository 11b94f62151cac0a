"""Figures that show why the VAE's latent space can be sampled and the AE's cannot.

    python evaluate.py        # reads results/ae.pt and results/vae.pt, writes the figures there

Each figure decodes or encodes with both models on the same inputs, so they compare directly:
samples from z ~ N(0, I), interpolations between test digits, the test set's codes (z0 against z1),
reconstructions, a latent traversal, loss curves and, for 2-d latents, the decoded manifold.
"""
import json
import pickle
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Circle
from torchvision.transforms.functional import to_pil_image
from torchvision.utils import make_grid, save_image

import models
import train

INTERPOLATION_PAIRS = [(0, 6), (1, 7), (2, 5), (3, 8), (4, 9)]
INTERPOLATION_STEPS = 10


def load_model(out_dir, name, device):
    """Rebuild a trained model from <out_dir>/<name>.pt; exit with one line if that cannot be done."""
    path = Path(out_dir) / f"{name}.pt"
    if not path.exists():
        sys.exit(f"error: {path} not found; train it first: python train.py --model {name} --out-dir {out_dir}")
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as error:
        sys.exit(f"error: {path} is not a readable checkpoint ({str(error).splitlines()[0]})")
    if not isinstance(checkpoint, dict) or not train.CHECKPOINT_KEYS <= checkpoint.keys():
        sys.exit(f"error: {path} is not a checkpoint written by train.py; retrain it: python train.py --model {name}")
    if checkpoint["model"] != name:
        sys.exit(f"error: {path} holds a {checkpoint['model']!r} checkpoint, not {name!r}; "
                 f"retrain it: python train.py --model {name}")
    try:
        model = train.MODELS[name](**checkpoint["config"]).to(device)
        model.load_state_dict(checkpoint["model_state"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        sys.exit(f"error: {path} does not fit models.{name.upper()} ({str(error).splitlines()[0]}); retrain it")
    return model.eval(), checkpoint


def check_pair(ae_checkpoint, vae_checkpoint):
    """The figures feed both models the same z and images: they must match in latent size, arch and data."""
    ae_setup, vae_setup = [(c["config"]["latent_dim"], c["config"]["arch"], c["dataset"]) for c in (ae_checkpoint, vae_checkpoint)]
    if ae_setup != vae_setup:
        sys.exit(f"error: ae.pt (latent_dim, arch, dataset = {ae_setup}) and vae.pt ({vae_setup}) were trained "
                 f"differently; train both with the same flags: python main.py")


def latent_codes(model, x):
    """The code of each image: z for the AE, the mean of q(z|x) for the VAE."""
    return model.encode(x)[0] if isinstance(model, models.VAE) else model.encode(x)


def show_grids(path, grids, title, stacked=False):
    """Save image grids (from make_grid) side by side, or stacked, each under its own name."""
    rows, cols = (len(grids), 1) if stacked else (1, len(grids))
    height, width = next(iter(grids.values())).shape[1:]
    inches_per_pixel = 0.5 / 30  # about half an inch per 28-pixel digit
    fig = Figure(figsize=(cols * width * inches_per_pixel + 0.2, rows * (height * inches_per_pixel + 0.35) + 0.4),
                 layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, (name, grid) in zip(axes.flat, grids.items()):
        ax.imshow(grid.permute(1, 2, 0).cpu().numpy(), interpolation="nearest")
        ax.set_title(name)
        ax.axis("off")
    fig.suptitle(title)
    fig.savefig(path, dpi=100, bbox_inches="tight")


def save_per_model(out_dir, stem, images_by_model, nrow, title):
    """Write <stem>_ae.png and <stem>_vae.png, and <stem>.png with the two side by side."""
    grids = {}
    for name, images in images_by_model.items():
        save_image(images, out_dir / f"{stem}_{name}.png", nrow=nrow)
        grids[name.upper()] = make_grid(images, nrow=nrow, pad_value=1)
    show_grids(out_dir / f"{stem}.png", grids, title)


def plot_samples(out_dir, pair, latent_dim, device):
    """Decode the same 64 draws from the prior with both models."""
    z = torch.randn(64, latent_dim, device=device)
    images = {name: model.decode(z) for name, model in pair.items()}
    save_per_model(out_dir, "samples", images, nrow=8, title="decoding the same 64 draws z ~ N(0, I)")


def interpolate(model, start, end, steps):
    """Decode evenly spaced points on the straight line between the codes of two images."""
    codes = latent_codes(model, torch.stack([start, end]))
    weights = torch.linspace(0, 1, steps, device=codes.device).unsqueeze(1)
    return model.decode(codes[0] + weights * (codes[1] - codes[0]))


def plot_interpolations(out_dir, pair, images, labels):
    """One row per pair of test digits: the real start image, the walk, the real end image."""
    ends = [(images[labels == a][0], images[labels == b][0]) for a, b in INTERPOLATION_PAIRS]
    rows = {name: torch.cat([torch.cat([start[None], interpolate(model, start, end, INTERPOLATION_STEPS), end[None]])
                             for start, end in ends])
            for name, model in pair.items()}
    save_per_model(out_dir, "interpolation", rows, nrow=INTERPOLATION_STEPS + 2,
                   title="straight lines in latent space between test digits (real images at the ends)")
    start, end = ends[0]
    walk = interpolate(pair["vae"], start, end, 30)
    frames = torch.stack([make_grid([start, image, end], nrow=3, pad_value=1) for image in torch.cat([walk, walk.flip(0)])])
    frames = F.interpolate(frames, scale_factor=4)  # nearest neighbour: crisp, 4x larger pixels
    pictures = [to_pil_image(frame) for frame in frames.cpu()]
    pictures[0].save(out_dir / "interpolation_vae.gif", save_all=True, append_images=pictures[1:], duration=60, loop=0)


def plot_latent_scatter(out_dir, pair, images, labels, class_names):
    """The test set's codes, z0 against z1, with the prior's 1 and 2 sigma circles for scale.

    Points are drawn in the test set's own (mixed) order, so no digit class hides the others.
    """
    fig = Figure(figsize=(12, 5.6))
    axes = fig.subplots(1, 2)
    for ax, (name, model) in zip(axes, pair.items()):
        codes = torch.cat([latent_codes(model, x) for x in images.split(1000)])[:, :2].cpu().numpy()
        ax.scatter(codes[:, 0], codes[:, 1], s=2, alpha=0.5, color=colormaps["tab10"](labels.cpu().numpy()))
        for radius in (1, 2):
            ax.add_patch(Circle((0, 0), radius, fill=False, linestyle="--", color="black"))
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_title(f"{name.upper()}: test codes" + (" (means)" if name == "vae" else ""))
        ax.set_xlabel("z0")
        ax.set_ylabel("z1")
    legend = [Line2D([], [], marker="o", linestyle="", color=colormaps["tab10"](label), label=class_name)
              for label, class_name in enumerate(class_names)]
    axes[1].legend(handles=legend, loc="center left", bbox_to_anchor=(1, 0.5))
    fig.suptitle("first two latent coordinates; dashed: 1 and 2 sigma of N(0, I)")
    fig.savefig(out_dir / "latent_scatter.png", dpi=100, bbox_inches="tight")


def plot_reconstructions(out_dir, pair, images):
    originals = images[:16]
    grids = {"test images": make_grid(originals, nrow=16, pad_value=1)}
    for name, model in pair.items():
        grids[name.upper()] = make_grid(model.decode(latent_codes(model, originals)), nrow=16, pad_value=1)
    show_grids(out_dir / "reconstructions.png", grids, "reconstructions (VAE: decoding the mean)", stacked=True)


def plot_traversal(out_dir, vae, images, steps=9):
    """Sweep two latent dimensions of one test digit's VAE code over [-3, 3].

    The swept dimensions are the two whose means vary most across images: the VAE leaves some
    dimensions unused (their codes stay at the prior), and sweeping those would change nothing.
    """
    mu, _ = vae.encode(images[:1000])
    first, second = mu.var(0).topk(2).indices.tolist()
    values = torch.linspace(-3, 3, steps, device=mu.device)
    z = mu[0].repeat(steps * steps, 1)
    z[:, first] = values.repeat(steps)
    z[:, second] = values.repeat_interleave(steps)
    show_grids(out_dir / "traversal_vae.png", {f"z{first} across, z{second} down": make_grid(vae.decode(z), nrow=steps, pad_value=1)},
               "VAE: one test digit, its two most-used latent dims swept over [-3, 3]")


def plot_manifold(out_dir, pair, device, steps=15):
    """For 2-d latents: decode a grid over [-3, 3]^2, z1 decreasing down the rows."""
    values = torch.linspace(-3, 3, steps, device=device)
    z = torch.stack([values.repeat(steps), values.flip(0).repeat_interleave(steps)], dim=1)
    images = {name: model.decode(z) for name, model in pair.items()}
    save_per_model(out_dir, "manifold", images, nrow=steps, title="decodings of a grid over [-3, 3]^2 (z0 across, z1 up)")


def plot_loss_curves(out_dir, checkpoints):
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for color, (name, checkpoint) in zip(["C0", "C1"], checkpoints.items()):
        history = checkpoint["history"]
        epochs = range(1, len(history["train_loss"]) + 1)
        ax.plot(epochs, history["train_loss"], color=color, label=f"{name.upper()} train")
        ax.plot(epochs, history["test_loss"], "--", color=color, label=f"{name.upper()} test")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (nats per image)")
    ax.set_title("AE: reconstruction BCE; VAE: BCE + KL (negative ELBO)")
    ax.legend()
    fig.savefig(out_dir / "loss_curves.png", dpi=100, bbox_inches="tight")


def vae_loss_terms(vae, images):
    """The VAE's test reconstruction and KL (nats per image); with beta = 1 its loss is their sum."""
    totals = sum(torch.stack(vae.loss_terms(x)) * len(x) for x in images.split(1000))
    reconstruction, kl = (totals / len(images)).tolist()
    return {"test_reconstruction": reconstruction, "test_kl": kl, "test_negative_elbo": reconstruction + kl}


def write_metrics(out_dir, checkpoints, vae_terms):
    """Per model: final losses, timing and provenance; for the VAE also its test loss split into terms."""
    metrics = {}
    for name, checkpoint in checkpoints.items():
        history = checkpoint["history"]
        metrics[name] = {"test_loss": history["test_loss"][-1], "train_loss": history["train_loss"][-1],
                         "epochs": len(history["test_loss"]), "seconds_per_epoch": float(np.mean(history["seconds"])),
                         **{key: checkpoint[key] for key in ("config", "dataset", "device", "precision", "seed", "versions")}}
    metrics["vae"].update(vae_terms)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")


@torch.no_grad()
def evaluate(out_dir, data_dir, device_name, seed):
    """Write every figure and metrics.json into out_dir."""
    out_dir = Path(out_dir)
    device = train.resolve_device(device_name)
    (ae, ae_checkpoint), (vae, vae_checkpoint) = load_model(out_dir, "ae", device), load_model(out_dir, "vae", device)
    check_pair(ae_checkpoint, vae_checkpoint)
    dataset = vae_checkpoint["dataset"]
    images, labels = train.load_split(dataset, data_dir, False, device)
    pair, checkpoints = {"ae": ae, "vae": vae}, {"ae": ae_checkpoint, "vae": vae_checkpoint}
    torch.manual_seed(seed)
    plot_samples(out_dir, pair, vae.latent_dim, device)
    plot_interpolations(out_dir, pair, images, labels)
    plot_latent_scatter(out_dir, pair, images, labels, train.DATASETS[dataset].classes)
    plot_reconstructions(out_dir, pair, images)
    plot_traversal(out_dir, vae, images)
    if vae.latent_dim == 2:
        plot_manifold(out_dir, pair, device)
    plot_loss_curves(out_dir, checkpoints)
    write_metrics(out_dir, checkpoints, vae_loss_terms(vae, images))


def main(argv=None):
    parser = train.make_parser(__doc__.splitlines()[0])
    train.add_common_flags(parser)
    args = parser.parse_args(argv)
    evaluate(args.out_dir, args.data_dir, args.device, args.seed)
    print(f"figures and metrics.json written to {args.out_dir}/")


if __name__ == "__main__":
    main()
