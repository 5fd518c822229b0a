"""What the trainer takes and gives: a batch, the data stream it reads, the result of a run."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

Batch = tuple[torch.Tensor, torch.Tensor]


class BatchStream(Protocol):
    """What the trainer needs of its data (:func:`ganscale.data.loader.build_loader` gives one)."""

    info: Any

    def __iter__(self) -> Iterator[Batch]: ...

    def stats(self) -> dict[str, int]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    images_seen: int
    stopped_by_signal: bool = False
