"""The corpus layer: synthetic faces, packing to WebDataset shards, streaming to every rank."""
