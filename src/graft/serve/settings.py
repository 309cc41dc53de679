"""Everything `graft serve` can be told, with the defaults the CLI shows; checked once, before the server starts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from graft.data.image_limits import DEFAULT_MAX_PIXELS, DEFAULT_MAX_SIDE, ImageLimits
from graft.errors import GraftError

EngineChoice = Literal["auto", "onnx", "torch"]
ENGINES: tuple[str, ...] = ("auto", "onnx", "torch")


@dataclass(frozen=True)
class ServeSettings:
    """Engine, batching and limits of one server.

    - `max_batch` 1 turns batching off; otherwise requests that arrive within `max_delay_ms` of the first waiting
      one share a forward pass, up to `max_batch` images.
    - `max_queue` bounds the predict requests held at once (reading, decoding, waiting or running): one more gets
      503 with Retry-After instead of growing memory. With `max_upload_mb` it bounds what uploads can occupy.
    - `max_pixels` and `max_side` refuse larger images from their header, before a pixel is decoded
      (decompression bombs, and thin images that are cheap to send but costly to resize).
    - `timeout_s` bounds a whole predict request (upload, decoding, queue, inference): past it, 504.
    - `token`, when set, is required as `Authorization: Bearer TOKEN` by /v1/predict, /v1/model and /v1/reload.
    - `watch_s`: serving a rounds project, how often its `current.json` is checked so that a newly promoted
      round is served without a restart; 0 leaves that to SIGHUP and POST /v1/reload.
    """

    engine: EngineChoice = "auto"
    max_batch: int = 16
    max_delay_ms: float = 5.0
    max_queue: int = 64
    max_upload_mb: float = 20.0
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_side: int = DEFAULT_MAX_SIDE
    timeout_s: float = 30.0
    token: str | None = None
    threads: int | None = None
    decode_threads: int = 2
    top_k: int = 5
    watch_s: float = 2.0

    @property
    def image_limits(self) -> ImageLimits:
        return ImageLimits(self.max_pixels, self.max_side)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def validate(self) -> ServeSettings:
        """GraftError naming the first setting that makes no sense; the settings themselves otherwise."""
        if self.engine not in ENGINES:
            raise GraftError(f"unknown engine {self.engine!r}; choose {', '.join(ENGINES)}")
        positive = {
            "--max-batch": self.max_batch,
            "--max-queue": self.max_queue,
            "--max-upload-mb": self.max_upload_mb,
            "--max-pixels": self.max_pixels,
            "--max-side": self.max_side,
            "--timeout": self.timeout_s,
            "--decode-threads": self.decode_threads,
            "--top-k": self.top_k,
        }
        if self.threads is not None:
            positive["--threads"] = self.threads
        for flag, value in positive.items():
            if not value > 0:
                raise GraftError(f"{flag} must be positive, got {value}")
        if not self.watch_s >= 0:
            raise GraftError(f"--watch must be 0 or more seconds, got {self.watch_s}")
        if not self.max_delay_ms >= 0:
            raise GraftError(f"--max-delay-ms must be 0 or more, got {self.max_delay_ms}")
        if self.token is not None and not self.token.strip():
            raise GraftError("--token is empty; give a secret, or leave --token out")
        return self
