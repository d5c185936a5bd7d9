"""The Fisher geodesic's acceleration through a plain MLP by hand-written passes, rows batched.

For ``nn.Sequential(Linear, SiLU|Tanh, ..., Linear)`` (:mod:`rbmem_tutorial.laplace.fast_mlp`) the
acceleration of :mod:`~rbmem_tutorial.riemannian.fisher`,

    c̈ = −Jᵀ (J Jᵀ + λΣ)⁻¹ f''[ċ, ċ]          (Woodbury, M < D),
    c̈ = −(JᵀΣ⁻¹J + λI)⁻¹ JᵀΣ⁻¹ f''[ċ, ċ]      (D × D, M ≥ D),

needs f''[ċ, ċ] = R²a_L from one second-order forward pass and the output gradients δ of
every layer from ``out`` backward passes. The Jacobian row of output (n, j) in a layer's
[W | b] is δ_{n,j} ⊗ [h_n; 1] (h_n the layer's input), so

- JJᵀ = Σ_layers (δδᵀ) ⊙ (h̃h̃ᵀ) and Jᵀw = Σ_{n,j} w_{n,j} δ_{n,j} ⊗ h̃_n: no Jacobian is
  stored, Σ_l M² width_l flops (the Woodbury form, for many weights);
- J itself, M × D numbers, when M ≥ D: a small net on many outputs, where the D × D system is
  the smaller one.

Every tensor carries leading batch dimensions, so S geodesics (each with its own θ and ċ)
share one pass (from ``ROWS_IN_TURN`` outputs on, a Woodbury batch goes row by row, which is
faster there); what does not change along a solve (the network's input features with their
column of ones and their Gram matrix h̃_0h̃_0ᵀ, λΣ, λI, the identity that seeds the δ) is built
once. The M × M system orders its rows by output, then example, (j, n): the δ of all outputs
then form one [M, width] matrix without a copy, and JJᵀ is Σ_l (δ_lδ_lᵀ) ⊙ (h̃_lh̃_lᵀ) with
the N × N Gram of a layer's inputs broadcast over the out × out blocks. The output layer's δ
is one-hot, so its term is h̃h̃ᵀ on the diagonal blocks, without a product of the δ.

Example
-------
>>> import torch
>>> from rbmem_tutorial.laplace import RegressionObjective, parameters_vector
>>> torch.manual_seed(0)  # doctest: +ELLIPSIS
<torch._C.Generator object at ...>
>>> net = torch.nn.Sequential(torch.nn.Linear(1, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))
>>> objective = RegressionObjective(net, torch.randn(64, 1), torch.randn(64, 1), 0.5, 1.0)
>>> passes = MLPFisherPasses(objective)
>>> passes.uses_woodbury  # M = 64 outputs, D = 10 weights: the D × D system is smaller
False
>>> theta = parameters_vector(objective.model).expand(4, -1)
>>> passes.acceleration(theta, torch.randn(4, 10, dtype=torch.float64)).shape
torch.Size([4, 10])
"""

from __future__ import annotations

import torch

from rbmem_tutorial.laplace import fast_mlp
from rbmem_tutorial.riemannian._checks import F64

__all__ = ["ROWS_IN_TURN", "MLPFisherPasses"]

#: From this many outputs M on, a batch's Woodbury systems are solved row after row: on the
#: book's net (M = 512) one row at a time took 18-22% less CPU time than 2-4 rows batched (one
#: thread; the M × M systems of a batch then stay in cache), at M = 128 and 256 the batch won.
ROWS_IN_TURN = 512


def _with_ones(h):
    return torch.cat([h, torch.ones_like(h[..., :1])], -1)


class MLPFisherPasses:
    """``c̈`` of the Fisher metric of a ``RegressionObjective`` on a plain MLP, ``[..., D]`` rows.

    Parameters
    ----------
    objective : RegressionObjective
        On a model that :func:`rbmem_tutorial.laplace.fast_mlp.supports`.

    Notes
    -----
    The M × M system, the product of each further layer and the Cholesky factor are written
    into buffers that the instance keeps between evaluations. With fresh [M, M] tensors each
    time, the book's net (M = 512, 2 MiB each) took about 1,500 page faults per evaluation in a
    fresh process, because the C allocator hands blocks of that size back to the system when
    they are freed (whether it does depends on what the process allocated before): 10.3 ms
    against 6.9 ms for the Woodbury step, and 0.52 to 0.70 s against 0.42 to 0.53 s per
    geodesic sample at α = 1, one thread (``benchmarks/geodesic_paths.py``). An instance is
    therefore not for use from two threads at once.
    """

    def __init__(self, objective):
        kernel = fast_mlp.MLPRegressionKernel.from_objective(objective)
        self.kernel = kernel
        num, out = objective.targets.shape
        self.num_outputs = num * out
        self.uses_woodbury = self.num_outputs < kernel.num_params
        device = objective.targets.device
        variance = (objective.noise_std**2) * torch.ones(out, dtype=F64, device=device)
        self._variance = variance.repeat(num)
        lam = float(objective.prior_precision)
        self._num, self._out = num, out
        self._biased = [bias is not None for _, bias in kernel.slices]
        self._first = _with_ones(kernel.inputs) if self._biased[0] else kernel.inputs
        self._seed = torch.eye(out, dtype=F64, device=device)[:, None].expand(out, num, out)
        self._workspace = {}
        if self.uses_woodbury:  # rows of the M × M system in output-major order (j, n)
            self._shift = lam * variance.repeat_interleave(num)
            self._first_inner = self._first @ self._first.mT
        else:
            self._shift = lam * torch.eye(kernel.num_params, dtype=F64, device=device)

    def acceleration(self, theta: torch.Tensor, velocity: torch.Tensor) -> torch.Tensor:
        """``c̈`` for ``theta``, ``velocity`` of shape ``[..., D]`` (rows independent).

        From ``ROWS_IN_TURN`` outputs on, the rows of a Woodbury batch are solved one at a time.
        """
        if self.uses_woodbury and theta.ndim > 1 and self.num_outputs >= ROWS_IN_TURN:
            rows = zip(theta.reshape(-1, theta.shape[-1]), velocity.reshape(-1, theta.shape[-1]),
                       strict=True)
            return torch.stack([self._batch(*row) for row in rows]).reshape(theta.shape)
        return self._batch(theta, velocity)

    def _batch(self, theta, velocity):
        """``c̈`` for all rows of ``theta``, ``velocity`` in one pass."""
        params = self.kernel._blocks(theta)
        second, inputs, deltas = self._passes(params, self.kernel._blocks(velocity))
        batch = theta.shape[:-1]
        if self.uses_woodbury:
            weights = self._woodbury_weights(second, inputs, deltas, batch)
            return -self._pull_back(weights, inputs, deltas)
        jac = self._jacobian(inputs, deltas, batch)
        scaled = jac / self._variance[:, None]
        system = jac.mT @ scaled + self._shift
        rhs = (scaled.mT @ second.reshape(*batch, -1, 1))
        return -torch.cholesky_solve(rhs, torch.linalg.cholesky(system)).squeeze(-1)

    def _passes(self, params, tangents):
        """f''[ċ, ċ] ``[..., N, out]``, each layer's input h̃ and output gradients δ."""
        h, rh, r2h, r2a = self.kernel.inputs, None, None, None
        inputs, slopes = [self._first], []
        for index, ((weight, bias), (d_weight, d_bias), activation) in enumerate(
            zip(params, tangents, self.kernel.activations, strict=True)
        ):
            a, ra = h @ weight.mT, h @ d_weight.mT
            if rh is not None:
                ra = ra + rh @ weight.mT
                r2a = r2h @ weight.mT + 2 * (rh @ d_weight.mT)
            if bias is not None:
                a, ra = a + bias.unsqueeze(-2), ra + d_bias.unsqueeze(-2)
            if activation is None:
                break
            h, d1, d2 = activation(a)
            slopes.append(d1)
            rh, r2h = d1 * ra, d2 * ra * ra if r2a is None else d2 * ra * ra + d1 * r2a
            inputs.append(_with_ones(h) if self._biased[index + 1] else h)
        second = torch.zeros_like(a) if r2a is None else r2a
        delta, deltas = self._seed, [None] * len(params)
        for index in range(len(params) - 1, -1, -1):  # δ of every output, layer by layer
            deltas[index] = delta  # [..., out, N, width_l]
            if index > 0:
                weight = params[index][0].unsqueeze(-3)
                delta = slopes[index - 1].unsqueeze(-3) * (delta @ weight)
        return second, inputs, deltas

    def _woodbury_weights(self, second, inputs, deltas, batch):
        """w = (JJᵀ + λΣ)⁻¹ f''[ċ, ċ], ``[..., out, N]`` (rows of the system in order (j, n)).

        The system and its factor are written into the workspace (:meth:`_scratch`).
        """
        num, out, size = self._num, self._out, self.num_outputs
        inners = [self._first_inner] + [h @ h.mT for h in inputs[1:]]
        gram = self._scratch("gram", (*batch, size, size))
        blocks = gram.view(*batch, out, num, out, num)
        if len(deltas) == 1:  # a single linear layer: JJᵀ = I ⊗ h̃h̃ᵀ
            gram.zero_()
        for index, (delta, inner) in enumerate(zip(deltas[:-1], inners[:-1], strict=True)):
            flat = delta.flatten(-3, -2)  # [..., M, width_l], rows (j, n)
            inner = inner[..., None, :, None, :]  # against [..., out, N, out, N]
            if index == 0:
                torch.matmul(flat, flat.mT, out=gram)
                blocks.mul_(inner)
            else:
                product = self._scratch("product", (*batch, size, size))
                torch.matmul(flat, flat.mT, out=product)
                blocks.addcmul_(product.view_as(blocks), inner)
        blocks.diagonal(dim1=-4, dim2=-2).add_(inners[-1].unsqueeze(-1))  # [..., N, N, out]
        gram.diagonal(dim1=-2, dim2=-1).add_(self._shift)
        factor = torch.linalg.cholesky(gram, out=self._scratch("factor", gram.shape))
        half = torch.linalg.solve_triangular(factor, second.mT.reshape(*batch, size, 1),
                                             upper=False)
        weights = torch.linalg.solve_triangular(factor.mT, half, upper=True)
        return weights.reshape(*batch, out, num)

    def _scratch(self, name, shape):
        """A float64 buffer of ``shape`` kept between evaluations (class docstring)."""
        buffer = self._workspace.get(name)
        if buffer is None or buffer.shape != shape:
            buffer = torch.empty(shape, dtype=F64, device=self._seed.device)
            self._workspace[name] = buffer
        return buffer

    def _pull_back(self, weights, inputs, deltas):
        """Jᵀw for w ``[..., out, N]``, flat ``[..., D]``."""
        blocks, last = [], len(deltas) - 1
        for index, (delta, layer_input, biased) in enumerate(
            zip(deltas, inputs, self._biased, strict=True)
        ):
            if index == last:  # δ is one-hot: Σ_n w_{j,n} h̃_n
                pulled = weights @ layer_input
            else:
                pulled = (delta * weights.unsqueeze(-1)).sum(-3).mT @ layer_input
            weight_part = pulled[..., :-1] if biased else pulled
            blocks.append((weight_part.flatten(-2), pulled[..., -1] if biased else None))
        return self.kernel._flatten(blocks)

    def _jacobian(self, inputs, deltas, batch):
        """J ``[..., M, D]``: row (n, j) of a layer is δ_{n,j} ⊗ h̃_n, in θ's order."""
        pieces = []
        for delta, layer_input, biased in zip(deltas, inputs, self._biased, strict=True):
            rows = torch.einsum("...jnp,...nq->...njpq", delta, layer_input)
            rows = rows.reshape(*rows.shape[:-4], self.num_outputs, *rows.shape[-2:])
            rows = rows.expand(*batch, *rows.shape[-3:])
            pieces.append((rows[..., :-1] if biased else rows).flatten(-2))
            if biased:
                pieces.append(rows[..., -1])
        return torch.cat(pieces, -1)
