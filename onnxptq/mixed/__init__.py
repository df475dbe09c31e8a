"""Mixed-precision math: coding-length bit allocation (Attention Round Sec. 3.4, Algorithm 1), size/BOPs budgets
and the budget-constrained genetic search over layer sensitivities (BRECQ Sec. 3.4, Eq. 12, Algorithm 2).

Pure NumPy functions; nothing here touches ONNX graphs or the quantization engine.
"""
from .budget import bops, layer_size_bytes, model_size_bytes, parse_count, parse_size
from .coding_length import DEFAULT_EPS, allocate_bits, as_matrix, coding_length, coding_lengths, kmeans_1d
from .genetic import SearchResult, genetic_search, total_sensitivity

__all__ = ["DEFAULT_EPS", "SearchResult", "allocate_bits", "as_matrix", "bops", "coding_length", "coding_lengths",
           "genetic_search", "kmeans_1d", "layer_size_bytes", "model_size_bytes", "parse_count", "parse_size",
           "total_sensitivity"]
