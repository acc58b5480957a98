"""Dataset-scale reconstruction on an existing distributed engine (Ray Data, extra `[ray]`).

`reconstruct_dataset(paths, out)` is `jaxface reconstruct PATHS -o OUT --ray [ADDRESS]` in
Python: the same per-photo outputs, `manifest.csv` and `failures.csv` as the one-process
command, written by a pool of Ray actors that each hold one compiled `Reconstructor`, plus
`OUT/coeffs.parquet` (one row of coefficients and status per photo). Ray is imported only
when a run starts.
"""

from jaxface.distributed.ray_data import COEFFS_NAME, DatasetRun, reconstruct_dataset

__all__ = ["COEFFS_NAME", "DatasetRun", "reconstruct_dataset"]
