"""Train the AE, then the VAE, then write the figures and metrics: the whole project in one command.

    python main.py                                 # 30 epochs each, on CUDA or MPS when available
    python main.py --data-dir ../shared/data --epochs 5
"""
import time

import evaluate
import train


def main(argv=None):
    start = time.perf_counter()
    args = train.parse_flags(evaluate.add_flags(train.make_parser(__doc__.splitlines()[0])), argv)
    train.train(args, ["ae", "vae"])
    evaluate.evaluate(args.out_dir, args.data_dir, args.device, args.seed, args.iw_samples)
    print(f"figures and metrics.json are in {args.out_dir}/ (README.md explains each one); "
          f"{time.perf_counter() - start:.0f} s in all")


if __name__ == "__main__":
    train.run(main)
