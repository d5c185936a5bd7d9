"""Earlier designs of the geodesic solver's evaluations, kept for side-by-side ratios.

Imported by ``geodesic_paths.py`` (section 6 of ``bench_geodesic.py``); nothing in the package
uses them. Each reproduces the code it was replaced by, computing the same quantity:

- :class:`PreviousFisherPasses`: the Fisher metric's Woodbury weights with a fresh [M, M]
  tensor for the system, each layer's product and the Cholesky factor at every evaluation
  (the present design writes them into buffers it keeps; the arithmetic is the same).
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
    """The MLP Fisher passes with fresh tensors for the M × M system (module docstring)."""

    def _woodbury_weights(self, second, inputs, deltas, batch):
        num, out, size = self._num, self._out, self.num_outputs
        inners = [self._first_inner] + [h @ h.mT for h in inputs[1:]]
        gram = None
        for delta, inner in zip(deltas[:-1], inners[:-1], strict=True):
            flat = delta.flatten(-3, -2)
            block = (flat @ flat.mT).unflatten(-1, (out, num)).unflatten(-3, (out, num))
            inner = inner[..., None, :, None, :]
            gram = block.mul_(inner) if gram is None else gram.addcmul_(block, inner)
        if gram is None:
            gram = second.new_zeros(out, num, out, num)
        gram.diagonal(dim1=-4, dim2=-2).add_(inners[-1].unsqueeze(-1))
        gram = gram.view(*gram.shape[:-4], size, size)
        gram.diagonal(dim1=-2, dim2=-1).add_(self._shift)
        factor = torch.linalg.cholesky(gram.expand(*batch, size, size))
        half = torch.linalg.solve_triangular(factor, second.mT.reshape(*batch, size, 1),
                                             upper=False)
        weights = torch.linalg.solve_triangular(factor.mT, half, upper=True)
        return weights.reshape(*batch, out, num)


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
