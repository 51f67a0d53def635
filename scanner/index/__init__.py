"""Index storage (:mod:`scanner.index.store`) and batched search (:mod:`scanner.index.search`)."""
