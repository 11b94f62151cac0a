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


class GaussianMixture:
    """K full-covariance Gaussians fitted to codes by expectation-maximisation (EM).

    E step: each code's responsibilities, p(component | code), computed in log space so that codes far
    from every component do not underflow. M step: each component's weight, mean and covariance from
    the codes, weighted by those responsibilities. A small ridge keeps every covariance invertible.
    """

    def __init__(self, codes, components=10, max_iterations=100, tolerance=1e-3, ridge=1e-4, seed=0):
        codes = codes.detach().cpu().double()
        self.centre = codes.mean(0)  # fitting centred codes keeps the moment sums below well conditioned
        x = codes - self.centre
        outer_products = (x[:, :, None] * x[:, None, :]).flatten(1)  # (N, d * d), the same at every M step
        generator = torch.Generator().manual_seed(seed)
        self.ridge = ridge * torch.eye(x.shape[1], dtype=x.dtype)
        self.means = spread_out_means(x, components, generator)
        self.scales = torch.linalg.cholesky(covariance(x)[1] + self.ridge).expand(components, -1, -1)
        self.log_weights = torch.full((components,), -math.log(components), dtype=x.dtype)
        previous, self.iterations = -math.inf, 0
        while self.iterations < max_iterations:
            self.iterations += 1
            log_joint = self.log_weights + self.component_log_densities(x, outer_products)  # (N, K): log p(k) p(x | k)
            log_likelihood = torch.logsumexp(log_joint, dim=1, keepdim=True)
            self.maximise(x, outer_products, (log_joint - log_likelihood).exp())
            self.log_likelihood = log_likelihood.mean().item()  # per code, before this M step
            if self.log_likelihood - previous < tolerance:
                break
            previous = self.log_likelihood

    def component_log_densities(self, x, outer_products):
        """log N(x | mean_k, covariance_k) for every (centred) code and component, shape (N, K).

        The Mahalanobis distance (x - m)^T P (x - m), P the inverse covariance, is expanded as
        x^T P x - 2 m^T P x + m^T P m, whose first term is outer_products @ P: no (N, K, d) tensor."""
        d = x.shape[1]
        precisions = torch.cholesky_inverse(self.scales)  # (K, d, d)
        precision_means = (precisions @ self.means[:, :, None]).squeeze(2)  # (K, d)
        mahalanobis = (outer_products @ precisions.flatten(1).T - 2 * x @ precision_means.T
                       + (self.means * precision_means).sum(1))
        log_determinant = 2 * self.scales.diagonal(dim1=1, dim2=2).log().sum(1)
        return -0.5 * (mahalanobis + log_determinant + d * math.log(2 * math.pi))

    def maximise(self, x, outer_products, responsibilities):
        """Weights, means and covariances (E[x x^T] - mean mean^T) from responsibility-weighted sums."""
        d = x.shape[1]
        counts = responsibilities.sum(0)
        self.log_weights = (counts / len(x)).log()
        counts = counts.clamp_min(1e-12)[:, None]
        self.means = responsibilities.T @ x / counts
        second_moments = (responsibilities.T @ outer_products / counts).view(-1, d, d)
        covariances = second_moments - self.means[:, :, None] * self.means[:, None, :]
        self.scales = torch.linalg.cholesky(covariances + self.ridge)

    def sample(self, n):
        """Pick a component for each draw by weight, then draw from its Gaussian."""
        components = torch.multinomial(self.log_weights.exp(), n, replacement=True)
        eps = torch.randn(n, self.means.shape[1], dtype=self.means.dtype)
        draws = self.means[components] + (self.scales[components] @ eps[:, :, None]).squeeze(2)
        return (self.centre + draws).float()


def spread_out_means(x, k, generator):
    """k starting means drawn from the codes, each next one with probability proportional to its squared
    distance from the nearest already drawn (k-means++ seeding), so that EM starts with every cluster covered."""
    means = x[torch.randint(len(x), (1,), generator=generator)]
    for _ in range(k - 1):
        distance = torch.cdist(x, means).min(dim=1).values.pow(2)
        weights = distance if distance.sum() > 0 else torch.ones_like(distance)  # all codes equal: any will do
        means = torch.cat([means, x[torch.multinomial(weights, 1, generator=generator)]])
    return means
