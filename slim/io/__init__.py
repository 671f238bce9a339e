"""I/O and names, the bottom layer: column and file names (columns), local-or-bucket storage, atomic writes,
Parquet shards, and the run directory with its manifests and fingerprints. Imports nothing else from slim."""
