"""Step 2, embed: model loading and runtimes (model), whole-image vectors (step), crops and target objects
(regions), and the readers later steps use (store)."""
