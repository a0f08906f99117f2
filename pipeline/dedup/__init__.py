"""MinHash-LSH near-duplicate detection (see docs/DESIGN.md for the duplicate definition and module map).

Plain Python: `shingles`, `minhash`, `lsh` (banding), `batches` (Arrow bodies), `components`
(union-find), `keep` (which member survives), `local` (the whole stage in one process), `config`.
On Spark: `spark_components` (connected components) and `spark_plan` (the stage).
"""
