"""Pure functions, no model and no file: the λ-tradeoff (:mod:`.tradeoff`), the task metrics
(:mod:`.metrics`) and the sparsity map built from importance scores (:mod:`.importance`)."""
