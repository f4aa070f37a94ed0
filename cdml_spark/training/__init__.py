"""Training: `model` (early/late fusion towers), `mining` (miners, hinge loss, reductions), `loader`
(Petastorm reader of triplets + the features lookup), `inputs` (checks and snapshots of the training
inputs), `train` (plan, workers for TorchDistributor/Horovod, validation, the `train` stage)."""
