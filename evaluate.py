"""The numbers, and the figures (drawn by figures.py), that show why the VAE's latent space can be
sampled and the AE's cannot, and what it takes to sample the AE's.

    python evaluate.py --data-dir data   # reads results/ae.pt, results/vae.pt (and cvae.pt if there), writes there

Both models decode or encode the same inputs, so every figure compares them directly. Each model's
latents are drawn three ways: from the prior N(0, I), from a Gaussian fitted to its training codes,
and from a 10-component Gaussian mixture fitted to them (priors.py). The VAE's densities are fitted
twice: to its posterior means, and to one draw z ~ q(z|x) per training image, what its decoder saw
in training. A Gaussian per class draws a chosen digit from either model; a conditional VAE, where
one was trained, is asked for the digit by its label. A digit classifier scores what the models
decode (metrics.py), and importance sampling bounds the VAE's log-likelihood, which is then put to
use: telling unseen kinds of images from the test split (anomaly.py) and, for binarized digits,
as a code length against general-purpose compressors.
"""
import json
import math
import pickle
import time
import zlib
from pathlib import Path

import numpy as np
import torch

import anomaly
import codes
import figures
import metrics
import models
import priors
import train

SAMPLES = 10_000  # draws scored per sampler
ON_DEMAND_DRAWS = 1000  # draws scored per class
MIXTURE = {"components": 10, "starts": 5, "codes": 10_000}  # the fitted mixture: EM from 5 starts, on 10,000 codes


@torch.no_grad()
def evaluate(out_dir, data_dir, device_name, seed, iw_samples=50, with_cvae=None, run_started=None):
    """Write every figure and metrics.json into out_dir, in this order:

    1. a digit classifier, trained on the training split, that scores whatever the models decode;
    2. each model's codes of both splits (models.AE.code: z for the AE, the mean of q(z|x) for the VAE);
    3. decoded draws from each sampler, reconstructions and interpolation midpoints, scored;
    4. how well each model fits the test split: its reconstructions' squared error, the likelihood's
       floor, and the VAE's ELBO, its importance-weighted bound L_k and its active units; for binarized
       digits under the Bernoulli, L_k as a code length against zlib and lzma;
    5. the VAE's fitted Gaussian and mixture again, fitted to z ~ q(z|x) instead of its means;
    6. digits on demand: for each model, a Gaussian fitted to each class's codes, and its draws scored;
    7. where the test codes lie: within radius 2 of the origin (z0, z1), and along their principal directions;
    8. with the conditional VAE (with_cvae; None: if cvae.pt is there), its likelihood and the digits
       it draws when told the label, from N(0, I) and from a Gaussian fitted to its codes;
    9. what the codes are for: classifiers trained on them with few labels, the mixtures read as clusterings,
       and the t-SNE map (codes.py);
    10. outliers: how well each model's scores tell the test split from other images (anomaly.py);
    11. what a decoded image is: the mean of p(x|z), beside images drawn from p(x|z);
    12. the figures, and last metrics.json (run_started: when main.py began, for its wall time).
    Each step starts by reseeding from the run's seed and its own name (Steps.start), so a change inside one
    step, or a step removed, moves no other step's numbers; each step's seconds go into metrics.json.
    """
    start = time.perf_counter()
    device = train.resolve_device(device_name)
    loaded, checkpoints = load_models(out_dir, device, with_cvae)
    pair = {name: loaded[name] for name in ("ae", "vae")}
    out_dir = train.writable_dir(out_dir)
    dataset, binarize = checkpoints["vae"]["dataset"], checkpoints["vae"]["binarize"]
    train_images, train_labels, train_inputs = load_split(checkpoints["vae"], data_dir, True, device)
    test_images, test_labels, test_inputs = load_split(checkpoints["vae"], data_dir, False, device)
    class_names = train.DATASETS[dataset].classes
    with train.on_interrupt(f"evaluation stopped; every file in {out_dir}/ is whole (written completely or not at all)"):
        steps = Steps(seed)
        # 1. The classifier, and the statistics of its features of the test split: the reference of every FD.
        steps.start("classifier")
        classifier, reference = classifier_and_reference(train_images, train_labels, test_images)
        accuracy = metrics.accuracy(classifier, test_images, test_labels)
        # 2. The codes.
        steps.start("encode")
        train_codes = {name: codes_of(model, train_inputs, train_labels) for name, model in pair.items()}
        test_codes = {name: codes_of(model, test_inputs, test_labels) for name, model in pair.items()}
        # 3. Samples, reconstructions and midpoints, scored.
        scores, shown, densities = score_samplers(pair, train_codes, test_codes, classifier, reference, train_images,
                                                  steps.start("samplers"))
        gaussians = {name: gaussian for name, (gaussian, _) in densities.items()}
        # 4. The fit to the test split.
        steps.start("fit")
        fit = {name: reconstruction_fit(model, test_inputs, test_labels, test_codes[name]) for name, model in pair.items()}
        vae_fit, test_bound = likelihood(pair["vae"], test_inputs, test_labels, test_codes["vae"], iw_samples)
        fit["vae"].update(vae_fit)
        likelihood_summary = likelihood_report(pair["vae"], test_inputs)
        pixel_entropy = models.BernoulliPixels().floor(test_inputs)
        code_length = ({"compression": compression(test_bound, vae_fit["test_negative_elbo"], test_inputs)}
                       if binarize and isinstance(pair["vae"].likelihood, models.BernoulliPixels) else {})
        # 5. The VAE's densities refitted to z ~ q(z|x).
        refit_seed = steps.start("refit")
        sampled_codes = sampled_vae_codes(pair["vae"], train_inputs, train_labels)
        scores.update(score_vae_fits_to_sampled_codes(pair["vae"], sampled_codes, classifier, reference, refit_seed))
        # 6. Digits on demand.
        steps.start("on demand")
        on_demand, on_demand_shown = digits_on_demand(pair, {"ae": train_codes["ae"], "vae": sampled_codes},
                                                      train_labels, classifier, reference)
        # 7. Where the codes lie.
        steps.start("spread")
        principal = {name: metrics.principal_directions(codes) for name, codes in test_codes.items()}
        spread = code_spread(test_codes, principal)
        # 8. The conditional VAE.
        if "cvae" in loaded:
            steps.start("cvae")
            cvae = loaded["cvae"]
            cvae_test_codes = codes_of(cvae, test_inputs, test_labels)
            fit["cvae"] = {**reconstruction_fit(cvae, test_inputs, test_labels, cvae_test_codes),
                           **likelihood(cvae, test_inputs, test_labels, cvae_test_codes, iw_samples)[0]}
            cvae_codes = sampled_vae_codes(cvae, train_inputs, train_labels)
            cvae_on_demand, cvae_shown = conditional_on_demand(cvae, cvae_codes, len(class_names), classifier, reference)
            on_demand.update(cvae_on_demand)
            on_demand_shown.update(cvae_shown)
        # 9. What the codes are for.
        mixtures = {name: mixture for name, (_, mixture) in densities.items()}
        uses, tsne_maps = codes.codes_report(train_codes, test_codes, train_inputs, test_inputs, train_labels, test_labels,
                                             mixtures, steps.start("uses of the codes"))
        # 10. Outliers.
        steps.start("outliers")
        outlier_report, inlier_scores, outlier_scores = anomaly.detect_outliers(
            pair, test_inputs, test_bound, gaussians, dataset, data_dir, binarize, iw_samples)
        # 11. Draws from p(x|z).
        steps.start("decoder draws")
        decoder_draws = draws_from_decoder(pair["vae"], device)
        # 12. The figures, and metrics.json.
        steps.start("figures")
        figures.plot_samples(out_dir, shown, scores)
        figures.plot_on_demand(out_dir, on_demand_shown, on_demand, class_names)
        figures.plot_interpolations(out_dir, pair, test_inputs, test_labels)
        figures.plot_latent_scatter(out_dir, test_codes, test_labels, class_names, gaussians)
        figures.plot_latent_pca(out_dir, test_codes, principal, test_labels, class_names, spread)
        figures.plot_tsne(out_dir, tsne_maps, class_names)
        figures.plot_reconstructions(out_dir, pair, test_inputs)
        figures.plot_traversal(out_dir, pair["vae"], test_codes["vae"])
        if pair["vae"].latent_dim == 2:
            figures.plot_manifold(out_dir, pair, device)
        if "cvae" in loaded:
            figures.plot_style(out_dir, cvae, test_inputs, test_labels, class_names)
        figures.plot_loss_curves(out_dir, checkpoints)
        figures.plot_anomaly(out_dir, outlier_report["anomaly"], inlier_scores, outlier_scores, dataset)
        figures.plot_decoder_draws(out_dir, decoder_draws, likelihood_summary)
        steps.finish()
        write_metrics(out_dir, loaded, checkpoints, fit, {
            "data": {"dataset": dataset, "binarized": binarize, "test_pixel_entropy": pixel_entropy},
            "decoder": likelihood_summary,
            "classifier": {"test_accuracy": accuracy},
            "samples": scores,
            "on_demand": on_demand,
            "latent_codes": spread,
            "codes": uses,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "machine": train.machine(),
            "mixture": MIXTURE,
            **outlier_report,
            **code_length,
            "step_seconds": steps.seconds,
            "evaluate_seconds": time.perf_counter() - start,
            **({"main_seconds": time.perf_counter() - run_started} if run_started is not None else {})})


class Steps:
    """evaluate()'s steps, each begun by start(name), which reseeds torch's generators (the CPU's and every
    device's) from the run's seed and the step's name and returns that step's seed, for the generators a step
    makes itself (k-means starts, subsets). Each step thus draws from its own stream: a step removed, or one
    that draws more, moves no other step's numbers. seconds: each finished step's wall time."""

    def __init__(self, seed):
        self.seed, self.seconds, self.current, self.started = seed, {}, None, time.perf_counter()

    def start(self, step):
        self.finish()
        self.current, self.started = step, time.perf_counter()
        step_seed = zlib.crc32(f"{self.seed} {step}".encode())
        torch.manual_seed(step_seed)
        return step_seed

    def finish(self):
        if self.current is not None:
            self.seconds[self.current] = time.perf_counter() - self.started
        self.current = None


# The numbers. Labels go wherever images or codes go: the CVAE reads them, the AE and the VAE ignore them.

def in_batches(batch_size, *tensors):
    """The tensors' rows in batches, side by side; a None stays None in every batch."""
    rows = len(next(tensor for tensor in tensors if tensor is not None))
    for start in range(0, rows, batch_size):
        yield [None if tensor is None else tensor[start:start + batch_size] for tensor in tensors]


def codes_of(model, images, labels):
    """model.code of every image, in batches."""
    return torch.cat([model.code(x, y) for x, y in in_batches(train.EVAL_BATCH, images, labels)])


def sampled_vae_codes(vae, images, labels):
    """One z ~ q(z|x) per image: the codes the VAE's decoder was trained on, wider than the means."""
    return torch.cat([vae.reparameterize(*vae.encode(x, y)) for x, y in in_batches(train.EVAL_BATCH, images, labels)])


def decode(model, z, labels=None):
    """Decode latents (and labels) from any device on the model's device, in batches."""
    device = next(model.parameters()).device
    return torch.cat([model.decode(chunk.to(device), None if y is None else y.to(device))
                      for chunk, y in in_batches(train.EVAL_BATCH, z, labels)])


def classifier_and_reference(train_images, train_labels, test_images):
    """The digit classifier that scores decoded images, trained on the training split, and the statistics of
    its features of the test split, the reference of every Frechet distance."""
    with torch.enable_grad():
        classifier = metrics.train_classifier(train_images, train_labels)
    return classifier, metrics.gaussian_statistics(metrics.classify(classifier, test_images)[1])


def fit_densities(train_codes, seed):
    """A Gaussian fitted to all the codes, and a 10-component mixture fitted to a random 10,000 of them
    (about 1,000 per component, which keeps EM near a second a start on a CPU), the subset and the k-means
    starts drawn from seed. Fitting a density to an AE's codes after training is ex-post density
    estimation (Ghosh et al., ICLR 2020)."""
    return priors.Gaussian(train_codes), fit_mixture(train_codes[mixture_subset(len(train_codes), seed).to(train_codes.device)], seed)


def mixture_subset(count, seed):
    """The indices of the MIXTURE["codes"] codes (of count) that the mixture is fitted to."""
    return torch.randperm(count, generator=torch.Generator().manual_seed(seed))[:MIXTURE["codes"]]


def fit_mixture(codes, seed, starts=MIXTURE["starts"]):
    """The mixture of MIXTURE["components"] Gaussians, fitted by EM from `starts` k-means starts drawn from seed."""
    return priors.GaussianMixture(codes, components=MIXTURE["components"], starts=starts, seed=seed)


def draw_latents(densities, n):
    """n latents from each sampler, given (fitted Gaussian, mixture). The prior and the fitted Gaussian share
    their standard-normal eps (z = eps and z = mean + L eps), so their i-th draws correspond."""
    gaussian, mixture = densities
    eps = torch.randn(n, len(gaussian.mean))
    return {"prior": eps, "fitted": gaussian.transform(eps), "mixture": mixture.sample(n)}


def interpolation_midpoints(model, codes, n):
    """Decode the midpoints of n random pairs of codes (random pairs: the figure's five are too few to score)."""
    first, second = torch.randint(len(codes), (2, n))
    return decode(model, (codes[first.to(codes.device)] + codes[second.to(codes.device)]) / 2)


def score_samplers(pair, train_codes, test_codes, classifier, reference, train_images, seed):
    """Every sampler's and reference's scores, 64 decoded draws of each sampler, and each model's densities
    (fitted Gaussian, mixture; fitted with seed). reference holds the statistics of the test split's features;
    real training images are scored against it too, the floor of the Frechet distance."""
    scores = {"train_images": metrics.sample_scores(classifier, train_images[torch.randperm(len(train_images))[:SAMPLES]],
                                                    reference)}
    shown, densities = {}, {}
    for name, model in pair.items():
        densities[name] = fit_densities(train_codes[name], seed)
        for sampler, z in draw_latents(densities[name], SAMPLES).items():
            images = decode(model, z)
            scores[f"{name}_{sampler}"] = metrics.sample_scores(classifier, images, reference)
            shown[f"{name}_{sampler}"] = images[:64]
        scores[f"{name}_reconstructions"] = metrics.sample_scores(classifier, decode(model, test_codes[name]), reference)
        scores[f"{name}_midpoints"] = metrics.sample_scores(
            classifier, interpolation_midpoints(model, test_codes[name], SAMPLES), reference)
    return scores, shown, densities


def score_vae_fits_to_sampled_codes(vae, sampled_codes, classifier, reference, seed):
    """The VAE's fitted Gaussian and mixture, refitted to one z ~ q(z|x) per training image."""
    gaussian, mixture = fit_densities(sampled_codes, seed)
    return {f"vae_{sampler}_z": metrics.sample_scores(classifier, decode(vae, density.sample(SAMPLES)), reference)
            for sampler, density in [("fitted", gaussian), ("mixture", mixture)]}


def reconstruction_fit(model, test_inputs, test_labels, test_codes):
    """The mean squared error per pixel of the test split's reconstructions (decoding the codes the figures
    use), which compares across likelihoods as nats cannot; and the sigma a Gaussian likelihood learned."""
    squared_errors = metrics.squared_error(decode(model, test_codes, test_labels), test_inputs)
    fit = {"test_reconstruction_mse": squared_errors.mean().item()}
    if getattr(model.likelihood, "learned", False):
        fit["learned_sigma"] = model.likelihood.log_sigma.exp().item()
    return fit


def likelihood_report(model, test_inputs):
    """The likelihood both models share, and the lowest -log p(x|z) it allows on the test split, where there is one."""
    report = {"name": model.config["decoder"], "sigma": model.config["sigma"]}
    floor = model.likelihood.floor(test_inputs)
    return report if floor is None else {**report, "test_reconstruction_floor": floor}


def likelihood(vae, test_inputs, test_labels, test_means, iw_samples):
    """The VAE's test ELBO split into its terms, the importance-weighted bound L_k and the active units
    (from test_means, the means of q(z|x) over the test inputs), both after Burda et al. (ICLR 2016);
    and L_k of each test image. For the CVAE, whose every term is told the label, L_k bounds log p(x | y)."""
    totals = sum(torch.stack(vae.elbo_terms(x, y)).sum(1) for x, y in in_batches(train.EVAL_BATCH, test_inputs, test_labels))
    reconstruction, kl = (totals / len(test_inputs)).tolist()
    bound = metrics.importance_weighted_bound(vae, test_inputs, iw_samples, labels=test_labels)
    return {"test_reconstruction": reconstruction, "test_kl": kl, "test_negative_elbo": reconstruction + kl,
            "test_log_likelihood": bound.mean().item(), "iw_samples": iw_samples,
            "active_units": metrics.active_units(test_means)}, bound


def compression(test_bound, negative_elbo, test_inputs):
    """Bits per binarized test digit under the Bernoulli, whose -log2 p(x) is a code length of 0/1 pixels (no
    other likelihood's is): the VAE's -L_k, which bounds -log2 p(x), the length of an ideal code
    for x under the model, and its negative ELBO, what a bits-back coder (Townsend et al., ICLR 2019)
    spends with it; against zlib and lzma, one digit at a time and the whole split packed at once."""
    packed = metrics.packed_pixels(test_inputs)
    bits = {"vae_nll_bound": -test_bound.mean().item() / math.log(2), "vae_negative_elbo": negative_elbo / math.log(2)}
    for compressor in ("zlib", "lzma"):
        bits[f"{compressor}_per_digit"] = sum(metrics.compressed_bits(row.numpy().tobytes(), compressor)
                                              for row in packed) / len(packed)
        bits[f"{compressor}_whole_split"] = metrics.compressed_bits(packed.numpy().tobytes(), compressor) / len(packed)
    return {"bits_per_digit": bits, "pixels_per_digit": test_inputs[0].numel()}


def draws_from_decoder(vae, device, rows=6, draws=7):
    """For a few z ~ N(0, I): the mean of p(x|z), the image every other figure shows, then images drawn
    from p(x|z) itself. Shape (rows, 1 + draws, 1, 28, 28)."""
    logits = vae.decode_logits(torch.randn(rows, vae.latent_dim).to(device))
    samples = [vae.likelihood.sample(logits) for _ in range(draws)]
    return torch.stack([vae.likelihood.mean(logits), *samples], dim=1)


def class_samplers(train_codes, train_labels):
    """One Gaussian per class, fitted to the codes of that class's training images alone."""
    return [priors.Gaussian(train_codes[train_labels == label]) for label in range(int(train_labels.max()) + 1)]


def score_requested(images, requested, classifier, reference):
    """How often images drawn for the requested classes show them (metrics.requested_class_scores), their
    Frechet distance to the test split, and 8 images per class to show; images come ON_DEMAND_DRAWS per class."""
    probabilities, features = metrics.classify(classifier, images)
    scores = {**metrics.requested_class_scores(probabilities, requested),
              "frechet_distance": metrics.frechet_distance(*metrics.gaussian_statistics(features), *reference)}
    return scores, images.view(-1, ON_DEMAND_DRAWS, *images.shape[1:])[:, :8]


def digits_on_demand(pair, train_codes, train_labels, classifier, reference):
    """A chosen class from either model, without retraining: decode draws from a Gaussian fitted to the
    codes of that class's training images, ON_DEMAND_DRAWS per class."""
    results, shown = {}, {}
    for name, model in pair.items():
        samplers = class_samplers(train_codes[name], train_labels)
        requested = torch.arange(len(samplers)).repeat_interleave(ON_DEMAND_DRAWS)
        images = decode(model, torch.cat([sampler.sample(ON_DEMAND_DRAWS) for sampler in samplers]))
        results[name], shown[name] = score_requested(images, requested, classifier, reference)
    return results, shown


def conditional_on_demand(cvae, train_codes, classes, classifier, reference):
    """A chosen class from the CVAE: decode z with the label asked for, z from N(0, I) ("cvae") or from one
    Gaussian fitted to its training codes z ~ q(z|x, y) of every class ("cvae_fitted"; its z is meant to
    carry style, not class), scored as digits_on_demand's."""
    requested = torch.arange(classes).repeat_interleave(ON_DEMAND_DRAWS)
    latents = {"cvae": torch.randn(len(requested), cvae.latent_dim),
               "cvae_fitted": priors.Gaussian(train_codes).sample(len(requested))}
    results, shown = {}, {}
    for name, z in latents.items():
        results[name], shown[name] = score_requested(decode(cvae, z, requested), requested, classifier, reference)
    return results, shown


def code_spread(test_codes, principal):
    """Where each model's test codes lie: in (z0, z1), the share within radius 2, two of N(0, I)'s standard
    deviations (which holds 1 - e^-2 = 86.5% of the prior), and inside the [-3, 3]^2 square; in all d
    dimensions, the share of their variance that their top two principal directions hold (principal:
    metrics.principal_directions)."""
    spread = {}
    for name, codes in test_codes.items():
        z = codes[:, :2]
        spread[name] = {"inside_2_sigma_circle": (z.pow(2).sum(1) <= 4).float().mean().item(),
                        "inside_square_3": (z.abs() <= 3).all(1).float().mean().item(),
                        "top2_pca_variance_share": metrics.variance_share(principal[name][2])}
    return spread


# Plumbing: reading the checkpoints and writing metrics.json.

def write_metrics(out_dir, loaded, checkpoints, fit, results):
    """Per model: final losses, timing and provenance from its checkpoint, its whole config, and how it fits
    the test split; then the other results."""
    report = {}
    for name, checkpoint in checkpoints.items():
        history = checkpoint["history"]
        report[name] = {"test_loss": history["test_loss"][-1], "train_loss": history["train_loss"][-1],
                        "epochs": len(history["test_loss"]), "seconds_per_epoch": float(np.mean(history["seconds"])),
                        "config": loaded[name].config,
                        **{key: checkpoint[key] for key in ("dataset", "binarize", "device", "seed", "versions")},
                        **fit[name]}
    report.update(results)
    train.write_atomically(out_dir / "metrics.json", lambda temporary: temporary.write_text(json.dumps(report, indent=2) + "\n"))


def load_model(out_dir, name, device):
    """Rebuild a trained model from <out_dir>/<name>.pt; exit with one line if that cannot be done."""
    path = Path(out_dir) / f"{name}.pt"
    retrain = f"python train.py --model {name} --out-dir {out_dir}"
    if not path.exists():
        train.fail(f"{path} not found; train it first: {retrain}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)  # to the device with the model
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as error:  # damaged, empty, a folder
        train.fail(f"{path} is not a readable checkpoint ({train.last_line(error)})")
    if not isinstance(checkpoint, dict) or not train.CHECKPOINT_KEYS <= checkpoint.keys():
        train.fail(f"{path} is not a checkpoint written by train.py; retrain it: {retrain}")
    if checkpoint["model"] != name:
        train.fail(f"{path} holds a {checkpoint['model']!r} checkpoint, not {name!r}; retrain it: {retrain}")
    model_class = train.MODELS[name]
    unknown = sorted(checkpoint["config"].keys() - model_class().config.keys())  # config: every argument it takes
    if unknown:
        train.fail(f"{path} does not fit models.{model_class.__name__} (it takes no {', '.join(unknown)}); "
                   f"retrain it: {retrain}")
    model = model_class(**checkpoint["config"])
    misfits = state_misfits(model.state_dict(), checkpoint["model_state"])
    if misfits:
        train.fail(f"{path} does not fit models.{model_class.__name__} ({misfits}); retrain it: {retrain}")
    model.load_state_dict(checkpoint["model_state"])
    return model.to(device).eval(), checkpoint


def state_misfits(expected, saved):
    """What keeps saved weights from loading into a model whose state_dict is expected: missing or unexpected
    keys and shape mismatches, as one line; empty where they fit."""
    missing, unexpected = sorted(expected.keys() - saved.keys()), sorted(saved.keys() - expected.keys())
    problems = ([f"missing {', '.join(missing)}"] if missing else []) + ([f"unexpected {', '.join(unexpected)}"] if unexpected else [])
    problems += [f"{key}: {tuple(saved[key].shape)} against {tuple(expected[key].shape)}"
                 for key in expected.keys() & saved.keys() if saved[key].shape != expected[key].shape]
    return "; ".join(problems)


def load_split(checkpoint, data_dir, training, device):
    """(images, labels, inputs) of one split of the data a checkpoint was trained on; the inputs are what the
    models read: the images, or for a binarized run their fixed 0/1 draw (train.binarize_once)."""
    images, labels = train.load_split(checkpoint["dataset"], data_dir, training, device)
    return images, labels, train.binarize_once(images) if checkpoint["binarize"] else images


def load_models(out_dir, device, with_cvae=None):
    """The AE and the VAE, and the CVAE if with_cvae (None: if cvae.pt is there). The figures and scores feed
    them the same images and z, so they must match in their data and in every setting but beta and classes."""
    cvae = with_cvae if with_cvae is not None else (Path(out_dir) / "cvae.pt").exists()
    loaded, checkpoints = {}, {}
    for name in ["ae", "vae"] + (["cvae"] if cvae else []):
        loaded[name], checkpoints[name] = load_model(out_dir, name, device)

    def setup(name):
        settings = {key: value for key, value in loaded[name].config.items() if key not in ("beta", "classes")}
        return {**settings, "dataset": checkpoints[name]["dataset"], "binarize": checkpoints[name]["binarize"]}
    for name in list(loaded)[1:]:
        differences = [f"{key} {value!r} against {setup('ae')[key]!r}" for key, value in setup(name).items()
                       if value != setup("ae")[key]]
        if differences:
            train.fail(f"{name}.pt and ae.pt were trained differently ({', '.join(differences)}); train them with "
                       f"the same flags: python main.py{' --cvae' if name == 'cvae' else ''}")
    return loaded, checkpoints


LOWEST = {"iw_samples": 1}


def add_flags(parser):
    parser.add_argument("--iw-samples", type=int, default=50,
                        help="importance samples per test image for the VAE's log-likelihood bound L_k")
    return parser


def main(argv=None):
    args = train.parse_flags(add_flags(train.make_parser(__doc__.splitlines()[0], training=False)), argv, LOWEST)
    evaluate(args.out_dir, args.data_dir, args.device, args.seed, args.iw_samples)
    print(f"figures and metrics.json written to {args.out_dir}/")


if __name__ == "__main__":
    train.run(main)
