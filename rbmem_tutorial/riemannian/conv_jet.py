"""Gradient and curvature of the conv net's regression loss: one jet forward, one backward pass.

For a :class:`~rbmem_tutorial.laplace.objective.RegressionObjective` on a
:class:`~rbmem_tutorial.flows.image_nets.VelocityConvNet` (inside the
:class:`~rbmem_tutorial.flows.nets.RegressionAdapter`), with residuals r = f_θ(z) − y and
weights w_j = 1/σ_j²,

    L(θ) = ½ Σ_n Σ_j w_j r_{n,j}² + (λ/2) ‖θ − m‖²,

the Monge geodesic needs per row the gradient and the curvature along v,

    g = Jᵀ(w ⊙ r) + λ(θ − m),
    c = vᵀ∇²L(θ)v = Σ w ⊙ ḟ² + Σ w ⊙ r ⊙ f̈ + λ ‖v‖²,

with ḟ = Jv and f̈ = d²/dt² f_{θ+tv} at t = 0 (differentiate L(θ + tv) twice). A Taylor-mode
("jet") forward pass along the line θ + tv carries every activation as x(t) = x + tẋ + t²ẍ/2
and gives f, ḟ and f̈ at once. A convolution is bilinear in its input and its weight, so with
W(t) = W + tV and bias b + tβ

    primal  conv(x, W) + b,
    first   conv(ẋ, W) + conv(x, V) + β,
    second  conv(ẍ, W) + 2 conv(ẋ, V),

two calls per layer with the jet stacked along the batch, conv([x; ẋ; ẍ], W) and
conv([x; ẋ], V). An activation maps (a, ȧ, ä) to (φ(a), φ'(a) ȧ, φ''(a) ȧ² + φ'(a) ä);
upsampling, concatenation and the per-channel time shifts (a Linear of the time embedding, itself
a jet through Linear and φ) are linear or elementwise and carry the jet as they are. The
gradient Jᵀ(w ⊙ r) is one hand-written backward pass of the primal through the saved inputs of
each convolution (``torch.ops.aten.convolution_backward``, the call autograd makes).

Per layer that is five convolutions' worth of multiply-adds forward and two backward, against
about nine for ``torch.func.jvp`` of ``torch.func.grad(L)`` (:mod:`.generic`), in fewer and larger
calls. PyTorch's float64 convolutions on a CPU (``_slow_conv2d``, channels-last memory as in
:class:`~rbmem_tutorial.flows.image_nets.VelocityConvNet`) are fastest in one of two forms
depending on the shape, so a stride-1 convolution with no more output than input channels runs as
the transposed convolution with the flipped kernel, conv(x, W) = conv_transpose(x, flip(W)ᵀ) (the
same sums), and a stride-1 layer's ∂/∂input, conv(δ, flip(W)ᵀ), takes the form its channels
pick. On chapter 8's net (320 pairs, one thread on a shared CPU) that made a row 1.3 times faster
than ``conv2d`` and ``convolution_backward`` throughout, and the kernel 2 to 2.5 times faster
than :mod:`.generic` (``benchmarks/geodesic_paths.py``). The pairs run in chunks of ``JET_CHUNK``
(the stacked jet has three times as many rows): chunks of 32 to 96 pairs timed alike there,
16 and 128 a little slower.

This is the same second-order forward pass that :mod:`rbmem_tutorial.laplace.fast_mlp` uses for
MLPs (Pearlmutter 1994, "Fast exact multiplication by the Hessian"), for the geodesics of the
Riemannian Laplace approximation (Bergamin et al. 2023, arXiv 2306.07158) as this tutorial applies
it to flow matching (Gegenfurtner, Jacobsen & Arvanitidis, arXiv 2602.00199).

Example
-------
>>> import torch
>>> from rbmem_tutorial.flows import RegressionAdapter, VelocityConvNet
>>> from rbmem_tutorial.laplace import RegressionObjective, parameters_vector
>>> from rbmem_tutorial.riemannian.generic import RowDerivatives
>>> _ = torch.manual_seed(0)
>>> net = RegressionAdapter(VelocityConvNet((1, 4, 4), channels=(4, 8)))
>>> objective = RegressionObjective(net, torch.randn(10, 17), torch.randn(10, 16), 0.5, 2.0)
>>> theta = parameters_vector(objective.model)
>>> v = torch.randn_like(theta)
>>> grad, curvature = ConvJetKernel(objective).grad_and_curvature(theta, v)
>>> reference = RowDerivatives(objective)(theta, v)  # forward-over-reverse
>>> bool(torch.allclose(grad, reference[0])), bool(torch.allclose(curvature, reference[1]))
(True, True)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rbmem_tutorial._checks import check_positive_int
from rbmem_tutorial.flows.image_nets import VelocityConvNet
from rbmem_tutorial.flows.nets import RegressionAdapter
from rbmem_tutorial.laplace.fast_mlp import ACTIVATIONS
from rbmem_tutorial.laplace.objective import RegressionObjective
from rbmem_tutorial.laplace.params import unflatten

__all__ = ["JET_CHUNK", "ConvJetKernel", "supports"]

JET_CHUNK = 32
"""Pairs per chunk of the data term (module docstring)."""

_PREFIX = "velocity_net."


def supports(objective) -> bool:
    """True for a plain ``RegressionObjective`` on ``RegressionAdapter(VelocityConvNet)`` with
    SiLU or tanh (the exact classes: a subclass may change the loss or the network)."""
    if type(objective) is not RegressionObjective:
        return False
    model = objective.model
    return (type(model) is RegressionAdapter and type(model.velocity_net) is VelocityConvNet
            and type(model.velocity_net.act) in ACTIVATIONS)


def _flipped(weight):
    """flip(W)ᵀ: conv(x, W) = conv_transpose(x, flip(W)ᵀ) at stride 1 and padding 1."""
    return weight.flip(2, 3).transpose(0, 1)


def _conv(x, weight, stride=1):
    """conv(x, W) with padding 1. At stride 1 with no more output than input channels, as the
    transposed convolution with the flipped kernel (module docstring)."""
    if stride == 1 and weight.shape[0] <= weight.shape[1]:
        return F.conv_transpose2d(x, _flipped(weight), padding=1)
    return F.conv2d(x, weight, stride=stride, padding=1)


def _conv_backward(delta, inputs, weight, stride, need_input):
    """``(∂/∂input or None, ∂/∂weight)`` of Σ delta ⊙ conv(inputs, weight) (padding 1); at
    stride 1, ∂/∂input is the convolution of delta with flip(W)ᵀ (:func:`_conv`)."""
    by_kernel = need_input and stride != 1
    grad_input, grad_weight, _ = torch.ops.aten.convolution_backward(
        delta, inputs, weight, None, [stride, stride], [1, 1], [1, 1], False, [0, 0], 1,
        [by_kernel, True, False],
    )
    if need_input and not by_kernel:
        grad_input = _conv(delta, _flipped(weight))
    return grad_input, grad_weight


def _upsample(h):
    """Nearest-neighbour upsampling by two (the net's ``repeat_interleave``, exactly)."""
    return F.interpolate(h, scale_factor=2, mode="nearest")


def _downsample_sum(grad):
    """The transpose of :func:`_upsample`: the sum over each 2 × 2 block."""
    return 4 * F.avg_pool2d(grad, 2)


class ConvJetKernel:
    """``(θ, v) ↦ (∇L(θ), vᵀ∇²L(θ)v)`` of a conv net's ``RegressionObjective`` (module docstring).

    Parameters
    ----------
    objective : RegressionObjective
        On ``RegressionAdapter(VelocityConvNet(...))`` (:func:`supports`); only its architecture,
        data, noise and prior are used, θ is flat in ``model.named_parameters()`` order.
    chunk : int
        Pairs per chunk of the data term (``JET_CHUNK``).
    """

    def __init__(self, objective: RegressionObjective, chunk: int = JET_CHUNK):
        if not supports(objective):
            raise TypeError(
                "objective must be a RegressionObjective on RegressionAdapter(VelocityConvNet) "
                "with silu or tanh; use riemannian.generic.RowDerivatives for other models."
            )
        check_positive_int("chunk", chunk)
        self.objective = objective
        net = objective.model.velocity_net
        self.net, self.phi = net, ACTIVATIONS[type(net.act)]
        self.channels = [net.inp.out_channels] + [conv.out_channels for conv in net.down]
        cpu = objective.inputs.device.type == "cpu"
        self.memory = torch.channels_last if cpu else torch.contiguous_format
        self.names = [name.removeprefix(_PREFIX) for name, _ in objective.model.named_parameters()]
        self.weights = objective.precision_weights()
        z = objective.inputs
        images = z[:, :-1].reshape(-1, *net.image_shape).contiguous(memory_format=self.memory)
        features = net.time_features(z[:, -1:])
        self._chunks = list(zip(images.split(chunk), features.split(chunk),
                                objective.targets.split(chunk), strict=True))

    @classmethod
    def from_objective(cls, objective: RegressionObjective) -> ConvJetKernel:
        """The kernel for an objective that :func:`supports` accepts."""
        return cls(objective)

    def grad_and_curvature(self, theta, v) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradient ``[D]``/``[S, D]`` and curvature ``[]``/``[S]``; rows run one at a time."""
        theta, v = torch.broadcast_tensors(theta, v)
        if theta.ndim == 1:
            return self._one(theta, v)
        rows = [self._one(row, direction) for row, direction in zip(theta, v, strict=True)]
        return torch.stack([g for g, _ in rows]), torch.stack([c for _, c in rows])

    __call__ = grad_and_curvature

    def output_jet(self, theta, v) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """f, ḟ = Jv and f̈ = d²/dt² f_{θ+tv} at t = 0 on the objective's pairs, each ``[N, d]``,
        for one ``theta`` and ``v`` ``[D]`` (the forward pass alone)."""
        params, tangents = self._named(theta), self._named(v)
        parts = []
        for images, features, _ in self._chunks:
            out = self._forward(params, tangents, images, features)[0]
            parts.append([part.reshape(len(images), -1) for part in out.chunk(3)])
        f, f1, f2 = (torch.cat(column) for column in zip(*parts, strict=True))
        return f, f1, f2

    def _named(self, flat):
        """``{name: view}`` of a flat ``[D]`` vector, names without the adapter's prefix."""
        named = unflatten(self.objective.model, flat)
        return {name.removeprefix(_PREFIX): value for name, value in named.items()}

    def _one(self, theta, v):
        """The prior's terms λ(θ − m) and λ‖v‖² plus the data term's, summed over chunks."""
        params, tangents = self._named(theta), self._named(v)
        gradient = self.objective.prior_precision * self.objective.prior_offset(theta)
        curvature = self.objective.prior_precision * v.square().sum()
        for chunk in self._chunks:
            grads, chunk_curvature = self._chunk(params, tangents, *chunk)
            gradient = gradient + torch.cat([grads[name].reshape(-1) for name in self.names])
            curvature = curvature + chunk_curvature
        return gradient, curvature

    # -- the jet forward pass --------------------------------------------------------------

    def _time_jet(self, p, q, features):
        """Jets of the time shifts ``[3n, c]`` of every block, the conv biases folded in, and
        what the backward pass needs: the embedding e and φ' of its pre-activation."""
        n = len(features)
        a = torch.addmm(p["time_embedding.bias"], features, p["time_embedding.weight"].T)
        a1 = torch.addmm(q["time_embedding.bias"], features, q["time_embedding.weight"].T)
        e, d1, d2 = self.phi(a)
        e1 = d1 * a1
        embedding = torch.cat([e, e1, d2 * a1 * a1])
        shifts = []
        for index, name in enumerate(self._blocks()):
            key = f"shifts.{index}."
            shift = embedding @ p[key + "weight"].T
            by_tangent = embedding[: 2 * n] @ q[key + "weight"].T
            shift[:n] += p[key + "bias"] + p[name + ".bias"]
            shift[n : 2 * n] += by_tangent[:n] + q[key + "bias"] + q[name + ".bias"]
            shift[2 * n :].add_(by_tangent[n:], alpha=2)
            shifts.append(shift[:, :, None, None])
        return shifts, (e, d1)

    def _blocks(self):
        """Names of the convolutions followed by a shift and φ, in the order the net runs them."""
        levels = range(len(self.net.down))
        return ["inp", *(f"down.{k}" for k in levels), "mid",
                *(f"up.{k}" for k in reversed(levels))]

    def _conv_jet(self, jet, weight, tangent, stride=1):
        """conv of a stacked jet ``[x; ẋ; ẍ]`` along W + tV (module docstring), two calls."""
        n = len(jet) // 3
        jet = jet.contiguous(memory_format=self.memory)
        out = _conv(jet, weight, stride)
        by_tangent = _conv(jet[: 2 * n], tangent, stride)
        out[n : 2 * n] += by_tangent[:n]
        out[2 * n :].add_(by_tangent[n:], alpha=2)
        return out, jet[:n]

    def _activate(self, pre):
        """The jet of φ(a): (φ(a), φ'(a) ȧ, φ''(a) ȧ² + φ'(a) ä), and φ'(a)."""
        a, a1, a2 = pre.chunk(3)
        h, d1, d2 = self.phi(a)
        return torch.cat([h, d1 * a1, torch.addcmul(d1 * a2, d2 * a1, a1)]), d1

    def _forward(self, p, q, images, features):
        """The output jet ``[3n, C, H, W]`` (f, ḟ, f̈ stacked, biases added) on one chunk, and
        what the backward pass needs."""
        shifts, time_saved = self._time_jet(p, q, features)
        shifts = iter(shifts)
        by_both = _conv(images, torch.cat([p["inp.weight"], q["inp.weight"]]))
        c = self.channels[0]
        pre = torch.cat([by_both[:, :c], by_both[:, c:], torch.zeros_like(by_both[:, :c])])
        jet, d1 = self._activate(pre + next(shifts))
        saved, skips = [("inp", images, 1, d1, 0)], [jet]
        for k in range(len(self.net.down)):
            pre, inputs = self._conv_jet(jet, p[f"down.{k}.weight"], q[f"down.{k}.weight"], 2)
            jet, d1 = self._activate(pre + next(shifts))
            saved.append((f"down.{k}", inputs, 2, d1, k + 1))
            skips.append(jet)
        pre, inputs = self._conv_jet(jet, p["mid.weight"], q["mid.weight"])
        jet, d1 = self._activate(pre + next(shifts))
        saved.append(("mid", inputs, 1, d1, None))
        for k in reversed(range(len(self.net.down))):
            joined = torch.cat([_upsample(jet), skips[k]], 1)
            pre, inputs = self._conv_jet(joined, p[f"up.{k}.weight"], q[f"up.{k}.weight"])
            jet, d1 = self._activate(pre + next(shifts))
            saved.append((f"up.{k}", inputs, 1, d1, None))
        out, last = self._conv_jet(jet, p["out.weight"], q["out.weight"])
        n = len(images)
        out[:n] += p["out.bias"][:, None, None]
        out[n : 2 * n] += q["out.bias"][:, None, None]
        return out, (last, saved, time_saved)

    def _chunk(self, p, q, images, features, targets):
        """The data term's gradient (a dict by parameter name) and curvature on one chunk."""
        out, saved = self._forward(p, q, images, features)
        f, f1, f2 = (part.reshape(len(images), -1) for part in out.chunk(3))
        weighted = (f - targets) * self.weights
        curvature = (f1.square() * self.weights).sum() + (weighted * f2).sum()
        delta = weighted.reshape(out[: len(images)].shape).contiguous(memory_format=self.memory)
        return self._backward(p, delta, *saved, features), curvature

    # -- the backward pass of the primal ---------------------------------------------------

    def _backward(self, p, delta, last, saved, time_saved, features):
        """∂/∂θ of Σ delta ⊙ f (delta = w ⊙ r), through the primal's saved inputs and φ'."""
        grad_h, grads = _conv_backward(delta, last, p["out.weight"], 1, True)
        grads = {"out.weight": grads, "out.bias": delta.sum((0, 2, 3))}
        skip_grads, shift_grads = {}, []
        for name, inputs, stride, d1, skip in reversed(saved):
            if skip in skip_grads:
                grad_h = grad_h + skip_grads.pop(skip)
            delta = d1 * grad_h
            shift_grads.append(delta.sum((2, 3)))
            grads[name + ".bias"] = shift_grads[-1].sum(0)
            grad_h, grads[name + ".weight"] = _conv_backward(
                delta, inputs, p[name + ".weight"], stride, name != "inp")
            if name.startswith("up."):
                level = int(name[3:])
                width = self.channels[level + 1]
                skip_grads[level] = grad_h[:, width:]
                grad_h = _downsample_sum(grad_h[:, :width])
        e, d1 = time_saved
        grad_e = torch.zeros_like(e)
        for index, grad_s in enumerate(reversed(shift_grads)):
            key = f"shifts.{index}."
            grads[key + "weight"] = grad_s.T @ e
            grads[key + "bias"] = grad_s.sum(0)
            grad_e.addmm_(grad_s, p[key + "weight"])
        grad_a = d1 * grad_e
        grads["time_embedding.weight"] = grad_a.T @ features
        grads["time_embedding.bias"] = grad_a.sum(0)
        return grads
