"""Train the AE, then the VAE, then write the figures and metrics: the whole project in one command.

    python main.py                                 # 30 epochs each, on CUDA or MPS when available
    python main.py --data-dir ../shared/data --epochs 5
    python main.py --cvae                          # the conditional VAE too, and what its labels buy
"""
import time

import evaluate
import train


def main(argv=None):
    start = time.perf_counter()
    parser = evaluate.add_flags(train.make_parser(__doc__.splitlines()[0]))
    parser.add_argument("--cvae", action="store_true", help="also train the conditional VAE and evaluate it")
    args = train.parse_flags(parser, argv, evaluate.LOWEST)
    train.train(args, ["ae", "vae", "cvae"] if args.cvae else ["ae", "vae"])
    evaluate.evaluate(args.out_dir, args.data_dir, args.device, args.seed, args.iw_samples, with_cvae=args.cvae,
                      run_started=start)
    print(f"figures and metrics.json are in {args.out_dir}/ (README.md explains each one); "
          f"{time.perf_counter() - start:.0f} s in all")


if __name__ == "__main__":
    train.run(main)
