"""A small convolutional U-Net velocity field u_θ(x, t) for images.

Flow matching on images (8x8 digits, or a user's MNIST/CIFAR array) works with the same maths
as on vectors (Lipman et al. 2022, arXiv 2210.02747): only the network changes. This net keeps
the package's vector convention, ``velocity(x, t)`` with x ``[B, d]`` and ``d = C·H·W``, and
reshapes x to ``[B, C, H, W]`` inside, so sampling, the frozen regression objective, Laplace and
geodesics use it unchanged.

Architecture (``channels = (c_0, ..., c_{L-1})``, L levels):

    h_0 = φ(conv(x) + s_0(t))                                  c_0 channels, H x W
    h_l = φ(conv_stride2(h_{l-1}) + s_l(t)),  l = 1..L-1        c_l channels, H/2^l
    m   = φ(conv(h_{L-1}) + s_L(t))                            bottleneck
    going up, l = L-1..1:  m = φ(conv([up2(m), h_{l-1}]) + s(t))   (skip connections)
    u   = conv(m)                                              C channels, flattened

with φ = SiLU (or tanh), ``up2`` nearest-neighbour upsampling by two, and time conditioning by
per-channel shifts s(t) = Linear(e(t)), e(t) = φ(Linear([t, sin(πkt), cos(πkt)]_{k=1..K})).
Every operation is smooth in θ (φ is smooth; convolution, striding and upsampling are linear),
which the Laplace and geodesic code needs: they differentiate the network twice.

The time-embedding layers are ``nn.Linear``; the image path is ``nn.Conv2d``. KFAC
(:mod:`rbmem_tutorial.laplace`) covers ``nn.Linear`` layers only, so for this net use the diagonal
structure, or KFAC on a weight subset made of its linear layers
(:mod:`rbmem_tutorial.laplace.subsets`). Geodesics take the gradient and curvature of its
regression loss from the jet kernel of :mod:`rbmem_tutorial.riemannian.conv_jet`, one Taylor-mode
forward pass and one hand-written backward pass for this architecture (the fused kernel of
:mod:`rbmem_tutorial.laplace.fast_mlp` handles MLPs only; a subclass or another net goes through
the generic ``torch.func`` path of :mod:`rbmem_tutorial.riemannian.generic`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from rbmem_tutorial._checks import check_choice, check_positive_int
from rbmem_tutorial.flows.nets import ACTIVATIONS, VelocityMLP, time_column

NETS = ("mlp", "conv")


def _check_image_shape(image_shape) -> tuple[int, int, int]:
    shape = tuple(image_shape)
    if len(shape) != 3:
        raise ValueError(f"image_shape must be (C, H, W), got {image_shape!r}.")
    for name, size in zip(("channels C", "height H", "width W"), shape, strict=True):
        check_positive_int(f"image_shape {name}", size)
    return shape


class VelocityConvNet(nn.Module):
    """A convolutional U-Net velocity field on flattened images (module docstring).

    Parameters
    ----------
    image_shape : (C, H, W)
        Shape of one image; inputs are flat vectors of length ``C·H·W``.
    channels : sequence of int
        Channels per resolution level, e.g. ``(32, 64)``: level l works at ``H/2^l x W/2^l``,
        so H and W must be divisible by ``2^(L-1)``.
    activation : {"silu", "tanh"}
        Smooth activation φ.
    time_features : int
        Number K of Fourier frequencies of t in the time embedding.
    time_width : int
        Width of the time embedding e(t).

    Example
    -------
    >>> net = VelocityConvNet((1, 8, 8), channels=(8, 16))
    >>> net(torch.zeros(5, 64), torch.tensor(0.3)).shape
    torch.Size([5, 64])
    """

    def __init__(
        self,
        image_shape: Sequence[int] = (1, 8, 8),
        channels: Sequence[int] = (32, 64),
        activation: str = "silu",
        time_features: int = 8,
        time_width: int = 32,
    ):
        super().__init__()
        self.image_shape = _check_image_shape(image_shape)
        channels = tuple(channels)
        if not channels:
            raise ValueError("channels is empty; pass at least one width, e.g. (32, 64).")
        for width in channels:
            check_positive_int("channels", width)
        check_choice("activation", activation, ACTIVATIONS)
        check_positive_int("time_features", time_features, minimum=0)
        check_positive_int("time_width", time_width)
        c, h, w = self.image_shape
        factor = 2 ** (len(channels) - 1)
        if h % factor or w % factor:
            raise ValueError(
                f"{len(channels)} levels halve the image {len(channels) - 1} times, so H and W "
                f"must be divisible by {factor}; got {h}x{w}. Use fewer channels entries."
            )
        self.dim = c * h * w
        self.act = ACTIVATIONS[activation]()
        self.register_buffer("frequencies", torch.arange(1.0, time_features + 1))
        self.time_embedding = nn.Linear(1 + 2 * time_features, time_width)
        self.inp = nn.Conv2d(c, channels[0], 3, padding=1)
        pairs = list(zip(channels[:-1], channels[1:], strict=True))
        self.down = nn.ModuleList(nn.Conv2d(a, b, 3, stride=2, padding=1) for a, b in pairs)
        self.mid = nn.Conv2d(channels[-1], channels[-1], 3, padding=1)
        self.up = nn.ModuleList(nn.Conv2d(a + b, a, 3, padding=1) for a, b in pairs)
        self.out = nn.Conv2d(channels[0], c, 3, padding=1)
        shift_widths = [*channels, channels[-1], *reversed(channels[:-1])]
        self.shifts = nn.ModuleList(nn.Linear(time_width, width) for width in shift_widths)

    def time_features(self, t: torch.Tensor) -> torch.Tensor:
        """The embedding's input ``[t, sin(πkt), cos(πkt)]_{k=1..K}``, ``[B, 1 + 2K]``, for a time
        column ``t`` of shape ``[B, 1]``."""
        angles = math.pi * t * self.frequencies.to(t)
        return torch.cat([t, angles.sin(), angles.cos()], 1)

    def _time(self, x: torch.Tensor, t) -> list[torch.Tensor]:
        """Per-block channel shifts s(t), each ``[B, c, 1, 1]``."""
        embedding = self.act(self.time_embedding(self.time_features(time_column(t, x))))
        return [shift(embedding)[:, :, None, None] for shift in self.shifts]

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        """Velocity u_θ(x, t), shape ``[B, C·H·W]``; ``t`` is a scalar or has shape ``[B]``."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(
                f"x must have shape [B, {self.dim}] (flattened {self.image_shape} images), got "
                f"{tuple(x.shape)}; use x.reshape(len(x), -1)."
            )
        shifts = iter(self._time(x, t))
        h = self.act(self._conv(self.inp, x.reshape(-1, *self.image_shape)) + next(shifts))
        skips = [h]
        for conv in self.down:
            h = self.act(self._conv(conv, h) + next(shifts))
            skips.append(h)
        h = self.act(self._conv(self.mid, h) + next(shifts))
        for conv, skip in zip(reversed(self.up), reversed(skips[:-1]), strict=True):
            h = h.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
            h = self.act(self._conv(conv, torch.cat([h, skip], dim=1)) + next(shifts))
        return self._conv(self.out, h).reshape(x.shape[0], self.dim)

    @staticmethod
    def _conv(conv: nn.Conv2d, h: torch.Tensor) -> torch.Tensor:
        """``conv(h)``; float64 on a CPU reads ``h`` in channels-last memory order.

        PyTorch's float64 convolution on a CPU (``_slow_conv2d``, which the Laplace and geodesic
        code's float64 derivatives run) is faster on channels-last input: the generic path's
        gradient and curvature (:mod:`rbmem_tutorial.riemannian.generic`, the geodesic's path for
        this net before the jet kernel of :mod:`rbmem_tutorial.riemannian.conv_jet`, which sets
        the same order itself) of chapter 8's net, one row on 80 to 320 pairs, 1.2 to 1.5 times
        (one thread on a shared CPU), with the same numbers up to rounding
        (``benchmarks/geodesic_paths.py``). The exact GGN diagonal, per-example Jacobians under
        ``vmap`` and computed once per Laplace fit, was about 7% slower with it. The order is set
        by a permute and a copy, which ``torch.func`` transforms accept; float32 (training,
        sampling) is left to the library's own choice.
        """
        if h.dtype == torch.float64 and h.device.type == "cpu":
            h = h.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
        return conv(h)


def build_velocity_net(
    net: str,
    dim: int,
    *,
    hidden: Sequence[int] = (64, 64),
    image_shape: Sequence[int] | None = None,
    activation: str = "silu",
    seed: int | None = None,
) -> nn.Module:
    """A velocity net by name: ``"mlp"`` (:class:`VelocityMLP`) or ``"conv"``
    (:class:`VelocityConvNet`).

    ``hidden`` holds the hidden widths of the MLP, or the channels per level of the conv net.
    The conv net needs ``image_shape`` with ``C·H·W == dim``. With ``seed``, the
    initialisation is drawn from that seed and the global random state is left as it was.

    Example
    -------
    >>> build_velocity_net("conv", 64, hidden=(8,), image_shape=(1, 8, 8), seed=0).dim
    64
    """
    check_choice("net", net, NETS)
    check_positive_int("dim", dim)
    if net == "conv":
        if image_shape is None:
            raise ValueError("net 'conv' needs image_shape (C, H, W); vector data need 'mlp'.")
        shape = _check_image_shape(image_shape)
        if math.prod(shape) != dim:
            raise ValueError(f"image_shape {shape} has {math.prod(shape)} pixels, not dim={dim}.")
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        if net == "mlp":
            return VelocityMLP(dim, hidden, activation)
        return VelocityConvNet(image_shape, hidden, activation)
