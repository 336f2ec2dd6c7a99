"""HDF5 caches: frozen-stem features for training (``stem``) and inference image features (``features``)."""
