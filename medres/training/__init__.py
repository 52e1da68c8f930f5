"""Training: data sets, patient-grouped folds, the training loop and its checkpoints."""
