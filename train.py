"""Train the AE and the VAE (and, when asked, the conditional VAE) on MNIST or Fashion-MNIST with one loop.

    python train.py --data-dir data                  # AE then VAE, 30 epochs each
    python train.py --model cvae --epochs 10         # one model: ae, vae or cvae

It needs only models.py beside it (and torch, torchvision). Each model is saved to
<out-dir>/<model>.pt: a dict with model_state, config (models.AE(**config), VAE or CVAE alike, rebuilds
it: every constructor argument is in it), dataset and history (per-epoch train loss, test loss and seconds).
Every model argument is a flag of the same name whose default is models.py's own.

Why it is fast: the whole split sits on the training device as one float tensor, and every step
indexes a random batch out of it. There is no DataLoader, no per-image transform and no
host-device copy in the loop, and the running loss stays on the device until the epoch ends, so
the host never waits for the device inside an epoch. benchmark.py measures this against the
standard loop. The lesson is the first half of this file; flags and checks come after it.
"""
import argparse
import contextlib
import inspect
import math
import os
import platform
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import torch
import torchvision
from torchvision import datasets

import models

MODELS = {"ae": models.AE, "vae": models.VAE, "cvae": models.CVAE}
DATASETS = {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST}
EVAL_BATCH = 1000  # images per forward pass wherever nothing is trained: a size that fits any device


def load_split(dataset, data_dir, train, device):
    """One split as (images, labels) on device; images are float (N, 1, 28, 28) in [0, 1]."""
    split = open_dataset(dataset, data_dir, train)
    images = split.data.to(device).unsqueeze(1).float().div_(255)
    return images, split.targets.to(device)


def binarize_once(images, seed=0):
    """A fixed 0/1 draw of each pixel, x ~ Bernoulli(intensity): the binarized test split. Drawn on the
    CPU with a fixed seed, so the split is the same whatever the training device."""
    generator = torch.Generator().manual_seed(seed)
    return torch.bernoulli(images.cpu(), generator=generator).to(images.device)


def train_epoch(model, optimizer, images, labels, batch_size, binarize=False):
    """One pass over the images in a random order; returns the mean loss per image."""
    model.train()
    total = torch.zeros((), device=images.device)
    for batch in torch.randperm(len(images), device=images.device).split(batch_size):
        x, y = images[batch], labels[batch]
        if binarize:
            x = torch.bernoulli(x)  # dynamic binarization: fresh 0/1 pixels at every step
        loss = model.loss(x, y)  # the only line where the models differ; the AE and the VAE ignore y
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach() * len(batch)
    return total / len(images)


@torch.no_grad()
def evaluate_loss(model, images, labels, batch_size=EVAL_BATCH):
    """Mean loss per image over a whole split (for the VAEs: one sample of z per image)."""
    model.eval()
    total = sum(model.loss_per_image(x, y).sum() for x, y in zip(images.split(batch_size), labels.split(batch_size)))
    return total / len(images)


def fit(model, train_split, test_split, args, name):
    """Train for args.epochs on (images, labels) splits, printing one line per epoch; returns the history."""
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, fused=True)
    history = {"train_loss": [], "test_loss": [], "seconds": []}
    for epoch in range(1, args.epochs + 1):
        with on_interrupt(f"{name.upper()} epoch {epoch}/{args.epochs}, not saved; "
                          f"files already in {args.out_dir}/ are untouched"):
            start = time.perf_counter()
            train_loss = train_epoch(model, optimizer, *train_split, args.batch_size, args.binarize).item()
            seconds = time.perf_counter() - start
            test_loss = evaluate_loss(model, *test_split).item()
            if not (math.isfinite(train_loss) and math.isfinite(test_loss)):
                fail(f"the {name} loss is not finite at epoch {epoch} (train {train_loss}, test {test_loss}); "
                     f"stopped without writing a checkpoint (try a smaller --lr)")
            print(f"{name:4s} epoch {epoch:3d}/{args.epochs}  train {train_loss:7.2f}  test {test_loss:7.2f}"
                  f"  nats/image  {seconds:5.2f} s", flush=True)
        history["train_loss"].append(train_loss)
        history["test_loss"].append(test_loss)
        history["seconds"].append(seconds)
    return history


def build_model(name, args, classes):
    """The named model, its arguments from the flags of the same names."""
    arguments = dict(latent_dim=args.latent_dim, arch=args.arch, mlp_hidden_dim=args.mlp_hidden_dim,
                     conv_channels=args.conv_channels, conv_hidden_dim=args.conv_hidden_dim,
                     decoder=args.decoder, sigma=args.sigma)
    if name != "ae":
        arguments["beta"] = args.beta
    if name == "cvae":
        arguments["classes"] = classes
    return MODELS[name](**arguments)


def train(args, names):
    """Train and save each named model ("ae", "vae", "cvae") on the same data, device and seed."""
    device = resolve_device(args.device)
    out_dir = writable_dir(args.out_dir)
    train_split = load_split(args.dataset, args.data_dir, True, device)
    test_images, test_labels = load_split(args.dataset, args.data_dir, False, device)
    if args.binarize:
        test_images = binarize_once(test_images)
    for name in names:
        torch.manual_seed(args.seed)
        model = build_model(name, args, len(DATASETS[args.dataset].classes)).to(device)
        print(f"training the {args.arch} {name.upper()} on {device}: {args.dataset}"
              f"{' (binarized)' if args.binarize else ''}, {len(train_split[0])} train / {len(test_images)} test images")
        history = fit(model, train_split, (test_images, test_labels), args, name)
        versions = {"python": platform.python_version(), "torch": str(torch.__version__), "torchvision": torchvision.__version__}
        save_checkpoint({"model": name, "config": model.config, "dataset": args.dataset, "binarize": args.binarize,
                         "seed": args.seed, "device": str(device), "versions": versions,
                         "history": history, "model_state": model.state_dict()}, out_dir / f"{name}.pt")


# Plumbing, shared with evaluate.py and main.py: devices, data files, safe writes, flags and failures.
# None of it is the lesson. Every expected failure stops with a message that says what to do (one line,
# or argparse's usage and error for a bad flag), before any work where that can be known, and no
# interrupted run leaves a half-written file.

CHECKPOINT_KEYS = {"model", "config", "dataset", "binarize", "seed", "device", "versions", "history", "model_state"}
KERNEL_PINS = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA")  # torch's, MKL's and oneDNN's
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def fail(message):
    """Stop with one line on stderr and exit status 1."""
    sys.exit(f"error: {message}")


def last_line(error):
    """The last non-empty line of an exception's message, or its type when it has none."""
    lines = str(error).strip().splitlines()
    return lines[-1] if lines else type(error).__name__


def resolve_device(name):
    """'auto' is the accelerator (CUDA, MPS, ...) when there is one this torch build can run, else the CPU."""
    accelerator = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    try:
        device = (accelerator or torch.device("cpu")) if name == "auto" else torch.device(name)
    except (RuntimeError, ValueError):
        fail(f"--device {name} is not a device torch knows; try auto, cpu, cuda, cuda:1 or mps")
    if device.type == "cpu":
        return device
    index = device.index or 0
    if accelerator is None or accelerator.type != device.type or index >= torch.accelerator.device_count():
        fail(f"--device {name} is not available here (this machine has {accelerator or 'no accelerator'}); "
             f"use --device auto or cpu")
    if device.type == "cuda" and not cuda_kernels_fit(index):
        problem = (f"this torch build has no kernels for the {torch.cuda.get_device_name(index)} (compute capability "
                   f"{'.'.join(map(str, torch.cuda.get_device_capability(index)))}; it has {' '.join(torch.cuda.get_arch_list())})")
        if name != "auto":
            fail(f"{problem}; use --device cpu, or install a torch build for this GPU")
        print(f"using the CPU: {problem}")
        return torch.device("cpu")
    return device


def cuda_kernels_fit(index):
    """Whether this torch build can run on CUDA device index: it holds kernels compiled for the GPU's
    major version at or below its minor version (sm_XY), or PTX (compute_XY) the driver can compile for it."""
    capability = torch.cuda.get_device_capability(index)
    for arch in torch.cuda.get_arch_list():
        kind, _, number = arch.partition("_")
        digits = "".join(filter(str.isdigit, number))
        built_for = (int(digits[:-1]), int(digits[-1])) if len(digits) >= 2 else None
        if built_for and ((kind == "sm" and built_for[0] == capability[0] and built_for <= capability)
                          or (kind == "compute" and built_for <= capability)):
            return True
    return False


def raw_dir(dataset, data_dir):
    """<data-dir>/<Name>/raw/, where torchvision's dataset keeps its files."""
    return Path(data_dir) / DATASETS[dataset].__name__ / "raw"


def dataset_within_reach(dataset, data_dir):
    """Whether <data-dir>/<Name>/raw/ holds the dataset's four files, or they can be downloaded there now."""
    if all((raw_dir(dataset, data_dir) / name).exists() for name in IDX_FILES):
        return True
    try:
        DATASETS[dataset](data_dir, train=False, download=True)
    except RuntimeError as error:
        if not str(error).startswith("Error downloading"):  # torchvision's words once every mirror has failed
            raise
        return False
    return True


def open_dataset(dataset, data_dir, train):
    """torchvision's dataset for one split, from <data-dir>/<Name>/raw/, downloaded there when missing."""
    try:
        return DATASETS[dataset](data_dir, train=train, download=True)
    except (RuntimeError, OSError, ValueError) as error:
        fail(f"cannot read or download {dataset} in {raw_dir(dataset, data_dir)}/ ({last_line(error)}); put the four "
             f"original uncompressed IDX files there ({', '.join(IDX_FILES)}) or pass --data-dir")


def writable_dir(path):
    """Create the output folder if needed and prove a file can be written there, before any work is done."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        fail(f"--out-dir {path} is a file, not a folder; pass another --out-dir")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        fail(f"--out-dir {path} cannot be written ({error.strerror or last_line(error)}); pass another --out-dir")
    return path


def write_atomically(path, write):
    """Call write(temporary path), then rename it over path: a failed or interrupted write leaves the old
    file as it was and no partial file. The temporary name keeps the suffix that savers read the format from."""
    path = Path(path)
    temporary = path.with_name(f"{path.stem}.tmp{path.suffix}")
    try:
        write(temporary)
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)


def save_checkpoint(checkpoint, path):
    with on_interrupt(f"while saving {path}, which is as it was (checkpoints are written whole or not at all)"):
        write_atomically(path, lambda temporary: torch.save(checkpoint, temporary))
    print(f"saved {path}")


@contextlib.contextmanager
def on_interrupt(what):
    """Say what was being done if Ctrl-C lands inside this block (run() prints it)."""
    try:
        yield
    except KeyboardInterrupt:
        raise KeyboardInterrupt(what) from None


def run(main):
    """Run a script's main(): Ctrl-C stops it with one line and exit status 130, not a traceback."""
    try:
        main()
    except KeyboardInterrupt as interrupt:
        print(f"interrupted{': ' + str(interrupt) if str(interrupt) else ''}", file=sys.stderr)
        sys.exit(130)


MODEL_DEFAULTS = {name: parameter.default for model in MODELS.values()
                  for name, parameter in inspect.signature(model).parameters.items()
                  if parameter.default is not inspect.Parameter.empty}
LOWEST = {"epochs": 1, "batch_size": 1, "latent_dim": 2, "mlp_hidden_dim": 1, "conv_channels": 1, "conv_hidden_dim": 1,
          "beta": 0}


def sigma_value(text):
    """--sigma: "learned", or a positive finite number."""
    if text == "learned":
        return text
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:  # refuses nan too
        raise argparse.ArgumentTypeError(f"must be a positive number or learned, got {text!r}")
    return value


def make_parser(description, training=True):
    """The flags train.py, evaluate.py and main.py share; training=False leaves out the training ones."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data-dir", default="data", help="holds MNIST/raw/; downloaded there when missing")
    parser.add_argument("--out-dir", default="results", help="checkpoints, figures and metrics.json")
    parser.add_argument("--device", default="auto", help="auto picks the accelerator (CUDA, MPS, ...) if any; or cpu, cuda:1")
    parser.add_argument("--seed", type=int, default=0, help="seeds weights, shuffling and sampling")
    if training:
        parser.add_argument("--epochs", type=int, default=30, help="epochs per model")
        parser.add_argument("--batch-size", type=int, default=128, help="images per training step")
        parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
        parser.add_argument("--dataset", default="mnist", choices=sorted(DATASETS),
                            help="fashion-mnist reads <data-dir>/FashionMNIST/raw/")
        parser.add_argument("--binarize", action="store_true",
                            help="train on 0/1 pixels drawn afresh each step, test on a fixed draw: a true likelihood")
        model = parser.add_argument_group("the models' arguments (defaults: models.py's)")
        model.add_argument("--latent-dim", type=int, default=MODEL_DEFAULTS["latent_dim"],
                           help="size of z (at least 2: the figures plot z0 against z1)")
        model.add_argument("--arch", default=MODEL_DEFAULTS["arch"], choices=sorted(models.BODIES), help="encoder/decoder body")
        model.add_argument("--mlp-hidden-dim", type=int, default=MODEL_DEFAULTS["mlp_hidden_dim"], help="the mlp's hidden width")
        model.add_argument("--conv-channels", type=int, default=MODEL_DEFAULTS["conv_channels"],
                           help="the conv's first feature maps (then twice as many)")
        model.add_argument("--conv-hidden-dim", type=int, default=MODEL_DEFAULTS["conv_hidden_dim"], help="the conv's dense width")
        model.add_argument("--decoder", default=MODEL_DEFAULTS["decoder"], choices=sorted(models.LIKELIHOODS),
                           help="the likelihood p(x|z), the reconstruction loss")
        model.add_argument("--sigma", type=sigma_value, default=None,
                           help="the gaussian decoder's sigma: a number (0.71: mse_loss(sum); 19.8: its mean over pixels) "
                                "or learned, its default")
        model.add_argument("--beta", type=float, default=MODEL_DEFAULTS["beta"], help="weight of the KL term (VAE, CVAE)")
    return parser


def machine():
    """The processor, the kernels torch runs on it (and the environment variables that pin them), the threads
    and the versions: what a run's last digits and its timings depend on."""
    cpu = platform.processor()
    if Path("/proc/cpuinfo").exists():  # Linux names its processor there, not in platform.processor()
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), cpu)
    return {"cpu": cpu, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "kernel_pins": {name: os.environ[name] for name in KERNEL_PINS if name in os.environ},
            "threads": torch.get_num_threads(), "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "python": platform.python_version(), "torch": str(torch.__version__), "torchvision": torchvision.__version__,
            "numpy": metadata.version("numpy"), "matplotlib": metadata.version("matplotlib")}


def parse_flags(parser, argv=None, lowest=None):
    """parser.parse_args, then argparse's own usage-and-error (exit status 2) for values no run can use.
    lowest: the least value of each numeric flag the script adds to make_parser's; with the training
    flags, LOWEST's too. A name in those tables that is no flag of the parser is a bug: a ValueError."""
    args = parser.parse_args(argv)
    table = {**(LOWEST if hasattr(args, "epochs") else {}), **(lowest or {})}
    unknown = sorted(set(table) - set(vars(args)))
    if unknown:
        raise ValueError(f"the table of least values names {', '.join(unknown)}, which the parser has no flag for")
    for name, least in table.items():
        if not getattr(args, name) >= least:  # "not >=" also refuses nan
            parser.error(f"--{name.replace('_', '-')} must be at least {least}, got {getattr(args, name)}")
    if not getattr(args, "lr", 1) > 0:
        parser.error(f"--lr must be greater than 0, got {args.lr}")
    if getattr(args, "sigma", None) is not None and args.decoder != "gaussian":
        parser.error(f"--sigma is the gaussian decoder's; the {args.decoder} decoder has none (add --decoder gaussian)")
    if getattr(args, "decoder", None) == "gaussian" and args.sigma is None:
        args.sigma = "learned"
    return args


def main(argv=None):
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("--model", default="both", choices=["ae", "vae", "cvae", "both"],
                        help="which model to train; both: the AE and the VAE")
    args = parse_flags(parser, argv)
    train(args, ["ae", "vae"] if args.model == "both" else [args.model])


if __name__ == "__main__":
    run(main)
