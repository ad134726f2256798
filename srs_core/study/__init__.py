"""Studies: many variants of one training run, compared on validation metrics.

- :mod:`.variants`: :class:`Variant`, :class:`Study`, the built-in ``ablation``, seeds, study
  files (:func:`load_study`).
- :mod:`.sweep`: the ``sweep:`` form of a study file (grid or seeded random search).
- :mod:`.results`: validation-only selection (:func:`select_best`) and mean ± std over seeds.
- :mod:`.katib`: a sweep as a Katib ``Experiment`` of TrainJobs, and the metric lines it reads.
- :mod:`.run`: a study as the study pipeline runs it (its ``variants`` items, each variant's
  output root and settings).
- :mod:`.compare`: the comparison's numbers (deltas against ``full``, mean ± std), Markdown
  and CSV; :mod:`srs_core.study_report` reads the variants' outputs and writes the reports.
"""

from srs_core.study.results import aggregate, base_name, format_mean_std, mean_std, select_best
from srs_core.study.sweep import Parameter, Sweep, parse_sweep
from srs_core.study.variants import (
    ABLATION,
    MAX_VARIANTS,
    Study,
    Variant,
    ablation,
    expand_seeds,
    load_study,
    read_study_file,
)

__all__ = [
    "ABLATION",
    "MAX_VARIANTS",
    "Parameter",
    "Study",
    "Sweep",
    "Variant",
    "ablation",
    "aggregate",
    "base_name",
    "expand_seeds",
    "format_mean_std",
    "load_study",
    "mean_std",
    "parse_sweep",
    "read_study_file",
    "select_best",
]
