"""bigbatch analysis: MLflow runs -> Table I, the paper's figures, and a report.

- ``analysis.runs``: the only module that reads MLflow (``load_runs``, ``load_history``).
- ``analysis.table``: ``build_table(s)``, ``render`` and ``python -m analysis.table``.
- ``analysis.figures``: ``write_figures`` and ``python -m analysis.figures``.
- ``analysis.report``: ``write_report`` and ``python -m analysis.report``.
"""
