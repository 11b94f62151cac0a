"""A paired autoencoder (AE) and variational autoencoder (VAE) for 28x28 images, and the conditional
VAE (CVAE) that is also told each image's label.

The models use the same encoder and decoder networks and the same latent size. They differ only in the
bottleneck:

    AE:   x -> encoder -> z                                  -> decoder -> x_hat
    VAE:  x -> encoder -> (mu, logvar) -> z = mu + sigma*eps -> decoder -> x_hat
    CVAE: the VAE, with the label y appended to the encoder's input and to z

The AE may put its codes anywhere, so a z drawn from N(0, I) mostly lands where its decoder has seen
no code, and decodes to noise. The VAE pays a KL penalty for straying from the prior N(0, I), so its
codes stay close to that prior, and a z ~ N(0, I) lands near codes its decoder was trained on. (Draw
the AE's z from a density fitted to its codes instead: one Gaussian brings its draws close to the
VAE's from N(0, I), a mixture of ten well past them; evaluate.py measures both.)

Images are tensors of shape (N, 1, 28, 28) with pixel intensities in [0, 1]. The decoder outputs one
logit per pixel, and a likelihood p(x|z) turns it into a distribution over images: its negative log is
the reconstruction loss, in nats per image. The likelihood is one swappable piece (LIKELIHOODS):
the Bernoulli (binary cross-entropy), the continuous Bernoulli, or a Gaussian (squared error).

Reading order: the models first (AE, the KL term, VAE, CVAE), then their parts: the encoder and
decoder bodies, and the likelihoods. This file imports only torch, so it can be copied on its own.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

IMAGE_SHAPE = (1, 28, 28)
IMAGE_PIXELS = 28 * 28
LOG_2PI = math.log(2 * math.pi)


# The models. y, the labels, is the CVAE's: the AE and the VAE take it and ignore it, so that one
# training loop serves all three.

class AE(nn.Module):
    """Deterministic autoencoder: x -> z -> x_hat, trained on reconstruction alone.

    latent_dim: the size of z. arch: the encoder and decoder networks (BODIES below), "mlp" (one hidden
    layer of mlp_hidden_dim) or "conv" (conv_channels, then 2 * conv_channels maps, and a dense layer of
    conv_hidden_dim). decoder and sigma: the likelihood p(x|z) (LIKELIHOODS below). Every argument is kept
    in self.config, and a checkpoint holds it: type(model)(**model.config) rebuilds the model.
    """

    def __init__(self, *, latent_dim=20, arch="mlp", mlp_hidden_dim=400, conv_channels=32, conv_hidden_dim=256,
                 decoder="bernoulli", sigma=None):
        super().__init__()
        if arch not in BODIES:
            raise ValueError(f"unknown arch {arch!r}; choose from {sorted(BODIES)}")
        self.config = dict(latent_dim=latent_dim, arch=arch, mlp_hidden_dim=mlp_hidden_dim, conv_channels=conv_channels,
                           conv_hidden_dim=conv_hidden_dim, decoder=decoder, sigma=sigma)
        self.latent_dim = latent_dim
        widths = [mlp_hidden_dim] if arch == "mlp" else [conv_channels, conv_hidden_dim]
        self.encoder, self.decoder = BODIES[arch](self.code_dim(), latent_dim, self.label_dim(), *widths)
        self.likelihood = make_likelihood(decoder, sigma)

    def code_dim(self):
        """Width of the encoder's output: the code itself."""
        return self.latent_dim

    def label_dim(self):
        """Label inputs of the encoder and the decoder: none."""
        return 0

    def encode(self, x, y=None):
        return self.encoder(x)

    def code(self, x, y=None):
        """The point in latent space that stands for x in the figures and samplers: z itself."""
        return self.encode(x, y)

    def decode_logits(self, z, y=None):
        return self.decoder(z)

    def decode(self, z, y=None):
        """The mean of p(x|z): images in [0, 1] of shape (N, 1, 28, 28)."""
        return self.likelihood.mean(self.decode_logits(z, y))

    def forward(self, x, y=None):
        return self.decode(self.encode(x, y), y)

    def loss_per_image(self, x, y=None):
        """-log p(x|z) at z = encode(x): the reconstruction alone, nats, one per image."""
        return self.likelihood.negative_log_prob(self.decode_logits(self.encode(x, y), y), x)

    def loss(self, x, y=None):
        """The training loss: loss_per_image's mean over the batch."""
        return self.loss_per_image(x, y).mean()


def kl_divergence(mu, logvar):
    """KL(N(mu, sigma^2) || N(0, I)) in closed form, summed over latent dims, per image.

    For each dimension the KL is 0.5 * (mu^2 + sigma^2 - log sigma^2 - 1). It is zero only at
    mu = 0, sigma = 1, so it pulls every code towards the prior that we sample from.
    """
    return 0.5 * torch.sum(mu.pow(2) + logvar.exp() - logvar - 1, dim=1)


class VAE(AE):
    """Variational autoencoder: the AE with a Gaussian bottleneck and a KL penalty.

    The encoder outputs the mean and log-variance of q(z|x). Training minimises the negative ELBO,
    -log p(x|z) + beta * KL(q(z|x) || N(0, I)); beta = 1 is the standard VAE. Every other argument is the AE's.
    """

    def __init__(self, *, beta=1.0, **ae_arguments):
        super().__init__(**ae_arguments)
        self.beta = beta
        self.config["beta"] = beta

    def code_dim(self):
        """The encoder outputs mu and logvar side by side."""
        return 2 * self.latent_dim

    def encode(self, x, y=None):
        """Returns (mu, logvar) of q(z|x)."""
        mu, logvar = super().encode(x, y).chunk(2, dim=1)
        return mu, logvar

    def code(self, x, y=None):
        """The mean of q(z|x): the centre of the region that stands for x, without the sampling noise."""
        return self.encode(x, y)[0]

    @staticmethod
    def reparameterize(mu, logvar):
        """Sample z = mu + sigma * eps with eps ~ N(0, I).

        Sampling z directly would block gradients. Drawing the noise eps outside the network
        makes z a differentiable function of mu and logvar, so backprop reaches the encoder.
        """
        return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)

    def forward(self, x, y=None):
        mu, logvar = self.encode(x, y)
        return self.decode(self.reparameterize(mu, logvar), y), mu, logvar

    def elbo_terms(self, x, y=None):
        """The two terms of the negative ELBO, nats, one of each per image, with one z ~ q(z|x) per image:
        (-log p(x|z), KL(q(z|x) || N(0, I))). Training, the test ELBO and the outlier scores all use these."""
        mu, logvar = self.encode(x, y)
        logits = self.decode_logits(self.reparameterize(mu, logvar), y)
        return self.likelihood.negative_log_prob(logits, x), kl_divergence(mu, logvar)

    def loss_per_image(self, x, y=None):
        """-log p(x|z) + beta * KL: the negative ELBO for beta = 1."""
        reconstruction, kl = self.elbo_terms(x, y)
        return reconstruction + self.beta * kl


class CVAE(VAE):
    """Conditional VAE (Kingma et al., NeurIPS 2014; Sohn et al., NeurIPS 2015): the VAE told the label y,
    in q(z|x, y) and in p(x|z, y). The decoder knows the digit, so z is free to carry the rest, the style:
    decode one z with each label, and the same handwriting writes ten digits. Its negative ELBO bounds
    -log p(x|y), not -log p(x). classes: how many labels; every other argument is the VAE's.
    """

    def __init__(self, *, classes=10, **vae_arguments):
        self.classes = classes  # set first: AE.__init__ sizes the bodies with label_dim()
        super().__init__(**vae_arguments)
        self.config["classes"] = classes

    def label_dim(self):
        """The one-hot label, appended to the encoder's input and to z."""
        return self.classes

    def one_hot(self, y, like):
        return F.one_hot(y, self.classes).to(like.dtype)

    def encode(self, x, y):
        """(mu, logvar) of q(z|x, y): the MLP reads the flat image and the one-hot label side by side; the
        conv reads one constant image plane per class, 1 for y's plane, 0 for the others."""
        labels = self.one_hot(y, x)
        if self.config["arch"] == "mlp":
            return super().encode(torch.cat([x.flatten(1), labels], dim=1))
        return super().encode(torch.cat([x, labels[:, :, None, None].expand(-1, -1, *x.shape[2:])], dim=1))

    def decode_logits(self, z, y):
        return super().decode_logits(torch.cat([z, self.one_hot(y, z)], dim=1))


# The parts. The encoder and decoder networks, the models' bodies: label_dim is 0 for the AE and the VAE,
# the number of classes for the CVAE.

def mlp_body(code_dim, latent_dim, label_dim, hidden_dim):
    """Encoder 784 (+ labels) -> hidden_dim -> code_dim; decoder latent_dim (+ labels) -> hidden_dim -> 784 logits."""
    encoder = nn.Sequential(
        nn.Flatten(),
        nn.Linear(IMAGE_PIXELS + label_dim, hidden_dim), nn.ReLU(),
        nn.Linear(hidden_dim, code_dim),
    )
    decoder = nn.Sequential(
        nn.Linear(latent_dim + label_dim, hidden_dim), nn.ReLU(),
        nn.Linear(hidden_dim, IMAGE_PIXELS),
        nn.Unflatten(1, IMAGE_SHAPE),
    )
    return encoder, decoder


def conv_body(code_dim, latent_dim, label_dim, channels, hidden_dim):
    """Encoder: two stride-2 convs 28 -> 14 -> 7 (the image plus one plane per label), then dense layers
    to code_dim. Decoder: the mirror image, dense layers up to 7x7 maps, two transposed convs back to 28x28."""
    maps = (2 * channels, 7, 7)
    encoder = nn.Sequential(
        nn.Conv2d(1 + label_dim, channels, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(channels, 2 * channels, 4, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(2 * channels * 49, hidden_dim), nn.ReLU(),
        nn.Linear(hidden_dim, code_dim),
    )
    decoder = nn.Sequential(
        nn.Linear(latent_dim + label_dim, hidden_dim), nn.ReLU(),
        nn.Linear(hidden_dim, 2 * channels * 49), nn.ReLU(),
        nn.Unflatten(1, maps),
        nn.ConvTranspose2d(2 * channels, channels, 4, stride=2, padding=1), nn.ReLU(),
        nn.ConvTranspose2d(channels, 1, 4, stride=2, padding=1),
    )
    return encoder, decoder


BODIES = {"mlp": mlp_body, "conv": conv_body}


# The likelihood p(x|z): each pixel independent given the decoder's logit for it.

class PixelLikelihood(nn.Module):
    """log_prob(logits, x): log p(x|z) of each pixel. mean(logits): the image the model expects, E[x|z],
    which decode() returns and the figures show. sample(logits): images drawn from p(x|z), pixel by pixel.
    floors(images): for each image, the lowest -log p(x|z) any decoder output reaches on it, in nats (float64,
    on the host), or None where there is no such floor; floor(images): their mean."""

    def negative_log_prob(self, logits, x):
        """-log p(x|z) of each image, its pixels' terms summed: nats, shape (N,)."""
        return -self.log_prob(logits, x).flatten(1).sum(1)

    def floors(self, images):
        return None

    def floor(self, images):
        floors = self.floors(images)
        return None if floors is None else floors.mean().item()


class BernoulliPixels(PixelLikelihood):
    """Each pixel is 1 with probability sigmoid(logit): -log p(x|z) is the binary cross-entropy (BCE).

    Computed from logits, which avoids the log(0) that BCE on sigmoid outputs can hit. On grey pixels it
    is not a normalised density (the continuous Bernoulli is), so its nats compare with its own runs only.
    """

    def log_prob(self, logits, x):
        return -F.binary_cross_entropy_with_logits(logits, x, reduction="none")

    def mean(self, logits):
        return torch.sigmoid(logits)

    def sample(self, logits):
        return torch.distributions.Bernoulli(logits=logits).sample()

    def floors(self, images):
        """The pixels' own entropy, -sum [x log x + (1 - x) log(1 - x)], reached at sigmoid(logit) = x."""
        x = images.flatten(1).cpu().double()  # float64 on the host: MPS has none
        return (-torch.special.xlogy(x, x) - torch.special.xlogy(1 - x, 1 - x)).sum(1)


class ContinuousBernoulliPixels(PixelLikelihood):
    """The Bernoulli made a density on [0, 1] (Loaiza-Ganem and Cunningham, NeurIPS 2019):
    p(x) = C lambda^x (1 - lambda)^(1 - x), lambda = sigmoid(logit), normalised by C = logit / tanh(logit / 2).

    Its mean is not lambda: lambda / (2 lambda - 1) + 1 / (2 artanh(1 - 2 lambda)), pulled towards 1/2.
    decode() shows that mean, the image the model expects, so that its pixels and its squared error
    compare with the other likelihoods'; lambda would look sharper than what the model predicts. A pixel
    of exactly 0 or 1 has unbounded density as lambda -> 0 or 1, so there is no floor.
    """

    def log_prob(self, logits, x):
        return -F.binary_cross_entropy_with_logits(logits, x, reduction="none") + self.log_normaliser(logits)

    @staticmethod
    def log_normaliser(logits):
        """log C = log(logit / tanh(logit / 2)); near logit = 0, where that is 0/0, its series log(2 + logit^2 / 6)."""
        near_zero = logits.abs() < 1e-2
        safe = torch.where(near_zero, torch.ones_like(logits), logits)  # keeps the unused branch's gradient finite
        return torch.where(near_zero, torch.log(2 + logits.pow(2) / 6), torch.log(safe / torch.tanh(safe / 2)))

    def mean(self, logits):
        """lambda / tanh(logit / 2) - 1 / logit (as 2 lambda - 1 = tanh(logit / 2)); near 0, 1/2 + logit / 12 - logit^3 / 720."""
        near_zero = logits.abs() < 0.1
        safe = torch.where(near_zero, torch.ones_like(logits), logits)
        series = 0.5 + logits / 12 - logits.pow(3) / 720
        return torch.where(near_zero, series, torch.sigmoid(safe) / torch.tanh(safe / 2) - 1 / safe)

    def sample(self, logits):
        return torch.distributions.ContinuousBernoulli(logits=logits).sample()


class GaussianPixels(PixelLikelihood):
    """Each pixel ~ N(sigmoid(logit), sigma^2), one sigma for all D = 784 pixels:

        -log p(x|z) = SSE / (2 sigma^2) + (D/2) log(2 pi sigma^2),   SSE = sum of squared errors

    So F.mse_loss(x_hat, x, reduction="sum") is this at sigma^2 = 1/2, less a constant, and the mean over
    pixels (mse_loss's default) is sigma^2 = D/2: sigma weighs reconstruction against the VAE's KL term,
    a beta in disguise. sigma="learned" trains one log sigma with the model; it settles where sigma^2 is
    the mean squared error (the sigma-VAE: Rybkin et al., ICML 2021).
    """

    def __init__(self, sigma):
        super().__init__()
        if sigma == "learned":
            self.log_sigma = nn.Parameter(torch.zeros(()))
        elif isinstance(sigma, (int, float)) and 0 < sigma < math.inf:
            self.register_buffer("log_sigma", torch.tensor(math.log(sigma)), persistent=False)
        else:
            raise ValueError(f"sigma must be a positive number or 'learned', got {sigma!r}")
        self.learned = sigma == "learned"

    def log_prob(self, logits, x):
        return -0.5 * ((x - torch.sigmoid(logits)) / self.log_sigma.exp()).pow(2) - self.log_sigma - 0.5 * LOG_2PI

    def mean(self, logits):
        return torch.sigmoid(logits)

    def sample(self, logits):
        """Draws are not clipped to [0, 1]: the Gaussian puts mass outside, as the loss assumes."""
        return torch.distributions.Normal(torch.sigmoid(logits), self.log_sigma.exp()).sample()

    def floor(self, images):
        """A perfect reconstruction costs (D/2) log(2 pi sigma^2); a learned sigma has none (sigma -> 0)."""
        return None if self.learned else images[0].numel() * (self.log_sigma.item() + 0.5 * LOG_2PI)

    def floors(self, images):
        floor = self.floor(images)
        return None if floor is None else torch.full((len(images),), floor, dtype=torch.float64)


LIKELIHOODS = {"bernoulli": BernoulliPixels, "continuous-bernoulli": ContinuousBernoulliPixels, "gaussian": GaussianPixels}


def make_likelihood(decoder, sigma=None):
    """The likelihood named by decoder; sigma is the Gaussian's (a number or "learned") and no other's."""
    if decoder not in LIKELIHOODS:
        raise ValueError(f"unknown decoder {decoder!r}; choose from {sorted(LIKELIHOODS)}")
    if decoder == "gaussian":
        return GaussianPixels(sigma)
    if sigma is not None:
        raise ValueError(f"sigma belongs to the gaussian decoder; the {decoder} decoder has none")
    return LIKELIHOODS[decoder]()
