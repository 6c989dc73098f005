"""The exact population gradient flow of model 1: its configuration, one run, batched runs, the conservation
laws and the saved trajectory."""
