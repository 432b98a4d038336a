"""CFE: the clustering-friendly embedding (DESIGN.md §4), its training and the pseudo-labelling encoder."""
