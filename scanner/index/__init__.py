"""The index directory (:mod:`scanner.index.store`): manifest, catalog, each feature's files (as its kind in :mod:`scanner.match` keeps them), atomic writes, locking, verification."""
