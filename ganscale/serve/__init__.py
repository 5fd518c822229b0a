"""`ganscale serve` (a local web page over a trained generator) and `ganscale export`.

- :mod:`ganscale.serve.app`: the FastAPI app (imported only by `serve`: the core install does
  not need fastapi; ``pip install 'ganscale[serve]'`` adds it, uvicorn and onnxruntime).
- :mod:`ganscale.serve.page`: the one HTML page.
- :mod:`ganscale.serve.cli`: ``register(app)`` adds the `serve` and `export` commands.
"""
