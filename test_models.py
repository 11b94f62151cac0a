"""Tests: the maths against torch.distributions, the model interface, training, the scripts end to end
and their error messages. Offline and without the real MNIST: a tiny MNIST-format dataset is
written as IDX files into a temporary directory.

    python -m pytest
"""
import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.distributions import Bernoulli, Normal, kl_divergence

import evaluate
import main
import models
import train

HERE = Path(__file__).parent
FIGURES = ["samples.png", "samples_ae.png", "samples_vae.png", "interpolation.png", "interpolation_ae.png",
           "interpolation_vae.png", "interpolation_vae.gif", "latent_scatter.png", "reconstructions.png",
           "traversal_vae.png", "loss_curves.png", "metrics.json"]
MANIFOLD = ["manifold.png", "manifold_ae.png", "manifold_vae.png"]


def write_idx(path, array):
    """An IDX file as MNIST ships it: zero, zero, type 0x08 (uint8), rank, big-endian sizes, data."""
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_tiny_mnist(root, folder="MNIST", train_size=200, test_size=60):
    """Ten blurry class templates plus noise, every class in both splits, in <root>/<folder>/raw/."""
    rng = np.random.default_rng(0)
    templates = rng.random((10, 28, 28)) ** 3
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    for prefix, size in [("train", train_size), ("t10k", test_size)]:
        labels = np.arange(size) % 10
        images = np.clip(templates[labels] + 0.1 * rng.standard_normal((size, 28, 28)), 0, 1) * 255
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    return write_tiny_mnist(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def trained_dir(data_dir, tmp_path_factory):
    """One epoch of both models through main.py's own entry point, figures included."""
    out_dir = tmp_path_factory.mktemp("results")
    main.main(["--data-dir", str(data_dir), "--out-dir", str(out_dir), "--epochs", "2", "--device", "cpu"])
    return out_dir


def run_script(*args):
    return subprocess.run([sys.executable, *args], cwd=HERE, capture_output=True, text=True, timeout=300)


def images(n=8):
    return torch.rand(n, *models.IMAGE_SHAPE)


# The maths.

def test_kl_matches_torch_distributions():
    mu, logvar = torch.randn(16, 20), torch.randn(16, 20)
    posterior, prior = Normal(mu, torch.exp(0.5 * logvar)), Normal(torch.zeros(20), torch.ones(20))
    expected = kl_divergence(posterior, prior).sum(dim=1)
    torch.testing.assert_close(models.kl_divergence(mu, logvar), expected)


def test_kl_is_zero_only_at_the_prior():
    zeros = torch.zeros(3, 20)
    assert torch.all(models.kl_divergence(zeros, zeros) == 0)
    assert torch.all(models.kl_divergence(zeros + 0.1, zeros) > 0)


def test_reconstruction_loss_is_the_bernoulli_negative_log_likelihood():
    logits, x = 5 * torch.randn(8, *models.IMAGE_SHAPE), images()
    expected = -Bernoulli(logits=logits, validate_args=False).log_prob(x).sum() / len(x)
    torch.testing.assert_close(models.reconstruction_loss(logits, x), expected)


def test_reconstruction_loss_is_finite_for_saturated_logits():
    logits = torch.full((2, *models.IMAGE_SHAPE), 200.0)
    logits[:, :, ::2] = -200.0  # half the pixels confidently wrong: each costs 200 nats, not inf
    x = torch.ones(2, *models.IMAGE_SHAPE)
    torch.testing.assert_close(models.reconstruction_loss(logits, x), torch.tensor(392 * 200.0))


def test_vae_loss_is_reconstruction_plus_beta_kl():
    torch.manual_seed(0)
    vae, x = models.VAE(beta=4.0), images()
    torch.manual_seed(1)
    loss = vae.loss(x)
    torch.manual_seed(1)
    mu, logvar = vae.encode(x)
    logits = vae.decode_logits(vae.reparameterize(mu, logvar))
    reconstruction, kl = models.reconstruction_loss(logits, x), models.kl_divergence(mu, logvar).mean()
    torch.testing.assert_close(loss, reconstruction + 4.0 * kl)
    torch.manual_seed(1)
    torch.testing.assert_close(vae.loss_terms(x), (reconstruction, kl))


# The interface.

@pytest.mark.parametrize("arch", ["mlp", "conv"])
@pytest.mark.parametrize("latent_dim", [2, 20])
def test_interface_shapes_and_ranges(latent_dim, arch):
    ae, vae, x = models.AE(latent_dim, arch), models.VAE(latent_dim, arch), images(5)
    assert ae.encode(x).shape == (5, latent_dim)
    mu, logvar = vae.encode(x)
    assert mu.shape == logvar.shape == (5, latent_dim)
    x_hat, mu, logvar = vae(x)
    for output in (ae(x), x_hat, vae.decode(torch.randn(5, vae.latent_dim))):
        assert output.shape == (5, *models.IMAGE_SHAPE)
        assert output.min() >= 0 and output.max() <= 1


def test_config_rebuilds_the_model():
    vae = models.VAE(latent_dim=7, beta=0.5)
    rebuilt = models.VAE(**vae.config)
    rebuilt.load_state_dict(vae.state_dict())
    assert (rebuilt.latent_dim, rebuilt.beta) == (7, 0.5)


def test_unknown_arch_is_refused():
    with pytest.raises(ValueError, match="unknown arch"):
        models.AE(arch="transformer")


def test_gradients_reach_mu_and_logvar_through_the_sample():
    mu = torch.randn(4, 20, requires_grad=True)
    logvar = torch.randn(4, 20, requires_grad=True)
    models.VAE.reparameterize(mu, logvar).pow(2).sum().backward()
    assert mu.grad is not None and mu.grad.abs().sum() > 0
    assert logvar.grad is not None and logvar.grad.abs().sum() > 0


def test_reparameterized_samples_follow_the_posterior():
    torch.manual_seed(0)
    mu, logvar = torch.tensor([1.5, -2.0]), torch.tensor([0.0, -1.0])
    z = models.VAE.reparameterize(mu.expand(100_000, 2), logvar.expand(100_000, 2))
    torch.testing.assert_close(z.mean(0), mu, atol=0.02, rtol=0)
    torch.testing.assert_close(z.std(0), torch.exp(0.5 * logvar), atol=0.02, rtol=0)


@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_vae_loss_trains_every_parameter(arch):
    vae = models.VAE(arch=arch)
    vae.loss(images()).backward()
    for name, parameter in vae.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


# Training.

@pytest.mark.parametrize("arch", ["mlp", "conv"])
@pytest.mark.parametrize("model_class", [models.AE, models.VAE])
def test_a_few_steps_lower_the_loss(model_class, arch):
    torch.manual_seed(0)
    model, x = model_class(arch=arch), images(32).round()  # binary pixels: a loss that can fall towards 0
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    first = model.loss(x).item()
    for _ in range(100):
        optimizer.zero_grad()
        model.loss(x).backward()
        optimizer.step()
    assert model.loss(x).item() < 0.5 * first


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, {}), (torch.bfloat16, {"rtol": 1e-2, "atol": 0})])
def test_train_epoch_returns_the_mean_loss_per_image(dtype, tolerance):
    torch.manual_seed(0)
    model, x = models.AE(), images(10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    torch.testing.assert_close(train.train_epoch(model, optimizer, x, 4, dtype), model.loss(x), **tolerance)


def test_bf16_epochs_run_bf16_matmuls_lower_the_loss_and_keep_fp32_weights():
    torch.manual_seed(0)
    vae, x = models.VAE(), images(32).round()
    matmul_dtypes = set()
    vae.decoder[0].register_forward_hook(lambda layer, inputs, output: matmul_dtypes.add(output.dtype))
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3, fused=True)
    losses = [train.train_epoch(vae, optimizer, x, 32, torch.bfloat16).item() for _ in range(100)]
    assert matmul_dtypes == {torch.bfloat16}
    assert losses[-1] < 0.5 * losses[0]
    for name, parameter in vae.named_parameters():
        assert parameter.dtype == parameter.grad.dtype == torch.float32, name


@pytest.mark.parametrize("avx512_bf16, amx, expected", [(True, False, "bf16"), (False, True, "bf16"), (False, False, "fp32")])
def test_auto_precision_is_bf16_only_on_cpus_that_have_it(avx512_bf16, amx, expected, monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert train.resolve_precision("auto", torch.device("cpu")) == expected
    assert train.resolve_precision("auto", torch.device("cuda")) == "fp32"
    assert train.resolve_precision("bf16", torch.device("cuda")) == "bf16"
    assert train.resolve_precision("fp32", torch.device("cpu")) == "fp32"


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_is_deterministic_for_a_seed(precision, data_dir, tmp_path):
    def run(out_dir, seed):
        train.main(["--data-dir", str(data_dir), "--out-dir", str(out_dir), "--epochs", "1",
                    "--device", "cpu", "--seed", str(seed), "--precision", precision])
        return torch.load(out_dir / "vae.pt", weights_only=True)
    first, again, other = run(tmp_path / "a", 1), run(tmp_path / "b", 1), run(tmp_path / "c", 2)
    assert first["history"]["test_loss"] == again["history"]["test_loss"]
    for name, tensor in first["model_state"].items():
        assert torch.equal(tensor, again["model_state"][name]), name
    assert first["history"]["test_loss"] != other["history"]["test_loss"]


def test_checkpoints_hold_what_rebuilds_the_models(trained_dir):
    for name, model_class in [("ae", models.AE), ("vae", models.VAE)]:
        checkpoint = torch.load(trained_dir / f"{name}.pt", weights_only=True)
        assert set(checkpoint) == train.CHECKPOINT_KEYS
        assert checkpoint["model"] == name and checkpoint["dataset"] == "mnist"
        assert checkpoint["precision"] == train.resolve_precision("auto", torch.device("cpu"))
        model = model_class(**checkpoint["config"])
        model.load_state_dict(checkpoint["model_state"])
        assert [len(values) for values in checkpoint["history"].values()] == [2, 2, 2]
    assert not list(trained_dir.glob("*.tmp"))


def test_a_failed_save_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "vae.pt"
    train.save_checkpoint({"good": 1}, path)

    def broken_save(obj, file):
        Path(file).write_bytes(b"half a checkpoint")
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        train.save_checkpoint({"good": 2}, path)
    assert torch.load(path) == {"good": 1}
    assert list(tmp_path.iterdir()) == [path]


def test_a_diverging_loss_stops_without_writing_a_checkpoint(data_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(models.AE, "loss", lambda self, x: self.decode_logits(self.encode(x)).mean() * float("nan"))
    with pytest.raises(SystemExit, match=r"ae loss is not finite at epoch 1 \(train nan"):
        train.main(["--data-dir", str(data_dir), "--out-dir", str(tmp_path), "--model", "ae", "--device", "cpu"])
    assert not list(tmp_path.iterdir())


# Figures.

def test_evaluate_writes_every_figure(trained_dir):
    for name in FIGURES:
        assert (trained_dir / name).stat().st_size > 0, name
    assert not any((trained_dir / name).exists() for name in MANIFOLD)


def test_metrics_json_has_its_keys(trained_dir):
    metrics = json.loads((trained_dir / "metrics.json").read_text())
    checkpoint = torch.load(trained_dir / "vae.pt", weights_only=True)
    for name in ("ae", "vae"):
        assert {"test_loss", "epochs", "seconds_per_epoch", "device", "precision", "seed", "versions"} <= set(metrics[name])
        assert metrics[name]["epochs"] == 2 and metrics[name]["device"] == "cpu"
        assert set(metrics[name]["versions"]) == {"python", "torch", "torchvision"}
    assert metrics["vae"]["test_loss"] == checkpoint["history"]["test_loss"][-1]
    vae = metrics["vae"]
    assert vae["test_reconstruction"] > 0 and vae["test_kl"] >= 0
    assert vae["test_negative_elbo"] == pytest.approx(vae["test_reconstruction"] + vae["test_kl"])


def test_two_dimensional_latents_add_the_manifold(data_dir, tmp_path):
    main.main(["--data-dir", str(data_dir), "--out-dir", str(tmp_path), "--epochs", "1", "--device", "cpu",
               "--latent-dim", "2"])
    for name in FIGURES + MANIFOLD:
        assert (tmp_path / name).stat().st_size > 0, name


def test_conv_fashion_mnist_runs_end_to_end(tmp_path):
    data_dir = write_tiny_mnist(tmp_path / "data", folder="FashionMNIST")
    out_dir = tmp_path / "results"
    main.main(["--data-dir", str(data_dir), "--out-dir", str(out_dir), "--epochs", "1", "--device", "cpu",
               "--arch", "conv", "--dataset", "fashion-mnist", "--beta", "4"])
    for name in FIGURES:
        assert (out_dir / name).stat().st_size > 0, name
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["vae"]["dataset"] == "fashion-mnist"
    assert metrics["vae"]["config"] == {"latent_dim": 20, "arch": "conv", "beta": 4.0}
    assert metrics["ae"]["config"] == {"latent_dim": 20, "arch": "conv"}


def test_evaluation_is_deterministic_for_a_seed(data_dir, trained_dir):
    pictures = {}
    for attempt in range(2):
        evaluate.evaluate(trained_dir, data_dir, "cpu", seed=3)
        pictures[attempt] = (trained_dir / "samples.png").read_bytes(), (trained_dir / "latent_scatter.png").read_bytes()
    assert pictures[0] == pictures[1]


# Errors a user can act on: one line, non-zero exit, no traceback.

def test_missing_data_gives_one_clear_line(tmp_path):
    result = run_script("train.py", "--data-dir", str(tmp_path), "--epochs", "1")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert f"{tmp_path / 'MNIST' / 'raw'}/" in result.stderr and "t10k-images-idx3-ubyte" in result.stderr


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "0"], "--epochs: must be at least 1"),
    (["--batch-size", "0"], "--batch-size: must be at least 1"),
    (["--latent-dim", "1"], "--latent-dim: must be at least 2"),
    (["--beta", "-0.5"], "--beta: must be at least 0"),
    (["--lr", "0"], "--lr: must be greater than 0"),
    (["--epochs", "ten"], "--epochs: expected an integer"),
    (["--device", "tpu"], "--device: invalid choice"),
    (["--arch", "resnet"], "--arch: invalid choice"),
    (["--dataset", "cifar10"], "--dataset: invalid choice"),
    (["--precision", "fp16"], "--precision: invalid choice"),
])
def test_bad_flags_are_refused(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main.main(flags)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert message in error and error.strip().count("\n") == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_asking_for_missing_cuda_is_refused():
    with pytest.raises(SystemExit, match="CUDA is not available"):
        train.resolve_device("cuda")


def test_missing_checkpoint_is_named(tmp_path, data_dir):
    with pytest.raises(SystemExit, match=r"ae\.pt not found; train it first"):
        evaluate.evaluate(tmp_path, data_dir, "cpu", seed=0)


def corrupt(path, field, value):
    checkpoint = torch.load(path, weights_only=True)
    checkpoint[field] = value
    torch.save(checkpoint, path)


@pytest.mark.parametrize("change, message", [
    (lambda out: (out / "ae.pt").write_bytes((out / "vae.pt").read_bytes()), r"holds a 'vae' checkpoint, not 'ae'"),
    (lambda out: (out / "vae.pt").write_bytes(b"not a checkpoint"), r"vae\.pt is not a readable checkpoint"),
    (lambda out: corrupt(out / "vae.pt", "config", {"latent_dim": 5, "arch": "mlp", "beta": 1.0}),
     r"vae\.pt does not fit models\.VAE"),
    (lambda out: corrupt(out / "vae.pt", "config", {"latent_dim": 20, "width": 3}), r"vae\.pt does not fit models\.VAE"),
    (lambda out: torch.save({"model": "ae", "model_state": {}}, out / "ae.pt"), r"ae\.pt is not a checkpoint written by train\.py"),
    (lambda out: torch.save(torch.zeros(3), out / "ae.pt"), r"ae\.pt is not a checkpoint written by train\.py"),
])
def test_mismatched_checkpoints_are_refused(change, message, trained_dir, data_dir, tmp_path):
    for name in ("ae.pt", "vae.pt"):
        (tmp_path / name).write_bytes((trained_dir / name).read_bytes())
    change(tmp_path)
    with pytest.raises(SystemExit, match=message):
        evaluate.evaluate(tmp_path, data_dir, "cpu", seed=0)


@pytest.mark.parametrize("ae_flags, vae_flags", [
    (["--latent-dim", "3"], ["--latent-dim", "4"]),
    (["--arch", "mlp"], ["--arch", "conv"]),
])
def test_a_pair_trained_differently_is_refused(ae_flags, vae_flags, data_dir, tmp_path):
    for name, flags in [("ae", ae_flags), ("vae", vae_flags)]:
        train.main(["--data-dir", str(data_dir), "--out-dir", str(tmp_path), "--epochs", "1", "--device", "cpu",
                    "--model", name, *flags])
    with pytest.raises(SystemExit, match="were trained differently"):
        evaluate.evaluate(tmp_path, data_dir, "cpu", seed=0)


def test_a_mismatched_checkpoint_exits_with_one_line_from_the_command_line(trained_dir, tmp_path):
    (tmp_path / "ae.pt").write_bytes((trained_dir / "vae.pt").read_bytes())
    (tmp_path / "vae.pt").write_bytes((trained_dir / "vae.pt").read_bytes())
    result = run_script("evaluate.py", "--out-dir", str(tmp_path))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "not 'ae'" in result.stderr
