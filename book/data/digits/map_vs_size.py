"""MAP memorisation of the digits nets against the training-set size.

    python book/data/digits/map_vs_size.py 10 20 50 200 > map_vs_size.rows
    python book/data/digits/map_vs_size.py --net conv 10 20 50 200 > map_vs_size_conv.rows

One net per size (seed 0, data seed 0): the study's MLP (128x128x128), or the small conv U-Net
of :mod:`rbmem_tutorial.flows.image_nets` (channels 32/64), both trained as the study trains
(8,000 Adam steps, batch 128, lr 2e-3). 1,024 generated digits from the trained weights,
scored at d1/d2 < 1/3 and < 0.577 against the training digits, and the first 1,024 held-out
digits scored the same way. Prints one JSON row per size as soon as it is done.
"""

import argparse
import json

import torch

from rbmem_tutorial.experiments.config import TradeoffConfig
from rbmem_tutorial.experiments.flows import trained_flow
from rbmem_tutorial.laplace import generate, parameters_vector
from rbmem_tutorial.memorisation import LOOSE_C, memorised_fraction

TRAINING = {"steps": 8000, "batch_size": 128, "lr": 2e-3}


def trained(net: str, n: int):
    """The trained net of one size, its training digits, held-out digits and training time
    (:func:`~rbmem_tutorial.experiments.flows.trained_flow`: the MLP through the book's model
    cache, the conv net through the study's)."""
    config = TradeoffConfig(dataset="digits", net=net, hidden=(128, 128, 128),
                            channels=(32, 64), n_train=n, **TRAINING)
    return trained_flow(config, 0, TRAINING["steps"])


def size_row(net: str, n: int) -> dict:
    """The memorised fractions of the MAP trained on ``n`` digits, and of held-out digits."""
    model, train, test, seconds = trained(net, n)
    theta = parameters_vector(model).detach()[None]
    x0 = torch.randn(1, 1024, 64, generator=torch.Generator().manual_seed(1))
    samples = generate(model, theta, x0).reshape(-1, 64)
    true = test[:1024]
    return {"n_train": n, "mem": memorised_fraction(samples, train),
            "mem_loose": memorised_fraction(samples, train, c=LOOSE_C),
            "true_mem": memorised_fraction(true, train),
            "true_loose": memorised_fraction(true, train, c=LOOSE_C), "train_seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", choices=("mlp", "conv"), default="mlp")
    parser.add_argument("sizes", type=int, nargs="+")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for n in args.sizes:
        print(json.dumps(size_row(args.net, n)), flush=True)


if __name__ == "__main__":
    main()
