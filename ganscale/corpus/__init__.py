"""The offline dataset tool (``ganscale data ...``): synthetic faces, source layouts, packing to
WebDataset shards + ``dataset.json``, inspection. Reading shards for training is :mod:`ganscale.data`."""
