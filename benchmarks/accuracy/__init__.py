"""Accuracy harness: evaluation sets from installed corpora, transforms, metrics, reports.

Run ``python benchmarks/accuracy/run.py --help``. Corpora and working files stay
under ``--work`` (``/tmp/likeness-acc`` by default), never in the repository.
"""
