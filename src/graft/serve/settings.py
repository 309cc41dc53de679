"""Everything `graft serve` can be told, with the defaults the CLI shows; checked once, before the server starts."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from graft.data.image_limits import DEFAULT_MAX_PIXELS, DEFAULT_MAX_SIDE, ImageLimits
from graft.errors import GraftError

if TYPE_CHECKING:
    from graft.rounds.inbox import InboxLimits

EngineChoice = Literal["auto", "int8", "onnx", "torch"]
ENGINES: tuple[str, ...] = ("auto", "int8", "onnx", "torch")


@dataclass(frozen=True)
class Range:
    """The accepted values of one numeric setting: `low`..`high` inclusive (and 0 when `zero_means` says what)."""

    flag: str
    low: float
    high: float
    unit: str = ""
    zero_means: str = ""

    def text(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        span = f"{self.low:g} to {self.high:g}{unit}"
        return f"0 ({self.zero_means}) or {span}" if self.zero_means else span

    def check(self, value: float | None) -> None:
        """GraftError in one line when `value` is outside the range (NaN and infinity always are)."""
        if value is None:
            return
        if isinstance(value, float) and not math.isfinite(value):
            raise GraftError(f"{self.flag} must be {self.text()}, got {value}")
        if self.zero_means and value == 0:
            return
        if not self.low <= value <= self.high:
            raise GraftError(f"{self.flag} must be {self.text()}, got {value:g}")


# Each numeric setting's range; `docs/serve.md` lists the same ones. The bounds are generous: they refuse values
# that cannot be meant (a 0-byte upload limit, an infinite timeout, a busy-looping watcher), not unusual ones.
RANGES: dict[str, Range] = {
    "max_batch": Range("--max-batch", 1, 1024, "images"),
    "max_delay_ms": Range("--max-delay-ms", 0, 10_000, "ms"),
    "max_queue": Range("--max-queue", 1, 100_000, "requests"),
    "max_upload_mb": Range("--max-upload-mb", 0.001, 4096, "MB"),
    "max_pixels": Range("--max-pixels", 1, 178_956_970, "pixels"),  # Pillow refuses anything larger
    "max_side": Range("--max-side", 1, 1_000_000, "pixels"),
    "timeout_s": Range("--timeout", 0.1, 3600, "s"),
    "threads": Range("--threads", 1, 1024),
    "decode_threads": Range("--decode-threads", 1, 256),
    "top_k": Range("--top-k", 1, 100_000),
    "watch_s": Range("--watch", 0.01, 86_400, "s", zero_means="off"),
    "header_timeout_s": Range("--header-timeout", 0.1, 600, "s"),
    "max_connections": Range("--max-connections", 1, 100_000),
    "samples_max_files": Range("--samples-max-files", 1, 1000, "images"),
    "inbox_max_per_class": Range("--inbox-max-per-class", 1, 1_000_000, "images"),
    "inbox_max_total": Range("--inbox-max-total", 1, 10_000_000, "images"),
    "inbox_max_mb": Range("--inbox-max-mb", 1, 10_000_000, "MB"),
    "int8_min_agreement": Range("--int8-min-agreement", 0, 1),
    "int8_max_accuracy_drop": Range("--int8-max-accuracy-drop", 0, 100, "points"),
    "int8_min_images": Range("--int8-min-images", 1, 10_000_000, "images"),
}


@dataclass(frozen=True)
class ServeSettings:
    """Engine, batching and limits of one server (ranges: `RANGES`).

    - `max_batch` 1 turns batching off; otherwise requests that arrive within `max_delay_ms` of the first waiting
      one share a forward pass, up to `max_batch` images.
    - `max_queue` bounds the predict requests held at once (reading, decoding, waiting or running): one more gets
      503 with Retry-After instead of growing memory. With `max_upload_mb` it bounds what uploads can occupy.
      A request that timed out keeps its place until its decoding has really stopped.
    - `max_pixels` and `max_side` refuse larger images from their header, before a pixel is decoded
      (decompression bombs, and thin images that are cheap to send but costly to resize).
    - `timeout_s` bounds a whole predict request (upload, decoding, queue, inference): past it, 504.
    - `header_timeout_s`: a connection must send a request's complete headers within it (after connecting, or
      after its previous response), else it is closed; `max_connections` caps open connections (more are
      answered 503 and closed at once). Together they stop idle or trickling clients from holding the server.
    - `token`, when set, is required as `Authorization: Bearer TOKEN` by every /v1 route (predict, model, reload,
      samples); without one, `POST /v1/samples` and `/v1/reload` answer only clients on this machine.
    - `allowed_hosts`: `Host` names accepted besides IP addresses, `localhost` and this machine's own name
      (DNS rebinding); `*` accepts any.
    - `reload_root`: `POST /v1/reload {"bundle": PATH}` loads only bundles under it (default: the
      rounds project, or the directory holding the served run: `runs/` for `runs/x/bundle`).
    - `docs`: serve the interactive /docs and /redoc pages (they load scripts from a CDN); off by default.
    - `samples_max_files`: photos one `POST /v1/samples` may carry (each within the image limits, all together
      within `max_upload_mb`); `inbox_max_per_class`, `inbox_max_total` and `inbox_max_mb` bound the rounds
      project's inbox (`graft.rounds.inbox`): a request that would pass one is refused whole (409 inbox_full).
    - `int8_*`: the tolerance within which `engine="auto"` (or "int8") uses the bundle's int8 ONNX export: its
      certificate must show top-1 agreement with the float model of at least `int8_min_agreement`, an accuracy
      drop of at most `int8_max_accuracy_drop` percentage points, measured on at least `int8_min_images` test
      images; otherwise auto uses the float model and says why.
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
    header_timeout_s: float = 10.0
    max_connections: int = 256
    samples_max_files: int = 32
    inbox_max_per_class: int = 2000
    inbox_max_total: int = 20_000
    inbox_max_mb: float = 4096.0
    allowed_hosts: tuple[str, ...] = ()
    reload_root: Path | None = None
    docs: bool = False
    int8_min_agreement: float = 0.99
    int8_max_accuracy_drop: float = 0.5
    int8_min_images: int = 200

    @property
    def image_limits(self) -> ImageLimits:
        return ImageLimits(self.max_pixels, self.max_side)

    @property
    def inbox_limits(self) -> InboxLimits:
        from graft.rounds.inbox import InboxLimits  # numpy and PIL: kept out of the CLI's import path

        return InboxLimits(self.inbox_max_per_class, self.inbox_max_total, int(self.inbox_max_mb * 1024 * 1024))

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def validate(self) -> ServeSettings:
        """GraftError naming the first setting that makes no sense; the settings themselves otherwise."""
        if self.engine not in ENGINES:
            raise GraftError(f"unknown engine {self.engine!r}; choose {', '.join(ENGINES)}")
        for name, allowed in RANGES.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float | None):
                raise GraftError(f"{allowed.flag} must be a number, got {value!r}")
            allowed.check(value)
        if self.token is not None and not self.token.strip():
            raise GraftError("--token is empty; give a secret, or leave --token out")
        for host in self.allowed_hosts:
            if not host or host != host.strip() or any(c in host for c in "/@ ?#"):
                raise GraftError(f"--allowed-host takes a host name such as phone-server.local, got {host!r}")
        return self
