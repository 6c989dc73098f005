"""Theory of the flow: the symbolic reduction, its predicted phase times and escape rates, the staircase and
hallucination stages for general weights, and the lumped (class-reduced) flow."""
