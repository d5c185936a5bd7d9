"""Flow matching: the linear path and its loss, training, the optimal velocity, sampling and
likelihoods. Chapter 1 (flow matching) teaches it; the convolutional net belongs to chapter 8.

- :mod:`.paths` — the linear path x_t and the conditional flow-matching loss;
- :mod:`.training` — :func:`train_flow_matching`;
- :mod:`.optimal` — :class:`EmpiricalOptimalVelocity`, the loss's exact minimiser on a finite set;
- :mod:`.sampling` — :func:`sample` (the ODE) and :func:`log_prob` (exact likelihoods);
- :mod:`.nets`, :mod:`.image_nets` — the velocity MLP and the convolutional net.
"""

from rbmem_tutorial.flows.image_nets import NETS, VelocityConvNet, build_velocity_net
from rbmem_tutorial.flows.nets import ACTIVATIONS, RegressionAdapter, VelocityMLP, time_column
from rbmem_tutorial.flows.optimal import EmpiricalOptimalVelocity
from rbmem_tutorial.flows.paths import cfm_loss, linear_path
from rbmem_tutorial.flows.sampling import log_prob, sample
from rbmem_tutorial.flows.training import train_flow_matching

__all__ = [
    "ACTIVATIONS", "NETS", "EmpiricalOptimalVelocity", "RegressionAdapter", "VelocityConvNet",
    "VelocityMLP", "build_velocity_net", "cfm_loss", "linear_path", "log_prob", "sample",
    "time_column", "train_flow_matching",
]
