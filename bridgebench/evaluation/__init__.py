"""Evaluation: pure scoring of what a run produced (no Lightning). ``text`` (caption/QA metrics in
three published conventions), ``ranking`` (retrieval, zero-shot, candidate ranking, tag mAP),
``attributes`` (closed-vocabulary attribute accuracy), ``results`` (results files and tables)."""
