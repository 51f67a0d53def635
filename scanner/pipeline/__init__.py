"""Build and scan: the one path from files to verdicts.

``files → media → features → index search → match → policy → report``

The CLI, the demo, the benchmarks and the Ray engine all call these
functions; nothing else wires the stages together. One module per job:

* :mod:`~scanner.pipeline.options`: which featurizers a build or scan runs, and progress;
* :mod:`~scanner.pipeline.prepare`: decoding inputs and their per-item features, in workers;
* :mod:`~scanner.pipeline.build`: building and maintaining an index;
* :mod:`~scanner.pipeline.scan`: the :class:`Scanner`, engines, and :func:`scan` writing results.

Result lines are :mod:`scanner.results`; people's decisions (``review``,
``calibrate``) are :mod:`scanner.decisions`.
"""

from scanner.features.prepared import BATCH, Prepared
from scanner.pipeline.build import (BuildSummary, add_features, build_index, fit_nulls, remove_from_index,
                                    remove_talent, set_talent_consent)
from scanner.pipeline.options import FeatureOptions, Progress, available_features, features_for_index
from scanner.pipeline.prepare import (DECODE_SIDE, KEYFRAME_SIDE, decode_side, embed_ahead, forks, prepare_one,
                                      prepare_stream)
from scanner.pipeline.scan import (Engine, LocalEngine, ScanSummary, Scanner, check, provenance, scan,
                                   write_outputs)
from scanner.results import Result, ResultsFile, iter_results, read_results

__all__ = ["BATCH", "DECODE_SIDE", "KEYFRAME_SIDE", "BuildSummary", "Engine", "FeatureOptions", "LocalEngine",
           "Prepared", "Progress", "Result", "ResultsFile", "ScanSummary", "Scanner", "available_features",
           "add_features", "build_index", "check", "decode_side", "embed_ahead", "features_for_index", "fit_nulls", "forks",
           "iter_results", "prepare_one", "prepare_stream", "provenance", "read_results", "remove_from_index",
           "remove_talent", "scan", "set_talent_consent", "write_outputs"]
