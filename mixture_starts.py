"""How much the mixture rows depend on where EM starts: the same trained models and the same codes as
evaluate.py's, the mixture refitted from other starting seeds, its draws scored each time.

    python mixture_starts.py --data-dir ../shared/data     # reads results/ae.pt and vae.pt; about 3 minutes

EM climbs to the nearest local maximum of the likelihood, so a mixture fitted from one start can land in
a different place from another start's, and its draws look different. priors.GaussianMixture runs EM
from several k-means starts and keeps the best fit. For each number of starts in --starts and each of
--seeds start seeds, this fits the three mixtures that evaluate.py fits (to the AE's codes, the VAE's
means and z ~ q(z|x)) to evaluate.py's own 10,000 codes of its own inputs (0/1 pixels for a binarized
run), scores 10,000 draws with evaluate.py's classifier (the same draws of components and eps for every
fit), and writes each score, its range over the seeds and the seconds per fit to
results/mixture_starts.json. The first start seed is evaluate.py's own (for --seed), so with
evaluate.MIXTURE's number of starts its fit is evaluate.py's fit; its draws are not evaluate.py's.
"""
import argparse
import json
import time
from pathlib import Path

import torch

import evaluate
import metrics
import train


@torch.no_grad()
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="data", help="holds MNIST/raw/")
    parser.add_argument("--out-dir", default="results", help="holds ae.pt and vae.pt; the report is written there")
    parser.add_argument("--seed", type=int, default=0, help="the --seed evaluate.py ran with")
    parser.add_argument("--starts", type=int, nargs="+", default=[1, evaluate.MIXTURE["starts"]], help="EM starts per fit")
    parser.add_argument("--seeds", type=int, default=8, help="start seeds per number of starts")
    args = train.parse_flags(parser, argv, {"seeds": 2})
    loaded, checkpoints = evaluate.load_models(args.out_dir, torch.device("cpu"))
    train_images, train_labels, train_inputs = evaluate.load_split(checkpoints["vae"], args.data_dir, True, "cpu")
    test_images = evaluate.load_split(checkpoints["vae"], args.data_dir, False, "cpu")[0]
    steps = evaluate.Steps(args.seed)  # evaluate()'s own streams
    steps.start("classifier")
    classifier, reference = evaluate.classifier_and_reference(train_images, train_labels, test_images)
    codes = {"ae_mixture": evaluate.codes_of(loaded["ae"], train_inputs, train_labels),
             "vae_mixture": evaluate.codes_of(loaded["vae"], train_inputs, train_labels)}
    samplers_seed = steps.start("samplers")
    fit_seeds = {"ae_mixture": samplers_seed, "vae_mixture": samplers_seed,
                 "vae_mixture_z": steps.start("refit")}  # that step's first draws are these codes
    codes["vae_mixture_z"] = evaluate.sampled_vae_codes(loaded["vae"], train_inputs, train_labels)
    report = {"models": args.out_dir, "codes": evaluate.MIXTURE["codes"], "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    for starts in args.starts:
        for row, row_codes in codes.items():
            model = loaded[row.split("_")[0]]
            subset = row_codes[evaluate.mixture_subset(len(row_codes), fit_seeds[row])]
            scores, seconds = [], []
            for start_seed in range(fit_seeds[row], fit_seeds[row] + args.seeds):
                start = time.perf_counter()
                mixture = evaluate.fit_mixture(subset, start_seed, starts)
                seconds.append(time.perf_counter() - start)
                torch.manual_seed(1)  # the same draws of components and eps for every fit
                scores.append(metrics.sample_scores(classifier, evaluate.decode(model, mixture.sample(evaluate.SAMPLES)),
                                                    reference) | {"log_likelihood": mixture.log_likelihood})
            recognisable = [100 * score["recognisable"] for score in scores]
            report[f"{row}, {starts} starts"] = {"scores": scores, "seconds_per_fit": sum(seconds) / len(seconds),
                                                 "recognisable_range": max(recognisable) - min(recognisable)}
            print(f"{row:14s} {starts:2d} starts: recognisable {min(recognisable):.1f} to {max(recognisable):.1f}%, "
                  f"FD {min(s['frechet_distance'] for s in scores):.1f} to {max(s['frechet_distance'] for s in scores):.1f}, "
                  f"{sum(seconds) / len(seconds):.2f} s a fit", flush=True)
    path = Path(args.out_dir) / "mixture_starts.json"
    train.write_atomically(path, lambda temporary: temporary.write_text(json.dumps(report, indent=2) + "\n"))
    print(f"wrote {path}")


if __name__ == "__main__":
    train.run(main)
