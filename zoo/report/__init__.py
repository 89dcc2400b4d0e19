"""Pictures and logs of results: PNG charts and top-k grids, Weights & Biases runs."""
