"""Five seeds of the default run, and the spread over seeds of every number the README compares.

    python seeds.py --data-dir ../shared/data            # seeds 0 to 4: five runs of main.py (each about 200 s on 2 cores)
    python seeds.py --data-dir ../shared/data --cvae     # with the conditional VAE, as results/seeds/ was made
    python seeds.py --aggregate-only                      # recompute aggregate.json from the kept files
    python seeds.py --compare results/metrics.json        # your run against the five seeds: noise or not?

Each seed trains the models and evaluates them, as `python main.py --seed S` does (any other flag is
passed on to it), in a temporary folder, and its metrics.json is kept as results/seeds/seed_S.json
(seed 0 is the run in results/).
results/seeds/aggregate.json then holds, for every number in those files, its mean, standard deviation
(n - 1), min and max over the seeds; and, for every comparison the README makes, the difference in each
seed and a verdict: a model or sampler is better only where every seed agrees, else the difference is
"within seed-to-seed noise". --compare lists every number of one run against the five seeds' mean (or,
with --reference, another run's), largest first, as a distance in standard deviations over the seeds,
judged by NOISE_RULE. main.py never writes results/seeds/, so a run of yours cannot erase the reference.
"""
import argparse
import json
import math
import statistics
import tempfile
from pathlib import Path

from main import main as run_main

SEEDS_DIR = Path("results/seeds")
SCORES = {"recognisable": "higher", "coverage": "higher", "frechet_distance": "lower"}
SAMPLE_COMPARISONS = [  # (a, b): is a better than b?
    ("vae_prior", "ae_prior"),
    ("vae_prior", "ae_fitted"),
    ("vae_fitted", "ae_fitted"),
    ("vae_mixture", "ae_mixture"),
    ("ae_mixture", "ae_fitted"),
    ("vae_mixture", "vae_prior"),
    ("vae_fitted", "vae_prior"),
    ("vae_fitted_z", "vae_fitted"),
    ("vae_mixture_z", "vae_mixture"),
    ("vae_fitted_z", "ae_fitted"),
    ("vae_mixture_z", "ae_mixture"),
    ("vae_midpoints", "ae_midpoints"),
    ("vae_reconstructions", "ae_reconstructions"),
]
OTHER_COMPARISONS = [  # (a, b, better)
    ("on_demand.vae.hit", "on_demand.ae.hit", "higher"),
    ("on_demand.vae.assigned", "on_demand.ae.assigned", "higher"),
    ("on_demand.vae.frechet_distance", "on_demand.ae.frechet_distance", "lower"),
    ("vae.test_reconstruction", "ae.test_loss", "lower"),
    ("vae.test_reconstruction_mse", "ae.test_reconstruction_mse", "lower"),
]
ANOMALY_COMPARISONS = [  # which score tells the other dataset, or noise, from the test split better (AUROC)
    (f"anomaly.{outliers}.{a}.auroc", f"anomaly.{outliers}.{b}.auroc", "higher")
    for outliers, pairs in [("fashion-mnist", [("vae_nll", "vae_nll_minus_zlib"), ("vae_nll", "vae_nll_minus_floor"),
                                               ("vae_nll", "vae_code_nll"), ("vae_nll", "vae_kl"), ("ae_nll", "ae_code_nll"),
                                               ("ae_nll", "ae_nll_minus_zlib"), ("vae_nll", "ae_nll"), ("vae_nll", "vae_negative_elbo")]),
                            ("noise", [("vae_nll", "vae_nll_minus_zlib")])]
    for a, b in pairs
]
CVAE_COMPARISONS = [  # on demand: the label given to the CVAE against a Gaussian per class, and its two samplers
    (f"on_demand.{a}.{score}", f"on_demand.{b}.{score}", better)
    for a, b in [("cvae", "ae"), ("cvae", "vae"), ("cvae_fitted", "ae"), ("cvae_fitted", "vae"), ("cvae_fitted", "cvae")]
    for score, better in [("hit", "higher"), ("assigned", "higher"), ("frechet_distance", "lower")]
]
CODES_COMPARISONS = [  # what the codes are for (codes.py): test error in % with few or all labels, and clustering
    *[(f"codes.probe.vae.100.{probe}", f"codes.probe.ae.100.{probe}", "lower") for probe in ("logistic", "knn")],
    *[(f"codes.cluster.vae.{score}", f"codes.cluster.ae.{score}", "higher") for score in ("accuracy", "nmi")],
    *[(f"codes.probe.{model}.{labels}.{probe}", f"codes.probe.{baseline}.{labels}.{probe}", "lower")
      for model in ("ae", "vae") for baseline in ("pixels", "pca20") for labels in ("100", "60000") for probe in ("logistic", "knn")],
    *[(f"codes.cluster.{model}.{score}", f"codes.cluster.pca20.{score}", "higher")
      for model in ("ae", "vae") for score in ("accuracy", "nmi")],
]
NOT_RESULTS = ("seconds", "epochs", "seed", "iw_samples", "config", "machine")  # settings, timings, the machine


def numbers(report, prefix=""):
    """Every numeric result in a metrics.json, by dotted path (list items by index), timings and settings left out."""
    found = {}
    for key, value in report.items():
        path = f"{prefix}{key}"
        if any(word in key for word in NOT_RESULTS):
            continue
        if isinstance(value, dict):
            found.update(numbers(value, path + "."))
        elif isinstance(value, list):
            found.update({f"{path}.{i}": item for i, item in enumerate(value)})
        elif isinstance(value, (int, float)) and not isinstance(value, bool):  # not strings, not flags
            found[path] = value
    return found


def spread(values):
    return {"mean": statistics.mean(values), "std": statistics.stdev(values), "min": min(values), "max": max(values),
            "values": values}


def compare(per_seed, a, b, better):
    """a minus b in every seed, and which is better where every seed agrees."""
    differences = [seed[a] - seed[b] for seed in per_seed]
    if all(d > 0 for d in differences) or all(d < 0 for d in differences):
        a_wins = (differences[0] > 0) == (better == "higher")
        verdict = f"{a if a_wins else b} better in every seed"
    else:
        verdict = "within seed-to-seed noise"
    return {"a": a, "b": b, "better": better, "differences": differences,
            "mean_difference": statistics.mean(differences), "verdict": verdict}


def aggregate(seeds):
    reports = {seed: json.loads((SEEDS_DIR / f"seed_{seed}.json").read_text()) for seed in seeds}
    per_seed = [numbers(report) for report in reports.values()]
    comparisons = [compare(per_seed, f"samples.{a}.{score}", f"samples.{b}.{score}", better)
                   for a, b in SAMPLE_COMPARISONS for score, better in SCORES.items()]
    others = OTHER_COMPARISONS + (CVAE_COMPARISONS if all("on_demand.cvae.hit" in seed for seed in per_seed) else [])
    others += [comparison for comparison in ANOMALY_COMPARISONS if all(comparison[0] in seed for seed in per_seed)]
    others += [(a, b, better) for a, b, better in CODES_COMPARISONS if all(a in seed and b in seed for seed in per_seed)]
    comparisons += [compare(per_seed, a, b, better) for a, b, better in others]
    return {"seeds": list(seeds), "std": "sample standard deviation (n - 1) over the seeds",
            "rule": "better only where every seed agrees on the sign of the difference",
            "numbers": {path: spread([seed[path] for seed in per_seed]) for path in per_seed[0]},
            "comparisons": comparisons}


NOISE_RULE = ("distance = |this run - reference| / the standard deviation over the five seeds: under 2, as near as "
              "another training seed lands (noise); 2 to 3, borderline; over 3, a real difference: look for a change in "
              "code, flags, versions or CPU type")


def verdict(distance):
    return "noise" if distance < 2 else "borderline" if distance <= 3 else "real difference"


def compare_runs(mine, reference, aggregated):
    """(path, mine, reference, distance in seed-to-seed standard deviations) for every result in mine,
    reference (path -> number) and the aggregate, largest first; a spread of 0 counts only an exact match."""
    a, b = numbers(mine), reference
    rows = []
    for path in a.keys() & b.keys() & aggregated["numbers"].keys():
        std, difference = aggregated["numbers"][path]["std"], a[path] - b[path]
        rows.append((path, a[path], b[path], abs(difference) / std if std > 0 else (0.0 if difference == 0 else math.inf)))
    return sorted(rows, key=lambda row: -row[3])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="training seeds")
    parser.add_argument("--aggregate-only", action="store_true", help="only recompute aggregate.json")
    parser.add_argument("--compare", metavar="METRICS_JSON", help="list this run's numbers against the five seeds' means")
    parser.add_argument("--reference", metavar="METRICS_JSON", help="compare with this run instead of the five seeds")
    args, main_flags = parser.parse_known_args(argv)
    for path in filter(None, [args.compare, args.reference]):
        if not Path(path).is_file():
            parser.error(f"{path} is not a file; pass a metrics.json that evaluate.py or main.py wrote")
    if args.compare:
        aggregated = json.loads((SEEDS_DIR / "aggregate.json").read_text())
        mine = json.loads(Path(args.compare).read_text())
        reference = (numbers(json.loads(Path(args.reference).read_text())) if args.reference else
                     {path: spread["mean"] for path, spread in aggregated["numbers"].items()})
        rows = compare_runs(mine, reference, aggregated)
        print(NOISE_RULE)
        print(f"{'result':58s} {'this run':>12s} {args.reference or 'five-seed mean':>14s}  distance  verdict")
        for path, a, b, distance in rows:
            print(f"{path:58s} {a:12.6g} {b:14.6g}  {distance:8.2f}  {verdict(distance)}")
        counts = {word: sum(verdict(row[3]) == word for row in rows) for word in ("noise", "borderline", "real difference")}
        print(", ".join(f"{count} {word}" for word, count in counts.items()))
        return
    if len(args.seeds) < 2:
        parser.error("--seeds needs at least two seeds for a spread")
    SEEDS_DIR.mkdir(parents=True, exist_ok=True)
    if not args.aggregate_only:
        for seed in args.seeds:
            with tempfile.TemporaryDirectory() as out_dir:
                run_main([*main_flags, "--seed", str(seed), "--out-dir", out_dir])
                (SEEDS_DIR / f"seed_{seed}.json").write_text((Path(out_dir) / "metrics.json").read_text())
    result = aggregate(args.seeds)
    (SEEDS_DIR / "aggregate.json").write_text(json.dumps(result, indent=2) + "\n")
    for comparison in result["comparisons"]:
        print(f"{comparison['a']:36s} - {comparison['b']:36s} {comparison['mean_difference']:+9.4f}  {comparison['verdict']}")


if __name__ == "__main__":
    main()
