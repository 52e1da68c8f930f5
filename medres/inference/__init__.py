"""Inference: sliding-window prediction with TTA, member ensembles, lesion instances."""
