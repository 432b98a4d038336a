"""What CFE, MAML and EP share: data and caches, episodes, backbones, metrics, checkpoints, run folders."""
