"""MONAI dictionary-transform presets built from a pipeline config."""
