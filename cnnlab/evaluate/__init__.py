"""After training: evaluation, test-time augmentation, ensembles, prediction and export."""
