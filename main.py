"""Train the AE, then the VAE, then write the figures: the whole project in one command.

    python main.py                          # 30 epochs each, on CUDA when available
    python main.py --data-dir ../shared/data --epochs 5
"""

import evaluate
import train


def main(argv=None):
    parser = train.make_parser(__doc__.splitlines()[0])
    train.add_common_flags(parser)
    train.add_training_flags(parser)
    args = parser.parse_args(argv)
    train.train(args, ["ae", "vae"])
    evaluate.evaluate(args.out_dir, args.data_dir, args.device, args.seed)
    print(f"figures and metrics.json are in {args.out_dir}/ (README.md explains each one)")


if __name__ == "__main__":
    main()
