"""Figures and numbers that show why the VAE's latent space can be sampled and the AE's cannot, and
what it takes to sample the AE's.

    python evaluate.py --data-dir data   # reads results/ae.pt and results/vae.pt, writes figures and metrics.json there

Both models decode or encode the same inputs, so every figure compares them directly. Each model's
latents are drawn three ways: from the prior N(0, I), from a Gaussian fitted to its training codes,
and from a 10-component Gaussian mixture fitted to them (priors.py). The VAE's densities are fitted
twice: to its posterior means, and to one draw z ~ q(z|x) per training image, what its decoder saw
in training. A Gaussian per class draws a chosen digit from either model. A digit classifier scores
what the models decode (metrics.py), and importance sampling bounds the VAE's log-likelihood.
"""
import json
import math
import pickle
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Circle, Ellipse
from torchvision.transforms.functional import to_pil_image
from torchvision.utils import make_grid, save_image

import metrics
import priors
import train

SAMPLES = 10_000  # draws scored per sampler
ON_DEMAND_DRAWS = 1000  # draws scored per class
SAMPLERS = {"prior": "N(0, I)", "fitted": "fitted Gaussian", "mixture": "fitted mixture"}
INTERPOLATION_PAIRS = [(0, 6), (1, 7), (2, 5), (3, 8), (4, 9)]
INTERPOLATION_STEPS = 10


@torch.no_grad()
def evaluate(out_dir, data_dir, device_name, seed, iw_samples=50):
    """Write every figure and metrics.json into out_dir, in this order:

    1. a digit classifier, trained on the training split, that scores whatever the models decode;
    2. each model's codes of both splits (models.AE.code: z for the AE, the mean of q(z|x) for the VAE);
    3. decoded draws from each sampler, reconstructions and interpolation midpoints, scored;
    4. the VAE's test ELBO, its importance-weighted bound L_k and its active units;
    5. the VAE's fitted Gaussian and mixture again, fitted to z ~ q(z|x) instead of its means;
    6. digits on demand: for each model, a Gaussian fitted to each class's codes, and its draws scored;
    7. the figures, and last metrics.json.
    """
    start = time.perf_counter()
    device = train.resolve_device(device_name)
    pair, checkpoints = load_pair(out_dir, device)
    out_dir = train.writable_dir(out_dir)
    dataset, binarize = checkpoints["vae"]["dataset"], checkpoints["vae"]["binarize"]
    train_images, train_labels = train.load_split(dataset, data_dir, True, device)
    test_images, test_labels = train.load_split(dataset, data_dir, False, device)
    train_inputs, test_inputs = [train.binarize_once(x) if binarize else x for x in (train_images, test_images)]
    with train.on_interrupt(f"evaluation stopped; every file in {out_dir}/ is whole (written completely or not at all)"):
        torch.manual_seed(seed)
        with torch.enable_grad():
            classifier = metrics.train_classifier(train_images, train_labels)
        reference = metrics.gaussian_statistics(metrics.classify(classifier, test_images)[1])
        train_codes = {name: codes_of(model, train_inputs) for name, model in pair.items()}
        test_codes = {name: codes_of(model, test_inputs) for name, model in pair.items()}
        scores, shown, gaussians = score_samplers(pair, train_codes, test_codes, classifier, reference, train_images)
        vae_likelihood = likelihood(pair["vae"], test_inputs, test_codes["vae"], iw_samples)
        sampled_codes = sampled_vae_codes(pair["vae"], train_inputs)
        scores.update(score_vae_fits_to_sampled_codes(pair["vae"], sampled_codes, classifier, reference))
        on_demand, on_demand_shown = digits_on_demand(pair, {"ae": train_codes["ae"], "vae": sampled_codes},
                                                      train_labels, classifier, reference)

        class_names = train.DATASETS[dataset].classes
        plot_samples(out_dir, shown, scores)
        plot_on_demand(out_dir, on_demand_shown, on_demand, class_names)
        plot_interpolations(out_dir, pair, test_inputs, test_labels)
        plot_latent_scatter(out_dir, test_codes, test_labels, class_names, gaussians)
        plot_reconstructions(out_dir, pair, test_inputs)
        plot_traversal(out_dir, pair["vae"], test_codes["vae"])
        if pair["vae"].latent_dim == 2:
            plot_manifold(out_dir, pair, device)
        plot_loss_curves(out_dir, checkpoints)
        write_metrics(out_dir, checkpoints, {
            "vae": vae_likelihood,
            "data": {"dataset": dataset, "binarized": binarize, "test_pixel_entropy": metrics.pixel_entropy(test_inputs)},
            "classifier": {"test_accuracy": metrics.accuracy(classifier, test_images, test_labels)},
            "samples": scores,
            "on_demand": on_demand,
            "latent_codes": code_spread(test_codes),
            "evaluate_seconds": time.perf_counter() - start})


# The numbers.

def codes_of(model, images, batch_size=1000):
    """model.code of every image, in batches."""
    return torch.cat([model.code(x) for x in images.split(batch_size)])


def sampled_vae_codes(vae, images, batch_size=1000):
    """One z ~ q(z|x) per image: the codes the VAE's decoder was trained on, wider than the means."""
    return torch.cat([vae.reparameterize(*vae.encode(x)) for x in images.split(batch_size)])


def decode(model, z, batch_size=1000):
    """Decode latents from any device on the model's device, in batches."""
    device = next(model.parameters()).device
    return torch.cat([model.decode(chunk.to(device)) for chunk in z.split(batch_size)])


def fit_densities(train_codes, mixture_codes=10_000):
    """A Gaussian fitted to all the codes, and a 10-component mixture fitted to a random 10,000 of them
    (about 1,000 per component, which keeps EM under a second on a CPU). Fitting a density to an AE's
    codes after training is ex-post density estimation (Ghosh et al., ICLR 2020)."""
    subset = torch.randperm(len(train_codes))[:mixture_codes].to(train_codes.device)
    return priors.Gaussian(train_codes), priors.GaussianMixture(train_codes[subset])


def draw_latents(train_codes, n):
    """n latents from each sampler. The prior and the fitted Gaussian share their standard-normal eps
    (z = eps and z = mean + L eps), so their i-th draws correspond."""
    gaussian, mixture = fit_densities(train_codes)
    eps = torch.randn(n, train_codes.shape[1])
    return {"prior": eps, "fitted": gaussian.transform(eps), "mixture": mixture.sample(n)}, gaussian


def interpolation_midpoints(model, codes, n):
    """Decode the midpoints of n random pairs of codes."""
    first, second = torch.randint(len(codes), (2, n))
    return decode(model, (codes[first.to(codes.device)] + codes[second.to(codes.device)]) / 2)


def score_samplers(pair, train_codes, test_codes, classifier, reference, train_images):
    """Every sampler's and reference's scores, 64 decoded draws of each sampler, and each model's fitted
    Gaussian. reference holds the statistics of the test split's features; real training images are
    scored against it too, the floor of the Frechet distance."""
    scores = {"train_images": metrics.sample_scores(classifier, train_images[torch.randperm(len(train_images))[:SAMPLES]],
                                                    reference)}
    shown, gaussians = {}, {}
    for name, model in pair.items():
        latents, gaussians[name] = draw_latents(train_codes[name], SAMPLES)
        for sampler, z in latents.items():
            images = decode(model, z)
            scores[f"{name}_{sampler}"] = metrics.sample_scores(classifier, images, reference)
            shown[f"{name}_{sampler}"] = images[:64]
        scores[f"{name}_reconstructions"] = metrics.sample_scores(classifier, decode(model, test_codes[name]), reference)
        scores[f"{name}_midpoints"] = metrics.sample_scores(
            classifier, interpolation_midpoints(model, test_codes[name], SAMPLES), reference)
    return scores, shown, gaussians


def score_vae_fits_to_sampled_codes(vae, sampled_codes, classifier, reference):
    """The VAE's fitted Gaussian and mixture, refitted to one z ~ q(z|x) per training image."""
    gaussian, mixture = fit_densities(sampled_codes)
    return {f"vae_{sampler}_z": metrics.sample_scores(classifier, decode(vae, density.sample(SAMPLES)), reference)
            for sampler, density in [("fitted", gaussian), ("mixture", mixture)]}


def likelihood(vae, test_inputs, test_means, iw_samples):
    """The VAE's test ELBO split into its terms, the importance-weighted bound L_k and the active units
    (from test_means, the means of q(z|x) over the test inputs), both after Burda et al. (ICLR 2016)."""
    totals = sum(torch.stack(vae.loss_terms(x)) * len(x) for x in test_inputs.split(1000))
    reconstruction, kl = (totals / len(test_inputs)).tolist()
    return {"test_reconstruction": reconstruction, "test_kl": kl, "test_negative_elbo": reconstruction + kl,
            "test_log_likelihood": metrics.importance_weighted_bound(vae, test_inputs, iw_samples).mean().item(),
            "iw_samples": iw_samples, "active_units": metrics.active_units(test_means)}


def class_samplers(train_codes, train_labels):
    """One Gaussian per class, fitted to the codes of that class's training images alone."""
    return [priors.Gaussian(train_codes[train_labels == label]) for label in range(int(train_labels.max()) + 1)]


def digits_on_demand(pair, train_codes, train_labels, classifier, reference):
    """A chosen class from either model, without retraining: decode draws from a Gaussian fitted to the
    codes of that class's training images. Per model: the requested-class scores of ON_DEMAND_DRAWS
    draws per class, their Frechet distance to the test split, and 8 draws per class to show."""
    results, shown = {}, {}
    for name, model in pair.items():
        samplers = class_samplers(train_codes[name], train_labels)
        requested = torch.arange(len(samplers)).repeat_interleave(ON_DEMAND_DRAWS)
        images = decode(model, torch.cat([sampler.sample(ON_DEMAND_DRAWS) for sampler in samplers]))
        probabilities, features = metrics.classify(classifier, images)
        results[name] = {**metrics.requested_class_scores(probabilities, requested),
                         "frechet_distance": metrics.frechet_distance(*metrics.gaussian_statistics(features), *reference)}
        shown[name] = images.view(len(samplers), ON_DEMAND_DRAWS, *images.shape[1:])[:, :8]
    return results, shown


def code_spread(test_codes):
    """Where each model's test codes lie in (z0, z1): the share inside the 2 sigma circle of N(0, I)
    (which holds 1 - e^-2 = 86.5% of the prior) and inside the [-3, 3]^2 square."""
    spread = {}
    for name, codes in test_codes.items():
        z = codes[:, :2]
        spread[name] = {"inside_2_sigma_circle": (z.pow(2).sum(1) <= 4).float().mean().item(),
                        "inside_square_3": (z.abs() <= 3).all(1).float().mean().item()}
    return spread


# The figures.

def save_figure(fig, path):
    train.write_atomically(path, lambda temporary: fig.savefig(temporary, dpi=100, bbox_inches="tight"))


def show_grids(path, grids, title, columns=None):
    """Save image grids (from make_grid) in a table of panels, each under its own title."""
    columns = columns or len(grids)
    rows = math.ceil(len(grids) / columns)
    height, width = next(iter(grids.values())).shape[1:]
    inches_per_pixel = 0.5 / 30  # about half an inch per 28-pixel digit
    fig = Figure(figsize=(columns * width * inches_per_pixel + 0.2, rows * (height * inches_per_pixel + 0.6) + 0.4),
                 layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (name, grid) in zip(axes.flat, grids.items()):
        ax.imshow(grid.permute(1, 2, 0).cpu().numpy(), interpolation="nearest")
        ax.set_title(name)
    fig.suptitle(title)
    save_figure(fig, path)


def save_grid(images, path, nrow):
    train.write_atomically(path, lambda temporary: save_image(images, temporary, nrow=nrow))


def save_per_model(out_dir, stem, images_by_model, nrow, title):
    """Write <stem>_ae.png and <stem>_vae.png, and <stem>.png with the two side by side."""
    grids = {}
    for name, images in images_by_model.items():
        save_grid(images, out_dir / f"{stem}_{name}.png", nrow)
        grids[name.upper()] = make_grid(images, nrow=nrow, pad_value=1)
    show_grids(out_dir / f"{stem}.png", grids, title)


def plot_samples(out_dir, shown, scores):
    """Rows AE and VAE, columns the three samplers: 64 decoded draws each, titled with their scores."""
    grids = {}
    for name in ("ae", "vae"):
        save_grid(shown[f"{name}_prior"], out_dir / f"samples_{name}.png", nrow=8)
        for sampler, label in SAMPLERS.items():
            score = scores[f"{name}_{sampler}"]
            title = (f"{name.upper()}, z ~ {label}\n{score['recognisable']:.0%} recognisable, "
                     f"FD {score['frechet_distance']:.0f}")
            grids[title] = make_grid(shown[f"{name}_{sampler}"], nrow=8, pad_value=1)
    show_grids(out_dir / "samples.png", grids, "decoded draws: the prior and the Gaussian columns share their eps", columns=3)


def plot_on_demand(out_dir, shown, results, class_names):
    """One row per class, AE and VAE side by side: 8 draws from the class's Gaussian, titled with its hit share."""
    grids = {f"{name.upper()}: {class_names[label]} ({results[name]['per_class_hit'][label]:.0%})":
             make_grid(shown[name][label], nrow=8, pad_value=1)
             for label in range(len(class_names)) for name in ("ae", "vae")}
    show_grids(out_dir / "on_demand.png", grids, "a chosen class: draws from a Gaussian fitted to that class's codes\n"
               "(in brackets: the share the classifier assigns to that class with p >= 0.9)", columns=2)


def interpolate(model, start, end, steps):
    """Decode evenly spaced points on the straight line between the codes of two images."""
    ends = model.code(torch.stack([start, end]))
    weights = torch.linspace(0, 1, steps, device=ends.device).unsqueeze(1)
    return model.decode(ends[0] + weights * (ends[1] - ends[0]))


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
    train.write_atomically(out_dir / "interpolation_vae.gif", lambda temporary: pictures[0].save(
        temporary, save_all=True, append_images=pictures[1:], duration=60, loop=0))


def draw_sigma_ellipses(ax, gaussian):
    """The 1 and 2 sigma ellipses of a fitted Gaussian's (z0, z1) marginal."""
    mean, cov = gaussian.mean[:2].numpy(), gaussian.covariance[:2, :2]
    values, vectors = torch.linalg.eigh(cov)  # ascending: the last axis is the long one
    angle = math.degrees(math.atan2(vectors[1, 1], vectors[0, 1]))
    for radius in (1, 2):
        width, height = 2 * radius * values.flip(0).sqrt()
        ax.add_patch(Ellipse(mean, float(width), float(height), angle=angle, fill=False, color="black"))


def plot_latent_scatter(out_dir, test_codes, labels, class_names, gaussians):
    """The test set's codes, z0 against z1, with the prior's 1 and 2 sigma circles (dashed) and those of
    the Gaussian fitted to the model's training codes (solid). Points are drawn in the test set's own
    mixed order, so no class hides the others."""
    fig = Figure(figsize=(12, 5.6))
    axes = fig.subplots(1, 2)
    for ax, (name, codes) in zip(axes, test_codes.items()):
        points = codes[:, :2].cpu().numpy()
        ax.scatter(points[:, 0], points[:, 1], s=2, alpha=0.5, color=colormaps["tab10"](labels.cpu().numpy()))
        for radius in (1, 2):
            ax.add_patch(Circle((0, 0), radius, fill=False, linestyle="--", color="black"))
        draw_sigma_ellipses(ax, gaussians[name])
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_title(f"{name.upper()}: test codes" + (" (means)" if name == "vae" else ""))
        ax.set_xlabel("z0")
        ax.set_ylabel("z1")
    legend = [Line2D([], [], marker="o", linestyle="", color=colormaps["tab10"](label), label=class_name)
              for label, class_name in enumerate(class_names)]
    axes[1].legend(handles=legend, loc="center left", bbox_to_anchor=(1, 0.5))
    fig.suptitle("first two latent coordinates; dashed: 1 and 2 sigma of N(0, I); solid: of the fitted Gaussian")
    save_figure(fig, out_dir / "latent_scatter.png")


def plot_reconstructions(out_dir, pair, images):
    originals = images[:16]
    grids = {"test images": make_grid(originals, nrow=16, pad_value=1)}
    for name, model in pair.items():
        grids[name.upper()] = make_grid(model.decode(model.code(originals)), nrow=16, pad_value=1)
    show_grids(out_dir / "reconstructions.png", grids, "reconstructions (VAE: decoding the mean)", columns=1)


def plot_traversal(out_dir, vae, mu, steps=9):
    """Sweep two latent dimensions of one test digit's VAE code over [-3, 3]; mu holds the test set's codes.

    The swept dimensions are the two whose means vary most over the test set: the VAE leaves some
    dimensions unused (their codes stay at the prior), and sweeping those would change nothing.
    """
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
    beta = checkpoints["vae"]["config"]["beta"]
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (nats per image)")
    ax.set_title("AE: reconstruction BCE; VAE: " + ("BCE + KL (negative ELBO)" if beta == 1 else f"BCE + {beta:g} * KL"))
    ax.legend()
    save_figure(fig, out_dir / "loss_curves.png")


# Plumbing: reading the checkpoints and writing metrics.json.

def write_metrics(out_dir, checkpoints, results):
    """Per model: final losses, timing and provenance from its checkpoint; then the measured results."""
    report = {}
    for name, checkpoint in checkpoints.items():
        history = checkpoint["history"]
        report[name] = {"test_loss": history["test_loss"][-1], "train_loss": history["train_loss"][-1],
                        "epochs": len(history["test_loss"]), "seconds_per_epoch": float(np.mean(history["seconds"])),
                        **{key: checkpoint[key] for key in ("config", "dataset", "binarize", "device", "seed", "versions")}}
    report["vae"].update(results.pop("vae"))
    report.update(results)
    train.write_atomically(out_dir / "metrics.json", lambda temporary: temporary.write_text(json.dumps(report, indent=2) + "\n"))


def load_model(out_dir, name, device):
    """Rebuild a trained model from <out_dir>/<name>.pt; exit with one line if that cannot be done."""
    path = Path(out_dir) / f"{name}.pt"
    retrain = f"python train.py --model {name} --out-dir {out_dir}"
    if not path.exists():
        train.fail(f"{path} not found; train it first: {retrain}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)  # load_state_dict copies to the device
    except (RuntimeError, EOFError, pickle.UnpicklingError) as error:
        train.fail(f"{path} is not a readable checkpoint ({train.last_line(error)})")
    if not isinstance(checkpoint, dict) or not train.CHECKPOINT_KEYS <= checkpoint.keys():
        train.fail(f"{path} is not a checkpoint written by train.py; retrain it: {retrain}")
    if checkpoint["model"] != name:
        train.fail(f"{path} holds a {checkpoint['model']!r} checkpoint, not {name!r}; retrain it: {retrain}")
    try:
        model = train.MODELS[name](**checkpoint["config"]).to(device)
        model.load_state_dict(checkpoint["model_state"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        train.fail(f"{path} does not fit models.{name.upper()} ({train.last_line(error)}); retrain it: {retrain}")
    return model.eval(), checkpoint


def load_pair(out_dir, device):
    """Both models, which the figures feed the same z and images: they must match in latent size, arch and data."""
    (ae, ae_checkpoint), (vae, vae_checkpoint) = load_model(out_dir, "ae", device), load_model(out_dir, "vae", device)
    ae_setup, vae_setup = [(c["config"]["latent_dim"], c["config"]["arch"], c["dataset"], c["binarize"])
                           for c in (ae_checkpoint, vae_checkpoint)]
    if ae_setup != vae_setup:
        train.fail(f"ae.pt (latent_dim, arch, dataset, binarize = {ae_setup}) and vae.pt ({vae_setup}) were trained "
                   f"differently; train both with the same flags: python main.py")
    return {"ae": ae, "vae": vae}, {"ae": ae_checkpoint, "vae": vae_checkpoint}


def add_flags(parser):
    parser.add_argument("--iw-samples", type=int, default=50,
                        help="importance samples per test image for the VAE's log-likelihood bound L_k")
    return parser


def main(argv=None):
    args = train.parse_flags(add_flags(train.make_parser(__doc__.splitlines()[0], training=False)), argv)
    evaluate(args.out_dir, args.data_dir, args.device, args.seed, args.iw_samples)
    print(f"figures and metrics.json written to {args.out_dir}/")


if __name__ == "__main__":
    train.run(main)
