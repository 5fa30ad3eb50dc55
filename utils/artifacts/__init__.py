"""What the scripts read and write besides training: models, tokenizers and task data (:mod:`.model_io`,
:mod:`.task_data`), students built from a teacher (:mod:`.students`), what a run's results depend on
(:mod:`.fingerprint`), model cards and plots (:mod:`.model_card`, :mod:`.plots`), and files written whole
(:mod:`.files`)."""
