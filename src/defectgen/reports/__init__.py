"""What a person reads of a run: the page renderer (page: HTML and markdown sections,
charts), the few lines a run ends with (summary) and the status page of a cluster run
(status). The report stage (stages/report.py) assembles the page from the stages'
records with these."""
