"""The `serve` and `export` commands, registered onto the main Typer app by ``register``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ganscale.errors import GanscaleError

FORMATS = ("folder", "onnx")


def check_device(device: str) -> str:
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise GanscaleError(f"--device {device}: use cpu or cuda")
    return device


def build_app(source: Path, device: str = "cpu", host: str = "127.0.0.1") -> Any:
    """Load the generator once and wrap it in the web app (fastapi imported here, lazily)."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise GanscaleError("ganscale serve needs the serve extra: pip install 'ganscale[serve]'") from None
    from ganscale.outputs.engines import load_engine
    from ganscale.outputs.facts import run_facts
    from ganscale.serve.app import create_app

    engine = load_engine(source, check_device(device))
    return create_app(engine, run_facts(engine.source, engine.meta), host=host)


def serve_command(source: Path, host: str = "127.0.0.1", port: int = 7860, device: str = "cpu") -> None:
    app = build_app(source, device, host)
    import uvicorn

    shown = f"[{host}]" if ":" in host else host
    typer.echo(f"serving {source} on http://{shown}:{port}/ (Ctrl-C stops)")
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


def export_command(run: Path, fmt: str = "folder", out: Path | None = None) -> Path:
    """What `ganscale export` does; returns the folder or file written."""
    if fmt not in FORMATS:
        raise GanscaleError(f"--format {fmt}: use one of {', '.join(FORMATS)}")
    base = run if run.is_dir() else run.parent
    if fmt == "onnx":
        from ganscale.outputs.onnx_export import export_onnx

        return export_onnx(run, out if out is not None else base / "onnx")
    from ganscale.outputs.model_folder import export_model_folder

    return export_model_folder(run, out if out is not None else base / "model")


def register(app: typer.Typer) -> None:
    """Add `serve` and `export` to ``app``."""

    @app.command()
    def serve(
        run: Annotated[
            Path,
            typer.Argument(help="A run folder, a model folder (ganscale export), .safetensors or .onnx."),
        ],
        host: Annotated[
            str, typer.Option("--host", help="Address to bind (127.0.0.1: this machine only).")
        ] = "127.0.0.1",
        port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port.")] = 7860,
        device: Annotated[str, typer.Option("--device", help="cpu or cuda.")] = "cpu",
    ) -> None:
        """A local web page: pick colours, count, seed; generate, download, interpolate."""
        serve_command(run, host=host, port=port, device=device)

    @app.command()
    def export(
        run: Annotated[Path, typer.Argument(help="A run folder or an exported generator.")],
        format: Annotated[  # noqa: A002 - the flag is --format
            str, typer.Option("--format", help="folder (Hugging Face-style model folder) or onnx.")
        ] = "folder",
        out: Annotated[
            Path | None,  # noqa: UP045
            typer.Option("--out", help="Folder to write (default RUN/model or RUN/onnx)."),
        ] = None,
    ) -> None:
        """Write a model folder (weights, config, sample grid, model card) or an ONNX generator."""
        written = export_command(run, format, out)
        typer.echo(f"wrote {written}")
