"""Does the model know what it has not seen? Scores that flag images unlike the training data.

    from anomaly import outlier_scores
    scores = outlier_scores(vae, images)   # per image, higher = more unusual: {"vae_nll": ..., ...}

A model of the data gives each image a likelihood, so an image it finds unlikely may be unlike the
training data: an outlier, an anomaly. Scores per image, each higher for a more unusual image:

  ae_nll, ae_squared_error     the AE's -log p(x|z) at z = encode(x), and its squared error per pixel
  vae_nll                      the VAE's -L_k (metrics.importance_weighted_bound): a bound on -log p(x)
  vae_negative_elbo, vae_kl    its negative ELBO with one z ~ q(z|x), and the ELBO's KL term alone
  *_minus_floor                -log p less the image's own floor, the least any decoder output could
                               cost it (the Bernoulli's: its pixels' entropy)
  *_minus_zlib                 -log p less the image's zlib length in nats: how simple the image is
  *_code_nll                   -log density of its code under the Gaussian fitted to the training codes

The likelihood also measures how simple an image is, not only how familiar: a model of clothes gives
plain digits a higher likelihood than clothes (Nalisnick et al., ICLR 2019). The corrections subtract a
measure of simplicity (Serra et al., ICLR 2020: a compressor's length; the floor, for the Bernoulli on
grey pixels). evaluate.py scores the test split against three outlier sets: the other dataset's test
split (MNIST against Fashion-MNIST), the test images inverted (1 - x) and uniform noise.
"""
import torch

import metrics
import models
import priors
import train

OTHER_DATASET = {"mnist": "fashion-mnist", "fashion-mnist": "mnist"}
OUTLIERS_PER_SET = 2000  # AUROC standard error under 0.01 against the 10,000 test images
KEPT = 0.95  # the threshold keeps this share of the test images


@torch.no_grad()
def outlier_scores(model, images, iw_samples=50, code_density=None, log_likelihood_bound=None):
    """The scores above for an AE or a VAE and a batch of images (N, 1, 28, 28), each a float64 tensor (N,) on
    the host. code_density: a priors.Gaussian fitted to the model's training codes, for *_code_nll.
    log_likelihood_bound: the VAE's L_k of these images when already computed (evaluate.py has the test split's)."""
    model.eval()
    name = "vae" if isinstance(model, models.VAE) else "ae"
    parts = {}
    for x in images.split(train.EVAL_BATCH):
        if name == "vae":
            batch = dict(zip(("reconstruction", "kl"), model.elbo_terms(x)))
        else:
            logits = model.decode_logits(model.encode(x))  # one pass for both scores
            batch = {"reconstruction": model.likelihood.negative_log_prob(logits, x),
                     "squared_error": metrics.squared_error(model.likelihood.mean(logits), x)}
        for key, value in batch.items():
            parts.setdefault(key, []).append(value.cpu().double())
    parts = {key: torch.cat(values) for key, values in parts.items()}
    if name == "vae":
        bound = log_likelihood_bound if log_likelihood_bound is not None else metrics.importance_weighted_bound(
            model, images, iw_samples)
        scores = {"vae_negative_elbo": parts["reconstruction"] + parts["kl"], "vae_nll": -bound.cpu().double(),
                  "vae_kl": parts["kl"]}
    else:
        scores = {"ae_nll": parts["reconstruction"], "ae_squared_error": parts["squared_error"]}
    nll = scores[f"{name}_nll"]
    floors = model.likelihood.floors(images)
    if floors is not None:
        scores[f"{name}_nll_minus_floor"] = nll - floors
    scores[f"{name}_nll_minus_zlib"] = nll - metrics.compressed_nats(images)
    if code_density is not None:
        scores[f"{name}_code_nll"] = -code_density.log_prob(torch.cat([model.code(x) for x in images.split(train.EVAL_BATCH)]))
    return scores


def outlier_sets(dataset, data_dir, test_inputs, binarize, count):
    """count images of each outlier set, on the test inputs' device: the other dataset's test split (skipped,
    with one line, where its files are absent and cannot be downloaded), the test inputs inverted, and
    uniform noise. For a binarized run the other dataset and the noise get 0/1 pixels too."""
    device = test_inputs.device
    sets = {}
    other = OTHER_DATASET[dataset]
    if train.dataset_within_reach(other, data_dir):
        other_images, _ = train.load_split(other, data_dir, False, device)
        sets[other] = other_images[torch.randperm(len(other_images))[:count].to(device)]
    else:
        print(f"the {other} outliers are skipped, scored against inverted images and noise only: cannot read or "
              f"download {other} in {data_dir}/ (put its four IDX files in its raw/ folder to score them)")
    sets["inverted"] = 1 - test_inputs[torch.randperm(len(test_inputs))[:count].to(device)]
    sets["noise"] = torch.rand(count, *models.IMAGE_SHAPE).to(device)
    if binarize:
        sets = {name: images if name == "inverted" else train.binarize_once(images) for name, images in sets.items()}
    return sets


def detect_outliers(pair, test_inputs, test_bound, code_densities, dataset, data_dir, binarize, iw_samples):
    """The test split against each outlier set: for each set and score, its AUROC, the threshold that keeps
    95% of the test images, and the share of that set's images it lets through (fpr_at_95).
    Returns ({"anomaly": those results, "anomaly_setup": how many images}, the test split's scores, each set's)."""
    count = min(OUTLIERS_PER_SET, len(test_inputs))
    sets = outlier_sets(dataset, data_dir, test_inputs, binarize, count)

    def scores_of(images, bound=None):
        return {**outlier_scores(pair["ae"], images, code_density=code_densities["ae"]),
                **outlier_scores(pair["vae"], images, iw_samples, code_densities["vae"], bound)}
    inlier = scores_of(test_inputs, test_bound)
    outliers = {name: scores_of(images) for name, images in sets.items()}
    results = {}
    for set_name, scores in outliers.items():
        results[set_name] = {}
        for score, values in scores.items():
            threshold = metrics.threshold_at(inlier[score], KEPT)
            results[set_name][score] = {"auroc": metrics.auroc(inlier[score], values),
                                        "fpr_at_95": metrics.fpr_at(values, threshold), "threshold": threshold}
    setup = {"test_images": len(test_inputs), "images_per_outlier_set": count, "kept": KEPT, "iw_samples": iw_samples}
    return {"anomaly": results, "anomaly_setup": setup}, inlier, outliers
