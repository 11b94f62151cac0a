"""What the codes are for: an encoder's codes as features for a classifier, as clusters, and as a map.

Every other lesson here is about the decoder. The codes earn their keep when they put what tells digits apart
where simple methods find it:

  probe       a simple classifier trained on frozen codes: multinomial logistic regression (straight
              boundaries) and k-nearest neighbours (a vote of the closest labelled codes); test error in %.
              100 labelled pixel images give a classifier little to go on; codes learned from all 60,000
              unlabelled images may give it much more (Kingma et al., NeurIPS 2014, their "M1").
  clustering  no labels at all: each test code goes to its likeliest component of a 10-component mixture
              fitted to the codes, scored by the accuracy (%) of the one-to-one matching of components to
              digits that gets the most right, and by normalised mutual information (NMI): 1 when the
              clusters are the digits, 0 when they say nothing about them.
  t-SNE       a 2-d map in which codes that are neighbours in 20-d stay neighbours (van der Maaten and
              Hinton, JMLR 2008); the distances between far-apart groups mean little.

Baselines: the pixels, and as many of their principal components as the codes have dimensions. Heavy work
runs in float32 wherever the features are, statistics on the host in float64; every random choice comes from
a CPU generator seeded from `seed`, the same on every device. This file imports torch, and priors.py for k-means.
"""
import contextlib
import math
import statistics
import time

import torch
import torch.nn.functional as F

import priors

LABELLED_PER_DIGIT = [10, 100]  # 100 and 1,000 labels, balanced; then every training label
LABEL_DRAWS = 5  # random labelled sets per size: the errors are their mean and standard deviation
NEIGHBOURS = 5  # k of k-nearest neighbours
PIXEL_ROWS = 10_000  # random training images the principal components come from, and the pixels' all-label probes
TSNE_POINTS = 2000  # test codes in the t-SNE map


def codes_report(train_codes, test_codes, train_images, test_images, train_labels, test_labels, mixtures, seed):
    """Probe errors and clusterings of each model's codes and of the pixel baselines, with the seconds of each
    part; and the t-SNE maps of TSNE_POINTS test codes of each model, with their labels (host tensors).

    The pixels' probes "with every label" train on PIXEL_ROWS random training images only: both probes in 784
    dimensions on all 60,000 would more than double the time of everything here."""
    seconds = {}
    pixel_rows = torch.randperm(len(train_labels), generator=torch.Generator().manual_seed(seed))[:PIXEL_ROWS]
    with timed(seconds, "principal_components"):
        features = feature_sets(train_codes, test_codes, train_images, test_images, pixel_rows)
    label_sets = labelled_sets(train_labels, seed)
    pixel_sets = {**label_sets, str(len(train_labels)): [pixel_rows]}
    probes = {name: probe(*pair, train_labels, test_labels, pixel_sets if name == "pixels" else label_sets, seconds)
              for name, pair in features.items()}
    with timed(seconds, "clustering"):
        clusters = {name: mixtures[name].likeliest_component(test_codes[name]) for name in ("ae", "vae")}
        baseline = next(name for name in features if name.startswith("pca"))
        clusters[baseline] = kmeans_clusters(*features[baseline], int(train_labels.max()) + 1, seed)
        clustering = {name: {"accuracy": matched_accuracy(found, test_labels),
                             "nmi": normalised_mutual_information(found, test_labels)} for name, found in clusters.items()}
    with timed(seconds, "tsne"):
        shown = torch.randperm(len(test_labels), generator=torch.Generator().manual_seed(seed))[:TSNE_POINTS]
        embeddings = {name: tsne(test_codes[name][shown.to(test_codes[name].device)]).cpu() for name in ("ae", "vae")}
    embeddings["labels"] = test_labels.cpu()[shown]
    return {"probe": probes, "cluster": clustering, "seconds": seconds}, embeddings


@contextlib.contextmanager
def timed(seconds, part):
    """Add the wall time of the block to seconds[part]."""
    start = time.perf_counter()
    yield
    seconds[part] = seconds.get(part, 0.0) + time.perf_counter() - start


def feature_sets(train_codes, test_codes, train_images, test_images, pixel_rows):
    """(training, test) features: each model's codes, the pixels, and the pixels' top d principal components
    (d the codes' dimension), computed on the host in float64 from the training images in pixel_rows."""
    train_pixels, test_pixels = train_images.flatten(1), test_images.flatten(1)
    dimension = train_codes["ae"].shape[1]
    sample = train_pixels[pixel_rows.to(train_pixels.device)].cpu().double()
    mean = sample.mean(0)
    directions = torch.linalg.eigh(torch.cov(sample.T)).eigenvectors[:, -dimension:]  # eigh sorts ascending
    mean, directions = mean.float().to(train_pixels.device), directions.float().to(train_pixels.device)
    return {"ae": (train_codes["ae"], test_codes["ae"]), "vae": (train_codes["vae"], test_codes["vae"]),
            "pixels": (train_pixels, test_pixels),
            f"pca{dimension}": ((train_pixels - mean) @ directions, (test_pixels - mean) @ directions)}


def labelled_sets(labels, seed):
    """The training images whose labels a probe may use: LABEL_DRAWS random balanced sets of each size in
    LABELLED_PER_DIGIT, and one with every label, keyed by how many labels they hold."""
    generator = torch.Generator().manual_seed(seed)
    labels = labels.cpu()
    by_digit = [torch.nonzero(labels == digit).squeeze(1) for digit in range(int(labels.max()) + 1)]
    sets = {str(per_digit * len(by_digit)): [
        torch.cat([rows[torch.randperm(len(rows), generator=generator)[:per_digit]] for rows in by_digit])
        for _ in range(LABEL_DRAWS)] for per_digit in LABELLED_PER_DIGIT}
    return {**sets, str(len(labels)): [torch.arange(len(labels))]}


def probe(train_features, test_features, train_labels, test_labels, label_sets, seconds):
    """Test error in % of both probes trained on each labelled set: the mean over a size's sets, and their
    standard deviation where there are several. k-NN measures distances in the features as they are.

    The logistic regression sees them standardised as a whole: centred, and divided by one number that makes
    their variance 1 on average, from every training image, labelled or not, as the encoders saw them. One
    number keeps the shape k-NN sees; dividing each feature by its own standard deviation instead would make
    pixels that are almost always blank as loud as the strokes (seed 0, 100 labels: it costs the pixels 2.4
    points; with 1,000 or more labels the two ways agree within half a point)."""
    mean = train_features.mean(0)
    scale = (train_features - mean).pow(2).mean().sqrt()
    standardised_train, standardised_test = (train_features - mean) / scale, (test_features - mean) / scale
    results = {}
    for size, sets in label_sets.items():
        errors = {"logistic": [], "knn": []}
        for rows in sets:
            rows = rows.to(train_features.device)
            with timed(seconds, "logistic"):
                predicted = logistic_regression(standardised_train[rows], train_labels[rows], standardised_test)
                errors["logistic"].append(error_percent(predicted, test_labels))
            with timed(seconds, "knn"):
                predicted = nearest_neighbours(train_features[rows], train_labels[rows], test_features)
                errors["knn"].append(error_percent(predicted, test_labels))
        results[size] = {name: statistics.mean(values) for name, values in errors.items()}
        if len(sets) > 1:
            results[size].update({f"{name}_std": statistics.stdev(values) for name, values in errors.items()})
    return results


def error_percent(predicted, labels):
    return 100 * (predicted != labels).float().mean().item()


@torch.enable_grad()
def logistic_regression(train_features, train_labels, test_features, iterations=100):
    """The likeliest digit of each test row under multinomial logistic regression, p(digit | x) = softmax(W x + b).

    W and b minimise the cross-entropy summed over the labelled rows plus |W|^2 / 2: the maximum a posteriori
    fit under a standard normal prior on each weight (scikit-learn's default, C = 1), which keeps W finite
    where the digits are linearly separable, as 100 images in 784 dimensions always are. The loss is convex,
    so any optimiser that converges finds the same W; L-BFGS, a quasi-Newton method on the whole set at once,
    stops after `iterations` steps (on 10,000 pixel images, 300 steps instead move the error 0.2 points)."""
    classes = int(train_labels.max()) + 1
    weights = train_features.new_zeros(train_features.shape[1], classes, requires_grad=True)
    bias = train_features.new_zeros(classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weights, bias], max_iter=iterations, line_search_fn="strong_wolfe")

    def loss():
        optimizer.zero_grad()
        value = F.cross_entropy(train_features @ weights + bias, train_labels) + weights.pow(2).sum() / (2 * len(train_labels))
        value.backward()
        return value
    optimizer.step(loss)
    return (test_features @ weights + bias).argmax(1)


def nearest_neighbours(train_features, train_labels, test_features, k=NEIGHBOURS):
    """The digit most common among each test row's k nearest training rows (Euclidean distance).

    Neighbour number r (0 the nearest) votes 1 + 2^-(r + 1): the extras add up to less than one vote, so they
    only break ties, in favour of the tied digit with the nearest neighbour. |q - t|^2 = |q|^2 - 2 q.t + |t|^2,
    and |q|^2 is the same for every t, so |t|^2 - 2 q.t ranks the training rows by distance from q. Test rows
    go in chunks whose distances, 2^22 numbers (16 MB), stay in a CPU's cache."""
    squared_norms = train_features.pow(2).sum(1)
    votes = 1 + 0.5 ** torch.arange(1, k + 1, device=train_features.device, dtype=train_features.dtype)
    predicted = []
    for queries in test_features.split(max(1, 2**22 // len(train_features))):
        nearest = torch.addmm(squared_norms, queries, train_features.T, alpha=-2).topk(k, dim=1, largest=False).indices
        tally = queries.new_zeros(len(queries), int(train_labels.max()) + 1)
        predicted.append(tally.scatter_add_(1, train_labels[nearest], votes.expand(len(queries), k)).argmax(1))
    return torch.cat(predicted)


def kmeans_clusters(train_features, test_features, clusters, seed):
    """k-means (priors.kmeans) fitted to the training features, on the host in float64; each test row goes to
    its nearest mean."""
    means = priors.kmeans(train_features.cpu().double(), clusters, torch.Generator().manual_seed(seed))
    return torch.cdist(test_features.cpu().double(), means).argmin(1)


def contingency(clusters, labels):
    """counts[c, d]: how many images cluster c holds of digit d, on the host."""
    clusters, labels = clusters.cpu(), labels.cpu()
    shape = (int(clusters.max()) + 1, int(labels.max()) + 1)
    return torch.bincount(clusters * shape[1] + labels, minlength=shape[0] * shape[1]).view(shape)


def matched_accuracy(clusters, labels):
    """The share of images, in %, whose cluster is matched to their digit, under the one-to-one matching of
    clusters to digits that matches the most images (at most as many clusters as digits).

    Exact, by dynamic programming over sets of digits: after the first i clusters, most[taken] is the most
    images they match using exactly the digits in the bit set `taken`. 2^10 sets instead of 10! matchings."""
    most = {0: 0}
    for counts in contingency(clusters, labels).tolist():
        following = {}
        for taken, matched in most.items():
            for digit, count in enumerate(counts):
                if not taken >> digit & 1:
                    key = taken | 1 << digit
                    following[key] = max(following.get(key, 0), matched + count)
        most = following
    return 100 * max(most.values()) / len(labels)


def normalised_mutual_information(clusters, labels):
    """I(cluster; digit) / the mean of H(cluster) and H(digit), from the shares of the contingency table."""
    joint = contingency(clusters, labels).double() / len(labels)
    cluster_shares, digit_shares = joint.sum(1), joint.sum(0)
    mutual = (torch.special.xlogy(joint, joint) - torch.special.xlogy(joint, cluster_shares[:, None] * digit_shares)).sum()
    entropies = -torch.special.xlogy(cluster_shares, cluster_shares).sum() - torch.special.xlogy(digit_shares, digit_shares).sum()
    return (2 * mutual / entropies).item()


def tsne(points, perplexity=30.0, iterations=300, exaggerated_iterations=100, exaggeration=12.0):
    """A 2-d map of points by exact t-SNE: the map y that minimises KL(P || Q), where

      P   how likely point i is to pick j as its neighbour, from a Gaussian around x_i whose width gives it
          `perplexity` effective neighbours (neighbour_probabilities), averaged with j picking i;
      Q   the same for the map, from a Student t with one degree of freedom, 1 / (1 + |y_i - y_j|^2), over
          all pairs: its heavy tail lets moderate distances in the input become large ones in the map,
          which pulls clusters apart.

    Gradient descent with momentum and per-coordinate gains (a coordinate that keeps moving the same way
    speeds up, one that turns back slows down), from the points' top two principal directions shrunk to a
    standard deviation of 1e-4. For the first `exaggerated_iterations` P is multiplied by `exaggeration`,
    so that clusters form before they spread out. The learning rate n / exaggeration lets a few hundred
    steps do (on the AE's MNIST codes, 300 reach a KL within 7% of 1,000 steps'). Float32, on x's device."""
    x = points.float()
    conditional = neighbour_probabilities(x, perplexity)
    p = (conditional + conditional.T) / (2 * len(x))  # symmetric, sums to 1
    exaggerated = exaggeration * p
    centred = x - x.mean(0)
    y = centred @ torch.linalg.svd(centred, full_matrices=False).Vh[:2].T
    y = y / y[:, 0].std() * 1e-4
    velocity, gains = torch.zeros_like(y), torch.ones_like(y)
    for step in range(iterations):
        early = step < exaggerated_iterations
        gradient = map_gradient(exaggerated if early else p, y)
        gains = torch.where(velocity * gradient < 0, gains + 0.2, gains * 0.8).clamp_min(0.01)
        velocity = (0.5 if early else 0.8) * velocity - len(x) / exaggeration * gains * gradient
        y = y + velocity
    return y


def neighbour_probabilities(x, perplexity, steps=50):
    """p_j|i = exp(-beta_i d_ij) / Z_i over j != i, d_ij = |x_i - x_j|^2: how likely x_i is to pick x_j as its
    neighbour. Each beta_i is found by bisection so that the entropy of row i, log Z_i + beta_i E[d_i.], is
    log(perplexity). Distances count from each point's nearest neighbour, so no row underflows to all zeros."""
    distances = torch.cdist(x, x).square()
    distances.fill_diagonal_(math.inf)
    distances -= distances.min(1, keepdim=True).values
    distances.fill_diagonal_(0)
    low, high = torch.zeros(len(x), device=x.device), torch.full((len(x),), math.inf, device=x.device)
    beta = torch.ones(len(x), device=x.device)
    for _ in range(steps):
        p = torch.exp(-beta[:, None] * distances)
        p.fill_diagonal_(0)  # a point is not its own neighbour
        z = p.sum(1)
        too_wide = z.log() + beta * (distances * p).sum(1) / z > math.log(perplexity)  # too many neighbours
        low, high = torch.where(too_wide, beta, low), torch.where(too_wide, high, beta)
        beta = torch.where(high.isinf(), 2 * beta, (low + high) / 2)
    return p / z[:, None]


def map_gradient(p, y):
    """dKL(P || Q)/dy_i = 4 sum_j (p_ij - q_ij) w_ij (y_i - y_j), with w_ij = 1 / (1 + |y_i - y_j|^2) and q_ij =
    w_ij / the sum of every w. In place where it can be: each pass over an n x n matrix costs as much as the sum."""
    squared = y.pow(2).sum(1)
    kernel = torch.addmm(1 + squared[:, None], y, y.T, alpha=-2).add_(squared).reciprocal_()  # 1 / (1 + |y_i - y_j|^2)
    kernel.fill_diagonal_(0)
    weights = torch.addcmul(p, kernel, 1 / kernel.sum(), value=-1).mul_(kernel)  # (p - q) w
    return 4 * (weights.sum(1, keepdim=True) * y - weights @ y)
