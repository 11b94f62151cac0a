"""A paired autoencoder (AE) and variational autoencoder (VAE) for 28x28 images.

Both models use the same encoder and decoder bodies and the same latent size. They differ
only in the bottleneck:

    AE:   x -> encoder -> z                                  -> decoder -> x_hat
    VAE:  x -> encoder -> (mu, logvar) -> z = mu + sigma*eps -> decoder -> x_hat

The AE may put its codes anywhere, so a z drawn from N(0, I) mostly lands where its decoder
has seen no code, and decodes to noise. The VAE pays a KL penalty for straying from the prior
N(0, I), so its codes stay close to that prior, and a z ~ N(0, I) lands near codes its decoder
was trained on. (Draw the AE's z from a density fitted to its codes instead, and it samples
nearly as well; evaluate.py measures how nearly.)

Images are tensors of shape (N, 1, 28, 28) with pixel intensities in [0, 1]. Each pixel is
modelled as a Bernoulli variable, so the decoder outputs logits, and the reconstruction loss
is binary cross-entropy computed from those logits. Losses are in nats per image.

This file imports only torch, so it can be copied on its own.
"""
import torch
import torch.nn.functional as F
from torch import nn

IMAGE_SHAPE = (1, 28, 28)
IMAGE_PIXELS = 28 * 28


def mlp_body(code_dim, latent_dim, hidden_dim=400):
    """Encoder 784 -> 400 -> code_dim and decoder latent_dim -> 400 -> 784 logits."""
    encoder = nn.Sequential(
        nn.Flatten(),
        nn.Linear(IMAGE_PIXELS, hidden_dim), nn.ReLU(),
        nn.Linear(hidden_dim, code_dim),
    )
    decoder = nn.Sequential(
        nn.Linear(latent_dim, hidden_dim), nn.ReLU(),
        nn.Linear(hidden_dim, IMAGE_PIXELS),
        nn.Unflatten(1, IMAGE_SHAPE),
    )
    return encoder, decoder


def conv_body(code_dim, latent_dim, channels=32, hidden_dim=256):
    """Encoder: two stride-2 convs 28 -> 14 -> 7, then dense layers to code_dim.
    Decoder: the mirror image, dense layers up to 7x7 maps, two transposed convs back to 28x28."""
    maps = (2 * channels, 7, 7)
    encoder = nn.Sequential(
        nn.Conv2d(1, channels, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(channels, 2 * channels, 4, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(2 * channels * 49, hidden_dim), nn.ReLU(),
        nn.Linear(hidden_dim, code_dim),
    )
    decoder = nn.Sequential(
        nn.Linear(latent_dim, hidden_dim), nn.ReLU(),
        nn.Linear(hidden_dim, 2 * channels * 49), nn.ReLU(),
        nn.Unflatten(1, maps),
        nn.ConvTranspose2d(2 * channels, channels, 4, stride=2, padding=1), nn.ReLU(),
        nn.ConvTranspose2d(channels, 1, 4, stride=2, padding=1),
    )
    return encoder, decoder


BODIES = {"mlp": mlp_body, "conv": conv_body}


def reconstruction_loss(logits, x):
    """Bernoulli negative log-likelihood of x: BCE summed over pixels, mean over the batch.

    Computed from logits, which avoids the log(0) that BCE on sigmoid outputs can hit.
    """
    return F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / x.shape[0]


def kl_divergence(mu, logvar):
    """KL(N(mu, sigma^2) || N(0, I)) in closed form, summed over latent dims, per image.

    For each dimension the KL is 0.5 * (mu^2 + sigma^2 - log sigma^2 - 1). It is zero only at
    mu = 0, sigma = 1, so it pulls every code towards the prior that we sample from.
    """
    return 0.5 * torch.sum(mu.pow(2) + logvar.exp() - logvar - 1, dim=1)


class AE(nn.Module):
    """Deterministic autoencoder: x -> z -> x_hat, trained on reconstruction alone."""

    def __init__(self, latent_dim=20, arch="mlp"):
        super().__init__()
        if arch not in BODIES:
            raise ValueError(f"unknown arch {arch!r}; choose from {sorted(BODIES)}")
        self.latent_dim = latent_dim
        self.config = dict(latent_dim=latent_dim, arch=arch)
        self.encoder, self.decoder = BODIES[arch](self.code_dim(), latent_dim)

    def code_dim(self):
        """Width of the encoder's output: the code itself."""
        return self.latent_dim

    def encode(self, x):
        return self.encoder(x)

    def code(self, x):
        """The point in latent space that stands for x in the figures and samplers: z itself."""
        return self.encode(x)

    def decode_logits(self, z):
        return self.decoder(z)

    def decode(self, z):
        """Images in [0, 1] of shape (N, 1, 28, 28)."""
        return torch.sigmoid(self.decode_logits(z))

    def forward(self, x):
        return self.decode(self.encode(x))

    def loss(self, x):
        """Reconstruction BCE, nats per image."""
        return reconstruction_loss(self.decode_logits(self.encode(x)), x)


class VAE(AE):
    """Variational autoencoder: the AE with a Gaussian bottleneck and a KL penalty.

    The encoder outputs the mean and log-variance of q(z|x). Training minimises the negative
    ELBO, reconstruction BCE + beta * KL(q(z|x) || N(0, I)); beta = 1 is the standard VAE.
    """

    def __init__(self, latent_dim=20, arch="mlp", beta=1.0):
        super().__init__(latent_dim, arch)
        self.beta = beta
        self.config["beta"] = beta

    def code_dim(self):
        """The encoder outputs mu and logvar side by side."""
        return 2 * self.latent_dim

    def encode(self, x):
        """Returns (mu, logvar) of q(z|x)."""
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar

    def code(self, x):
        """The mean of q(z|x): the centre of the region that stands for x, without the sampling noise."""
        return self.encode(x)[0]

    @staticmethod
    def reparameterize(mu, logvar):
        """Sample z = mu + sigma * eps with eps ~ N(0, I).

        Sampling z directly would block gradients. Drawing the noise eps outside the network
        makes z a differentiable function of mu and logvar, so backprop reaches the encoder.
        """
        return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)

    def forward(self, x):
        mu, logvar = self.encode(x)
        return self.decode(self.reparameterize(mu, logvar)), mu, logvar

    def loss_terms(self, x):
        """(reconstruction BCE, KL) in nats per image, with one sample of z per image."""
        mu, logvar = self.encode(x)
        logits = self.decode_logits(self.reparameterize(mu, logvar))
        return reconstruction_loss(logits, x), kl_divergence(mu, logvar).mean()

    def loss(self, x):
        """Negative ELBO (for beta = 1), nats per image."""
        reconstruction, kl = self.loss_terms(x)
        return reconstruction + self.beta * kl
