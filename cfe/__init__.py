"""CFE: the clustering-friendly embedding (docs/design.md, algorithms: CFE), its training and the pseudo-labelling
encoder."""
