"""Finishing a run: Teardown, Report, and CleanupOnExit for what the state machine cannot catch.

`teardown` removes everything the run created. The report is gathered, then rendered, each layer using only
those below it: `report_facts` reads what the run did from AWS, `report` builds the document from the run and
those facts, `report_text` (rows, sentences, the notification) and `report_html` (the page) render it, and
`publish` writes and announces it. `cleanup` tears down and reports an execution that ended without doing so.
"""
