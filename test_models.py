"""Tests: the maths against torch.distributions, the model interface, training, the scripts end to end,
what stays on the training device, and the error messages. Offline and without the real MNIST: a
tiny MNIST-format dataset is written as IDX files into a temporary directory.

    python -m pytest
"""
import argparse
import inspect
import json
import math
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from matplotlib.backend_bases import MouseEvent
from matplotlib.figure import Figure
from matplotlib.image import imread
from torch.distributions import Bernoulli, ContinuousBernoulli, MultivariateNormal, Normal, kl_divergence
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree
from torchvision import datasets

import anomaly
import evaluate
import figures
import main
import metrics
import models
import priors
import seeds
import train

HERE = Path(__file__).parent
FIGURES = ["samples.png", "samples_ae.png", "samples_vae.png", "interpolation.png", "interpolation_ae.png",
           "interpolation_vae.png", "interpolation_vae.gif", "latent_scatter.png", "reconstructions.png",
           "traversal_vae.png", "loss_curves.png", "on_demand.png", "anomaly.png", "decoder_draws.png", "metrics.json"]
SAMPLE_NAMES = {"train_images", "ae_prior", "ae_fitted", "ae_mixture", "ae_reconstructions", "ae_midpoints",
                "vae_prior", "vae_fitted", "vae_mixture", "vae_reconstructions", "vae_midpoints",
                "vae_fitted_z", "vae_mixture_z"}
MANIFOLD = ["manifold.png", "manifold_ae.png", "manifold_vae.png"]


def write_idx(path, array):
    """An IDX file as MNIST ships it: zero, zero, type 0x08 (uint8), rank, big-endian sizes, data."""
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_tiny_mnist(root, folder="MNIST", train_size=200, test_size=60, seed=0):
    """Ten blurry class templates plus noise, every class in both splits, in <root>/<folder>/raw/."""
    rng = np.random.default_rng(seed)
    templates = rng.random((10, 28, 28)) ** 3
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    for prefix, size in [("train", train_size), ("t10k", test_size)]:
        labels = np.arange(size) % 10
        images = np.clip(templates[labels] + 0.1 * rng.standard_normal((size, 28, 28)), 0, 1) * 255
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


@pytest.fixture(scope="session", autouse=True)
def fewer_scored_samples():
    """Score 1,000 draws per sampler instead of 10,000: the same code paths, a faster suite."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(evaluate, "SAMPLES", 1000)
        yield


def write_both_datasets(root):
    """Tiny MNIST and tiny Fashion-MNIST (other templates): each run scores the other dataset as outliers."""
    write_tiny_mnist(root, folder="FashionMNIST", seed=1)
    return write_tiny_mnist(root)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    return write_both_datasets(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def trained_dir(data_dir, tmp_path_factory):
    """One epoch of both models through main.py's own entry point, figures included."""
    out_dir = tmp_path_factory.mktemp("results")
    main.main(["--data-dir", str(data_dir), "--out-dir", str(out_dir), "--epochs", "2", "--device", "cpu"])
    return out_dir


def run_script(*args):
    return subprocess.run([sys.executable, *args], cwd=HERE, capture_output=True, text=True, timeout=300)


def images(n=8):
    return torch.rand(n, *models.IMAGE_SHAPE)


# The maths.

def test_kl_matches_torch_distributions():
    mu, logvar = torch.randn(16, 20), torch.randn(16, 20)
    posterior, prior = Normal(mu, torch.exp(0.5 * logvar)), Normal(torch.zeros(20), torch.ones(20))
    expected = kl_divergence(posterior, prior).sum(dim=1)
    torch.testing.assert_close(models.kl_divergence(mu, logvar), expected)


def test_kl_is_zero_only_at_the_prior():
    zeros = torch.zeros(3, 20)
    assert torch.all(models.kl_divergence(zeros, zeros) == 0)
    assert torch.all(models.kl_divergence(zeros + 0.1, zeros) > 0)


def test_the_bernoulli_negative_log_prob_is_the_binary_cross_entropy_per_image():
    logits, x = 5 * torch.randn(8, *models.IMAGE_SHAPE), images()
    expected = -Bernoulli(logits=logits, validate_args=False).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(models.BernoulliPixels().negative_log_prob(logits, x), expected)


def test_the_negative_log_prob_is_finite_for_saturated_logits():
    logits = torch.full((2, *models.IMAGE_SHAPE), 200.0)
    logits[:, :, ::2] = -200.0  # half the pixels confidently wrong: each costs 200 nats, not inf
    x = torch.ones(2, *models.IMAGE_SHAPE)
    torch.testing.assert_close(models.BernoulliPixels().negative_log_prob(logits, x), torch.full((2,), 392 * 200.0))


# The likelihoods p(x|z): each against torch.distributions.

def test_each_likelihood_is_its_torch_distribution_per_pixel():
    logits, x = 4 * torch.randn(8, *models.IMAGE_SHAPE, dtype=torch.float64), images().double()
    mean = torch.sigmoid(logits)
    expected = {"bernoulli": Bernoulli(logits=logits, validate_args=False),
                "continuous-bernoulli": ContinuousBernoulli(logits=logits),
                "gaussian": Normal(mean, 0.3)}
    for decoder, distribution in expected.items():
        likelihood = models.make_likelihood(decoder, 0.3 if decoder == "gaussian" else None).double()
        torch.testing.assert_close(likelihood.log_prob(logits, x), distribution.log_prob(x), msg=decoder)
        torch.testing.assert_close(likelihood.mean(logits), distribution.mean if decoder != "bernoulli" else mean, msg=decoder)
        assert likelihood.negative_log_prob(logits, x).mean().item() == pytest.approx(-distribution.log_prob(x).sum().item() / 8)


def test_the_continuous_bernoulli_is_exact_where_torch_clamps_and_smooth_at_one_half():
    likelihood, x = models.ContinuousBernoulliPixels(), torch.tensor([0.3, 0.3, 0.0, 1.0], dtype=torch.float64)
    logits = torch.tensor([60.0, -60.0, -60.0, 60.0], dtype=torch.float64)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none")
    torch.testing.assert_close(likelihood.log_prob(logits, x), -bce + math.log(60))  # C = logit / tanh(logit / 2) = 60
    torch.testing.assert_close(likelihood.mean(logits), torch.tensor([59 / 60, 1 / 60, 1 / 60, 59 / 60], dtype=torch.float64))
    near_half = torch.linspace(-0.3, 0.3, 601, dtype=torch.float64, requires_grad=True)
    reference = ContinuousBernoulli(logits=near_half.detach())
    torch.testing.assert_close(likelihood.log_prob(near_half, torch.full_like(near_half, 0.7)),
                               reference.log_prob(torch.full_like(near_half, 0.7)), rtol=0, atol=1e-6)
    torch.testing.assert_close(likelihood.mean(near_half), reference.mean, rtol=0, atol=1e-6)
    likelihood.log_prob(near_half, torch.full_like(near_half, 0.7)).sum().backward()
    assert torch.isfinite(near_half.grad).all()


def test_mse_loss_summed_is_the_gaussian_at_sigma_squared_one_half():
    logits, x = torch.randn(8, *models.IMAGE_SHAPE), images()
    gaussian = models.GaussianPixels(math.sqrt(0.5))
    expected = torch.nn.functional.mse_loss(torch.sigmoid(logits), x, reduction="none").flatten(1).sum(1)
    torch.testing.assert_close(gaussian.negative_log_prob(logits, x) - models.IMAGE_PIXELS / 2 * math.log(math.pi), expected)


def test_a_learned_sigma_gets_gradients_and_is_optimal_at_the_mean_squared_error():
    logits, x = torch.randn(8, *models.IMAGE_SHAPE), images()
    ae = models.AE(decoder="gaussian", sigma="learned")
    ae.loss(x).backward()
    assert ae.likelihood.log_sigma.grad is not None and ae.likelihood.log_sigma.grad != 0
    gaussian = models.GaussianPixels("learned")
    with torch.no_grad():
        gaussian.log_sigma.fill_(0.5 * math.log((torch.sigmoid(logits) - x).pow(2).mean().item()))
    gaussian.negative_log_prob(logits, x).mean().backward()
    assert gaussian.log_sigma.grad.abs().item() < 1e-2  # of about 784 at sigma = 1


def test_floors_and_decoded_images_follow_the_likelihood():
    x = images(4)
    assert models.GaussianPixels(0.5).floor(x) == pytest.approx(784 * 0.5 * math.log(2 * math.pi * 0.25))
    assert models.GaussianPixels("learned").floor(x) is None and models.ContinuousBernoulliPixels().floor(x) is None
    z = torch.randn(3, 20)
    for decoder, sigma in [("bernoulli", None), ("continuous-bernoulli", None), ("gaussian", 0.71)]:
        ae = models.AE(decoder=decoder, sigma=sigma)
        torch.testing.assert_close(ae.decode(z), ae.likelihood.mean(ae.decode_logits(z)))


@pytest.mark.parametrize("decoder, sigma, message", [
    ("gaussian", None, "sigma must be a positive number or 'learned'"),
    ("gaussian", 0, "sigma must be a positive number"),
    ("bernoulli", 0.5, "sigma belongs to the gaussian decoder"),
    ("poisson", None, "unknown decoder"),
])
def test_a_likelihood_that_cannot_be_built_is_refused(decoder, sigma, message):
    with pytest.raises(ValueError, match=message):
        models.AE(decoder=decoder, sigma=sigma)


def test_vae_loss_is_reconstruction_plus_beta_kl():
    torch.manual_seed(0)
    vae, x = models.VAE(beta=4.0), images()
    torch.manual_seed(1)
    loss = vae.loss(x)
    torch.manual_seed(1)
    mu, logvar = vae.encode(x)
    logits = vae.decode_logits(vae.reparameterize(mu, logvar))
    reconstruction, kl = vae.likelihood.negative_log_prob(logits, x), models.kl_divergence(mu, logvar)
    torch.testing.assert_close(loss, (reconstruction + 4.0 * kl).mean())
    torch.manual_seed(1)
    torch.testing.assert_close(vae.elbo_terms(x), (reconstruction, kl))


# The scores (metrics.py) and the fitted priors (priors.py).

def random_rotation(d, seed=0):
    return torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))[0]


def test_frechet_distance_matches_closed_forms():
    rotation = random_rotation(4)
    a, b = torch.tensor([1.0, 2.0, 0.5, 3.0], dtype=torch.float64), torch.tensor([4.0, 0.5, 0.5, 1.0], dtype=torch.float64)
    cov_a, cov_b = rotation @ torch.diag(a) @ rotation.T, rotation @ torch.diag(b) @ rotation.T
    mean, shift = torch.randn(4, dtype=torch.float64), torch.tensor([1.0, -2.0, 0.0, 0.5], dtype=torch.float64)
    assert metrics.frechet_distance(mean, cov_a, mean, cov_a) == pytest.approx(0, abs=1e-9)
    assert metrics.frechet_distance(mean, cov_a, mean + shift, cov_a) == pytest.approx(shift.pow(2).sum().item())
    # same eigenvectors: the distance is the sum of (sqrt(a_i) - sqrt(b_i))^2, plus the mean term
    expected = (a.sqrt() - b.sqrt()).pow(2).sum().item() + shift.pow(2).sum().item()
    assert metrics.frechet_distance(mean, cov_a, mean + shift, cov_b) == pytest.approx(expected)
    assert metrics.frechet_distance(mean + shift, cov_b, mean, cov_a) == pytest.approx(expected)


def test_frechet_distance_of_one_dimensional_gaussians():
    one = torch.ones(1, 1, dtype=torch.float64)
    distance = metrics.frechet_distance(torch.zeros(1, dtype=torch.float64), 4 * one, torch.ones(1, dtype=torch.float64), 9 * one)
    assert distance == pytest.approx(1 + (2 - 3) ** 2)


def test_recognisable_and_coverage_on_hand_made_probabilities():
    sure, unsure = torch.eye(4)[[0, 1, 2, 3]], torch.full((4, 4), 0.25)
    probabilities = torch.cat([sure * 0.95 + 0.05 / 4, unsure])
    assert metrics.recognisable(probabilities) == 0.5
    assert metrics.coverage(sure) == pytest.approx(1.0)
    assert str(metrics.coverage(torch.eye(4)[[2, 2, 2, 2]])) == "0.0"  # one class only, and not -0.0
    assert metrics.coverage(torch.eye(4)[[0, 0, 1, 1]]) == pytest.approx(0.5)  # 2 of 4 classes, equally: log 2 / log 4


def test_pixel_entropy_is_the_bce_floor():
    bernoulli = models.BernoulliPixels()
    assert bernoulli.floor(images(4).round()) == 0
    assert bernoulli.floor(torch.full((3, 1, 28, 28), 0.5)) == pytest.approx(784 * math.log(2))
    x = images(4).clamp(0.01, 0.99)
    assert bernoulli.floor(x) == pytest.approx(bernoulli.negative_log_prob(torch.logit(x), x).mean().item(), rel=1e-5)


def test_the_fitted_gaussian_reproduces_the_codes_mean_and_covariance():
    torch.manual_seed(0)
    codes = torch.randn(5000, 3) @ torch.tensor([[2.0, 0.0, 0.0], [1.0, 0.5, 0.0], [-1.0, 0.3, 0.2]]) + torch.tensor([3.0, -1.0, 0.5])
    gaussian = priors.Gaussian(codes)
    draws = gaussian.sample(200_000)
    torch.testing.assert_close(draws.mean(0), codes.mean(0), atol=0.02, rtol=0)
    torch.testing.assert_close(torch.cov(draws.T), torch.cov(codes.T), atol=0.03, rtol=0.02)
    torch.testing.assert_close(gaussian.transform(torch.zeros(1, 3))[0], codes.mean(0), atol=1e-5, rtol=0)


def test_em_recovers_a_known_mixture():
    torch.manual_seed(0)
    means = torch.tensor([[0.0, 0.0], [8.0, 0.0], [0.0, 8.0]])
    covariances = torch.stack([torch.eye(2), torch.tensor([[2.0, 0.8], [0.8, 1.0]]), 0.3 * torch.eye(2)])
    weights = torch.tensor([0.5, 0.3, 0.2])
    component = torch.multinomial(weights, 20_000, replacement=True)
    codes = means[component] + (torch.linalg.cholesky(covariances)[component] @ torch.randn(20_000, 2, 1)).squeeze(2)
    mixture = priors.GaussianMixture(codes, components=3, tolerance=1e-8)
    fitted_means = mixture.means + mixture.centre
    order = torch.cdist(means.double(), fitted_means).argmin(1)  # the fitted component nearest each true one
    assert sorted(order.tolist()) == [0, 1, 2]
    torch.testing.assert_close(fitted_means[order].float(), means, atol=0.05, rtol=0)
    torch.testing.assert_close(mixture.log_weights.exp()[order].float(), weights, atol=0.01, rtol=0)
    fitted_covariances = (mixture.scales @ mixture.scales.transpose(1, 2))[order].float()
    torch.testing.assert_close(fitted_covariances, covariances, atol=0.06, rtol=0)
    draws = mixture.sample(50_000)
    torch.testing.assert_close(draws.mean(0), codes.mean(0), atol=0.1, rtol=0)


def test_em_is_deterministic_for_a_seed():
    codes = torch.randn(500, 4)
    first, again = priors.GaussianMixture(codes, components=3), priors.GaussianMixture(codes, components=3)
    assert torch.equal(first.means, again.means) and first.iterations == again.iterations


def test_several_em_starts_keep_the_fit_with_the_best_likelihood():
    torch.manual_seed(0)
    codes = torch.cat([torch.randn(300, 2) + torch.tensor(centre) for centre in ([0.0, 0.0], [5.0, 0.0], [0.0, 5.0], [5.0, 5.0])])
    several = priors.GaussianMixture(codes, components=6, starts=5, seed=1)
    assert several.starts == 5 and len(several.start_log_likelihoods) == 5
    assert len(set(several.start_log_likelihoods)) > 1  # the starts end in different places ...
    assert several.log_likelihood == max(several.start_log_likelihoods)  # ... and the best is kept
    first = priors.GaussianMixture(codes, components=6, starts=1, seed=1)  # the first start alone
    assert several.start_log_likelihoods[0] == first.log_likelihood
    x = codes.double() - several.centre  # the kept parameters are the best fit's: its E step gives its likelihood
    log_joint = several.log_weights + priors.component_log_densities(x, priors.pair_products(x), several.means, several.scales)
    assert torch.logsumexp(log_joint, 1).mean().item() >= several.log_likelihood - 1e-3


def test_the_fitted_gaussian_log_density_is_torch_distributions():
    torch.manual_seed(0)
    codes = torch.randn(1000, 3) @ torch.tensor([[2.0, 0.0, 0.0], [1.0, 0.5, 0.0], [-1.0, 0.3, 0.2]]) + 1
    gaussian, z = priors.Gaussian(codes), torch.randn(7, 3)
    expected = torch.distributions.MultivariateNormal(gaussian.mean, gaussian.covariance).log_prob(z.double())
    torch.testing.assert_close(gaussian.log_prob(z), expected)


def test_densities_fit_codes_collapsed_onto_one_point():
    codes = torch.full((300, 4), 0.25)  # a VAE whose codes all sit at the prior's mean, whatever the input
    for density in (priors.Gaussian(codes), priors.GaussianMixture(codes, components=3)):
        draws = density.sample(1000)
        assert torch.isfinite(draws).all()
        torch.testing.assert_close(draws.mean(0), codes[0], atol=0.01, rtol=0)


# Outliers and code lengths.

def test_auroc_is_the_pairwise_count_with_ties_counted_half():
    torch.manual_seed(0)
    inliers, outliers = torch.randint(0, 5, (40,)).double(), torch.randint(2, 7, (30,)).double()  # many ties
    pairs = (outliers[:, None] > inliers[None, :]).double() + 0.5 * (outliers[:, None] == inliers[None, :]).double()
    assert metrics.auroc(inliers, outliers) == pytest.approx(pairs.mean().item())
    assert metrics.auroc(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])) == 1
    assert metrics.auroc(torch.tensor([3.0, 4.0]), torch.tensor([1.0, 2.0])) == 0
    assert metrics.auroc(torch.ones(5), torch.ones(3)) == 0.5


def test_the_threshold_keeps_95_percent_and_fpr_at_counts_the_outliers_let_through():
    inliers = torch.arange(1.0, 101.0)[torch.randperm(100)]
    threshold = metrics.threshold_at(inliers, 0.95)
    assert threshold == 95 and (inliers <= threshold).double().mean() == 0.95
    assert metrics.threshold_at(torch.arange(1.0, 11.0), 0.95) == 10  # 95% of 10 images: all 10 kept
    assert metrics.fpr_at(torch.tensor([10.0, 94.0, 95.0, 96.0, 200.0]), threshold) == pytest.approx(3 / 5)


def test_per_image_floors_are_the_pixel_entropy():
    x = images(5).clamp(0.01, 0.99)
    floors = models.BernoulliPixels().floors(x)
    entropy = torch.distributions.Bernoulli(probs=x.double()).entropy().flatten(1).sum(1)
    torch.testing.assert_close(floors, entropy)
    assert models.BernoulliPixels().floor(x) == pytest.approx(entropy.mean().item())
    gaussian = models.GaussianPixels(0.5)
    torch.testing.assert_close(gaussian.floors(x), torch.full((5,), gaussian.floor(x), dtype=torch.float64))
    assert models.GaussianPixels("learned").floors(x) is None and models.ContinuousBernoulliPixels().floors(x) is None


def test_compressed_lengths_are_the_compressors_own():
    import lzma
    import zlib
    x = (images(3) > 0.7).float() * images(3)
    for row, nats in zip(x, metrics.compressed_nats(x)):
        data = row.flatten().mul(255).round().to(torch.uint8).numpy().tobytes()
        raw_deflate = len(zlib.compress(data, 9)) - 6  # zlib's stream is a 2-byte header, DEFLATE, a 4-byte checksum
        assert nats.item() == pytest.approx(8 * raw_deflate * math.log(2))
    data = bytes(range(256)) * 4
    assert metrics.compressed_bits(data, "lzma") < 8 * len(data)
    filters = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]
    packed = lzma.compress(data, format=lzma.FORMAT_RAW, filters=filters)
    assert metrics.compressed_bits(data, "lzma") == 8 * len(packed)
    assert lzma.decompress(packed, format=lzma.FORMAT_RAW, filters=filters) == data


def test_packed_pixels_hold_eight_pixels_a_byte():
    binary = (images(2) > 0.5).float()
    packed = metrics.packed_pixels(binary)
    assert packed.shape == (2, 98) and packed.dtype == torch.uint8
    unpacked = (packed[:, :, None] >> torch.arange(7, -1, -1, dtype=torch.uint8)) & 1
    assert torch.equal(unpacked.flatten(1).float(), binary.flatten(1))


@torch.no_grad()
def test_outlier_scores_are_the_direct_computation():
    torch.manual_seed(0)
    ae, vae, x = models.AE().eval(), models.VAE().eval(), images(6)
    code_density = priors.Gaussian(torch.randn(500, 20))
    scores = anomaly.outlier_scores(ae, x, code_density=code_density)
    logits = ae.decode_logits(ae.encode(x))
    nll = -Bernoulli(logits=logits, validate_args=False).log_prob(x).flatten(1).sum(1).double()
    torch.testing.assert_close(scores["ae_nll"], nll)
    torch.testing.assert_close(scores["ae_squared_error"], (torch.sigmoid(logits) - x).pow(2).flatten(1).mean(1).double())
    torch.testing.assert_close(scores["ae_nll_minus_floor"], nll - ae.likelihood.floors(x))
    torch.testing.assert_close(scores["ae_nll_minus_zlib"], nll - metrics.compressed_nats(x))
    torch.testing.assert_close(scores["ae_code_nll"], -code_density.log_prob(ae.encode(x)))
    bound = metrics.importance_weighted_bound(vae, x, 10)
    scores = anomaly.outlier_scores(vae, x, log_likelihood_bound=bound)
    assert set(scores) == {"vae_negative_elbo", "vae_nll", "vae_kl", "vae_nll_minus_floor", "vae_nll_minus_zlib"}
    torch.testing.assert_close(scores["vae_nll"], -bound.double())
    torch.testing.assert_close(scores["vae_kl"], models.kl_divergence(*vae.encode(x)).double())
    assert (scores["vae_negative_elbo"] > scores["vae_kl"]).all()
    assert "vae_nll_minus_floor" not in anomaly.outlier_scores(models.VAE(decoder="continuous-bernoulli"), x)


def test_each_likelihood_draws_images_from_p_x_given_z():
    torch.manual_seed(0)
    logits = torch.linspace(-3, 3, 7).repeat(20_000, 1)
    for likelihood in (models.BernoulliPixels(), models.ContinuousBernoulliPixels(), models.GaussianPixels(0.3)):
        draws = likelihood.sample(logits)
        torch.testing.assert_close(draws.mean(0), likelihood.mean(logits[0]), atol=0.01, rtol=0)
    assert set(models.BernoulliPixels().sample(logits).unique().tolist()) == {0.0, 1.0}
    assert (models.ContinuousBernoulliPixels().sample(logits) - 0.5).abs().max() <= 0.5
    torch.testing.assert_close(models.GaussianPixels(0.3).sample(logits).std(0), torch.full((7,), 0.3), atol=0.01, rtol=0)


def test_without_the_other_dataset_the_outlier_step_says_so_in_one_line_and_goes_on(trained_dir, tmp_path, monkeypatch, capsys):
    no_download(monkeypatch)
    mnist_only = write_tiny_mnist(tmp_path / "data")
    pair, _ = evaluate.load_models(trained_dir, torch.device("cpu"))
    test_images, test_labels = train.load_split("mnist", mnist_only, False, "cpu")
    densities = {name: priors.Gaussian(evaluate.codes_of(model, test_images, test_labels)) for name, model in pair.items()}
    report, inlier, outliers = anomaly.detect_outliers(pair, test_images, None, densities, "mnist", mnist_only, False, 5)
    assert set(report["anomaly"]) == set(outliers) == {"inverted", "noise"}
    assert all(set(results) == set(inlier) for results in report["anomaly"].values())  # every score, on the sets left
    lines = [line for line in capsys.readouterr().out.splitlines() if "outliers are skipped" in line]
    assert len(lines) == 1 and lines[0].startswith("the fashion-mnist outliers are skipped")
    assert "cannot read or download fashion-mnist" in lines[0]


def test_a_damaged_other_dataset_fails_the_run_instead_of_being_skipped(tmp_path, monkeypatch):
    no_download(monkeypatch)
    copy = write_both_datasets(tmp_path / "data")
    damaged = copy / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte"
    damaged.write_bytes(damaged.read_bytes()[:-16])
    with pytest.raises(SystemExit, match="cannot read or download fashion-mnist"):
        anomaly.outlier_sets("mnist", copy, images(10), False, 10)


# The likelihood: the importance-weighted bound L_k and active units.

@pytest.fixture(scope="module")
def one_dimensional_vae():
    """A VAE with a 1-d latent, trained a little on two noisy binary templates: log p(x) can be
    computed exactly on a fine grid over z."""
    torch.manual_seed(0)
    templates = (torch.rand(2, 1, 28, 28) > 0.5).float()
    x = templates[torch.arange(32) % 2]
    x = torch.where(torch.rand_like(x) < 0.1, 1 - x, x)
    vae = models.VAE(latent_dim=1)
    optimizer = torch.optim.Adam(vae.parameters(), lr=2e-3)
    for _ in range(150):
        optimizer.zero_grad()
        vae.loss(x).backward()
        optimizer.step()
    return vae.eval(), x[:4]


@torch.no_grad()
def exact_log_likelihood(vae, x, grid_size=4001, bound=8.0):
    z = torch.linspace(-bound, bound, grid_size)[:, None]
    logits = vae.decode_logits(z).flatten(1)  # (grid, pixels)
    log_likelihood = torch.stack([-torch.nn.functional.binary_cross_entropy_with_logits(
        logits, image.flatten().expand_as(logits), reduction="none").sum(1) for image in x], dim=1)
    log_prior = Normal(0.0, 1.0).log_prob(z)
    return torch.logsumexp(log_likelihood + log_prior, dim=0) + math.log(2 * bound / (grid_size - 1))


def repeated_bound(vae, x, samples, repeats, **chunking):
    """Mean of L_k over repeated estimates, per image."""
    return torch.stack([metrics.importance_weighted_bound(vae, x, samples, **chunking) for _ in range(repeats)]).mean(0)


def test_l1_is_the_elbo_and_lk_tightens_towards_the_exact_log_likelihood(one_dimensional_vae):
    vae, x = one_dimensional_vae
    torch.manual_seed(1)
    exact = exact_log_likelihood(vae, x)
    with torch.no_grad():
        elbo = -torch.stack([torch.stack([vae.loss(image[None]) for image in x]) for _ in range(1000)]).mean(0)
    gaps = {k: (exact - repeated_bound(vae, x, k, repeats)).mean().item() for k, repeats in [(1, 2000), (10, 200), (1000, 10)]}
    assert (exact - elbo).mean().item() == pytest.approx(gaps[1], abs=0.05)  # E[L_1] is the ELBO
    assert gaps[1] > gaps[10] > gaps[1000] > -0.03  # L_k rises with k and stays below log p(x)
    assert gaps[1] > 0.2 and gaps[1000] < 0.05
    one_image_per_chunk = repeated_bound(vae, x, 1000, 10, decodes_per_chunk=1000)
    torch.testing.assert_close(one_image_per_chunk, exact, atol=0.1, rtol=0)  # each image keeps its own samples


def test_lk_is_above_the_elbo_on_average():
    torch.manual_seed(0)
    vae, x = models.VAE(latent_dim=5), images(64).round()
    with torch.no_grad():
        elbo = -torch.stack([vae.loss(x) for _ in range(20)]).mean()
    assert metrics.importance_weighted_bound(vae, x, 50).mean() > elbo


def test_lk_of_a_gaussian_decoder_and_a_conditional_vae_is_the_direct_computation():
    torch.manual_seed(0)
    x, y, samples = images(3), torch.tensor([1, 4, 7]), 6
    for vae, labels in [(models.VAE(latent_dim=4, decoder="gaussian", sigma=0.3), None), (models.CVAE(latent_dim=4), y)]:
        torch.manual_seed(1)
        bound = metrics.importance_weighted_bound(vae, x, samples, labels=labels)
        torch.manual_seed(1)
        with torch.no_grad():
            mu, logvar = vae.encode(x, labels)
            z = mu + torch.exp(0.5 * logvar) * torch.randn(samples, *mu.shape)
            terms = []
            for z_i in z:  # one importance sample of every image at a time
                logits = vae.decode_logits(z_i, labels)
                if labels is None:
                    log_likelihood = Normal(torch.sigmoid(logits), 0.3).log_prob(x).flatten(1).sum(1)
                else:
                    log_likelihood = Bernoulli(logits=logits, validate_args=False).log_prob(x).flatten(1).sum(1)
                prior = Normal(torch.zeros(4), torch.ones(4)).log_prob(z_i).sum(1)
                posterior = Normal(mu, torch.exp(0.5 * logvar)).log_prob(z_i).sum(1)
                terms.append(log_likelihood + prior - posterior)
        torch.testing.assert_close(bound, torch.logsumexp(torch.stack(terms), 0) - math.log(samples), rtol=1e-5, atol=1e-3)


def test_active_units_count_the_dimensions_whose_means_vary():
    torch.manual_seed(0)
    means = torch.randn(1000, 5) * torch.tensor([1.0, 0.5, 0.2, 0.05, 0.001])
    assert metrics.active_units(means) == 3  # variances 1, 0.25, 0.04 > 0.01 > 0.0025, 1e-6


# The interface.

@pytest.mark.parametrize("arch", ["mlp", "conv"])
@pytest.mark.parametrize("latent_dim", [2, 20])
def test_interface_shapes_and_ranges(latent_dim, arch):
    ae, vae, x = models.AE(latent_dim=latent_dim, arch=arch), models.VAE(latent_dim=latent_dim, arch=arch), images(5)
    assert ae.encode(x).shape == (5, latent_dim)
    mu, logvar = vae.encode(x)
    assert mu.shape == logvar.shape == (5, latent_dim)
    x_hat, mu, logvar = vae(x)
    for output in (ae(x), x_hat, vae.decode(torch.randn(5, vae.latent_dim))):
        assert output.shape == (5, *models.IMAGE_SHAPE)
        assert output.min() >= 0 and output.max() <= 1


def constructor_arguments(model_class):
    """Every keyword a model class takes, its own and those it passes on to the class it extends."""
    names = set()
    for cls in model_class.__mro__[:model_class.__mro__.index(models.AE) + 1]:
        names |= {name for name, p in inspect.signature(cls).parameters.items() if p.kind == p.KEYWORD_ONLY}
    return names


@pytest.mark.parametrize("model_class", [models.AE, models.VAE, models.CVAE])
def test_the_config_holds_every_argument_and_rebuilds_the_model(model_class):
    arguments = dict(latent_dim=7, mlp_hidden_dim=24, decoder="gaussian", sigma="learned")
    arguments.update({"beta": 0.5} if model_class is not models.AE else {})
    arguments.update({"classes": 3} if model_class is models.CVAE else {})
    model = model_class(**arguments)
    assert set(model.config) == constructor_arguments(model_class)
    assert model.config == {**model_class().config, **arguments}
    with torch.no_grad():
        model.likelihood.log_sigma.fill_(-1.5)
    rebuilt = model_class(**model.config)
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt.encoder[1].out_features == 24 and rebuilt.likelihood.log_sigma.item() == -1.5
    conv = model_class(arch="conv", conv_channels=4, conv_hidden_dim=12)
    rebuilt = model_class(**conv.config)
    rebuilt.load_state_dict(conv.state_dict())
    assert rebuilt.encoder[0].out_channels == 4 and rebuilt.decoder[0].out_features == 12


def test_model_arguments_are_keywords_only():
    with pytest.raises(TypeError):
        models.VAE(20)  # would otherwise have been taken as beta


def test_the_flags_defaults_are_the_models_defaults():
    args = train.parse_flags(train.make_parser("test"), [])
    for name, default in train.MODEL_DEFAULTS.items():
        assert getattr(args, name, default) == default, name
    assert train.build_model("cvae", args, 10).config == models.CVAE().config
    wide = train.parse_flags(train.make_parser("test"), ["--mlp-hidden-dim", "64", "--decoder", "gaussian"])
    assert train.build_model("vae", wide, 10).config == {**models.VAE().config, "mlp_hidden_dim": 64,
                                                          "decoder": "gaussian", "sigma": "learned"}


def test_a_checkpoint_written_before_the_config_held_every_argument_still_loads(trained_dir, tmp_path):
    for name in ("ae", "vae"):
        checkpoint = torch.load(trained_dir / f"{name}.pt", weights_only=True)
        checkpoint["config"] = {"latent_dim": 20, "arch": "mlp", **({"beta": 1.0} if name == "vae" else {})}
        torch.save(checkpoint, tmp_path / f"{name}.pt")
    loaded, _ = evaluate.load_models(tmp_path, torch.device("cpu"))
    fresh, _ = evaluate.load_models(trained_dir, torch.device("cpu"))
    for name in ("ae", "vae"):
        assert loaded[name].config == fresh[name].config
        z = torch.randn(2, 20)
        torch.testing.assert_close(loaded[name].decode(z), fresh[name].decode(z))


def test_unknown_arch_is_refused():
    with pytest.raises(ValueError, match="unknown arch"):
        models.AE(arch="transformer")


def test_gradients_reach_mu_and_logvar_through_the_sample():
    mu = torch.randn(4, 20, requires_grad=True)
    logvar = torch.randn(4, 20, requires_grad=True)
    models.VAE.reparameterize(mu, logvar).pow(2).sum().backward()
    assert mu.grad is not None and mu.grad.abs().sum() > 0
    assert logvar.grad is not None and logvar.grad.abs().sum() > 0


def test_reparameterized_samples_follow_the_posterior():
    torch.manual_seed(0)
    mu, logvar = torch.tensor([1.5, -2.0]), torch.tensor([0.0, -1.0])
    z = models.VAE.reparameterize(mu.expand(100_000, 2), logvar.expand(100_000, 2))
    torch.testing.assert_close(z.mean(0), mu, atol=0.02, rtol=0)
    torch.testing.assert_close(z.std(0), torch.exp(0.5 * logvar), atol=0.02, rtol=0)


@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_vae_loss_trains_every_parameter(arch):
    vae = models.VAE(arch=arch)
    vae.loss(images()).backward()
    for name, parameter in vae.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


# Training.

@pytest.mark.parametrize("arch", ["mlp", "conv"])
@pytest.mark.parametrize("model_class", [models.AE, models.VAE])
def test_a_few_steps_lower_the_loss(model_class, arch):
    torch.manual_seed(0)
    model, x = model_class(arch=arch), images(32).round()  # binary pixels: a loss that can fall towards 0
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    first = model.loss(x).item()
    for _ in range(100):
        optimizer.zero_grad()
        model.loss(x).backward()
        optimizer.step()
    assert model.loss(x).item() < 0.5 * first


def round_blobs(n, seed):
    """n images of one round blob each, at a random place: data with two continuous factors, its row and column."""
    centres = 6 + 16 * torch.rand(n, 2, generator=torch.Generator().manual_seed(seed))
    grid = torch.arange(28.0)
    rows, columns = (grid - centres[:, :1]).pow(2), (grid - centres[:, 1:]).pow(2)
    return torch.exp(-(rows[:, :, None] + columns[:, None, :]) / 8)[:, None]


def test_trained_side_by_side_the_vae_codes_lie_near_the_prior_and_the_ae_codes_do_not():
    """The headline's mechanism: the KL term keeps the VAE's codes (z ~ q(z|x), what its decoder is trained on) near
    N(0, I), and nothing keeps the AE's there, so z ~ N(0, I) lands among the VAE's codes and not the AE's. Measured
    as KL(a Gaussian fitted to the codes || N(0, I)), which both a shifted and a too wide or too narrow spread raise."""
    x = round_blobs(128, seed=0)
    prior = MultivariateNormal(torch.zeros(4, dtype=torch.float64), torch.eye(4, dtype=torch.float64))
    distance = {}
    for model_class in (models.AE, models.VAE):
        torch.manual_seed(0)
        model = model_class(latent_dim=4, mlp_hidden_dim=64)
        optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
        for _ in range(200):
            optimizer.zero_grad()
            model.loss(x).backward()
            optimizer.step()
        with torch.no_grad():
            codes = (model.encode(x) if model_class is models.AE else model.reparameterize(*model.encode(x))).double()
        distance[model_class.__name__] = kl_divergence(MultivariateNormal(codes.mean(0), torch.cov(codes.T)), prior).item()
    assert distance["VAE"] < distance["AE"] / 10, distance  # about 40 times nearer; without the KL term, about as far


def test_train_epoch_returns_the_mean_loss_per_image():
    torch.manual_seed(0)
    model, x = models.AE(), images(10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    torch.testing.assert_close(train.train_epoch(model, optimizer, x, torch.zeros(10, dtype=torch.long), 4), model.loss(x))


def test_binarize_feeds_only_fresh_binary_pixels_to_the_loss(monkeypatch):
    seen = []
    model, x = models.AE(), images(16)
    monkeypatch.setattr(models.AE, "loss", lambda self, batch, y: seen.append(batch) or self.decode_logits(self.encode(batch)).mean())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    for _ in range(2):
        train.train_epoch(model, optimizer, x, torch.zeros(16, dtype=torch.long), 16, binarize=True)
    assert all(set(batch.unique().tolist()) <= {0.0, 1.0} for batch in seen)
    assert not torch.equal(seen[0].sum(0), seen[1].sum(0))  # a fresh draw each step (same images, other pixels)
    torch.testing.assert_close(torch.stack(seen).mean(0).mean(), x.mean(), atol=0.02, rtol=0)
    fixed = train.binarize_once(x)
    assert torch.equal(fixed, train.binarize_once(x)) and set(fixed.unique().tolist()) <= {0.0, 1.0}


def test_training_is_deterministic_for_a_seed(data_dir, tmp_path):
    def run(out_dir, seed):
        train.main(["--data-dir", str(data_dir), "--out-dir", str(out_dir), "--epochs", "1",
                    "--device", "cpu", "--seed", str(seed), "--model", "vae"])
        return torch.load(out_dir / "vae.pt", weights_only=True)
    first, again, other = run(tmp_path / "a", 1), run(tmp_path / "b", 1), run(tmp_path / "c", 2)
    assert first["history"]["test_loss"] == again["history"]["test_loss"]
    for name, tensor in first["model_state"].items():
        assert torch.equal(tensor, again["model_state"][name]), name
    assert first["history"]["test_loss"] != other["history"]["test_loss"]


def test_checkpoints_hold_what_rebuilds_the_models(trained_dir):
    for name, model_class in [("ae", models.AE), ("vae", models.VAE)]:
        checkpoint = torch.load(trained_dir / f"{name}.pt", weights_only=True)
        assert set(checkpoint) == train.CHECKPOINT_KEYS
        assert checkpoint["model"] == name and checkpoint["dataset"] == "mnist" and checkpoint["binarize"] is False
        model = model_class(**checkpoint["config"])
        model.load_state_dict(checkpoint["model_state"])
        assert [len(values) for values in checkpoint["history"].values()] == [2, 2, 2]
    assert not list(trained_dir.glob("*.tmp*"))


def test_a_failed_save_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "vae.pt"
    train.save_checkpoint({"good": 1}, path)

    def broken_save(obj, file):
        Path(file).write_bytes(b"half a checkpoint")
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        train.save_checkpoint({"good": 2}, path)
    assert torch.load(path) == {"good": 1}
    assert list(tmp_path.iterdir()) == [path]


def test_a_diverging_loss_stops_without_writing_a_checkpoint(data_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(models.AE, "loss", lambda self, x, y: self.decode_logits(self.encode(x)).mean() * float("nan"))
    with pytest.raises(SystemExit, match=r"ae loss is not finite at epoch 1 \(train nan"):
        train.main(["--data-dir", str(data_dir), "--out-dir", str(tmp_path), "--model", "ae", "--device", "cpu"])
    assert not list(tmp_path.iterdir())


# Figures.

def test_evaluate_writes_every_figure(trained_dir):
    for name in FIGURES:
        assert (trained_dir / name).stat().st_size > 0, name
    assert not any((trained_dir / name).exists() for name in MANIFOLD)


def grid_tiles(picture, count, columns):
    """The first count 28x28 tiles of a torchvision image grid (tiles 2 pixels apart), given as (height, width, channels)."""
    corners = [(2 + 30 * (k // columns), 2 + 30 * (k % columns)) for k in range(count)]
    return torch.stack([picture[top:top + 28, left:left + 28] for top, left in corners])


def grey_as_rgb(images):
    """(N, 1, 28, 28) images as a grid's (N, 28, 28, 3) tiles: make_grid repeats grey in R, G and B."""
    return images[:, 0, :, :, None].expand(-1, -1, -1, 3)


PNG_LEVEL = 0.5 / 255 + 1e-5  # save_image rounds each pixel to the nearest of 256 levels


@torch.no_grad()
def test_the_interpolation_figures_hold_each_models_decoded_walk_between_real_test_digits(trained_dir, data_dir):
    pair, _ = evaluate.load_models(trained_dir, torch.device("cpu"))
    test_images, test_labels = train.load_split("mnist", data_dir, False, "cpu")
    steps, columns = torch.linspace(0, 1, figures.INTERPOLATION_STEPS)[:, None], figures.INTERPOLATION_STEPS + 2
    for name, model in pair.items():
        expected = []
        for a, b in figures.INTERPOLATION_PAIRS:  # a row per pair: the first test digit of each class at the ends
            start, end = test_images[test_labels == a][0], test_images[test_labels == b][0]
            codes = model.encode(torch.stack([start, end]))
            codes = codes if name == "ae" else codes[0]  # the VAE walks between the means of q(z|x)
            expected += [start[None], model.decode(codes[0] + steps * (codes[1] - codes[0])), end[None]]
        expected = torch.cat(expected)
        picture = torch.as_tensor(imread(trained_dir / f"interpolation_{name}.png"))  # as main.py wrote it
        assert picture.shape == (2 + 30 * len(figures.INTERPOLATION_PAIRS), 2 + 30 * columns, 3), name
        torch.testing.assert_close(grid_tiles(picture, len(expected), columns), grey_as_rgb(expected), atol=PNG_LEVEL, rtol=0,
                                   msg=lambda message: f"interpolation_{name}.png: {message}")


def test_the_sample_figures_show_each_samplers_draws_under_its_own_scores(tmp_path, monkeypatch):
    keys = [f"{name}_{sampler}" for name in ("ae", "vae") for sampler in figures.SAMPLERS]
    shown = {key: torch.rand(64, *models.IMAGE_SHAPE) for key in keys}
    scores = {key: {"recognisable": (i + 1) / 10, "coverage": 1.0, "frechet_distance": 100 * (i + 1) + 0.3}
              for i, key in enumerate(keys)}
    panels, show_grids = {}, figures.show_grids
    monkeypatch.setattr(figures, "show_grids", lambda path, grids, *args, **kwargs: (panels.update(grids),
                                                                                     show_grids(path, grids, *args, **kwargs)))
    figures.plot_samples(tmp_path, shown, scores)
    for name in ("ae", "vae"):  # samples_<model>.png: the 64 draws from N(0, I), 8 a row
        picture = torch.as_tensor(imread(tmp_path / f"samples_{name}.png"))
        assert picture.shape == (242, 242, 3)
        torch.testing.assert_close(grid_tiles(picture, 64, 8), grey_as_rgb(shown[f"{name}_prior"]), atol=PNG_LEVEL, rtol=0)
    assert (tmp_path / "samples.png").stat().st_size > 0 and len(panels) == 6  # its panels: AE, then VAE, a sampler each
    for i, (key, (title, grid)) in enumerate(zip(keys, panels.items())):
        name, sampler = key.split("_")
        assert title.startswith(f"{name.upper()}, z ~ {figures.SAMPLERS[sampler]}\n"), title
        assert f"{10 * (i + 1)}% recognisable" in title and f"FD {100 * (i + 1)}" in title, title
        torch.testing.assert_close(grid_tiles(grid.permute(1, 2, 0), 64, 8), grey_as_rgb(shown[key]),
                                   msg=lambda message: f"{key}: {message}")


def test_metrics_json_has_its_keys(trained_dir, data_dir):
    report = json.loads((trained_dir / "metrics.json").read_text())
    checkpoint = torch.load(trained_dir / "vae.pt", weights_only=True)
    for name in ("ae", "vae"):
        assert {"test_loss", "epochs", "seconds_per_epoch", "device", "binarize", "seed", "versions"} <= set(report[name])
        assert report[name]["epochs"] == 2 and report[name]["device"] == "cpu"
        assert set(report[name]["versions"]) == {"python", "torch", "torchvision"}
    assert report["vae"]["test_loss"] == checkpoint["history"]["test_loss"][-1]
    vae = report["vae"]
    assert vae["test_reconstruction"] > 0 and vae["test_kl"] >= 0
    assert vae["test_negative_elbo"] == pytest.approx(vae["test_reconstruction"] + vae["test_kl"])
    assert vae["iw_samples"] == 50 and 0 <= vae["active_units"] <= 20
    assert -vae["test_log_likelihood"] < vae["test_negative_elbo"]  # L_50 is the tighter bound
    pixel_entropy = models.BernoulliPixels().floor(train.load_split("mnist", data_dir, False, "cpu")[0])
    assert report["data"] == {"dataset": "mnist", "binarized": False, "test_pixel_entropy": pytest.approx(pixel_entropy)}
    assert report["decoder"] == {"name": "bernoulli", "sigma": None, "test_reconstruction_floor": pytest.approx(pixel_entropy)}
    for name in ("ae", "vae"):
        assert 0 < report[name]["test_reconstruction_mse"] < 1 and "learned_sigma" not in report[name]
        assert report[name]["config"] == {**models.AE().config, **({"beta": 1.0} if name == "vae" else {})}
    assert "cvae" not in report and report["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert 0 <= report["classifier"]["test_accuracy"] <= 1
    assert set(report["samples"]) == SAMPLE_NAMES
    for name, score in report["samples"].items():
        assert set(score) == {"recognisable", "coverage", "frechet_distance"}, name
        assert 0 <= score["recognisable"] <= 1 and 0 <= score["coverage"] <= 1 + 1e-9 and score["frechet_distance"] >= -1e-6
    assert set(report["latent_codes"]) == {"ae", "vae"}
    assert all(0 < report["latent_codes"][name]["top2_pca_variance_share"] <= 1 for name in ("ae", "vae"))
    assert report["mixture"] == evaluate.MIXTURE and report["mixture"]["starts"] > 1
    assert set(report["anomaly"]) == {"fashion-mnist", "inverted", "noise"}
    expected_scores = {f"{model}_{score}" for model, scores in [
        ("ae", ["nll", "squared_error", "nll_minus_floor", "nll_minus_zlib", "code_nll"]),
        ("vae", ["negative_elbo", "nll", "kl", "nll_minus_floor", "nll_minus_zlib", "code_nll"])] for score in scores}
    for outlier_set, results in report["anomaly"].items():
        assert set(results) == expected_scores, outlier_set
        for score, result in results.items():
            assert set(result) == {"auroc", "fpr_at_95", "threshold"}
            assert 0 <= result["auroc"] <= 1 and 0 <= result["fpr_at_95"] <= 1
            assert result["threshold"] == report["anomaly"]["noise"][score]["threshold"]  # it keeps 95% of the test split alone
    assert report["anomaly"]["noise"]["vae_nll"]["auroc"] > 0.9  # noise is far from even two epochs' worth of digits
    assert report["anomaly_setup"] == {"test_images": 60, "images_per_outlier_set": 60, "kept": 0.95, "iw_samples": 50}
    assert "compression" not in report and report["main_seconds"] >= report["evaluate_seconds"] > 0
    for name in ("ae", "vae"):
        on_demand = report["on_demand"][name]
        assert set(on_demand) == {"hit", "assigned", "per_class_hit", "frechet_distance"}
        assert 0 <= on_demand["hit"] <= on_demand["assigned"] <= 1 and len(on_demand["per_class_hit"]) == 10
        assert on_demand["hit"] == pytest.approx(np.mean(on_demand["per_class_hit"]))  # 1,000 draws in every class


def test_two_dimensional_latents_add_the_manifold(data_dir, tmp_path):
    main.main(["--data-dir", str(data_dir), "--out-dir", str(tmp_path), "--epochs", "1", "--device", "cpu",
               "--latent-dim", "2"])
    for name in FIGURES + MANIFOLD:
        assert (tmp_path / name).stat().st_size > 0, name


def test_conv_fashion_mnist_runs_end_to_end(tmp_path):
    data_dir = write_both_datasets(tmp_path / "data")
    out_dir = tmp_path / "results"
    main.main(["--data-dir", str(data_dir), "--out-dir", str(out_dir), "--epochs", "1", "--device", "cpu",
               "--arch", "conv", "--dataset", "fashion-mnist", "--beta", "4"])
    for name in FIGURES:
        assert (out_dir / name).stat().st_size > 0, name
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["vae"]["dataset"] == "fashion-mnist"
    assert metrics["vae"]["config"] == {**models.AE(arch="conv").config, "beta": 4.0}
    assert metrics["ae"]["config"] == models.AE(arch="conv").config


@pytest.mark.parametrize("decoder", ["gaussian", "continuous-bernoulli"])
def test_the_gaussian_and_continuous_bernoulli_decoders_run_end_to_end(decoder, data_dir, tmp_path):
    main.main(["--data-dir", str(data_dir), "--out-dir", str(tmp_path), "--epochs", "1", "--device", "cpu",
               "--decoder", decoder])
    for name in FIGURES:
        assert (tmp_path / name).stat().st_size > 0, name
    report = json.loads((tmp_path / "metrics.json").read_text())
    sigma = "learned" if decoder == "gaussian" else None  # --decoder gaussian learns sigma unless told one
    assert report["decoder"] == {"name": decoder, "sigma": sigma}  # no floor: sigma can shrink, the CB's density is unbounded
    for name in ("ae", "vae"):
        beta = {"beta": 1.0} if name == "vae" else {}
        assert report[name]["config"] == {**models.AE(decoder=decoder, sigma=sigma).config, **beta}
        assert 0 < report[name]["test_reconstruction_mse"] < 1
        state = torch.load(tmp_path / f"{name}.pt", weights_only=True)["model_state"]
        if decoder == "gaussian":  # trained with the model, from sigma = 1 down towards the reconstructions' error
            assert report[name]["learned_sigma"] == pytest.approx(state["likelihood.log_sigma"].exp().item())
            assert report[name]["learned_sigma"] < 1
        else:
            assert "learned_sigma" not in report[name] and not any(key.startswith("likelihood") for key in state)
    vae = report["vae"]
    assert vae["test_negative_elbo"] == pytest.approx(vae["test_reconstruction"] + vae["test_kl"])
    assert math.isfinite(vae["test_log_likelihood"]) and -vae["test_log_likelihood"] < vae["test_negative_elbo"]
    for outlier_set, results in report["anomaly"].items():  # every score but those that subtract a floor
        assert {"ae_nll", "ae_nll_minus_zlib", "vae_nll", "vae_nll_minus_zlib"} <= set(results), outlier_set
        assert not any(score.endswith("minus_floor") for score in results), outlier_set


def test_binarized_runs_train_and_test_on_binary_pixels(data_dir, tmp_path):
    main.main(["--data-dir", str(data_dir), "--out-dir", str(tmp_path), "--epochs", "1", "--device", "cpu", "--binarize"])
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["data"]["binarized"] is True and report["data"]["test_pixel_entropy"] == 0
    assert report["ae"]["binarize"] is True and report["vae"]["binarize"] is True
    assert -report["vae"]["test_log_likelihood"] < report["vae"]["test_negative_elbo"]
    bits = report["compression"]["bits_per_digit"]
    assert report["compression"]["pixels_per_digit"] == 784
    assert bits["vae_nll_bound"] == pytest.approx(-report["vae"]["test_log_likelihood"] / math.log(2))
    assert bits["vae_negative_elbo"] == pytest.approx(report["vae"]["test_negative_elbo"] / math.log(2))
    test_inputs = train.binarize_once(train.load_split("mnist", data_dir, False, "cpu")[0])
    packed = metrics.packed_pixels(test_inputs).numpy()
    assert bits["zlib_whole_split"] == 8 * len(zlib_raw(packed.tobytes())) / 60
    assert bits["zlib_per_digit"] == pytest.approx(np.mean([8 * len(zlib_raw(row.tobytes())) for row in packed]))
    assert 0 < bits["lzma_whole_split"] and 0 < bits["lzma_per_digit"]


def zlib_raw(data):
    """zlib at level 9 without its 2-byte header and 4-byte checksum: the raw DEFLATE stream."""
    import zlib
    return zlib.compress(data, 9)[2:-4]


def test_evaluation_is_deterministic_for_a_seed(data_dir, trained_dir, tmp_path):
    for name in ("ae.pt", "vae.pt"):  # evaluated again in a copy: trained_dir stays as main.py wrote it
        shutil.copy(trained_dir / name, tmp_path / name)
    evaluate.evaluate(tmp_path, data_dir, "cpu", seed=0)  # main.py's seed, in a process where other work came first
    for name in FIGURES[:-1]:
        assert (tmp_path / name).read_bytes() == (trained_dir / name).read_bytes(), name
    again, first = [json.loads((folder / "metrics.json").read_text()) for folder in (tmp_path, trained_dir)]
    assert seeds.numbers(again) == seeds.numbers(first) and len(seeds.numbers(first)) > 100


def test_random_draws_added_to_one_step_move_no_other_steps_numbers(trained_dir, data_dir, tmp_path, monkeypatch):
    reports = []
    for extra_draws in (False, True):
        out_dir = tmp_path / str(extra_draws)
        out_dir.mkdir()
        for name in ("ae.pt", "vae.pt"):
            shutil.copy(trained_dir / name, out_dir / name)
        if extra_draws:
            digits_on_demand = evaluate.digits_on_demand
            monkeypatch.setattr(evaluate, "digits_on_demand", lambda *args: (torch.rand(7), digits_on_demand(*args))[1])
        evaluate.evaluate(out_dir, data_dir, "cpu", seed=5)
        reports.append(seeds.numbers(json.loads((out_dir / "metrics.json").read_text())))
    moved = {key for key in reports[0] if reports[0][key] != reports[1][key]}
    assert moved and all(key.startswith("on_demand.") for key in moved), sorted(moved)


# Errors a user can act on: one line, non-zero exit, no traceback.

def no_download(monkeypatch):
    """Make any download attempt fail at once, whether or not this machine is online. Like torchvision's own
    download(), it returns at once when the files are there already."""
    def refuse(self):
        if not self._check_exists():
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: the test refused the download")
    monkeypatch.setattr(datasets.MNIST, "download", refuse)


def test_missing_data_gives_one_clear_line(tmp_path, monkeypatch):
    no_download(monkeypatch)
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--data-dir", str(tmp_path / "data"), "--out-dir", str(tmp_path / "out"), "--epochs", "1"])
    message = str(exit_info.value.code)
    assert message.count("\n") == 0 and message.startswith("error: cannot read or download mnist in")
    assert f"{tmp_path / 'data' / 'MNIST' / 'raw'}/" in message and "t10k-images-idx3-ubyte" in message
    assert "the test refused the download" in message


def test_a_damaged_data_file_gives_one_clear_line(data_dir, tmp_path, monkeypatch):
    no_download(monkeypatch)
    copy = tmp_path / "data" / "MNIST" / "raw"
    copy.mkdir(parents=True)
    for path in (data_dir / "MNIST" / "raw").iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    damaged = copy / "train-images-idx3-ubyte"
    damaged.write_bytes(damaged.read_bytes()[:-16])
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--data-dir", str(tmp_path / "data"), "--out-dir", str(tmp_path / "out"), "--epochs", "1"])
    message = str(exit_info.value.code)
    assert message.startswith(f"error: cannot read or download mnist in {copy}/ (shape")
    assert "is invalid for input of size" in message and "the test refused" not in message  # no download was tried
    assert "put the four original uncompressed IDX files there" in message and message.count("\n") == 0


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "0"], "--epochs must be at least 1, got 0"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--latent-dim", "1"], "--latent-dim must be at least 2"),
    (["--beta", "-0.5"], "--beta must be at least 0"),
    (["--beta", "nan"], "--beta must be at least 0"),
    (["--lr", "0"], "--lr must be greater than 0"),
    (["--lr", "nan"], "--lr must be greater than 0"),
    (["--epochs", "ten"], "argument --epochs: invalid int value: 'ten'"),
    (["--iw-samples", "0"], "--iw-samples must be at least 1"),
    (["--arch", "resnet"], "argument --arch: invalid choice"),
    (["--dataset", "cifar10"], "argument --dataset: invalid choice"),
    (["--decoder", "poisson"], "argument --decoder: invalid choice"),
    (["--decoder", "gaussian", "--sigma", "0"], "argument --sigma: must be a positive number or learned, got '0'"),
    (["--decoder", "gaussian", "--sigma", "-1"], "argument --sigma: must be a positive number or learned"),
    (["--decoder", "gaussian", "--sigma", "nan"], "argument --sigma: must be a positive number or learned"),
    (["--decoder", "gaussian", "--sigma", "inf"], "argument --sigma: must be a positive number or learned"),
    (["--decoder", "gaussian", "--sigma", "wide"], "argument --sigma: must be a positive number or learned, got 'wide'"),
    (["--sigma", "0.5"], "--sigma is the gaussian decoder's; the bernoulli decoder has none"),
    (["--mlp-hidden-dim", "0"], "--mlp-hidden-dim must be at least 1"),
])
def test_bad_flags_are_refused_by_argparse(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main.main(flags)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("usage: ") and message in error.strip().splitlines()[-1]


def test_each_script_checks_its_own_flags_and_train_py_only_its_own(capsys):
    import benchmark
    train_flags = {action.dest for action in train.make_parser("train.py")._actions}
    assert set(train.LOWEST) <= train_flags  # a lifted train.py checks no other script's flags
    for script, flags, message in [(evaluate, ["--iw-samples", "0"], "--iw-samples must be at least 1"),
                                    (benchmark, ["--rounds", "0"], "--rounds must be at least 1")]:
        with pytest.raises(SystemExit) as exit_info:
            script.main(flags)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


def current_accelerator():
    """torch.accelerator.current_accelerator(), guarded: torch 2.6 raises where no accelerator is present."""
    return torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None


@pytest.mark.parametrize("name", ["cuda", "cuda:7", "mps", "xpu"])
def test_asking_for_a_missing_device_is_refused(name):
    accelerator, device = current_accelerator(), torch.device(name)
    if accelerator is not None and accelerator.type == device.type and (device.index or 0) < torch.accelerator.device_count():
        pytest.skip(f"{name} is available here")
    with pytest.raises(SystemExit, match=f"error: --device {name} is not available here"):
        train.resolve_device(name)


def test_a_device_torch_does_not_know_is_refused_in_one_line():
    with pytest.raises(SystemExit, match="error: --device tpu is not a device torch knows; try auto, cpu"):
        train.resolve_device("tpu")


def test_the_cpu_and_auto_devices_always_resolve():
    assert train.resolve_device("cpu") == torch.device("cpu")
    assert train.resolve_device("auto").type in {"cpu", getattr(current_accelerator(), "type", "cpu")}


def pretend_gpu(monkeypatch, capability, arch_list):
    """Make torch report one CUDA GPU of the given compute capability, and a build with these kernels."""
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: True)
    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda *args: torch.device("cuda"))
    monkeypatch.setattr(torch.accelerator, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=0: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "Old GPU")
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: arch_list)


@pytest.mark.parametrize("capability, arch_list, fits", [
    ((6, 1), ["sm_75", "sm_80", "sm_86", "sm_90", "compute_90"], False),  # a GTX 10xx under a wheel for sm_75+
    ((7, 0), ["sm_75", "sm_80"], False),  # a V100: sm_75 kernels are for 7.5 and up, not 7.0
    ((7, 5), ["sm_75", "sm_80"], True),   # a T4, as on Colab
    ((8, 9), ["sm_80", "sm_86", "sm_90"], True),  # sm_86 kernels run on 8.9
    ((9, 0), ["sm_80", "sm_86"], False),  # a newer major version needs its own kernels or PTX
    ((12, 0), ["sm_80", "sm_90a", "compute_90"], True),  # PTX for 9.0, compiled by the driver for 12.0
])
def test_cuda_kernels_fit_the_gpu(monkeypatch, capability, arch_list, fits):
    pretend_gpu(monkeypatch, capability, arch_list)
    assert train.cuda_kernels_fit(0) is fits


def test_auto_falls_back_to_the_cpu_on_a_gpu_without_kernels(monkeypatch, capsys):
    pretend_gpu(monkeypatch, (6, 1), ["sm_75", "sm_80"])
    assert train.resolve_device("auto") == torch.device("cpu")
    said = capsys.readouterr().out
    assert said.count("\n") == 1 and said.startswith("using the CPU: this torch build has no kernels for the Old GPU")
    assert "compute capability 6.1; it has sm_75 sm_80" in said
    with pytest.raises(SystemExit) as exit_info:
        train.resolve_device("cuda")
    message = str(exit_info.value.code)
    assert message.count("\n") == 0 and message.startswith("error: this torch build has no kernels") and "--device cpu" in message
    pretend_gpu(monkeypatch, (8, 6), ["sm_75", "sm_80"])
    assert train.resolve_device("auto") == torch.device("cuda") == train.resolve_device("cuda")


def test_missing_checkpoint_is_named(tmp_path, data_dir):
    with pytest.raises(SystemExit, match=r"ae\.pt not found; train it first"):
        evaluate.evaluate(tmp_path, data_dir, "cpu", seed=0)


def corrupt(path, field, value):
    checkpoint = torch.load(path, weights_only=True)
    checkpoint[field] = value
    torch.save(checkpoint, path)


@pytest.mark.parametrize("change, message", [
    (lambda out: (out / "ae.pt").write_bytes((out / "vae.pt").read_bytes()), r"holds a 'vae' checkpoint, not 'ae'"),
    (lambda out: (out / "vae.pt").write_bytes(b"not a checkpoint"), r"vae\.pt is not a readable checkpoint"),
    (lambda out: corrupt(out / "vae.pt", "config", {"latent_dim": 5, "arch": "mlp", "beta": 1.0}),
     r"vae\.pt does not fit models\.VAE"),
    (lambda out: corrupt(out / "vae.pt", "config", {"latent_dim": 20, "width": 3}), r"vae\.pt does not fit models\.VAE"),
    (lambda out: torch.save({"model": "ae", "model_state": {}}, out / "ae.pt"), r"ae\.pt is not a checkpoint written by train\.py"),
    (lambda out: torch.save(torch.zeros(3), out / "ae.pt"), r"ae\.pt is not a checkpoint written by train\.py"),
])
def test_mismatched_checkpoints_are_refused(change, message, trained_dir, data_dir, tmp_path):
    for name in ("ae.pt", "vae.pt"):
        (tmp_path / name).write_bytes((trained_dir / name).read_bytes())
    change(tmp_path)
    with pytest.raises(SystemExit, match=message):
        evaluate.evaluate(tmp_path, data_dir, "cpu", seed=0)


def test_a_bug_in_the_model_code_keeps_its_traceback(trained_dir, tmp_path, monkeypatch):
    for name in ("ae.pt", "vae.pt"):
        shutil.copy(trained_dir / name, tmp_path / name)

    def slip(self):  # a student's mistake inside VAE.__init__: a call with a wrong argument
        return len(self.latent_dim)
    monkeypatch.setattr(models.VAE, "code_dim", slip)
    with pytest.raises(TypeError, match="has no len"):  # the TypeError itself, not "does not fit ... retrain it"
        evaluate.load_model(tmp_path, "vae", torch.device("cpu"))


def test_weights_of_another_shape_are_named_in_the_one_line(trained_dir, tmp_path):
    shutil.copy(trained_dir / "vae.pt", tmp_path / "vae.pt")
    checkpoint = torch.load(tmp_path / "vae.pt", weights_only=True)
    checkpoint["model_state"]["decoder.0.bias"] = torch.zeros(3)
    del checkpoint["model_state"]["encoder.1.weight"]
    torch.save(checkpoint, tmp_path / "vae.pt")
    with pytest.raises(SystemExit, match=r"missing encoder\.1\.weight; decoder\.0\.bias: \(3,\) against \(400,\)"):
        evaluate.load_model(tmp_path, "vae", torch.device("cpu"))


def test_a_misspelt_name_in_a_table_of_least_values_is_a_bug_not_a_usage_error(monkeypatch):
    monkeypatch.setattr(train, "LOWEST", {**train.LOWEST, "epoch": 1})
    with pytest.raises(ValueError, match="names epoch, which the parser has no flag for"):
        train.parse_flags(train.make_parser("test"), [])
    with pytest.raises(ValueError, match="names samples"):
        train.parse_flags(evaluate.add_flags(train.make_parser("test", training=False)), [], {"samples": 1})


@pytest.mark.parametrize("ae_flags, vae_flags", [
    (["--latent-dim", "3"], ["--latent-dim", "4"]),
    (["--arch", "mlp"], ["--arch", "conv"]),
    (["--binarize"], []),
])
def test_a_pair_trained_differently_is_refused(ae_flags, vae_flags, data_dir, tmp_path):
    for name, flags in [("ae", ae_flags), ("vae", vae_flags)]:
        train.main(["--data-dir", str(data_dir), "--out-dir", str(tmp_path), "--epochs", "1", "--device", "cpu",
                    "--model", name, *flags])
    with pytest.raises(SystemExit, match="were trained differently"):
        evaluate.evaluate(tmp_path, data_dir, "cpu", seed=0)


def test_a_mismatched_checkpoint_exits_with_one_line_from_the_command_line(trained_dir, tmp_path):
    (tmp_path / "ae.pt").write_bytes((trained_dir / "vae.pt").read_bytes())
    (tmp_path / "vae.pt").write_bytes((trained_dir / "vae.pt").read_bytes())
    result = run_script("evaluate.py", "--out-dir", str(tmp_path))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "not 'ae'" in result.stderr


# Failing before the work, and stopping cleanly.

def test_an_out_dir_that_is_a_file_is_refused_before_any_data_is_read(tmp_path, monkeypatch):
    def no_data(*args, **kwargs):
        raise AssertionError("the data was read before the out-dir was checked")
    monkeypatch.setattr(train, "open_dataset", no_data)
    target = tmp_path / "results"
    target.write_text("my notes")
    for out_dir, message in [(target, "is a file, not a folder"), (target / "sub", "cannot be written")]:
        with pytest.raises(SystemExit) as exit_info:
            main.main(["--out-dir", str(out_dir), "--data-dir", str(tmp_path)])
        assert f"error: --out-dir {out_dir} {message}" in str(exit_info.value.code)
    assert target.read_text() == "my notes"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into a read-only folder")
def test_a_read_only_out_dir_is_refused(tmp_path):
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(SystemExit, match="cannot be written"):
            train.writable_dir(tmp_path)
    finally:
        tmp_path.chmod(0o700)


def test_the_out_dir_check_runs_from_the_command_line_in_one_line(tmp_path):
    (tmp_path / "results").write_text("")
    result = run_script("train.py", "--out-dir", str(tmp_path / "results"), "--data-dir", str(tmp_path))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "--out-dir" in result.stderr


def test_ctrl_c_during_training_stops_with_one_line_and_status_130(data_dir, tmp_path):
    out_dir = tmp_path / "results"
    out_dir.mkdir()
    (out_dir / "vae.pt").write_bytes(b"an earlier checkpoint")
    process = subprocess.Popen([sys.executable, "train.py", "--data-dir", str(data_dir), "--out-dir", str(out_dir),
                                "--model", "vae", "--epochs", "100000", "--device", "cpu"],
                               cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # a suite run in the
    try:                                                            # background ignores Ctrl-C, and so would its child
        while not process.stdout.readline().startswith("vae  epoch"):
            assert process.poll() is None, process.stderr.read()
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130
    assert "Traceback" not in stderr and stderr.strip().count("\n") == 0
    assert stderr.startswith("interrupted: VAE epoch ") and f"files already in {out_dir}/ are untouched" in stderr
    assert (out_dir / "vae.pt").read_bytes() == b"an earlier checkpoint"
    assert sorted(path.name for path in out_dir.iterdir()) == ["vae.pt"]


def test_ctrl_c_during_evaluation_leaves_every_file_whole(trained_dir, data_dir, tmp_path, monkeypatch, capsys):
    for path in trained_dir.iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}

    def interrupted_save(temporary):
        temporary.write_bytes(b"half a figure")
        raise KeyboardInterrupt
    # Ctrl-C lands in evaluate()'s first step, while a file is being written: no need to compute the rest first.
    monkeypatch.setattr(evaluate, "classifier_and_reference",
                        lambda *args: train.write_atomically(tmp_path / "reconstructions.png", interrupted_save))
    with pytest.raises(SystemExit) as exit_info:
        train.run(lambda: evaluate.main(["--data-dir", str(data_dir), "--out-dir", str(tmp_path), "--device", "cpu"]))
    assert exit_info.value.code == 130
    error = capsys.readouterr().err
    assert error.startswith("interrupted: evaluation stopped") and error.strip().count("\n") == 0
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before  # no file changed, none half-written


def test_ctrl_c_in_main_names_the_model_and_epoch(data_dir, tmp_path, monkeypatch, capsys):
    def interrupted(*args):
        raise KeyboardInterrupt
    monkeypatch.setattr(train, "train_epoch", interrupted)
    with pytest.raises(SystemExit) as exit_info:
        train.run(lambda: main.main(["--data-dir", str(data_dir), "--out-dir", str(tmp_path), "--device", "cpu"]))
    assert exit_info.value.code == 130
    assert capsys.readouterr().err == f"interrupted: AE epoch 1/30, not saved; files already in {tmp_path}/ are untouched\n"
    assert not list(tmp_path.iterdir())


def test_an_empty_error_message_still_gives_a_line():
    assert train.last_line(RuntimeError()) == "RuntimeError"
    assert train.last_line(RuntimeError("first\nlast\n")) == "last"


# What stays on the training device: MPS has no float64, and .numpy() needs a host tensor.

TRAINING_DEVICE = torch.device("cpu", 0)  # the CPU under another name, which the tracker counts as the device
HOST_SYNCS = {"item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__", "__format__"}


class DeviceTracker(TorchFunctionMode):
    """Tells device tensors from host tensors on a CPU-only machine, where both live in the same memory.

    A tensor is marked as on the training device when it is moved there (.to(TRAINING_DEVICE), which
    Module.to does to every parameter), made there (a factory called with device=TRAINING_DEVICE), or
    computed from a marked tensor; a marked tensor's .device says TRAINING_DEVICE, and .cpu() or
    .to("cpu") gives an unmarked host copy. A marked float64 result or a .numpy() of a marked tensor
    fails, as both do on MPS; with no_sync=True, so does every call that makes the host wait for the device.
    """

    def __init__(self, no_sync=False):
        super().__init__()
        self.no_sync = no_sync

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        attribute = getattr(getattr(func, "__self__", None), "__name__", "")  # "device" for x.device, "data" for x.data = y
        marked = any(getattr(t, "on_device", False) for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor))
        target = kwargs.get("device", next((a for a in args[1:] if isinstance(a, (str, torch.device))), None) if name == "to" else None)
        target = None if target is None else torch.device(target)
        to_host = name == "cpu" or target == torch.device("cpu")
        if marked and name == "numpy":
            raise AssertionError(".numpy() of a tensor on the training device")
        if marked and self.no_sync and (name in HOST_SYNCS or to_host):
            raise AssertionError(f"{name}() inside the epoch makes the host wait for the device")
        result = func(*args, **kwargs)
        if name == "__get__" and attribute == "device" and marked:
            return TRAINING_DEVICE
        if name == "__set__" and attribute == "data" and marked:
            args[0].on_device = True
        if to_host:
            return result.clone() if result is args[0] else result  # a new tensor, unmarked
        if marked or target == TRAINING_DEVICE:
            for output in pytree.tree_leaves(result):
                if isinstance(output, torch.Tensor):
                    if output.dtype == torch.float64:
                        raise AssertionError(f"{name}() made a float64 tensor on the training device")
                    output.on_device = True
        return result


def test_the_tracker_catches_device_float64_and_numpy_but_not_host_work():
    with DeviceTracker():
        on_device = torch.ones(3).to(TRAINING_DEVICE)
        assert on_device.device == TRAINING_DEVICE and torch.zeros(2, device=on_device.device).on_device
        host = (on_device * 2).cpu()
        assert host.double().numpy().sum() == 6  # float64 and numpy on the host are fine
        with pytest.raises(AssertionError, match="float64 tensor on the training device"):
            (on_device * 2).double()
        with pytest.raises(AssertionError, match="numpy"):
            on_device.sum(0, keepdim=True).numpy()
        model = torch.nn.Linear(3, 1).to(TRAINING_DEVICE)
        assert all(getattr(parameter, "on_device", False) for parameter in model.parameters())
        assert model(torch.ones(1, 3)).on_device
    with DeviceTracker(no_sync=True):
        with pytest.raises(AssertionError, match="host wait"):
            on_device.sum().item()


def test_evaluation_keeps_float64_and_numpy_off_the_training_device(cvae_dir, data_dir, tmp_path):
    for name in ("ae.pt", "vae.pt", "cvae.pt"):
        shutil.copy(cvae_dir / name, tmp_path / name)
    with DeviceTracker():
        evaluate.evaluate(tmp_path, data_dir, str(TRAINING_DEVICE), seed=0)
    assert (tmp_path / "metrics.json").exists()


def test_binarize_once_draws_on_the_host_and_returns_to_the_device():
    images = torch.rand(4, *models.IMAGE_SHAPE)
    with DeviceTracker():
        binarized = train.binarize_once(images.to(TRAINING_DEVICE))
        assert binarized.on_device
    assert torch.equal(binarized, torch.bernoulli(images, generator=torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("binarize", [False, True])
@pytest.mark.parametrize("model_class", [models.AE, models.VAE, models.CVAE])
def test_an_epoch_never_waits_for_the_device(model_class, binarize):
    torch.manual_seed(0)
    with DeviceTracker(no_sync=True):
        model = model_class().to(TRAINING_DEVICE)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
        images, labels = torch.rand(40, *models.IMAGE_SHAPE).to(TRAINING_DEVICE), (torch.arange(40) % 10).to(TRAINING_DEVICE)
        mean_loss = train.train_epoch(model, optimizer, images, labels, 16, binarize)
    assert mean_loss.on_device and mean_loss.item() > 0  # read after the epoch, outside the tracker


# Digits on demand: a Gaussian per class.

def test_class_samplers_fit_each_class_to_its_own_codes_alone():
    torch.manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    cluster = torch.arange(3000) % 3
    codes = centres[cluster] + torch.randn(3000, 2)
    labels = (cluster + 1) % 3  # class k is cluster k - 1: the samplers must follow the labels, not the order
    samplers = evaluate.class_samplers(codes, labels)
    for label, sampler in enumerate(samplers):
        own = codes[labels == label].double()
        torch.testing.assert_close(sampler.mean, own.mean(0))
        draws = sampler.sample(500)
        assert torch.equal(torch.cdist(draws, centres).argmin(1), torch.full((500,), (label - 1) % 3))


def test_requested_class_scores_on_hand_made_probabilities():
    sure = torch.tensor([[0.95, 0.05, 0.0], [0.05, 0.95, 0.0], [0.0, 0.05, 0.95]])
    unsure = torch.tensor([[0.6, 0.4, 0.0]])
    probabilities = torch.cat([sure, unsure, sure[[1]]])
    requested = torch.tensor([0, 1, 2, 0, 0])  # right and sure, right and sure, right and sure, right but unsure, wrong
    scores = metrics.requested_class_scores(probabilities, requested)
    assert scores["hit"] == pytest.approx(3 / 5) and scores["assigned"] == pytest.approx(4 / 5)
    assert scores["per_class_hit"] == pytest.approx([1 / 3, 1.0, 1.0])


# The conditional VAE.

def test_the_label_reaches_the_cvae_encoder_and_decoder():
    torch.manual_seed(0)
    x, y, z = images(4), torch.tensor([0, 1, 2, 3]), torch.randn(4, 20)
    for arch in ("mlp", "conv"):
        cvae = models.CVAE(arch=arch)
        assert not torch.allclose(cvae.encode(x, y)[0], cvae.encode(x, (y + 1) % 10)[0]), arch
        assert not torch.allclose(cvae.decode(z, y), cvae.decode(z, (y + 1) % 10)), arch
        cvae.loss(x, y).backward()
        for name, parameter in cvae.named_parameters():
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, (arch, name)


def test_the_cvae_loss_is_the_vae_loss_with_the_one_hot_label_appended():
    torch.manual_seed(0)
    cvae, x, y = models.CVAE(beta=2.0), images(5), torch.tensor([3, 1, 4, 1, 5])
    one_hot = torch.nn.functional.one_hot(y, 10).float()
    torch.manual_seed(1)
    loss = cvae.loss(x, y)
    torch.manual_seed(1)
    mu, logvar = cvae.encoder(torch.cat([x.flatten(1), one_hot], 1)).chunk(2, dim=1)
    z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
    logits = cvae.decoder(torch.cat([z, one_hot], 1))
    reconstruction = -Bernoulli(logits=logits, validate_args=False).log_prob(x).sum() / 5
    kl = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).sum(1).mean()
    torch.testing.assert_close(loss, reconstruction + 2.0 * kl)


def test_a_trained_cvae_draws_the_digit_it_is_told():
    torch.manual_seed(0)
    templates = (torch.rand(2, 1, 28, 28) > 0.5).float()
    y = torch.arange(64) % 2
    x = torch.where(torch.rand(64, 1, 28, 28) < 0.05, 1 - templates[y], templates[y])
    cvae = models.CVAE(latent_dim=2, classes=2)
    optimizer = torch.optim.Adam(cvae.parameters(), lr=2e-3)
    for _ in range(300):
        optimizer.zero_grad()
        cvae.loss(x, y).backward()
        optimizer.step()
    with torch.no_grad():
        z = torch.randn(100, 2)
        for label in (0, 1):
            drawn = cvae.decode(z, torch.full((100,), label)).round()
            assert (drawn == templates[label]).float().mean() > 0.9  # the pixels of the digit asked for
            assert (drawn == templates[1 - label]).float().mean() < 0.6  # about half, as for any random template


@pytest.fixture(scope="session")
def cvae_dir(trained_dir, data_dir, tmp_path_factory):
    """trained_dir's AE and VAE beside a CVAE trained with the same flags, evaluated together."""
    out_dir = tmp_path_factory.mktemp("cvae")
    for name in ("ae.pt", "vae.pt"):
        shutil.copy(trained_dir / name, out_dir / name)
    train.main(["--data-dir", str(data_dir), "--out-dir", str(out_dir), "--epochs", "2", "--device", "cpu", "--model", "cvae"])
    evaluate.main(["--data-dir", str(data_dir), "--out-dir", str(out_dir), "--device", "cpu"])
    return out_dir


def test_evaluation_with_a_cvae_adds_its_rows_and_figure(cvae_dir, trained_dir):
    # trained_dir holds the same ae.pt and vae.pt, evaluated with the same seed without the CVAE
    report, before = [json.loads((folder / "metrics.json").read_text()) for folder in (cvae_dir, trained_dir)]
    assert (cvae_dir / "style_cvae.png").stat().st_size > 0 and not (trained_dir / "style_cvae.png").exists()
    assert set(report["on_demand"]) == {"ae", "vae", "cvae", "cvae_fitted"}
    for name in ("cvae", "cvae_fitted"):
        assert set(report["on_demand"][name]) == {"hit", "assigned", "per_class_hit", "frechet_distance"}
        assert report["on_demand"][name]["hit"] == pytest.approx(np.mean(report["on_demand"][name]["per_class_hit"]))
    cvae = report["cvae"]
    assert cvae["config"] == models.CVAE().config and cvae["epochs"] == 2
    assert -cvae["test_log_likelihood"] < cvae["test_negative_elbo"] and 0 < cvae["test_reconstruction_mse"] < 1
    for key in ("samples", "on_demand", "latent_codes", "classifier", "anomaly"):  # the CVAE's draws come after every other
        assert {k: v for k, v in report[key].items() if k in before[key]} == before[key], key


def test_a_cvae_trained_differently_is_refused(cvae_dir, data_dir, tmp_path):
    for name in ("ae.pt", "vae.pt"):
        shutil.copy(cvae_dir / name, tmp_path / name)
    train.main(["--data-dir", str(data_dir), "--out-dir", str(tmp_path), "--epochs", "1", "--device", "cpu",
                "--model", "cvae", "--latent-dim", "5"])
    with pytest.raises(SystemExit, match=r"cvae\.pt and ae\.pt were trained differently \(latent_dim 5 against 20\)"):
        evaluate.evaluate(tmp_path, data_dir, "cpu", seed=0)
    loaded, _ = evaluate.load_models(tmp_path, torch.device("cpu"), with_cvae=False)  # main.py without --cvae leaves it alone
    assert set(loaded) == {"ae", "vae"}


# A student's copy: the code a figure uses, train.py with models.py alone, and the README's snippet.

def test_code_is_z_for_the_ae_and_the_posterior_mean_for_the_vae():
    ae, vae, x = models.AE(), models.VAE(), images(3)
    torch.testing.assert_close(ae.code(x), ae.encode(x))
    torch.testing.assert_close(vae.code(x), vae.encode(x)[0])


def test_train_py_needs_only_models_py_beside_it(data_dir, tmp_path):
    for name in ("train.py", "models.py"):
        shutil.copy(HERE / name, tmp_path / name)
    for flags in ([], ["--model", "cvae"]):
        result = subprocess.run([sys.executable, "train.py", "--data-dir", str(data_dir), "--epochs", "1", "--device", "cpu", *flags],
                                cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": ""})
        assert result.returncode == 0, result.stderr
    assert all((tmp_path / "results" / f"{name}.pt").exists() for name in ("ae", "vae", "cvae"))


def test_the_readme_snippet_runs_as_written(trained_dir, data_dir, tmp_path):
    snippet = re.search(r"<!-- snippet -->\n```python\n(.*?)```", (HERE / "README.md").read_text(), re.S).group(1)
    (tmp_path / "results").mkdir()
    for name in ("ae.pt", "vae.pt", "metrics.json"):
        shutil.copy(trained_dir / name, tmp_path / "results" / name)
    shutil.copytree(data_dir, tmp_path / "data")
    result = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(HERE)})
    assert result.returncode == 0, result.stderr
    for name in ("vae_samples.png", "vae_reconstructions.png", "ae_mixture_samples.png"):  # the last: the AE sampled
        assert (tmp_path / name).stat().st_size > 0, name
    digits, inverted = result.stdout.splitlines()
    assert re.fullmatch(r"unusual: \[((True|False), ){7}(True|False)\]", digits)
    assert inverted == f"unusual: [{', '.join(['True'] * 8)}]"  # inverted digits are far from anything seen in training


# The spread over seeds (seeds.py).

def test_seed_comparisons_count_only_where_every_seed_agrees():
    per_seed = [{"a": 0.6, "b": 0.5, "c": 0.4}, {"a": 0.7, "b": 0.5, "c": 0.6}, {"a": 0.55, "b": 0.5, "c": 0.45}]
    assert seeds.compare(per_seed, "a", "b", "higher")["verdict"] == "a better in every seed"
    assert seeds.compare(per_seed, "a", "b", "lower")["verdict"] == "b better in every seed"
    assert seeds.compare(per_seed, "b", "c", "higher")["verdict"] == "within seed-to-seed noise"
    assert seeds.compare(per_seed, "a", "b", "higher")["differences"] == pytest.approx([0.1, 0.2, 0.05])


def test_compare_measures_each_difference_in_seed_to_seed_standard_deviations(tmp_path, monkeypatch, capsys):
    aggregated = {"numbers": {"a": {"std": 0.5}, "b": {"std": 2.0}, "c": {"std": 0.0}, "d": {"std": 0.0}}}
    mine, reference = {"a": 1.0, "b": 3.0, "c": 7.0, "d": 1.0, "timings_seconds": 5.0}, {"a": 2.0, "b": 3.5, "c": 7.0, "d": 2.0}
    assert seeds.compare_runs(mine, reference, aggregated) == [("d", 1.0, 2.0, math.inf), ("a", 1.0, 2.0, 2.0),
                                                                ("b", 3.0, 3.5, 0.25), ("c", 7.0, 7.0, 0.0)]
    monkeypatch.setattr(seeds, "SEEDS_DIR", tmp_path)
    for name, report in [("aggregate.json", aggregated), ("mine.json", mine), ("reference.json", reference)]:
        (tmp_path / name).write_text(json.dumps(report))
    seeds.main(["--compare", str(tmp_path / "mine.json"), "--reference", str(tmp_path / "reference.json")])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == seeds.NOISE_RULE and len(lines) == 7
    assert lines[2].split() == ["d", "1", "2", "inf", "real", "difference"] and lines[3].split()[-2:] == ["2.00", "borderline"]
    assert lines[5].split()[-1] == "noise" and lines[6] == "2 noise, 1 borderline, 1 real difference"


def test_compare_measures_against_the_five_seeds_mean_by_default(tmp_path, monkeypatch, capsys):
    aggregated = {"numbers": {"a": {"mean": 2.0, "std": 0.5}, "b": {"mean": 3.0, "std": 0.1}}}
    monkeypatch.setattr(seeds, "SEEDS_DIR", tmp_path)
    (tmp_path / "aggregate.json").write_text(json.dumps(aggregated))
    (tmp_path / "mine.json").write_text(json.dumps({"a": 1.5, "b": 3.4}))
    seeds.main(["--compare", str(tmp_path / "mine.json")])
    lines = capsys.readouterr().out.splitlines()
    assert "five-seed mean" in lines[1] and lines[2].split()[:4] == ["b", "3.4", "3", "4.00"] and lines[3].split()[-2:] == ["1.00", "noise"]


def test_the_aggregate_spans_every_result_of_every_seed(trained_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(seeds, "SEEDS_DIR", tmp_path)
    report = json.loads((trained_dir / "metrics.json").read_text())
    for seed, loss in [(0, 100.0), (1, 104.0)]:
        report["vae"]["test_loss"] = loss
        (tmp_path / f"seed_{seed}.json").write_text(json.dumps(report))
    aggregate = seeds.aggregate([0, 1])
    assert aggregate["numbers"]["vae.test_loss"] == {"mean": 102.0, "std": pytest.approx(8 ** 0.5), "min": 100.0,
                                                     "max": 104.0, "values": [100.0, 104.0]}
    assert "samples.vae_mixture_z.frechet_distance" in aggregate["numbers"] and "on_demand.ae.per_class_hit.9" in aggregate["numbers"]
    assert not any("seconds" in path or "config" in path for path in aggregate["numbers"])
    for comparison in aggregate["comparisons"]:
        means = [aggregate["numbers"][comparison[side]]["mean"] for side in ("a", "b")]
        assert len(comparison["differences"]) == 2 and comparison["mean_difference"] == pytest.approx(means[0] - means[1])


# The measurements behind the README's claims: benchmark.py and mixture_starts.py write their numbers.

def test_benchmark_writes_its_table_with_the_machine(data_dir, tmp_path):
    import benchmark
    benchmark.main(["--data-dir", str(data_dir), "--device", "cpu", "--rounds", "1", "--out", str(tmp_path / "benchmark.json")])
    report = json.loads((tmp_path / "benchmark.json").read_text())
    assert set(report["median_seconds"]) == {"standard", "tensors", "train.py"} and report["ratio_to_standard"]["standard"] == 1
    for name, seconds in report["median_seconds"].items():
        assert report["ratio_to_standard"][name] == pytest.approx(seconds / report["median_seconds"]["standard"])
    assert report["machine"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and report["machine"]["cpu"]


def test_mixture_starts_refits_the_mixtures_from_each_start_seed(trained_dir, data_dir, tmp_path):
    import mixture_starts
    for name in ("ae.pt", "vae.pt"):
        shutil.copy(trained_dir / name, tmp_path / name)
    mixture_starts.main(["--data-dir", str(data_dir), "--out-dir", str(tmp_path), "--starts", "1", "2", "--seeds", "2"])
    report = json.loads((tmp_path / "mixture_starts.json").read_text())
    for row in ("ae_mixture", "vae_mixture", "vae_mixture_z"):
        for starts in (1, 2):
            result = report[f"{row}, {starts} starts"]
            assert len(result["scores"]) == 2 and result["seconds_per_fit"] > 0
            recognisable = [100 * score["recognisable"] for score in result["scores"]]
            assert result["recognisable_range"] == pytest.approx(max(recognisable) - min(recognisable))


# explore.py: the latent space by hand, tested headless on tiny trained models.

@pytest.fixture
def explorer(cvae_dir, data_dir):
    """A fresh explorer for each test (half a second): a test that clicks, slides or switches leaves no state behind."""
    import explore
    figure = Figure(figsize=(13, 8))
    args = argparse.Namespace(out_dir=cvae_dir, data_dir=data_dir, view="z", point=[0.0, 0.0], around="codes")
    return explore.load_explorer(figure, args)


def click(explorer, name, across, up):
    """A left click at a point of a model's scatter, given as shares of its axes' width and height, through
    the figure's own event handling; returns the point's (u, v) in the scatter's coordinates."""
    ax = explorer.scatters[name].axes
    x, y = ax.transAxes.transform((across, up))
    for kind in ("button_press_event", "button_release_event"):
        explorer.figure.canvas.callbacks.process(kind, MouseEvent(kind, explorer.figure.canvas, x, y, button=1))
    return ax.transData.inverted().transform((x, y))


@torch.no_grad()
def test_the_explorer_decodes_the_point_clicked_with_the_other_coordinates_at_the_codes_mean(explorer, data_dir):
    test_images, test_labels = train.load_split("mnist", data_dir, False, "cpu")
    explorer.sliders[0].set_val(1.5)
    u, v = click(explorer, "vae", 0.3, 0.8)
    for name, model in explorer.models.items():
        codes = evaluate.codes_of(model, test_images, test_labels).double()
        z = codes.mean(0)
        z[:2] = torch.tensor([u, v], dtype=z.dtype)
        z[2] += 1.5 * codes[:, 2].std()
        label = torch.tensor([0]) if name == "cvae" else None
        expected = model.decode(z.float()[None], label)[0, 0]
        torch.testing.assert_close(torch.as_tensor(explorer.images[name].get_array()), expected, msg=name)
    assert list(explorer.markers["ae"].get_data()[0]) == pytest.approx([u])
    legend = explorer.figure.legends[0]  # which colour is which digit
    assert [text.get_text() for text in legend.get_texts()] == datasets.MNIST.classes
    colours = [line.get_color() for line in legend.get_lines()]
    assert colours == [colormaps["tab10"](label) for label in range(10)]


@torch.no_grad()
def test_the_explorer_switches_to_principal_directions_around_the_prior_and_decodes_as_any_label(explorer, data_dir):
    test_images, test_labels = train.load_split("mnist", data_dir, False, "cpu")
    explorer.view_buttons.set_active(1)
    explorer.around_buttons.set_active(0)  # the other coordinates at 0, the prior's centre
    explorer.label_buttons.set_active(7)
    explorer.sliders[0].set_val(-1.0)
    u, v = click(explorer, "ae", 0.6, 0.25)
    for name, model in explorer.models.items():
        codes = evaluate.codes_of(model, test_images, test_labels).double()
        view = explorer.views[name]["pca"]
        covariance, basis = torch.cov(codes.T), view.basis
        variances = (basis.T @ covariance @ basis).diagonal()
        torch.testing.assert_close(basis.T @ basis, torch.eye(20, dtype=basis.dtype))  # orthonormal ...
        torch.testing.assert_close(basis.T @ covariance @ basis, torch.diag(variances))  # ... principal directions ...
        assert torch.all(variances[:-1] >= variances[1:] - 1e-9)  # ... by decreasing variance
        top_two = basis[:, :2] @ basis[:, :2].T  # the point is relative to the codes' mean along these alone
        z = top_two @ codes.mean(0) + u * basis[:, 0] + v * basis[:, 1] - 1.0 * basis[:, 2]
        label = torch.tensor([7]) if name == "cvae" else None
        torch.testing.assert_close(torch.as_tensor(explorer.images[name].get_array()), model.decode(z.float()[None], label)[0, 0])
        if name != "cvae":
            offsets = torch.as_tensor(explorer.scatters[name].get_offsets())
            torch.testing.assert_close(offsets, (codes - codes.mean(0)) @ basis[:, :2])
    assert "as 7" in explorer.images["cvae"].axes.get_title()


def test_explore_save_writes_the_view_and_no_display_says_how(cvae_dir, trained_dir, data_dir, tmp_path):
    import explore
    explore.main(["--data-dir", str(data_dir), "--out-dir", str(cvae_dir), "--save", str(tmp_path / "view.png"), "--view", "pca"])
    assert (tmp_path / "view.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    headless = {key: value for key, value in os.environ.items() if key not in ("DISPLAY", "WAYLAND_DISPLAY")}
    result = subprocess.run([sys.executable, "explore.py", "--data-dir", str(data_dir), "--out-dir", str(trained_dir)], cwd=HERE,
                            capture_output=True, text=True, timeout=300, env={**headless, "MPLBACKEND": "agg"})
    assert result.returncode == 1 and "Traceback" not in result.stderr and result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith("error: no display to open a window on")
    assert "python explore.py --save explore.png" in result.stderr
    with pytest.raises(SystemExit) as exit_info:  # in-process: the checkpoints are checked before pyplot picks a window
        explore.main(["--data-dir", str(data_dir), "--out-dir", str(tmp_path)])
    message = str(exit_info.value.code)
    assert message.startswith(f"error: {tmp_path / 'ae.pt'} not found; train it first") and message.count("\n") == 0
