"""EMR tooling: `python -m emr.launch` (or `python -m emr`) packages, uploads and runs the pipeline."""
