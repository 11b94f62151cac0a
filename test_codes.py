"""Tests of codes.py: the clustering scores, the two probes and t-SNE against what they must give on data
made to have a known answer, and the whole report on the training device. Offline, a few seconds.

    python -m pytest test_codes.py
"""
import functools
import itertools
import math
from collections import Counter

import pytest
import torch

import codes
import figures
import priors
import seeds
from test_models import TRAINING_DEVICE, DeviceTracker


def separated_clusters(clusters=4, per_cluster=50, dimensions=10, distance=20.0, seed=0):
    """Points around `clusters` centres `distance` apart in every coordinate, each with unit-variance noise."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(clusters).repeat_interleave(per_cluster)
    centres = distance * torch.eye(clusters, dimensions)
    return centres[labels] + torch.randn(len(labels), dimensions, generator=generator), labels


# No labels: clustering accuracy and normalised mutual information.

def test_a_permuted_labelling_is_matched_perfectly():
    labels = torch.randint(10, (1000,), generator=torch.Generator().manual_seed(0))
    clusters = torch.randperm(10, generator=torch.Generator().manual_seed(1))[labels]
    assert codes.matched_accuracy(clusters, labels) == 100
    assert codes.normalised_mutual_information(clusters, labels) == pytest.approx(1)


def test_the_matching_is_the_best_of_every_one_to_one_matching():
    generator = torch.Generator().manual_seed(0)
    for clusters_count in (3, 5):  # fewer clusters than digits, and as many
        clusters, labels = torch.randint(clusters_count, (300,), generator=generator), torch.randint(5, (300,), generator=generator)
        counts = codes.contingency(clusters, labels)
        best = max(sum(counts[cluster, digit] for cluster, digit in enumerate(digits))
                   for digits in itertools.permutations(range(5), clusters_count))
        assert codes.matched_accuracy(clusters, labels) == pytest.approx(100 * best.item() / 300)


def test_mutual_information_against_its_definition():
    clusters, labels = torch.tensor([0, 0, 1, 1, 1, 2]), torch.tensor([0, 0, 0, 1, 1, 1])
    joint = {(c, d): n / 6 for (c, d), n in Counter(zip(clusters.tolist(), labels.tolist())).items()}
    cluster_shares = {c: sum(p for (c2, _), p in joint.items() if c2 == c) for c in range(3)}
    digit_shares = {d: sum(p for (_, d2), p in joint.items() if d2 == d) for d in range(2)}
    mutual = sum(p * math.log(p / (cluster_shares[c] * digit_shares[d])) for (c, d), p in joint.items())
    entropies = sum(-p * math.log(p) for p in [*cluster_shares.values(), *digit_shares.values()])
    assert codes.normalised_mutual_information(clusters, labels) == pytest.approx(2 * mutual / entropies)
    assert codes.normalised_mutual_information(torch.zeros(6, dtype=torch.long), labels) == pytest.approx(0)


def test_a_mixture_fitted_to_separated_clusters_assigns_each_to_its_own_component():
    points, labels = separated_clusters()
    mixture = priors.GaussianMixture(points, components=4, starts=1)
    assert codes.matched_accuracy(mixture.likeliest_component(points), labels) == 100


# Few labels: the two probes.

def test_logistic_regression_separates_linearly_separable_digits():
    points, labels = separated_clusters(clusters=3, per_cluster=20)
    test_points, test_labels = separated_clusters(clusters=3, per_cluster=20, seed=1)
    assert torch.equal(codes.logistic_regression(points, labels, test_points), test_labels)


def test_nearest_neighbours_against_a_brute_force_count():
    generator = torch.Generator().manual_seed(0)
    train, train_labels = torch.randn(60, 3, generator=generator), torch.randint(4, (60,), generator=generator)
    test = torch.randn(40, 3, generator=generator)
    expected = []
    for query in test:
        ranked = sorted(range(len(train)), key=lambda row: (train[row] - query).pow(2).sum().item())[:codes.NEIGHBOURS]
        votes = Counter(train_labels[row].item() for row in ranked)
        tied = [digit for digit, count in votes.items() if count == max(votes.values())]
        expected.append(next(train_labels[row].item() for row in ranked if train_labels[row].item() in tied))
    assert codes.nearest_neighbours(train, train_labels, test).tolist() == expected


# The map: t-SNE.

def test_each_point_gets_as_many_effective_neighbours_as_the_perplexity():
    points, _ = separated_clusters()
    p = codes.neighbour_probabilities(points, perplexity=10.0)
    assert p.diagonal().abs().max() == 0
    torch.testing.assert_close(p.sum(1), torch.ones(len(points)))
    torch.testing.assert_close(-torch.special.xlogy(p, p).sum(1), torch.full((len(points),), math.log(10)), rtol=1e-4, atol=1e-4)


def test_the_map_gradient_is_the_gradient_of_the_kl_divergence():
    points, _ = separated_clusters(per_cluster=10)
    conditional = codes.neighbour_probabilities(points, perplexity=5.0).double()
    p = (conditional + conditional.T) / (2 * len(points))
    y = torch.randn(len(points), 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    pairs = ~torch.eye(len(points), dtype=torch.bool)  # i != j: the diagonal, where q is 0, would give 0/0 gradients
    kernel = 1 / (1 + (y[:, None] - y[None]).pow(2).sum(2)[pairs])
    kl = (torch.special.xlogy(p[pairs], p[pairs]) - torch.special.xlogy(p[pairs], kernel / kernel.sum())).sum()
    kl.backward()
    torch.testing.assert_close(codes.map_gradient(p, y.detach()), y.grad)


def test_tsne_keeps_separated_clusters_each_others_neighbours():
    points, labels = separated_clusters(per_cluster=30)
    embedding = codes.tsne(points)
    distances = torch.cdist(embedding, embedding).fill_diagonal_(math.inf)
    nearest = distances.topk(10, largest=False).indices
    assert (labels[nearest] == labels[:, None]).all()


# The whole report.

def small_split(rows, seed):
    """A stand-in for MNIST: 20-d codes around one centre per digit, and noise images whose first row marks the digit."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(rows) % 10
    codes_ = 20 * torch.eye(10, 20)[labels] + torch.randn(rows, 20, generator=generator)
    images = 0.1 * torch.rand(rows, 1, 28, 28, generator=generator)
    images[torch.arange(rows), 0, 0, labels] = 1
    return codes_, images, labels


def test_the_report_runs_on_the_training_device_and_has_its_keys(monkeypatch, tmp_path):
    # The tracker follows every tensor in Python, one operation at a time: a few optimisation steps show where they live.
    monkeypatch.setattr(codes, "logistic_regression", functools.partial(codes.logistic_regression, iterations=3))
    monkeypatch.setattr(codes, "tsne", functools.partial(codes.tsne, iterations=4, exaggerated_iterations=2))
    monkeypatch.setattr(codes, "LABEL_DRAWS", 2)
    train_codes, train_images, train_labels = small_split(1200, 0)
    test_codes, test_images, test_labels = small_split(150, 1)
    mixtures = {name: priors.GaussianMixture(train_codes, components=10, starts=3) for name in ("ae", "vae")}
    with DeviceTracker():
        on_device = lambda tensor: tensor.to(TRAINING_DEVICE)
        report, embeddings = codes.codes_report(
            {"ae": on_device(train_codes), "vae": on_device(train_codes)}, {"ae": on_device(test_codes), "vae": on_device(test_codes)},
            on_device(train_images), on_device(test_images), on_device(train_labels), on_device(test_labels), mixtures, seed=0)
    assert set(report["probe"]) == {"ae", "vae", "pixels", "pca20"}
    for results in report["probe"].values():
        assert set(results) == {"100", "1000", "1200"}
        assert set(results["100"]) == {"logistic", "knn", "logistic_std", "knn_std"} and set(results["1200"]) == {"logistic", "knn"}
    assert report["probe"]["ae"]["1200"]["knn"] == 0 and report["cluster"]["ae"]["accuracy"] == 100
    assert set(report["cluster"]) == {"ae", "vae", "pca20"} and set(report["seconds"]) >= {"knn", "logistic", "tsne"}
    assert embeddings["ae"].shape == (150, 2) and embeddings["labels"].shape == (150,)
    figures.plot_tsne(tmp_path, embeddings, [str(digit) for digit in range(10)])
    assert (tmp_path / "tsne.png").exists()


def test_every_codes_comparison_names_a_number_of_the_report():
    report = {"probe": {features: {labels: {"logistic": 1.0, "knn": 1.0} for labels in ("100", "1000", "60000")}
                        for features in ("ae", "vae", "pixels", "pca20")},
              "cluster": {features: {"accuracy": 1.0, "nmi": 1.0} for features in ("ae", "vae", "pca20")}}
    found = seeds.numbers({"codes": report})
    assert all(a in found and b in found for a, b, _ in seeds.CODES_COMPARISONS)
