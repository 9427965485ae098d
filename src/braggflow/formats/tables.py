"""Tidy tables in HDF5: each table a group of equal-length column datasets (h5py only, no PyTables)."""

from __future__ import annotations

from pathlib import Path

import h5py
import pandas as pd

from ..io import atomic_path


def write_tables(path: str | Path, tables: dict[str, pd.DataFrame], attrs: dict[str, str] | None = None) -> None:
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for name, df in tables.items():
            g = f.create_group(name)
            g.attrs["columns"] = list(map(str, df.columns))
            for col in df.columns:
                values = df[col].to_numpy()
                if values.dtype == object:
                    values = values.astype(str).astype("S")
                g.create_dataset(str(col), data=values, compression="gzip" if len(values) > 1000 else None)
        for k, v in (attrs or {}).items():
            f.attrs[k] = v


def read_table(path: str | Path, name: str) -> pd.DataFrame:
    with h5py.File(path, "r") as f:
        g = f[name]
        data = {}
        for col in g.attrs["columns"]:
            values = g[col][()]
            data[col] = values.astype(str) if values.dtype.kind == "S" else values
        return pd.DataFrame(data, columns=list(g.attrs["columns"]))

