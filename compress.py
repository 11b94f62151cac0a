"""A real lossless compressor made of the VAE: bits-back coding with asymmetric numeral systems (BB-ANS;
Townsend, Bird and Barber, ICLR 2019).

    python compress.py compress digits.pt digits.bb --run results      # torch.saved 0/1 digits (N, 1, 28, 28)
    python compress.py decompress digits.bb restored.pt --run results  # the same digits back, float 0/1
    python compress.py measure --data-dir data --runs results          # writes results/compression.json

An entropy coder turns probabilities into lengths: a symbol of probability p adds log2(1/p) bits to the
message. This one is rANS (range asymmetric numeral systems; Duda, 2013), whose message is a stack: the last
symbol pushed is the first popped. Popping reads the symbol that the top bits stand for under a distribution,
and takes log2(1/p) bits off; any bits can be popped under any distribution, and pushing puts them back.

The VAE has no p(x) to code a digit with, only p(z), p(x|z) and q(z|x). Pushing x under p(x|z) and z under
p(z) costs -log p(x|z) - log p(z): x, and also the z, which the sender was free to choose. Bits back (Hinton
and van Camp, 1993) refunds that choice. The sender chooses z by popping it under q(z|x) off the bits already
in the message, the digits coded before, which shortens the message by -log q(z|x). The receiver pops z and
then x, computes q(z|x) from x and pushes z back under it: the borrowed bits return exactly, and the digit
before decodes from them. So a digit costs -log p(x|z) - log p(z) + log q(z|x), with z drawn from q(z|x) (that
is what popping does), and on average that is the negative ELBO: reconstruction + KL(q(z|x) || p(z)). The
first digit has nothing to borrow from: the message starts with random "clean" bits, and they stay in the file.

Exact arithmetic needs three discretisations. Each coordinate of z is one of 2^LATENT_BITS buckets of equal
mass under N(0, 1), so p(z) costs exactly LATENT_BITS bits a coordinate; q(z|x) is its mass on each bucket;
the decoder network is given the bucket's centre (in mass). Those masses and the pixels' Bernoulli
probabilities become counts out of 2^precision, none 0. Each costs a little; `measure` reports the total.

Decoding must recompute q(z|x) and p(x|z) to the last bit, so the file records the checkpoint's fingerprint
and both ways run on the CPU (a GPU may sum in another order), one thread, one digit at a time (another batch
shape may round differently), with the same CPU kernels (torch.backends.cpu.get_cpu_capability()) and torch
and Python builds. Decoding must end on the clean bits it began with, or it says in one line that it did not.
"""
import argparse
import hashlib
import json
import math
import pickle
import struct
import time
from pathlib import Path

import numpy as np
import torch

import evaluate
import metrics
import models
import train

LANES = 28  # rANS states side by side: a digit's 784 pixels go a row of 28 at a time
LATENT_BITS = 12  # 4096 buckets per latent coordinate
POSTERIOR_PRECISION = 28  # q(z|x) on the buckets: counts out of 2^28
PIXEL_PRECISION = 16  # p(pixel = 1 | z): a count out of 2^16
CLEAN_SEED = 0  # the clean bits: LANES random states, the same for both ends
WORD = np.uint64(32)


# The coder: rANS on LANES states at once.

class EmptyTail(Exception):
    """A pop found no words left: the message was not made by the pushes this decoding undoes."""


class Message:
    """An rANS message: LANES states (the head), each in [2^32, 2^64), on a stack of 32-bit words (the tail).

    Pushing a symbol that owns `freq` of the 2^precision slots from `start` on turns a state x into
    (x // freq) * 2^precision + start + x % freq: about x * 2^precision / freq, log2(2^precision / freq) bits
    more. A state that would outgrow 64 bits first moves its low 32 bits to the tail. Popping reads the slot
    x % 2^precision, finds the symbol that owns it, and undoes the push exactly, taking a word back from the
    tail when the state falls under 2^32. A call codes one symbol per lane, LANES at a time."""

    def __init__(self, head, tail=()):
        self.head, self.tail = np.array(head, np.uint64), list(tail)

    def push(self, starts, freqs, precision):
        limits = freqs << np.uint64(64 - precision)  # states from here up would outgrow 64 bits
        for first in range(0, len(starts), LANES):
            part = slice(first, min(first + LANES, len(starts)))
            x = self.head[:part.stop - first]
            full = x >= limits[part]
            if full.any():
                self.tail += x[full].astype(np.uint32).tolist()  # their low 32 bits
                x[full] >>= WORD
            quotient, remainder = np.divmod(x, freqs[part])
            x[:] = (quotient << np.uint64(precision)) + starts[part] + remainder

    def pop(self, count, precision, find):
        """count symbols, last LANES first; find(slots, part) gives the symbols that own the slots of part
        (a slice of the count), their starts and their freqs."""
        symbols = np.empty(count, np.uint64)
        for first in reversed(range(0, count, LANES)):
            part = slice(first, min(first + LANES, count))
            x = self.head[:part.stop - first]
            slots = x & np.uint64(2 ** precision - 1)
            symbols[part], starts, freqs = find(slots, part)
            x[:] = freqs * (x >> np.uint64(precision)) + (slots - starts)
            low = x < np.uint64(2 ** 32)
            if low.any():
                words = int(low.sum())
                if words > len(self.tail):
                    raise EmptyTail
                x[low] = (x[low] << WORD) | np.array(self.tail[-words:], np.uint64)
                del self.tail[-words:]
        return symbols

    def to_bytes(self):
        return self.head.astype("<u8").tobytes() + np.array(self.tail, "<u4").tobytes()


def clean_message():
    """The message before the first digit: random states in [2^63, 2^64) and no tail."""
    random = np.random.default_rng(CLEAN_SEED).integers(0, 2 ** 63, LANES, dtype=np.uint64)
    return Message(random | np.uint64(2 ** 63))


# The three distributions a digit is coded with.

BUCKETS = 2 ** LATENT_BITS
EDGES = torch.special.ndtri(torch.arange(BUCKETS + 1, dtype=torch.float64) / BUCKETS).numpy()  # -inf ... inf
CENTRES = torch.special.ndtri((torch.arange(BUCKETS, dtype=torch.float64) + 0.5) / BUCKETS).float().numpy()


def prior_find(slots, part):
    """p(z): each bucket owns one slot out of 2^LATENT_BITS."""
    return slots, slots, np.ones_like(slots)


class Posterior:
    """q(z|x) = N(mu, sigma^2) on the buckets: bucket k's slots start at floor(Phi(edge k) * (2^precision -
    BUCKETS)) + k, Phi being q's cumulative distribution function, so each bucket owns at least one slot."""

    def __init__(self, mu, logvar):
        self.mu = mu.numpy()[0].astype(np.float64)
        self.scale = 1 / (np.exp(0.5 * logvar.numpy()[0].astype(np.float64)) * math.sqrt(2))

    def first_slot(self, buckets, part):
        """2 Phi(t) = erfc(-t / sqrt(2)), from Python's erfc: one value at a time, the same bits in any batch."""
        twice_mass = [math.erfc(-t) for t in ((EDGES[buckets] - self.mu[part]) * self.scale[part]).tolist()]
        return np.floor(np.array(twice_mass) * ((2 ** POSTERIOR_PRECISION - BUCKETS) / 2)).astype(np.uint64) + buckets

    def push(self, message, buckets):
        starts = self.first_slot(buckets, slice(None))
        message.push(starts, self.first_slot(buckets + np.uint64(1), slice(None)) - starts, POSTERIOR_PRECISION)

    def find(self, slots, part):
        """Binary search, the bucket number's bits from the highest, keeping the bucket's first slot at or
        below the slot (starts) and the next bucket's above it (ends)."""
        buckets, starts = np.zeros_like(slots), np.zeros_like(slots)
        ends = np.full_like(slots, 2 ** POSTERIOR_PRECISION)
        for bit in reversed(range(LATENT_BITS)):
            higher = buckets | np.uint64(1 << bit)
            first = self.first_slot(higher, part)
            fits = first <= slots
            buckets, starts = np.where(fits, higher, buckets), np.where(fits, first, starts)
            ends = np.where(fits, ends, first)
        return buckets, starts, ends - starts


class Pixels:
    """p(x|z): pixel i is 1 with probability ones[i] / 2^PIXEL_PRECISION; a 0 owns the slots below a 1's."""

    def __init__(self, logits):
        top = 2 ** PIXEL_PRECISION
        self.ones = np.clip(np.rint(torch.sigmoid(logits).double().numpy().ravel() * top), 1, top - 1).astype(np.uint64)
        self.zeros = np.uint64(top) - self.ones

    def push(self, message, pixels):
        message.push(np.where(pixels, self.zeros, 0), np.where(pixels, self.ones, self.zeros), PIXEL_PRECISION)

    def find(self, slots, part):
        pixels = (slots >= self.zeros[part]).astype(np.uint64)
        return pixels, pixels * self.zeros[part], np.where(pixels, self.ones[part], self.zeros[part])


# Bits back, one digit at a time; decoding undoes each step of encoding, in reverse.

def posterior(vae, pixels):
    return Posterior(*vae.encode(torch.from_numpy(pixels).float().view(1, *models.IMAGE_SHAPE)))


def likelihood(vae, buckets):
    return Pixels(vae.decode_logits(torch.from_numpy(CENTRES[buckets])[None]))


@torch.inference_mode()
def encode(vae, digits, message):
    """Push the digits (uint8 0/1, N x 784) onto the message, first to last."""
    for pixels in digits:
        buckets = message.pop(vae.latent_dim, POSTERIOR_PRECISION, posterior(vae, pixels).find)  # borrow: z ~ q(z|x)
        likelihood(vae, buckets).push(message, pixels)  # -log p(x|z)
        message.push(buckets, np.ones_like(buckets), LATENT_BITS)  # -log p(z)
    return message


@torch.inference_mode()
def decode(vae, count, message):
    """Pop count digits off the message, last to first; returns them first to last."""
    digits = np.empty((count, models.IMAGE_PIXELS), np.uint8)
    for index in reversed(range(count)):
        buckets = message.pop(vae.latent_dim, LATENT_BITS, prior_find)
        digits[index] = message.pop(models.IMAGE_PIXELS, PIXEL_PRECISION, likelihood(vae, buckets).find)
        posterior(vae, digits[index]).push(message, buckets)  # pay back what encoding borrowed
    return digits


def compress(vae, digits):
    """The file's bytes: a header (a checksum, the digit count, the model's fingerprint), then the message."""
    body = struct.pack("<Q16s", len(digits), fingerprint(vae)) + encode(vae, digits, clean_message()).to_bytes()
    return MAGIC + hashlib.sha256(body).digest()[:8] + body


def decompress(vae, data, name):
    """The digits (uint8 0/1, N x 784) in the bytes of the file called name; exits with one line where it cannot."""
    if data[:len(MAGIC)] != MAGIC:
        train.fail(f"{name} is not a file written by compress.py")
    if len(data) < HEADER + 8 * LANES or hashlib.sha256(data[len(MAGIC) + 8:]).digest()[:8] != data[len(MAGIC):][:8]:
        train.fail(f"{name} is damaged: cut short or altered since it was written")
    count, model = struct.unpack_from("<Q16s", data, len(MAGIC) + 8)
    if model != fingerprint(vae):
        train.fail(f"{name} was compressed with another model (fingerprint {model.hex()[:12]}, not "
                   f"{fingerprint(vae).hex()[:12]}); decompress it with the run that compressed it")
    tail = np.frombuffer(data, "<u4", offset=HEADER + 8 * LANES).tolist()
    message = Message(np.frombuffer(data, "<u8", LANES, HEADER), tail)
    try:
        digits = decode(vae, count, message)
    except EmptyTail:
        digits = None
    if digits is None or message.tail or not np.array_equal(message.head, clean_message().head):
        train.fail(f"{name} did not decode back to the clean bits: the network's outputs here differ from the "
                   f"compressing machine's (it needs the same CPU kernels and torch and Python builds)")
    return digits


# Plumbing: the file format, the inputs and their checks, the commands, and the measurements.

MAGIC = b"BB-ANS1\n"
HEADER = len(MAGIC) + 8 + struct.calcsize("<Q16s")  # magic, checksum, digit count, fingerprint


def fingerprint(vae):
    """16 bytes of the SHA-256 of the weights, named and shaped."""
    digest = hashlib.sha256()
    for name, tensor in vae.state_dict().items():
        digest.update(f"{name}{tuple(tensor.shape)}".encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.digest()[:16]


def load_vae(run_dir):
    """The run's VAE on the CPU; exits with one line unless it has the Bernoulli decoder."""
    vae, checkpoint = evaluate.load_model(run_dir, "vae", torch.device("cpu"))
    if not isinstance(vae.likelihood, models.BernoulliPixels):
        train.fail(f"{run_dir}/vae.pt has the {vae.config['decoder']} decoder; bits-back coding here needs the "
                   f"bernoulli one, whose -log p(x|z) is a code length of 0/1 pixels")
    return vae, checkpoint


def load_digits(path):
    """0/1 digits (N, 1, 28, 28) of any dtype, from a torch.saved tensor, as uint8 N x 784."""
    try:
        images = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as error:
        train.fail(f"cannot read {path} as a torch.saved tensor ({train.last_line(error)})")
    shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or shape[1:] != models.IMAGE_SHAPE or not len(images):
        train.fail(f"{path} holds {shape}, not digits of shape (N, 1, 28, 28)")
    if not ((images == 0) | (images == 1)).all():
        train.fail(f"{path} has pixels other than 0 and 1; binarize them first (train.binarize_once)")
    return images.flatten(1).to(torch.uint8).numpy()


def write(path, write_to):
    try:
        train.write_atomically(path, write_to)
    except OSError as error:
        train.fail(f"cannot write {path} ({error.strerror or train.last_line(error)})")


def round_trip(vae, digits):
    """The compressed file checked by decompressing it (a mismatch is an error, never a size), and the seconds
    each way took."""
    start = time.perf_counter()
    data = compress(vae, digits)
    middle = time.perf_counter()
    if not np.array_equal(decompress(vae, data, "the new file"), digits):
        train.fail("the compressed digits did not decode to the originals; nothing was written")
    return data, middle - start, time.perf_counter() - middle


def compress_command(args):
    vae, _ = load_vae(args.run)
    digits = load_digits(args.images)
    data, compressing, decompressing = round_trip(vae, digits)
    write(Path(args.out), lambda temporary: temporary.write_bytes(data))
    bits = 8 * len(data)
    print(f"{args.out}: {len(digits)} digits in {bits} bits, {bits / len(digits):.2f} bits per digit, "
          f"{bits / digits.size:.4f} per pixel; compressed in {compressing:.1f} s, checked in {decompressing:.1f} s")


def decompress_command(args):
    vae, _ = load_vae(args.run)
    try:
        data = Path(args.compressed).read_bytes()
    except OSError as error:
        train.fail(f"cannot read {args.compressed} ({error.strerror})")
    start = time.perf_counter()
    images = torch.from_numpy(decompress(vae, data, args.compressed)).float().view(-1, *models.IMAGE_SHAPE)
    seconds = time.perf_counter() - start
    write(Path(args.restored), lambda temporary: torch.save(images, temporary))
    print(f"{len(images)} digits restored to {args.restored} in {seconds:.1f} s")


def measure(run_dir, data_dir, iw_samples=50):
    """The run's binarized test split compressed and decompressed: the file's size beside -L_k and the negative
    ELBO, zlib and lzma (evaluate.compression), in bits per digit and per pixel; the overhead, the file less the
    negative ELBO: the header, the clean bits, and the rest ("discretisation": buckets, quantised
    probabilities, the last states' unused bits, and the ELBO's sampling noise); digits per second."""
    vae, checkpoint = load_vae(run_dir)
    images = train.binarize_once(train.load_split(checkpoint["dataset"], data_dir, False, "cpu")[0])
    digits = images.flatten(1).to(torch.uint8).numpy()
    data, compressing, decompressing = round_trip(vae, digits)
    torch.manual_seed(0)
    with torch.inference_mode():
        terms = [torch.stack(vae.elbo_terms(x)).sum() for x in images.split(train.EVAL_BATCH)]  # nats
        negative_elbo = sum(terms).item() / len(images)
        report = evaluate.compression(metrics.importance_weighted_bound(vae, images, iw_samples), negative_elbo, images)
    bits = {"file": 8 * len(data) / len(digits), **report["bits_per_digit"]}
    overhead = {"header": 8 * HEADER / len(digits), "clean_bits": 64 * LANES / len(digits)}
    overhead["discretisation"] = bits["file"] - bits["vae_negative_elbo"] - sum(overhead.values())
    return {"checkpoint": str(Path(run_dir) / "vae.pt"), "trained_binarized": checkpoint["binarize"],
            "fingerprint": fingerprint(vae).hex(), "digits": len(digits), "iw_samples": iw_samples,
            "bits_per_digit": bits, "bits_per_pixel": {key: value / digits.shape[1] for key, value in bits.items()},
            "overhead_bits_per_digit": overhead,
            "digits_per_second": {"compress": len(digits) / compressing, "decompress": len(digits) / decompressing}}


def measure_command(args):
    report = {"runs": {Path(run).name: measure(run, args.data_dir) for run in args.runs},
              "paper_bits_per_pixel": {"source": "Townsend, Bird and Barber, ICLR 2019, binarized MNIST",
                                       "bb_ans": 0.19, "bz2": 0.25, "gzip": 0.33},
              "settings": {"lanes": LANES, "latent_bits": LATENT_BITS, "posterior_precision": POSTERIOR_PRECISION,
                           "pixel_precision": PIXEL_PRECISION},
              "machine": train.machine()}
    write(Path(args.out), lambda temporary: temporary.write_text(json.dumps(report, indent=2) + "\n"))
    for name, run in report["runs"].items():
        print(f"{name}: {run['bits_per_digit']['file']:.2f} bits per digit (negative ELBO "
              f"{run['bits_per_digit']['vae_negative_elbo']:.2f}); {run['digits_per_second']['compress']:.0f} "
              f"digits/s compressing, {run['digits_per_second']['decompress']:.0f} decompressing")
    print(f"wrote {args.out}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    compressing = commands.add_parser("compress", help="0/1 digits (a torch.saved tensor) to a compressed file")
    compressing.add_argument("images")
    compressing.add_argument("out")
    decompressing = commands.add_parser("decompress", help="a compressed file back to the digits")
    decompressing.add_argument("compressed")
    decompressing.add_argument("restored")
    for command in (compressing, decompressing):
        command.add_argument("--run", default="results", help="the run folder whose vae.pt codes the digits")
    measuring = commands.add_parser("measure", help="the binarized test split with each run: results/compression.json")
    measuring.add_argument("--runs", nargs="+", default=["results"], help="run folders with vae.pt")
    measuring.add_argument("--data-dir", default="data", help="holds MNIST/raw/")
    measuring.add_argument("--out", default="results/compression.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the same sums in the same order on any machine
    {"compress": compress_command, "decompress": decompress_command, "measure": measure_command}[args.command](args)


if __name__ == "__main__":
    train.run(main)
