"""One job's stages, data flowing one way: plan, extract, validate, publish (then the archive's
manifest and events), a partition at a time in a worker process (partition, task, workers), for a
backfill or on a Dask cluster."""
