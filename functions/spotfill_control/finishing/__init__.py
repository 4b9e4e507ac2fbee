"""Finishing a run: Teardown, Report, and CleanupOnExit for what the state machine cannot catch.

`teardown` removes everything the run created; `report` gathers what the run did into the report's
document, which `report_text` (rows, sentences) and `report_html` (the page) render.
"""
