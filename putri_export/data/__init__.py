"""Text in: corpora (local files, built-in names, hub datasets), token windows, calibration sets.

Entry points: :func:`load_corpus`, :func:`tokenize_corpus`, :func:`windows`, :func:`load_calibration`.
"""

from .._lazy import lazy_exports
from .corpus import DEFAULT_CALIBRATION, RAW_CALIBRATION, Corpus, load_corpus, parse_weighted_specs

__getattr__ = lazy_exports(__name__, {
    "tokenize_corpus": ".tokens", "windows": ".tokens", "load_calibration": ".calibration",
    "Calibration": ".calibration", "CalibrationSource": ".calibration"})
__all__ = ["DEFAULT_CALIBRATION", "RAW_CALIBRATION", "Calibration", "CalibrationSource", "Corpus", "load_calibration",
           "load_corpus", "parse_weighted_specs", "tokenize_corpus", "windows"]
