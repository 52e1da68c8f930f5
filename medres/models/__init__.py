"""Segmentation networks (by registry name) and self-describing model folders."""
