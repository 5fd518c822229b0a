"""The online data layer: which corpus a run reads, and streaming it to every rank.

In pipeline order:

- :mod:`ganscale.data.resolve`: ``data`` config + image size -> the run's shards and corpus
  folder (building the built-in synthetic corpus if needed); training and evaluation both ask it.
- :mod:`ganscale.data.sources`: folder / pattern / URLs -> checked shard URLs, and the one
  reader of shard records (:func:`~ganscale.data.sources.iter_records`).
- :mod:`ganscale.data.info`: corpus facts (attributes, record count, image size).
- :mod:`ganscale.data.decode`: one record -> image and labels, and the augmentation parameters.
- :mod:`ganscale.data.tarscan`: the fast reader of local shards (the records WebDataset reads).
- :mod:`ganscale.data.worker`, :mod:`ganscale.data.transport` and :mod:`ganscale.data.loader`:
  the resumable per-rank stream (uint8 batches; :mod:`ganscale.data.batch`);
  :mod:`ganscale.data.memory`: the same stream from memory (``data.in_memory``).

The flip/rotation is applied on the training device: :mod:`ganscale.augment`.

A *record* is one stored corpus image with its labels; "sample" means a generated image.
Building corpora (synth, pack, inspect) is the offline tool, :mod:`ganscale.corpus`;
``ganscale data bench`` (the loader's speed) is :mod:`ganscale.bench.data_bench`.
"""
