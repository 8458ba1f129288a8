"""Running many scans: the batch (:mod:`.batch`), one scan job (:mod:`.jobs`), worker pools and Dask
(:mod:`.pool`, :mod:`.dask_exec`), the per-run records (:mod:`.records`), model-update re-analysis
(:mod:`.reanalyse`) and the output names (:mod:`.outputs`)."""
