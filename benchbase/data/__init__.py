"""Datasets: in-memory tensors for small data, lazy image folders for data on disk."""
