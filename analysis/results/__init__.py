"""Result objects: a flow run with its phases, a training run with its confirmation, an experiment."""
