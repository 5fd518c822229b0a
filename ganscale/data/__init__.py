"""The online data layer: which corpus a run reads, and streaming it to every rank.

In pipeline order:

- :mod:`ganscale.data.resolve`: ``data`` config + image size -> the run's shards and corpus
  folder (building the built-in synthetic corpus if needed); training and evaluation both ask it.
- :mod:`ganscale.data.sources`: folder / pattern / URLs -> checked shard URLs, and the one
  reader of shard records (:func:`~ganscale.data.sources.iter_records`).
- :mod:`ganscale.data.info`: corpus facts (attributes, record count, image size).
- :mod:`ganscale.data.decode`: one record -> image and labels, and the augmentation.
- :mod:`ganscale.data.worker` and :mod:`ganscale.data.loader`: the resumable per-rank stream.

A *record* is one stored corpus image with its labels; "sample" means a generated image.
Building corpora (synth, pack, inspect) is the offline tool, :mod:`ganscale.corpus`.
"""
