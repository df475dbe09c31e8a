"""Calibration / evaluation inputs: .npz (arrays keyed by model input name, optional ``labels``) or .npy.

Every array is checked against the model's inputs (name, rank, static dims, numeric dtype, finite
values) before any work starts, so a mismatch is reported with the input name and what to do.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError

LABEL_KEYS = ("labels", "label", "y", "targets")


@dataclass
class Dataset:
    inputs: dict[str, np.ndarray]  # input name -> (N, ...) float32
    labels: np.ndarray | None = None
    source: str = ""

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def take(self, n: int) -> "Dataset":
        return self.rows(0, n)

    def rows(self, start: int, stop: int) -> "Dataset":
        """Samples ``start`` to ``stop - 1`` (with their labels)."""
        return Dataset({k: v[start:stop] for k, v in self.inputs.items()},
                       None if self.labels is None else self.labels[start:stop], self.source)

    def batches(self, batch_size: int):
        for i in range(0, len(self), batch_size):
            yield {k: v[i:i + batch_size] for k, v in self.inputs.items()}


def load_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    p = Path(path)
    if not p.exists():
        raise DataError(f"data file not found: {p}")
    if p.is_dir():
        raise DataError(f"{p} is a directory; give a .npz/.npy file (quantize --calib also takes an image folder)")
    with open(p, "rb") as f:
        magic = f.read(6)
    if magic[:2] != b"PK" and magic != b"\x93NUMPY":
        raise DataError(f"{p} is not a NumPy .npz/.npy file; save arrays with numpy.savez(file, <input name>=array)"
                        " (or give an image folder)")
    try:
        if p.suffix == ".npy":
            return {"": np.load(p, allow_pickle=False)}
        with np.load(p, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:
        raise DataError(f"cannot read {p} as .npz/.npy ({type(e).__name__}: {str(e)[:160]}); "
                        "save arrays with numpy.savez(file, <input name>=array)") from None


def model_input_specs(model) -> dict[str, tuple]:
    """Graph input name -> shape (-1 for symbolic/unknown dims) of an ``onnx.ModelProto``, initializers excluded."""
    inits = {i.name for i in model.graph.initializer}
    return {vi.name: tuple(d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim)
            for vi in model.graph.input if vi.name not in inits}


def model_input_dtypes(model) -> dict[str, np.dtype]:
    """Graph input name -> NumPy dtype the model takes (float inputs: float32), initializers excluded."""
    from onnx.helper import tensor_dtype_to_np_dtype

    inits = {i.name for i in model.graph.initializer}
    out = {}
    for vi in model.graph.input:
        if vi.name not in inits:
            dt = np.dtype(tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type or 1))
            out[vi.name] = np.dtype(np.float32) if dt.kind == "f" else dt
    return out


def load_dataset(path: str | os.PathLike, input_specs: dict[str, tuple], limit: int | None = None,
                 single_sample: bool = False, dtypes: dict[str, np.dtype] | None = None) -> Dataset:
    """Read and validate data for a model whose inputs are ``input_specs`` (name -> shape, -1 dynamic).

    ``single_sample``: also accept one sample without the sample axis (an array of rank - 1).
    ``dtypes``: the model's input dtypes (``model_input_dtypes``; default float32 for every input)."""
    arrays = load_arrays(path)
    labels = next((arrays.pop(k) for k in LABEL_KEYS if k in arrays and k not in input_specs), None)
    names = list(input_specs)
    if set(names) <= set(arrays):
        chosen = {n: arrays[n] for n in names}
    elif len(names) == 1 and len(arrays) == 1:
        chosen = {names[0]: next(iter(arrays.values()))}
    else:
        raise DataError(f"{path}: the model needs input(s) {names}, the file holds {sorted(arrays)}; "
                        f"save one array per model input under its name, e.g. np.savez(f, {names[0]}=x)")
    out = {}
    n = None
    for name, arr in chosen.items():
        if single_sample and len(input_specs[name]) and arr.ndim == len(input_specs[name]) - 1:
            arr = arr[None]
        out[name] = validate(name, arr, input_specs[name], str(path), (dtypes or {}).get(name))
        if n is not None and len(arr) != n:
            raise DataError(f"{path}: inputs have different sample counts ({n} vs {len(arr)} for {name!r})")
        n = len(arr)
    if labels is not None and len(labels) != n:
        raise DataError(f"{path}: {len(labels)} labels for {n} samples")
    ds = Dataset(out, labels, str(path))
    return ds.take(limit) if limit else ds


def validate(name: str, arr: np.ndarray, shape: tuple, where: str, dtype: np.dtype | None = None) -> np.ndarray:
    """Check one input's array against the model's shape; cast it to ``dtype`` (default float32: image
    bytes become floats) and refuse NaN/Inf. Integer inputs (token ids, masks) keep integer values."""
    if arr.dtype.kind not in "fiub":
        raise DataError(f"{where}: input {name!r} has dtype {arr.dtype}; numeric (float32) data is needed")
    if len(shape) and arr.ndim != len(shape):
        raise DataError(f"{where}: input {name!r} has shape {arr.shape} but the model expects rank {len(shape)} "
                        f"({_fmt(shape)}); the first axis is the sample axis")
    for k, (got, want) in enumerate(zip(arr.shape[1:], shape[1:]), start=1):
        if want > 0 and got != want:
            raise DataError(f"{where}: input {name!r} has shape {arr.shape}, the model expects {_fmt(shape)} "
                            f"(axis {k}: {got} != {want}); resize/transpose the data or pass --input-shape")
    if len(arr) == 0:
        raise DataError(f"{where}: input {name!r} holds no samples")
    dtype = np.dtype(np.float32) if dtype is None else np.dtype(dtype)
    if dtype.kind != "f":
        if arr.dtype.kind == "f" and not np.array_equal(arr, np.round(arr)):
            raise DataError(f"{where}: input {name!r} is {dtype} in the model (ids, masks), the data holds fractions")
        return arr.astype(dtype, copy=False)
    arr = arr.astype(dtype, copy=False)
    bad = ~np.isfinite(arr)
    if bad.any():
        first = int(np.argwhere(bad.reshape(len(arr), -1).any(axis=1))[0][0])
        raise DataError(f"{where}: input {name!r} holds {int(bad.sum())} NaN/Inf values (first in sample {first}); "
                        "clean the data")
    return arr


def _fmt(shape: tuple) -> str:
    return "(" + ", ".join("N" if i == 0 or d <= 0 else str(d) for i, d in enumerate(shape)) + ")"
