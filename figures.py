"""The figures evaluate.py writes, one function each; evaluate() computes what they show.

Every figure puts the models side by side on the same inputs or the same z. Images are written
whole or not at all (train.write_atomically), so an interrupted run leaves no half-written file.
"""
import math

import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Circle, Ellipse
from torchvision.transforms.functional import to_pil_image
from torchvision.utils import make_grid, save_image

import train

SAMPLERS = {"prior": "N(0, I)", "fitted": "fitted Gaussian", "mixture": "fitted mixture"}
ON_DEMAND_COLUMNS = {"ae": "AE", "vae": "VAE", "cvae": "CVAE, z ~ N(0, I)", "cvae_fitted": "CVAE, fitted z"}
INTERPOLATION_PAIRS = [(0, 6), (1, 7), (2, 5), (3, 8), (4, 9)]
INTERPOLATION_STEPS = 10

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
    """One row per class, the models side by side: 8 draws for that class each, titled with its hit share."""
    grids = {f"{ON_DEMAND_COLUMNS[name]}: {class_names[label]} ({results[name]['per_class_hit'][label]:.0%})":
             make_grid(shown[name][label], nrow=8, pad_value=1)
             for label in range(len(class_names)) for name in shown}
    conditional = "; the CVAE: z and the label asked for" if "cvae" in shown else ""
    show_grids(out_dir / "on_demand.png", grids, f"a chosen class: draws from a Gaussian fitted to that class's codes{conditional}\n"
               "(in brackets: the share the classifier assigns to that class with p >= 0.9)", columns=len(shown))


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


def scatter_codes(ax, points, labels):
    """2-d points coloured by class, drawn in the test set's own mixed order, so no class hides the others."""
    ax.scatter(points[:, 0], points[:, 1], s=2, alpha=0.5, color=colormaps["tab10"](labels.cpu().numpy()))
    ax.set_aspect("equal", adjustable="datalim")


def class_markers(class_names):
    """One legend entry per class: a dot in the class's colour, as scatter_codes draws it."""
    return [Line2D([], [], marker="o", linestyle="", color=colormaps["tab10"](label), label=class_name)
            for label, class_name in enumerate(class_names)]


def add_class_legend(ax, class_names):
    ax.legend(handles=class_markers(class_names), loc="center left", bbox_to_anchor=(1, 0.5))


def plot_latent_scatter(out_dir, test_codes, labels, class_names, gaussians):
    """The test set's codes, z0 against z1, with the prior's 1 and 2 sigma circles (dashed) and those of
    the Gaussian fitted to the model's training codes (solid)."""
    fig = Figure(figsize=(12, 5.6))
    axes = fig.subplots(1, 2)
    for ax, (name, codes) in zip(axes, test_codes.items()):
        scatter_codes(ax, codes[:, :2].cpu().numpy(), labels)
        for radius in (1, 2):
            ax.add_patch(Circle((0, 0), radius, fill=False, linestyle="--", color="black"))
        draw_sigma_ellipses(ax, gaussians[name])
        ax.set_title(f"{name.upper()}: test codes" + (" (means)" if name == "vae" else ""))
        ax.set_xlabel("z0")
        ax.set_ylabel("z1")
    add_class_legend(axes[1], class_names)
    fig.suptitle("first two latent coordinates; dashed: 1 and 2 sigma of N(0, I); solid: of the fitted Gaussian")
    save_figure(fig, out_dir / "latent_scatter.png")


def project(codes, principal, k=2):
    """Codes in the coordinates of their top k principal directions (principal: metrics.principal_directions)."""
    mean, directions, _ = principal
    return (codes.cpu().double() - mean) @ directions[:, :k]


def plot_latent_pca(out_dir, test_codes, principal, labels, class_names, spread):
    """The test set's codes in all their dimensions, projected on their own top two principal directions."""
    fig = Figure(figsize=(12, 5.6))
    axes = fig.subplots(1, 2)
    for ax, (name, codes) in zip(axes, test_codes.items()):
        scatter_codes(ax, project(codes, principal[name]).numpy(), labels)
        share = spread[name]["top2_pca_variance_share"]
        ax.set_title(f"{name.upper()}: test codes{' (means)' if name == 'vae' else ''}, {share:.0%} of their variance")
        ax.set_xlabel("first principal direction")
        ax.set_ylabel("second principal direction")
    add_class_legend(axes[1], class_names)
    fig.suptitle(f"all {codes.shape[1]} latent coordinates, projected on the two directions along which the codes vary most")
    save_figure(fig, out_dir / "latent_pca.png")


def plot_tsne(out_dir, embeddings, class_names):
    """Each model's t-SNE map of the same test codes (codes.tsne), coloured by digit. Neighbours in the map were
    neighbours among the codes; the sizes of the groups and the distances between them mean little."""
    fig = Figure(figsize=(12, 5.6))
    axes = fig.subplots(1, 2)
    for ax, name in zip(axes, ("ae", "vae")):
        scatter_codes(ax, embeddings[name].numpy(), embeddings["labels"])
        ax.set_title(f"{name.upper()}: test codes" + (" (means)" if name == "vae" else ""))
        ax.set_xticks([])
        ax.set_yticks([])
    add_class_legend(axes[1], class_names)
    fig.suptitle(f"t-SNE maps of {len(embeddings['labels'])} test codes: near in the map, near in all the latent coordinates")
    save_figure(fig, out_dir / "tsne.png")


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


def plot_style(out_dir, cvae, images, labels, class_names, rows=8):
    """The CVAE's z as style: 8 test digits, each encoded with its own label, then its z decoded with every label."""
    x, y = images[:rows], labels[:rows]
    classes = len(class_names)
    z = cvae.code(x, y).repeat_interleave(classes, dim=0)
    decoded = cvae.decode(z, torch.arange(classes, device=z.device).repeat(rows)).view(rows, classes, *x.shape[1:])
    grid = make_grid(torch.cat([x[:, None], decoded], dim=1).flatten(0, 1), nrow=classes + 1, pad_value=1)
    show_grids(out_dir / "style_cvae.png", {"left: a test digit; then its z decoded with each label in turn": grid},
               "CVAE: the label sets the class, z the handwriting")


def plot_loss_curves(out_dir, checkpoints):
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for color, (name, checkpoint) in zip(["C0", "C1", "C2"], checkpoints.items()):
        history = checkpoint["history"]
        epochs = range(1, len(history["train_loss"]) + 1)
        ax.plot(epochs, history["train_loss"], color=color, label=f"{name.upper()} train")
        ax.plot(epochs, history["test_loss"], "--", color=color, label=f"{name.upper()} test")
    beta = checkpoints["vae"]["config"]["beta"]
    reconstruction = "BCE" if checkpoints["vae"]["config"].get("decoder", "bernoulli") == "bernoulli" else "-log p(x|z)"
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (nats per image)")
    ax.set_title(f"AE: reconstruction {reconstruction}; VAE: " + (f"{reconstruction} + KL (negative ELBO)" if beta == 1
                                                                 else f"{reconstruction} + {beta:g} * KL"))
    ax.legend()
    save_figure(fig, out_dir / "loss_curves.png")


def plot_anomaly(out_dir, results, inlier_scores, outlier_scores, dataset):
    """Histograms of the test split's scores against each outlier set's, for the VAE's plain -L_k (top) and the
    VAE's correction with the highest mean AUROC over the sets (bottom); the dashed line keeps 95% of the test split."""
    corrections = [score for score in inlier_scores if score.startswith("vae_nll_minus")]
    best = max(corrections, key=lambda score: sum(results[name][score]["auroc"] for name in results))
    fig = Figure(figsize=(4 * len(results), 6.4), layout="constrained")
    axes = fig.subplots(2, len(results), squeeze=False)
    for row, score in enumerate(["vae_nll", best]):
        for ax, (name, scores) in zip(axes[row], outlier_scores.items()):
            bins = symmetric_log_bins(torch.cat([inlier_scores[score], scores[score]]))
            ax.hist(inlier_scores[score].numpy(), bins=bins, alpha=0.6, label=f"{dataset} test")
            ax.hist(scores[score].numpy(), bins=bins, alpha=0.6, label=name)
            ax.axvline(results[name][score]["threshold"], color="black", linestyle="--")
            ax.set_xscale("symlog", linthresh=SYMLOG_LINEAR_WIDTH)
            ax.set_xlim(bins[0], bins[-1])
            ax.set_title(f"{score}: AUROC {results[name][score]['auroc']:.2f}", fontsize=10)
            ax.set_yticks([])
            ax.legend(fontsize=8)
    fig.suptitle(f"trained on {dataset}: scores in nats per image, higher = more unusual, on a log axis (linear within "
                 f"±{SYMLOG_LINEAR_WIDTH:g});\ndashed: the threshold that keeps 95% of the test split")
    save_figure(fig, out_dir / "anomaly.png")


SYMLOG_LINEAR_WIDTH = 10.0  # nats


def symmetric_log_bins(values, count=60):
    """Histogram bins evenly spaced on a symmetric log axis, for scores that span orders of magnitude and
    may be negative: even in sign(v) log(1 + |v| / SYMLOG_LINEAR_WIDTH) between the 0.2% and 99.8% quantiles."""
    def squash(v):
        return torch.sign(v) * torch.log1p(v.abs() / SYMLOG_LINEAR_WIDTH)
    even = torch.linspace(float(squash(values.quantile(0.002))), float(squash(values.quantile(0.998))), count)
    return (torch.sign(even) * SYMLOG_LINEAR_WIDTH * torch.expm1(even.abs())).numpy()


def plot_decoder_draws(out_dir, draws, decoder):
    """Each row one z ~ N(0, I): the mean of p(x|z), the image every other figure shows, then draws from p(x|z)."""
    rows, columns = draws.shape[:2]
    name = decoder["name"] + (f", sigma {decoder['sigma']:g}" if isinstance(decoder["sigma"], (int, float)) else "")
    grid = make_grid(draws.flatten(0, 1).clamp(0, 1), nrow=columns, pad_value=1)
    clipped = " (clipped to [0, 1] to show)" if decoder["name"] == "gaussian" else ""
    show_grids(out_dir / "decoder_draws.png", {f"left: the mean of p(x|z); then {columns - 1} draws x ~ p(x|z){clipped}": grid},
               f"VAE, {name} decoder: each row one z ~ N(0, I)")
