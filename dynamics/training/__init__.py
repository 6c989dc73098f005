"""Training of models 1 and 2 on sampled batches or the population loss (GD, SGD, Adam), one stage or many."""
