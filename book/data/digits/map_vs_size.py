"""MAP memorisation of the digits net against the training-set size (map_vs_size.json).

    python book/data/digits/map_vs_size.py 10 20 50 200 > map_vs_size.rows

One net per size (the study's net and training, seed 0, data seed 0), 1,024 generated digits
from the trained weights, scored at d1/d2 < 1/3 and < 0.577 against the training digits, and
the first 1,024 held-out digits scored the same way. Prints one JSON row per size.
"""

import json
import sys

import torch

from rbmem_tutorial.data import DIGITS_COUNT
from rbmem_tutorial.laplace import generate, parameters_vector
from rbmem_tutorial.memorisation import LOOSE_C, memorised_fraction
from rbmem_tutorial.reference import FlowConfig, load_or_train

torch.set_num_threads(1)
for n in map(int, sys.argv[1:]):
    config = FlowConfig(dataset="digits", n_train=n, n_test=DIGITS_COUNT - n,
                        hidden=(128, 128, 128), steps=8000, batch_size=128, lr=2e-3)
    trained = load_or_train(config, progress=False)
    theta = parameters_vector(trained.model).detach()[None]
    x0 = torch.randn(1, 1024, 64, generator=torch.Generator().manual_seed(1))
    samples = generate(trained.model, theta, x0).reshape(-1, 64)
    true = trained.test[:1024]
    print(json.dumps({"n_train": n, "mem": memorised_fraction(samples, trained.train),
                      "mem_loose": memorised_fraction(samples, trained.train, c=LOOSE_C),
                      "true_mem": memorised_fraction(true, trained.train),
                      "true_loose": memorised_fraction(true, trained.train, c=LOOSE_C),
                      "train_seconds": trained.train_seconds}))
