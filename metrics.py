"""The numbers behind the figures: how recognisable decoded images are, how close they come to real
data, and how well the VAE models the data (its likelihood and the latent dimensions it uses).

Sample quality is judged by a small classifier trained on the same dataset:
  recognisable      the share of images it assigns to some class with probability >= 0.9
  coverage          the entropy of its predicted-class histogram over log(classes): 1 when every
                    class is equally frequent, 0 when all images fall in one class
  frechet_distance  the Frechet distance between Gaussians fitted to its last hidden layer's
                    features of these images and of the test split: the FID formula (Heusel et al.,
                    NeurIPS 2017) in a feature space made for digits (0 for identical statistics)

Telling outliers from the training data by a score (higher: more unusual), and code lengths:
  auroc             the chance that a random outlier scores above a random test image (ties count
                    half): 1 separates them perfectly, 0.5 is a coin toss, below 0.5 is backwards
  threshold_at      the score that keeps 95% of the test images; fpr_at: the share of outliers it keeps
                    (the false-positive rate at 95% kept, fpr_at_95, the images kept being the positives)
  compressed_bits   a lossless compressor's length of some bytes (zlib or lzma), the yardstick of a
                    likelihood used as a code length; compressed_nats: each image's, 8-bit pixels

Statistics run in float64 on the host (the CPU): some training devices (Apple's MPS) have no float64.
This file imports only torch (and the standard library's compressors).
"""
import lzma
import math
import zlib

import torch
import torch.nn.functional as F
from torch import nn

LOG_2PI = math.log(2 * math.pi)
BATCH = 1000  # images per forward pass


class Classifier(nn.Module):
    """An MLP, 784-256-256-classes; its last hidden layer is the feature space of the Frechet distance."""

    def __init__(self, classes=10, hidden_dim=256):
        super().__init__()
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, hidden_dim), nn.ReLU(),
                                      nn.Linear(hidden_dim, hidden_dim), nn.ReLU())
        self.head = nn.Linear(hidden_dim, classes)

    def forward(self, x):
        return self.head(self.features(x))


def train_classifier(images, labels, epochs=5, batch_size=128, lr=2e-3):
    """Cross-entropy with Adam and a one-cycle learning-rate schedule: about 98% on MNIST in 5 epochs."""
    classifier = Classifier(int(labels.max()) + 1).to(images.device)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=lr, fused=True)
    steps = epochs * math.ceil(len(images) / batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps)
    classifier.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(images), device=images.device).split(batch_size):
            loss = F.cross_entropy(classifier(images[batch]), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return classifier.eval()


@torch.no_grad()
def classify(classifier, images, batch_size=BATCH):
    """(class probabilities, features) for every image; features on the CPU in float64."""
    outputs = [(classifier.head(features).softmax(1), features)
               for features in map(classifier.features, images.split(batch_size))]
    return torch.cat([p for p, _ in outputs]), torch.cat([f for _, f in outputs]).cpu().double()


def accuracy(classifier, images, labels):
    return (classify(classifier, images)[0].argmax(1) == labels).float().mean().item()


def recognisable(probabilities, threshold=0.9):
    """The share of images whose most likely class has probability >= threshold."""
    return (probabilities.max(1).values >= threshold).float().mean().item()


def requested_class_scores(probabilities, requested, threshold=0.9):
    """How often images drawn for a requested class come out as that class:
    hit            the share the classifier assigns to the requested class with probability >= threshold
    assigned       the share it assigns to the requested class at all (its most likely class)
    per_class_hit  hit within each requested class, in class order"""
    confidence, predicted = probabilities.cpu().max(1)
    assigned = predicted == requested.cpu()
    hit = (assigned & (confidence >= threshold)).float()
    per_class = torch.zeros(probabilities.shape[1]).index_add_(0, requested.cpu(), hit)
    counts = torch.bincount(requested.cpu(), minlength=probabilities.shape[1]).clamp_min(1)
    return {"hit": hit.mean().item(), "assigned": assigned.float().mean().item(), "per_class_hit": (per_class / counts).tolist()}


def coverage(probabilities):
    """Entropy of the predicted-class histogram divided by its maximum, log(classes)."""
    classes = probabilities.shape[1]
    shares = torch.bincount(probabilities.argmax(1), minlength=classes).cpu().double() / len(probabilities)
    return ((0.0 - torch.special.xlogy(shares, shares).sum()) / math.log(classes)).item()  # 0.0 - : never -0.0


def covariance(x):
    """The maximum-likelihood covariance of the rows of x (it divides by N, as priors.py's fits do)."""
    return torch.cov(x.T, correction=0)


def gaussian_statistics(features):
    """Mean and covariance of feature vectors, in float64."""
    features = features.cpu().double()
    return features.mean(0), covariance(features)


def symmetric_sqrt(matrix):
    """The square root of a symmetric positive semi-definite matrix, through its eigendecomposition."""
    values, vectors = torch.linalg.eigh(matrix)
    return vectors * values.clamp_min(0).sqrt() @ vectors.T


def frechet_distance(mean1, cov1, mean2, cov2):
    """Frechet distance between N(mean1, cov1) and N(mean2, cov2):

        |mean1 - mean2|^2 + tr(cov1) + tr(cov2) - 2 tr((cov1^1/2 cov2 cov1^1/2)^1/2)

    The last trace equals tr((cov1 cov2)^1/2), computed here from a symmetric matrix, whose
    eigenvalues are real and non-negative, rather than from the non-symmetric product.
    """
    root1 = symmetric_sqrt(cov1)
    cross = torch.linalg.eigvalsh(root1 @ cov2 @ root1).clamp_min(0).sqrt().sum()
    return ((mean1 - mean2).pow(2).sum() + cov1.trace() + cov2.trace() - 2 * cross).item()


def squared_error(reconstructions, images):
    """The squared error of each reconstruction, as its mean over pixels: (N,) in float64 on the host. One
    convention everywhere: per pixel, so it compares across image sizes and with a Gaussian's sigma^2."""
    return (reconstructions - images).flatten(1).pow(2).mean(1).cpu().double()


def sample_scores(classifier, images, reference):
    """recognisable, coverage and frechet_distance of images; reference is gaussian_statistics of the test features."""
    probabilities, features = classify(classifier, images)
    return {"recognisable": recognisable(probabilities), "coverage": coverage(probabilities),
            "frechet_distance": frechet_distance(*gaussian_statistics(features), *reference)}


@torch.no_grad()
def importance_weighted_bound(vae, images, samples=50, labels=None, decodes_per_chunk=5000):
    """L_k for each image, the importance-weighted lower bound on log p(x) (Burda et al., ICLR 2016):

        L_k = log (1/k) sum_i p(x | z_i) p(z_i) / q(z_i | x),   z_1..z_k ~ q(z | x)

    L_1 is the ELBO (with the KL estimated from the sample) and log p(x) >= L_k+1 >= L_k: more samples
    give a tighter bound. p(x|z) is the model's own likelihood (vae.likelihood), so L_k is in its nats.
    With labels (a conditional VAE) every term is conditioned on them, and L_k bounds log p(x | y).
    One encoder pass per image; the sum is a logsumexp, in log space throughout.
    """
    vae.eval()
    chunk = max(1, decodes_per_chunk // samples)
    bounds = []
    for x, y in zip(images.split(chunk), labels.split(chunk) if labels is not None else [None] * len(images)):
        mu, logvar = vae.encode(x, y)
        eps = torch.randn(samples, *mu.shape, device=mu.device)
        z = mu + torch.exp(0.5 * logvar) * eps  # (k, n, d)
        labels_of_z = None if y is None else y.repeat(samples)  # z.flatten(0, 1) holds the k draws one after another
        logits = vae.decode_logits(z.flatten(0, 1), labels_of_z)
        log_likelihood = -vae.likelihood.negative_log_prob(logits, x.repeat(samples, 1, 1, 1)).view(samples, len(x))
        log_prior = -0.5 * (z.pow(2) + LOG_2PI).sum(2)
        log_posterior = -0.5 * (eps.pow(2) + logvar + LOG_2PI).sum(2)
        bounds.append(torch.logsumexp(log_likelihood + log_prior - log_posterior, dim=0) - math.log(samples))
    return torch.cat(bounds)


def active_units(means, threshold=0.01):
    """Latent dimensions whose posterior mean varies across images (variance > threshold, Burda et al.):
    the others sit at the prior whatever the input, carrying no information."""
    return int((means.var(0) > threshold).sum())


def principal_directions(codes):
    """Principal component analysis of codes (N, d), on the host in float64: (mean, directions, variances),
    the directions as the columns of a d x d orthogonal matrix, by decreasing variance of the codes along them."""
    codes = codes.detach().cpu().double()
    variances, directions = torch.linalg.eigh(covariance(codes))  # ascending
    return codes.mean(0), directions.flip(1), variances.flip(0).clamp_min(0)


def variance_share(variances, k=2):
    """The share of the codes' total variance that their top k principal directions hold."""
    return (variances[:k].sum() / variances.sum()).item()


def auroc(inlier_scores, outlier_scores):
    """The area under the ROC curve of flagging outliers by a higher score: the share of (outlier, inlier)
    pairs in which the outlier scores higher, ties counted half (the Mann-Whitney U statistic), from ranks."""
    scores = torch.cat([inlier_scores, outlier_scores]).detach().cpu().double()
    ordered, order = scores.sort()
    _, group, counts = torch.unique_consecutive(ordered, return_inverse=True, return_counts=True)
    average_ranks = (counts.cumsum(0) - (counts - 1) / 2).double()  # ranks from 1; tied scores share their mean rank
    ranks = torch.empty_like(scores)
    ranks[order] = average_ranks[group]
    inliers, outliers = len(inlier_scores), len(outlier_scores)
    return ((ranks[inliers:].sum() - outliers * (outliers + 1) / 2) / (inliers * outliers)).item()


def threshold_at(inlier_scores, kept=0.95):
    """The lowest score at or below which at least `kept` of the inliers fall: flag images that score above it."""
    ordered = inlier_scores.detach().cpu().double().sort().values
    return ordered[math.ceil(kept * len(ordered)) - 1].item()


def fpr_at(outlier_scores, threshold):
    """The share of outliers at or below the threshold: those not flagged, let through as if they were inliers."""
    return (outlier_scores.detach().cpu().double() <= threshold).double().mean().item()


def compressed_bits(data, compressor="zlib"):
    """The length in bits of bytes compressed at the strongest setting, as a raw stream (no header, no checksum):
    zlib's DEFLATE (the compressor inside PNG) or lzma's LZMA2 (inside .xz)."""
    if compressor == "zlib":
        deflate = zlib.compressobj(9, zlib.DEFLATED, -15)  # wbits -15: the raw stream
        return 8 * len(deflate.compress(data) + deflate.flush())
    dictionary = max(4096, len(data))  # preset 9 alone sets up 64 MiB per call; no match reaches further than the data
    filters = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "dict_size": dictionary}]
    return 8 * len(lzma.compress(data, format=lzma.FORMAT_RAW, filters=filters))


def compressed_nats(images, compressor="zlib"):
    """Each image's compressed length in nats, its pixels as 8-bit bytes (0 to 255), one image at a time."""
    pixels = images.detach().flatten(1).mul(255).round().to(torch.uint8).cpu()
    return torch.tensor([compressed_bits(row.numpy().tobytes(), compressor) for row in pixels], dtype=torch.float64) * math.log(2)


def packed_pixels(images):
    """0/1 images as bytes, 8 pixels a byte: (N, pixels / 8) uint8 on the host, what a compressor of binary images reads."""
    bits = images.detach().flatten(1).cpu().to(torch.uint8).view(len(images), -1, 8)
    return (bits << torch.arange(7, -1, -1, dtype=torch.uint8)).sum(2, dtype=torch.uint8)
