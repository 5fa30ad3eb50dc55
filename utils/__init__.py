"""Everything the five scripts share, by role, each package using only those below it: the command-line
boundary (:mod:`utils.command`), the training engine (:mod:`utils.engine`), what is read and written
(:mod:`utils.artifacts`) and pure functions (:mod:`utils.maths`); :mod:`utils.errors` is the vocabulary of
input errors that every one of them raises."""
