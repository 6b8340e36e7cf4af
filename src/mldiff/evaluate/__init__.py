"""Evaluation: metrics and spectra of sets of fields, the cross-resolution generalization
matrix with its reference rows and verdicts, figures and the HTML report.

``evaluate`` (:mod:`.matrix`) writes the matrix, metrics and figures of a finished study;
``write_report`` (:mod:`.report`) turns them into one self-contained HTML file. matplotlib is
imported only when figures are drawn.
"""

from mldiff.evaluate.matrix import evaluate, verdicts
from mldiff.evaluate.metrics import compare, energy_distance, gaussian_mmd2, sliced_wasserstein
from mldiff.evaluate.report import write_report
from mldiff.evaluate.spectra import dominant_wavelength, power_spectrum, spectrum_log_error

__all__ = [
    "compare",
    "dominant_wavelength",
    "energy_distance",
    "evaluate",
    "gaussian_mmd2",
    "power_spectrum",
    "sliced_wasserstein",
    "spectrum_log_error",
    "verdicts",
    "write_report",
]
