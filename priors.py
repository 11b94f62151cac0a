"""Densities fitted to a trained model's codes, to draw latents from instead of N(0, I).

An AE's decoder turns codes into digits well; what it lacks is a known distribution to draw codes
from, and N(0, I) is not it. Fitting a density to its training codes after training (ex-post
density estimation: Ghosh et al., "From Variational to Deterministic Autoencoders", ICLR 2020)
gives it one. The same fit to a VAE's posterior means shows how far its codes are from its prior.

Fits run in float64 on the CPU (codes are small: 60,000 x 20), and draws use torch's CPU generator,
so samples do not depend on the device. This file imports only torch.
"""
import math

import torch


def covariance(x):
    """The mean and the maximum-likelihood covariance of the rows of x."""
    mean = x.mean(0)
    centred = x - mean
    return mean, centred.T @ centred / len(x)


class Gaussian:
    """One full-covariance Gaussian fitted by maximum likelihood: the codes' mean and covariance."""

    def __init__(self, codes, ridge=1e-6):
        codes = codes.detach().cpu().double()
        self.mean, self.covariance = covariance(codes)
        self.covariance += ridge * torch.eye(codes.shape[1], dtype=codes.dtype)
        self.scale = torch.linalg.cholesky(self.covariance)  # covariance = scale @ scale.T

    def transform(self, eps):
        """Standard-normal draws eps (N, d) mapped to mean + scale @ eps: draws from this Gaussian."""
        return (self.mean + eps.double() @ self.scale.T).float()

    def sample(self, n):
        return self.transform(torch.randn(n, len(self.mean)))

    def log_prob(self, z):
        """log N(z | mean, covariance) of each row of z, on the host in float64: with L the Cholesky factor,
        -0.5 (|L^-1 (z - mean)|^2 + log det covariance + d log 2 pi)."""
        z = z.detach().cpu().double()
        whitened = torch.linalg.solve_triangular(self.scale, (z - self.mean).T, upper=False)
        log_determinant = 2 * self.scale.diagonal().log().sum()
        return -0.5 * (whitened.pow(2).sum(0) + log_determinant + len(self.mean) * math.log(2 * math.pi))


class GaussianMixture:
    """K full-covariance Gaussians fitted to codes by expectation-maximisation (EM), from several starts.

    E step: each code's responsibilities, p(component | code), computed in log space so that codes far
    from every component do not underflow. M step: each component's weight, mean and covariance from
    the codes, weighted by those responsibilities. A small ridge keeps every covariance invertible.

    EM climbs to the nearest local maximum of the likelihood, and which one depends on where it starts;
    so do the mixture's draws. Each start is k-means from a k-means++ seeding (scikit-learn's default),
    EM runs from `starts` of them, and the fit with the highest log-likelihood is kept (scikit-learn's
    n_init): the draws then depend on the seed much less (mixture_starts.py measures it).
    """

    def __init__(self, codes, components=10, starts=5, max_iterations=100, tolerance=1e-3, ridge=1e-4, seed=0):
        codes = codes.detach().cpu().double()
        self.centre = codes.mean(0)  # fitting centred codes keeps the moment sums below well conditioned
        x = codes - self.centre
        pairs = pair_products(x)  # the same at every step
        generator = torch.Generator().manual_seed(seed)
        self.ridge = ridge * torch.eye(x.shape[1], dtype=x.dtype)
        self.starts = starts
        fits = [self.expectation_maximisation(x, pairs, kmeans(x, components, generator), max_iterations, tolerance)
                for _ in range(starts)]
        self.start_log_likelihoods = [fit["log_likelihood"] for fit in fits]
        best = max(fits, key=lambda fit: fit["log_likelihood"])
        self.log_weights, self.means, self.scales = best["log_weights"], best["means"], best["scales"]
        self.log_likelihood, self.iterations = best["log_likelihood"], best["iterations"]

    def expectation_maximisation(self, x, pairs, means, max_iterations, tolerance):
        """EM from these starting means (one shared covariance, equal weights) until the log-likelihood per
        code gains less than tolerance; returns the fit, its log-likelihood per code and its iterations."""
        components = len(means)
        fit = {"log_weights": torch.full((components,), -math.log(components), dtype=x.dtype), "means": means,
               "scales": torch.linalg.cholesky(covariance(x)[1] + self.ridge).expand(components, -1, -1)}
        previous, iterations = -math.inf, 0
        while iterations < max_iterations:
            iterations += 1
            log_joint = fit["log_weights"] + component_log_densities(x, pairs, fit["means"], fit["scales"])  # log p(k) p(x|k)
            log_likelihood = torch.logsumexp(log_joint, dim=1, keepdim=True)  # log p(x), per code
            fit = self.maximise(x, pairs, (log_joint - log_likelihood).exp())
            fit["log_likelihood"] = log_likelihood.mean().item()  # per code, before this M step
            if fit["log_likelihood"] - previous < tolerance:
                break
            previous = fit["log_likelihood"]
        return {**fit, "iterations": iterations}

    def maximise(self, x, pairs, responsibilities):
        """Weights, means and covariances (E[x x^T] - mean mean^T) from responsibility-weighted sums."""
        d = x.shape[1]
        counts = responsibilities.sum(0)
        log_weights = (counts / len(x)).log()
        counts = counts.clamp_min(1e-12)[:, None]
        means = responsibilities.T @ x / counts
        upper = responsibilities.T @ pairs / counts  # E[x_i x_j], i <= j, per component
        rows, columns = torch.triu_indices(d, d)
        second_moments = x.new_zeros(len(means), d, d)
        second_moments[:, rows, columns] = upper
        second_moments[:, columns, rows] = upper
        covariances = second_moments - means[:, :, None] * means[:, None, :]
        return {"log_weights": log_weights, "means": means, "scales": torch.linalg.cholesky(covariances + self.ridge)}

    def sample(self, n):
        """Pick a component for each draw by weight, then draw from its Gaussian."""
        components = torch.multinomial(self.log_weights.exp(), n, replacement=True)
        eps = torch.randn(n, self.means.shape[1], dtype=self.means.dtype)
        draws = self.means[components] + (self.scales[components] @ eps[:, :, None]).squeeze(2)
        return (self.centre + draws).float()

    def likeliest_component(self, codes):
        """The component each code most likely came from, argmax over k of p(k) p(code | k): the mixture read
        as a clustering. On the host, as the fit."""
        x = codes.detach().cpu().double() - self.centre
        return (self.log_weights + component_log_densities(x, pair_products(x), self.means, self.scales)).argmax(1)


def component_log_densities(x, pairs, means, scales):
    """log N(x | mean_k, covariance_k) for every (centred) code and component, shape (N, K).

    The Mahalanobis distance (x - m)^T P (x - m), P the inverse covariance, is expanded as
    x^T P x - 2 m^T P x + m^T P m, whose first term is one matrix product of pairs
    (pair_products of x) with P's upper triangle: no (N, K, d) tensor."""
    d = x.shape[1]
    precisions = torch.cholesky_inverse(scales)  # (K, d, d)
    precision_means = (precisions @ means[:, :, None]).squeeze(2)  # (K, d)
    rows, columns = torch.triu_indices(d, d)
    pair_weights = 2 - (rows == columns).to(x.dtype)  # x^T P x = sum over i <= j of (2 - [i = j]) P_ij x_i x_j
    mahalanobis = (pairs @ (precisions[:, rows, columns] * pair_weights).T - 2 * x @ precision_means.T
                   + (means * precision_means).sum(1))
    log_determinant = 2 * scales.diagonal(dim1=1, dim2=2).log().sum(1)
    return -0.5 * (mahalanobis + log_determinant + d * math.log(2 * math.pi))


def pair_products(x):
    """x_i x_j for every pair i <= j of each row's coordinates: (N, d(d+1)/2), the distinct entries of
    its outer product x x^T, which is symmetric."""
    rows, columns = torch.triu_indices(x.shape[1], x.shape[1])
    return x[:, rows] * x[:, columns]


def kmeans(x, k, generator, max_iterations=100):
    """k cluster means by Lloyd's algorithm from a k-means++ seeding: each code goes to its nearest mean,
    each mean moves to the average of its codes, until no code changes cluster. (A mean left with no
    codes stays where it is.)"""
    means, clusters = spread_out_means(x, k, generator), None
    for _ in range(max_iterations):
        nearest = torch.cdist(x, means).argmin(1)
        if clusters is not None and torch.equal(nearest, clusters):
            break
        clusters = nearest
        counts = torch.bincount(clusters, minlength=k)[:, None]
        sums = torch.zeros_like(means).index_add_(0, clusters, x)
        means = torch.where(counts > 0, sums / counts.clamp_min(1), means)
    return means


def spread_out_means(x, k, generator):
    """k starting means drawn from the codes, each next one with probability proportional to its squared
    distance from the nearest already drawn (k-means++ seeding), so that every cluster gets a mean."""
    means = x[torch.randint(len(x), (1,), generator=generator)]
    for _ in range(k - 1):
        distance = torch.cdist(x, means).min(dim=1).values.pow(2)
        weights = distance if distance.sum() > 0 else torch.ones_like(distance)  # all codes equal: any will do
        means = torch.cat([means, x[torch.multinomial(weights, 1, generator=generator)]])
    return means
