"""MinHash-LSH near-duplicate detection (see docs/DESIGN.md for the duplicate definition)."""
