"""Deployment checks of an exported model in real runtimes: which layers run on integer kernels
(``kernels``) and how fast each model runs (``latency``, ``bench``)."""
