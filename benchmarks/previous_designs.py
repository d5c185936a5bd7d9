"""Earlier designs of the geodesic solver's evaluations, kept for side-by-side ratios.

Imported by ``geodesic_paths.py`` (section 6 of ``bench_geodesic.py``); nothing in the package
uses them. Each reproduces the code it was replaced by, computing the same quantity:

- :class:`PreviousFisherPasses`: the Fisher metric's Woodbury weights with the M × M system
  in example-major order (n, j). Every evaluation transposed the δ of all outputs into a
  [M, width] copy, multiplied every layer's δδᵀ (the output layer's one-hot δ included) by its
  input Gram h̃h̃ᵀ broadcast over [N, out, N, out] (h̃_0h̃_0ᵀ rebuilt each time, although the
  inputs do not change), added the blocks out of place, solved with ``cholesky_solve``, and
  pulled back through a batched ``einsum`` over the examples; the rows of a batch shared
  one pass at every M.
- :class:`PreviousConvNet`: :class:`~rbmem_tutorial.flows.image_nets.VelocityConvNet` with
  every float64 convolution on the default (channels-first) memory order.
- :class:`PreviousRowDerivatives`: the generic path's rows under one ``vmap`` for every model,
  convolutional ones included.

With the previous net, these two are the conv net's design before the generic path's current
one, which the jet kernel (:mod:`rbmem_tutorial.riemannian.conv_jet`) has since replaced for this
net; ``geodesic_paths.py`` prints both beside the kernel (the cost per multiply-add).
"""

from __future__ import annotations

import torch

from rbmem_tutorial.flows import VelocityConvNet
from rbmem_tutorial.riemannian import FisherMetric
from rbmem_tutorial.riemannian.fisher_mlp import MLPFisherPasses
from rbmem_tutorial.riemannian.generic import RowDerivatives


class PreviousFisherPasses(MLPFisherPasses):
    """The MLP Fisher passes with the previous Woodbury system (module docstring)."""

    def __init__(self, objective):
        super().__init__(objective)
        self._diagonal = torch.diag(float(objective.prior_precision) * self._variance)

    def acceleration(self, theta, velocity):
        return self._batch(theta, velocity)

    def _woodbury_weights(self, second, inputs, deltas, batch):
        num, out = second.shape[-2:]
        gram = self._diagonal
        for delta, layer_input in zip(deltas, inputs, strict=True):
            flat = delta.transpose(-3, -2).reshape(*delta.shape[:-3], self.num_outputs, -1)
            inner = layer_input @ layer_input.mT
            block = (flat @ flat.mT).unflatten(-1, (num, out)).unflatten(-3, (num, out))
            block = block * inner[..., :, None, :, None]
            gram = gram + block.reshape(*block.shape[:-4], self.num_outputs, self.num_outputs)
        factor = torch.linalg.cholesky(gram.expand(*batch, -1, -1))
        weights = torch.cholesky_solve(second.reshape(*batch, -1, 1), factor)
        return weights.reshape(*batch, num, out)

    def _pull_back(self, weights, inputs, deltas):
        blocks = []
        for delta, layer_input, biased in zip(deltas, inputs, self._biased, strict=True):
            pulled = torch.einsum("...jnp,...nj->...pn", delta, weights) @ layer_input
            weight_part = pulled[..., :-1] if biased else pulled
            blocks.append((weight_part.flatten(-2), pulled[..., -1] if biased else None))
        return self.kernel._flatten(blocks)


def previous_fisher(objective) -> FisherMetric:
    """A :class:`FisherMetric` of ``objective`` whose MLP passes are the previous design."""
    metric = FisherMetric(objective)
    metric._passes = PreviousFisherPasses(objective)
    return metric


class PreviousConvNet(VelocityConvNet):
    """The conv net with its convolutions on channels-first memory in float64 too."""

    @staticmethod
    def _conv(conv, h):
        return conv(h)


class PreviousRowDerivatives(RowDerivatives):
    """The generic path with every batch of rows under one ``vmap`` and all pairs at once."""

    def __init__(self, objective):
        super().__init__(objective)
        self.vmapped = True
        self._chunks = [(objective.inputs, objective.targets)]
