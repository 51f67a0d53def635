"""The index directory: reading and verifying (:mod:`~scanner.index.store`), atomic writes
(:mod:`~scanner.index.writer`) and works' metadata (:mod:`~scanner.index.metadata`); each
feature's files are kept as its kind in :mod:`scanner.match` says."""
