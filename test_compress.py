"""Tests of compress.py: the rANS coder against the information content of what it codes, bits-back coding
of digits with a small untrained VAE against its negative ELBO, and every bad input's one-line error.
Offline, no dataset, seconds:

    python -m pytest test_compress.py
"""
import json
import math
import struct

import numpy as np
import pytest
import torch

import compress
import models
import train


def content_bits(message):
    """What a message holds, in bits: each state x holds log2(x), each tail word 32."""
    return np.log2(message.head.astype(np.float64)).sum() + 32 * len(message.tail)


def save_vae(run_dir, seed=0, **config):
    """A small untrained VAE saved as train.py saves one, in run_dir/vae.pt."""
    torch.manual_seed(seed)
    vae = models.VAE(**{"latent_dim": 30, "mlp_hidden_dim": 32, **config}).eval()
    run_dir.mkdir(exist_ok=True)
    history = {"train_loss": [], "test_loss": [], "seconds": []}
    train.save_checkpoint({"model": "vae", "config": vae.config, "dataset": "mnist", "binarize": True, "seed": seed,
                           "device": "cpu", "versions": {}, "history": history, "model_state": vae.state_dict()},
                          run_dir / "vae.pt")
    return vae


def some_digits(n=36, seed=0):
    """0/1 images, ink likelier near the centre, as in digits."""
    generator = torch.Generator().manual_seed(seed)
    distance = (torch.arange(28) - 13.5).abs()
    ink = 0.6 * torch.exp(-(distance[:, None] ** 2 + distance[None, :] ** 2) / 60)
    return torch.bernoulli(ink.expand(n, 1, 28, 28), generator=generator)


def write_mnist(root, digits):
    """digits as both splits of MNIST, in the IDX files torchvision reads from root/MNIST/raw/."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    arrays = {"images-idx3": (digits.squeeze(1) * 255).to(torch.uint8).numpy(),
              "labels-idx1": np.zeros(len(digits), np.uint8)}
    for split in ("train", "t10k"):
        for name, array in arrays.items():
            header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
            (raw / f"{split}-{name}-ubyte").write_bytes(header + array.tobytes())
    return root


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread, as compress.main sets; the rest of the suite gets its own back."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def run_dir(tmp_path):
    save_vae(tmp_path / "run")
    return tmp_path / "run"


def cli(*args):
    compress.main([str(arg) for arg in args])


def fails(*args, match):
    with pytest.raises(SystemExit) as exit_info:
        cli(*args)
    message = str(exit_info.value.code)
    assert message.startswith("error: ") and "\n" not in message and match in message, message


# The coder.

@pytest.mark.parametrize("precision", [8, 16, 24, 28])
def test_the_coder_round_trips_random_symbols_at_their_information_content(precision):
    rng = np.random.default_rng(precision)
    batches = []
    message = compress.clean_message()
    start = content_bits(message)
    for count in rng.integers(1, 3 * compress.LANES, size=40):  # vectors shorter and longer than LANES
        symbols = rng.integers(2, 40)  # each symbol's distribution: random counts out of 2^precision, none 0
        cuts = np.sort(rng.integers(1, 2 ** precision, size=(count, symbols - 1)), axis=1)
        cumulative = np.concatenate([np.zeros((count, 1)), cuts, np.full((count, 1), 2 ** precision)], 1)
        cumulative = cumulative.astype(np.uint64)
        drawn = rng.integers(0, symbols, size=count)
        starts, ends = cumulative[np.arange(count), drawn], cumulative[np.arange(count), drawn + 1]
        keep = ends > starts  # a repeated cut gives a symbol no slots: never drawn
        cumulative, drawn, starts, ends = cumulative[keep], drawn[keep], starts[keep], ends[keep]
        message.push(starts, ends - starts, precision)
        batches.append((cumulative, drawn, np.sum(precision - np.log2((ends - starts).astype(np.float64)))))
    information = sum(bits for _, _, bits in batches)
    assert abs(content_bits(message) - start - information) <= 1e-3 * information + 1

    for cumulative, drawn, _ in reversed(batches):
        def find(slots, part):
            table = cumulative[part]
            symbols = (table[:, 1:] <= slots[:, None]).sum(1)
            rows = np.arange(len(slots))
            return symbols, table[rows, symbols], table[rows, symbols + 1] - table[rows, symbols]
        assert np.array_equal(message.pop(len(drawn), precision, find), drawn)
    assert not message.tail and np.array_equal(message.head, compress.clean_message().head)


def test_popping_past_the_end_of_the_message_is_an_error():
    message = compress.Message(np.full(compress.LANES, 2 ** 32, np.uint64))  # the least each state may hold
    with pytest.raises(compress.EmptyTail):
        message.pop(compress.LANES, 16, lambda slots, part: (slots, slots, np.ones_like(slots)))


# Bits back.

def test_digits_round_trip_and_cost_their_negative_elbo(tmp_path):
    vae = save_vae(tmp_path)
    digits = some_digits().flatten(1).to(torch.uint8).numpy()
    data = compress.compress(vae, digits)
    assert np.array_equal(compress.decompress(vae, data, "the file"), digits)
    assert compress.compress(vae, digits) == data  # the same file every time

    torch.manual_seed(0)
    with torch.no_grad():
        x = torch.from_numpy(digits).float().view(-1, *models.IMAGE_SHAPE).repeat(20, 1, 1, 1)
        negative_elbo = sum(vae.elbo_terms(x)).mean().item() / math.log(2)  # bits, 20 draws of z per digit
    message = compress.encode(vae, digits, compress.clean_message())
    coded = (content_bits(message) - content_bits(compress.clean_message())) / len(digits)
    assert abs(coded - negative_elbo) < 0.01 * negative_elbo
    fixed = 8 * compress.HEADER + 64 * compress.LANES + 32 * compress.LANES  # header, clean bits, the head's slack
    assert 8 * len(data) <= len(digits) * 1.01 * negative_elbo + fixed


def test_the_commands_round_trip_any_dtype_and_report_the_size(run_dir, tmp_path, capsys):
    images = some_digits(12)
    for dtype in (torch.bool, torch.uint8, torch.float64):
        torch.save(images.to(dtype), tmp_path / "digits.pt")
        cli("compress", tmp_path / "digits.pt", tmp_path / "digits.bb", "--run", run_dir)
        assert "bits per digit" in capsys.readouterr().out
        cli("decompress", tmp_path / "digits.bb", tmp_path / "restored.pt", "--run", run_dir)
        assert "12 digits restored" in capsys.readouterr().out
        assert torch.equal(torch.load(tmp_path / "restored.pt"), images)


def test_measure_puts_the_file_beside_the_bounds_and_the_other_compressors(run_dir, tmp_path):
    data_dir = write_mnist(tmp_path / "data", some_digits(20))
    cli("measure", "--runs", run_dir, "--data-dir", data_dir, "--out", tmp_path / "compression.json")
    run = json.loads((tmp_path / "compression.json").read_text())["runs"]["run"]
    bits, overhead = run["bits_per_digit"], run["overhead_bits_per_digit"]
    assert run["digits"] == 20 and {"vae_nll_bound", "zlib_per_digit", "lzma_whole_split"} <= bits.keys()
    assert bits["file"] == pytest.approx(bits["vae_negative_elbo"] + sum(overhead.values()))
    assert run["bits_per_pixel"]["file"] == pytest.approx(bits["file"] / 784)
    assert overhead["clean_bits"] == 64 * compress.LANES / 20 and min(run["digits_per_second"].values()) > 0


# Bad inputs: one line each.

@pytest.mark.parametrize("images, message", [
    (torch.full((3, 1, 28, 28), 0.5), "pixels other than 0 and 1"),
    (torch.full((3, 1, 28, 28), float("nan")), "pixels other than 0 and 1"),
    (torch.zeros(3, 28, 28), "holds (3, 28, 28), not digits"),
    (torch.zeros(0, 1, 28, 28), "holds (0, 1, 28, 28), not digits"),
    ({"images": torch.zeros(3, 1, 28, 28)}, "holds dict, not digits")])
def test_bad_images_are_refused(images, message, run_dir, tmp_path):
    torch.save(images, tmp_path / "digits.pt")
    fails("compress", tmp_path / "digits.pt", tmp_path / "digits.bb", "--run", run_dir, match=message)
    assert not (tmp_path / "digits.bb").exists()


def test_a_missing_images_file_is_refused(run_dir, tmp_path):
    fails("compress", tmp_path / "none.pt", tmp_path / "digits.bb", "--run", run_dir, match="cannot read")


def test_missing_damaged_and_non_bernoulli_checkpoints_are_refused(tmp_path):
    torch.save(some_digits(2), tmp_path / "digits.pt")
    fails("compress", tmp_path / "digits.pt", tmp_path / "digits.bb", "--run", tmp_path, match="vae.pt not found")
    save_vae(tmp_path / "damaged")
    data = (tmp_path / "damaged" / "vae.pt").read_bytes()
    (tmp_path / "damaged" / "vae.pt").write_bytes(data[:len(data) // 2])
    fails("compress", tmp_path / "digits.pt", tmp_path / "digits.bb", "--run", tmp_path / "damaged",
          match="is not a readable checkpoint")
    save_vae(tmp_path / "gaussian", decoder="gaussian", sigma=1.0)
    fails("compress", tmp_path / "digits.pt", tmp_path / "digits.bb", "--run", tmp_path / "gaussian",
          match="has the gaussian decoder")


@pytest.fixture
def compressed(run_dir, tmp_path):
    torch.save(some_digits(6), tmp_path / "digits.pt")
    cli("compress", tmp_path / "digits.pt", tmp_path / "digits.bb", "--run", run_dir)
    return tmp_path / "digits.bb"


@pytest.mark.parametrize("damage, message", [
    (lambda data: data[:-3], "is damaged"),
    (lambda data: data[:20], "is damaged"),
    (lambda data: data[:-9] + bytes([data[-9] ^ 1]) + data[-8:], "is damaged"),
    (lambda data: b"not a compressed file", "is not a file written by compress.py")])
def test_a_cut_or_altered_file_is_refused(damage, message, compressed, run_dir, tmp_path):
    compressed.write_bytes(damage(compressed.read_bytes()))
    fails("decompress", compressed, tmp_path / "restored.pt", "--run", run_dir, match=message)
    assert not (tmp_path / "restored.pt").exists()


def test_another_models_file_is_refused(compressed, tmp_path):
    save_vae(tmp_path / "other", seed=1)
    fails("decompress", compressed, tmp_path / "restored.pt", "--run", tmp_path / "other", match="another model")


def test_network_outputs_that_differ_are_caught_by_the_clean_bits(run_dir, monkeypatch):
    """Weights one rounding step off stand in for another machine's arithmetic; with the fingerprint made blind
    to them, only the decoding can tell."""
    original, nudged = compress.load_vae(run_dir)[0], compress.load_vae(run_dir)[0]
    with torch.no_grad():
        for weights in nudged.parameters():
            weights.copy_(torch.nextafter(weights, torch.full_like(weights, math.inf)))
    monkeypatch.setattr(compress, "fingerprint", lambda vae: bytes(16))
    data = compress.compress(original, some_digits(6).flatten(1).to(torch.uint8).numpy())
    with pytest.raises(SystemExit, match="did not decode back to the clean bits"):
        compress.decompress(nudged, data, "the file")

