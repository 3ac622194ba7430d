"""bigbatch analysis: MLflow runs -> Table I, the paper's figures, the lr grid and a report.

- ``analysis.runs``: the only module that reads MLflow (``load_runs`` via ``mlflow.search_runs``, ``load_history``).
- ``analysis.table``: Table I (``build_table(s)``, the selection rule, ``render`` with pandas) and ``python -m analysis.table``.
- ``analysis.lr_grid``: the paper's learning-rate grid search (``summarize``) beside its choice, lr 0.01.
- ``analysis.figures``: ``write_figures`` and ``python -m analysis.figures``.
- ``analysis.report``: ``write_report`` (Markdown, and HTML by Python-Markdown) and ``python -m analysis.report``.
- ``analysis.cli``: what the three CLIs share (options, run selection, one-line errors).

Every MLflow name comes from ``bigbatch.schema``; ``analysis`` never imports ``sweeps``.
"""
