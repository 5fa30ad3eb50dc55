"""The command-line boundary of the five scripts, the top of ``utils``: arguments (:mod:`.args`), the entry
point that turns bad input into one line (:mod:`.cli`), a run's start and folder (:mod:`.run`), its end
(test and inference evaluation, ``results.json``: :mod:`.results`) and the ``--dry_run`` planner
(:mod:`.planner`)."""
