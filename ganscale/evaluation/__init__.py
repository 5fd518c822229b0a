"""Evaluation: an attribute classifier per corpus, and the metrics read through it.

- :mod:`ganscale.evaluation.classifier`: the small CNN that predicts every attribute,
  trained on a split of the corpus and stored beside it (``classifier.safetensors`` + JSON).
- :mod:`ganscale.evaluation.features`: image batches -> feature vectors (the classifier's
  penultimate layer, always; InceptionV3 when a TorchScript file is given or ``download`` asked).
- :mod:`ganscale.evaluation.weights_download`: the standard Inception file, fetched once,
  checked against its pinned sha256, cached.
- :mod:`ganscale.evaluation.diversity`: within-condition diversity (samples / real images) on
  an edge-structure embedding, and ``fid_div``.
- :mod:`ganscale.evaluation.corpus_images`: fixed, unaugmented reads of corpus records
  (through :mod:`ganscale.data`) and the held-out split by key hash.
- :mod:`ganscale.evaluation.fid`: FID, KID (unbiased) and precision/recall on features.
- :mod:`ganscale.evaluation.scoring`: real reference features (cached), generated features,
  the flat metric dict.
- :mod:`ganscale.evaluation.evaluate`: ``ganscale eval RUN`` -> ``eval.json`` (the run-level driver).
- :mod:`ganscale.evaluation.during_training`: the same metrics every N steps, across ranks.
"""
