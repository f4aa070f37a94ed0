"""Training: `model` (early/late fusion towers), `mining` (miners, hinge loss, reductions), `loader`
(Petastorm reader of triplets + the features lookup), `inputs` (checks and snapshots of the training
inputs), `plan` (what the driver hands the workers), `backends` (DDP / Horovod collectives),
`worker` (the per-process training loop with validation and checkpoints), `report` (training plot,
MLflow run), `train` (the `train` stage: the driver)."""
