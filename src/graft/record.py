"""The bundle record: `graft.json`, read, validated and written in this one module.

A bundle is a directory with `model.safetensors` (weights) and `graft.json` (this record: architecture, input spec,
class names, metrics, provenance, exports). Every reader in graft goes through `read`, so a damaged or hand-edited
record is refused in one place, with one line naming the field, instead of failing somewhere later (or, worse,
being used wrongly: `"classes": "0123"` is not four classes). `write` and `update` replace the file atomically.

No torch here: other tools (and `graft schema`) can read bundles cheaply. It is one module of ~420 lines on
purpose: the whole contract, its validation and its migrations read in one place. Version history:
- 1: `architecture.input_mode` duplicated `input.mode`.
- 2: the input spec is the one owner of the input mode; version-1 records migrate when read (both must agree).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, field_validator, model_validator

from graft.errors import GraftError, first_line
from graft.io import atomic_write_json
from graft.spec import InputSpec

FORMAT = "graft.bundle"
VERSION = 2
META_FILE = "graft.json"
WEIGHTS_FILE = "model.safetensors"
ONNX_FILE = "model.onnx"
DEFAULT_VALID_FRACTION = 0.2
HEADS: tuple[str, ...] = ("pool", "flatten")
# Bounds that keep a hand-edited record from making graft allocate without limit before the weights file is
# compared with it (graft.bundle checks every tensor's shape against model.safetensors).
MAX_RECORD_BYTES = 64 * 2**20
MAX_INPUT_SIDE = 4096
MAX_CHANNELS = 64
MAX_CLASSES = 100_000
MAX_WIDTH = 65_536
# timm keyword arguments a record (or a recipe's `model_kwargs`) may carry: architecture hyper-parameters only.
# An allow-list, because timm.create_model also takes arguments that read files (`checkpoint_path`,
# `pretrained_cfg_overlay`) or fetch weights, and a bundle must never make graft read a file it does not hold.
ALLOWED_TIMM_KWARGS = frozenset(
    {"drop_rate", "drop_path_rate", "drop_block_rate", "proj_drop_rate", "attn_drop_rate", "pos_drop_rate",
     "patch_drop_rate", "img_size", "patch_size", "global_pool", "channel_multiplier", "depth_multiplier",
     "pad_type", "bn_eps", "act_layer", "norm_layer", "output_stride", "stem_type", "stem_width", "embed_dim",
     "depth", "depths", "dims", "num_heads", "mlp_ratio", "window_size", "class_token", "no_embed_class",
     "reg_tokens", "qkv_bias", "init_values", "ls_init_value", "layer_scale_init_value", "fix_stem",
     "head_hidden_size", "conv_mlp", "dynamic_img_size", "dynamic_img_pad", "zero_init_last", "se_layer",
     "block_args", "kernel_size", "width", "widths", "growth_rate", "block_config", "bn_size", "stem_chs"}
)  # fmt: skip
_KWARG_SCALARS = (str, int, float, bool, type(None))


def check_timm_kwargs(kwargs: dict) -> dict:
    """ValueError unless `kwargs` are allow-listed timm options with plain values (numbers, short strings, flags,
    or short lists of them)."""
    unknown = sorted(set(kwargs) - ALLOWED_TIMM_KWARGS)
    if unknown:
        raise ValueError(
            f"{', '.join(map(repr, unknown))} {'is not a timm option' if len(unknown) == 1 else 'are not timm options'}"
            " graft accepts (architecture hyper-parameters only; see graft.record.ALLOWED_TIMM_KWARGS)"
        )
    for key, value in kwargs.items():
        items = value if isinstance(value, list) else [value]
        plain = len(items) <= 64 and all(isinstance(item, _KWARG_SCALARS) for item in items)
        bounded = all(
            not isinstance(item, int | float) or (abs(item) <= MAX_WIDTH and item == item) for item in items
        ) and all(not isinstance(item, str) or len(item) <= 100 for item in items)
        if not (plain and bounded):
            raise ValueError(f"timm option {key!r} must be a plain number, flag or short string (got {value!r:.60})")
    return kwargs


@dataclass(frozen=True)
class Architecture:
    """What rebuilds a model: the backbone (a timm name and kwargs, or an imported Keras layer graph), the head
    kind, the class count, the structural surgery edits replayed on it (models/edits.py) and an optional size
    stem (`{"network_size": [h, w]}`: a learnable resize from the input spec's size to the size the network
    behind it takes; graft.models.size_stem)."""

    timm_name: str
    num_classes: int
    head: Literal["pool", "flatten"] = "pool"
    timm_kwargs: dict[str, JsonValue] = field(default_factory=dict)
    edits: list[dict[str, JsonValue]] = field(default_factory=list)
    graph: dict[str, JsonValue] | None = None  # an imported Keras layer graph (graft.models.keras)
    size_stem: dict[str, JsonValue] | None = None  # {"network_size": [h, w]}: surgery --size-mode stem

    @property
    def network_size(self) -> tuple[int, int] | None:
        """The input size of the network behind the size stem (None: no stem, it takes the spec's size)."""
        if self.size_stem is None:
            return None
        height, width = self.size_stem["network_size"]  # type: ignore[misc]
        return int(height), int(width)

    @property
    def kind(self) -> str:
        """Which backbone builder rebuilds it (graft.models.factory's registry)."""
        return "timm" if self.graph is None else "keras-graph"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Architecture:
        """Lenient reader for checkpoints of older versions: unknown keys (a version-1 `input_mode`) are dropped."""
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)


class _Architecture(_Record):
    """The validated form of `Architecture` (the dataclass stays a plain value the model builders take)."""

    timm_name: Annotated[str, Field(min_length=1, max_length=200)]
    num_classes: Annotated[int, Field(ge=1, le=MAX_CLASSES)]
    head: Literal["pool", "flatten"] = "pool"
    timm_kwargs: dict[str, JsonValue] = {}
    edits: list[Edit] = []
    graph: dict[str, JsonValue] | None = None
    size_stem: SizeStemRecord | None = None

    @field_validator("timm_kwargs")
    @classmethod
    def _safe_kwargs(cls, kwargs: dict) -> dict:
        return check_timm_kwargs(kwargs)


class InsertEdit(_Record):
    """A block inserted after a layer (surgery --insert-after), identity-initialised."""

    op: Literal["insert"]
    after: str
    block: str
    channels: Annotated[int, Field(ge=1, le=MAX_WIDTH)]
    name: str


class WidenEdit(_Record):
    """A conv widened to more output channels (surgery --widen)."""

    op: Literal["widen"]
    layer: str
    width: Annotated[int, Field(ge=1, le=MAX_WIDTH)]


Edit = Annotated[InsertEdit | WidenEdit, Field(discriminator="op")]


class SizeStemRecord(_Record):
    """A learnable resize in front of the network (surgery --size-mode stem): from the input spec's size to
    `network_size`, the size the network behind it was trained at."""

    network_size: tuple[Annotated[int, Field(ge=1, le=MAX_INPUT_SIDE)], Annotated[int, Field(ge=1, le=MAX_INPUT_SIDE)]]


class _Input(_Record):
    size: tuple[Annotated[int, Field(ge=1, le=MAX_INPUT_SIDE)], Annotated[int, Field(ge=1, le=MAX_INPUT_SIDE)]]
    channels: Annotated[int, Field(ge=1, le=MAX_CHANNELS)]
    mode: Literal["replicate", "stem", "fold"] = "replicate"
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: Literal["bilinear", "bicubic", "nearest"] = "bilinear"
    antialias: bool = True
    resize: Literal["stretch", "crop"] = "stretch"
    backbone_mean: tuple[float, ...]
    backbone_std: tuple[float, ...]

    @model_validator(mode="after")
    def _consistent(self) -> _Input:
        self.spec().validate()
        return self

    def spec(self) -> InputSpec:
        return InputSpec(**self.model_dump())


class _Open(BaseModel):
    """Provenance parts: typed where graft reads them, open to keys other graft versions or tools add."""

    model_config = ConfigDict(frozen=True, extra="allow", strict=True, allow_inf_nan=False)


class DataRecord(_Open):
    """The data a bundle was trained on: enough to rebuild its splits (`graft eval` with no --data). In-memory data
    (`graft.Trainer` on arrays) has no source; `in_memory` describes it instead (graft.data.memory)."""

    source: str | None = None
    in_memory: dict[str, JsonValue] | None = None
    data_root: str | None = None
    classes: int | None = None
    train: int | None = None
    valid: int | None = None
    test: int | None = None
    valid_fraction: Annotated[float, Field(ge=0, lt=1)] = DEFAULT_VALID_FRACTION
    split_seed: int = 0
    group_by: str = "none"  # which images the split kept together (graft.data.groups); older bundles: none


class TransferRecord(_Open):
    """What a weight transfer did, tensor by tensor (graft.models.weights.TransferReport)."""

    source: str = ""
    loaded: list[str] = []
    adapted: list[dict[str, str]] = []
    skipped: list[dict[str, str]] = []
    initialised: list[str] = []


class SurgeryEntry(_Open):
    """One `graft surgery` call: its steps' certificates, the whole chain's, and the verdict.

    `parent` is the source bundle's resolved absolute path (relative in records written before issue 20).
    "unverified" (added with issue 20) is an inexact result whose probe the old model put nearly all in one class.
    Certificates are open dicts: newer ones add probe class spread, train-mode and one-step deltas, old-class
    agreement and warnings (surgery.certificate.Certificate), older ones lack them.
    """

    at: str
    parent: str | None = None
    verdict: Literal["exact", "approximate", "unverified", "breaking"]
    steps: list[dict[str, JsonValue]]
    overall: dict[str, JsonValue] | None = None


class ParentRecord(_Open):
    """The bundle a training run continued: its metrics and surgery chain travel with the new bundle."""

    bundle: str
    metrics: dict[str, JsonValue] = {}
    surgery: list[SurgeryEntry] = []
    continued_from: ParentRecord | None = None


class KerasRecord(_Open):
    """Where an imported Keras model came from and how close the import is to it."""

    source: str
    file_kind: str | None = None
    keras_version: str | None = None
    application: str | None = None
    imported_as: str | None = None
    preprocess: str | None = None
    parity_max_abs_diff_vs_graph: float | None = None
    notes: list[str] = []


class Provenance(_Open):
    """Where a bundle came from. Every field is optional: an imported model has no training, a trained one no
    Keras source."""

    graft_version: str | None = None
    created: str | None = None
    data: DataRecord | None = None
    training: dict[str, JsonValue] | None = None
    epochs: int | None = None
    seed: int | None = None
    transfer: TransferRecord | None = None
    run_dir: str | None = None
    runtime: dict[str, JsonValue] | None = None
    continued_from: ParentRecord | None = None
    surgery: list[SurgeryEntry] = []
    metrics_before_surgery: dict[str, JsonValue] | None = None
    keras: KerasRecord | None = None

    def updated(self, **changes: Any) -> Provenance:
        """A copy with `changes`, validated again (model_copy alone would not check them)."""
        return Provenance.model_validate({**self.model_dump(exclude_unset=True), **changes})


class QuantisationRecord(_Record):
    """How an int8 export was made: onnxruntime.quantization's static quantisation, calibrated on training images
    preprocessed by graft's one path (graft.data.preprocess), so the ranges are those the model really sees."""

    method: Literal["static"] = "static"
    format: Literal["QDQ"] = "QDQ"
    activations: Literal["QInt8", "QUInt8"]
    weights: Literal["QInt8", "QUInt8"]
    per_channel: bool
    calibration_method: str
    calibration_images: Annotated[int, Field(ge=1)]
    calibration_data: str  # which images: source, split and seed
    onnxruntime_version: str
    # Layers left in float (`graft export --keep-float`) and the ONNX nodes that are; empty: everything quantised
    # (records written before the option existed quantised everything).
    keep_float: list[Literal["first-conv", "last-linear"]] = []
    float_nodes: list[str] = []


class ExportCertificate(_Record):
    """An export measured against the float model (the bundle's PyTorch model) on a seeded sample of the bundle's
    test split: top-1 agreement, both accuracies, max |Δ logit|, and size, single-image latency and batched
    throughput in ONNX Runtime (this export's, and for an int8 export the float ONNX model's, timed alike).

    `accuracy_drop` is the float accuracy minus this export's (a fraction: 0.001 is 0.1 point). Timings are the
    median of `timing_runs` runs on the machine that exported, with `threads` ONNX Runtime threads.
    """

    data: str
    split: Literal["test"] = "test"
    images: Annotated[int, Field(ge=1)]
    sample: str  # how the images were drawn
    top1_agreement: Annotated[float, Field(ge=0, le=1)]
    accuracy: Annotated[float, Field(ge=0, le=1)]
    float_accuracy: Annotated[float, Field(ge=0, le=1)]
    accuracy_drop: Annotated[float, Field(ge=-1, le=1)]
    max_abs_logit_delta: Annotated[float, Field(ge=0)]
    size_bytes: Annotated[int, Field(ge=0)]
    latency_ms: Annotated[float, Field(ge=0)]
    throughput_per_s: Annotated[float, Field(ge=0)]
    batch_size: Annotated[int, Field(ge=1)]
    threads: Annotated[int, Field(ge=1)]
    timing_runs: Annotated[int, Field(ge=1)]
    float_size_bytes: Annotated[int, Field(ge=0)] | None = None
    float_latency_ms: Annotated[float, Field(ge=0)] | None = None
    float_throughput_per_s: Annotated[float, Field(ge=0)] | None = None


class ExportRecord(_Record):
    """`exports.<name>` (onnx, ort, onnx-int8, ort-int8): one file made from the bundle's weights, and how close it
    is to them.

    Float exports carry a parity check: max |Δ logit| against PyTorch on seeded random images, `passed` when it is
    ≤ `tolerance`. An int8 export cannot meet such a bound; its `tolerance` is null, `passed` says only that it runs
    and gives finite logits of the right shape, and its `certificate` (agreement and accuracy on real test images)
    is what `graft serve --engine auto` judges. `certificate` is null when the bundle has no test images to measure
    on (`certificate_note` says why); records written before issue 17 have neither, and are float ONNX files.
    """

    file: str  # a file inside the bundle, by name (`_inside`)
    format: Literal["onnx", "ort"] = "onnx"
    int8: bool = False
    sha256: str
    weights_sha256: str
    opset: int
    exporter: str
    torch_version: str
    onnxruntime_version: str
    max_abs_logit_delta: float
    max_abs_probability_delta: float
    tolerance: float | None
    passed: bool
    probe: str
    created: str
    quantisation: QuantisationRecord | None = None
    certificate: ExportCertificate | None = None
    certificate_note: str | None = None
    # Conv nodes whose kernels were cut to the taps that see pixels (graft.exports.crop); [] in older records.
    cropped_convolutions: list[str] = Field(default_factory=list)

    @field_validator("file")
    @classmethod
    def _inside(cls, name: str) -> str:
        if not name or name in (".", "..") or any(c in name for c in "/\\\x00") or len(name) > 200:
            raise ValueError(f"must name a file inside the bundle, not {name[:80]!r}")
        return name

    @model_validator(mode="after")
    def _int8_is_quantised(self) -> ExportRecord:
        if self.int8 != (self.quantisation is not None):
            raise ValueError("an int8 export records its quantisation, and only an int8 export does")
        if not self.int8 and self.tolerance is None:
            raise ValueError("a float export records the tolerance of its parity check")
        return self

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")


DEFAULT_CONFIDENCE_THRESHOLD = 0.5  # below even odds the top class is "not sure" unless validation calibrated it


NEVER_SURE = 1.5  # a "not sure" threshold no probability reaches


class ConfidenceRecord(_Record):
    """When the top class is an answer: below `threshold` (top probability) it is shown as "not sure".

    `source` says how the threshold was chosen: "validation" (the lowest top probability at which validation
    predictions were still right `target_accuracy` of the time, never below the default) or "default".
    `answered` and `answered_accuracy` describe the validation images at or above the threshold. A threshold above
    1 means the model never reached the target on validation: nothing it says is shown as an answer (a float32
    softmax often gives exactly 1.0, so 1.0 itself cannot mean "never").
    """

    threshold: Annotated[float, Field(ge=0, le=NEVER_SURE)]
    source: Literal["validation", "default"]
    target_accuracy: Annotated[float, Field(gt=0, le=1)] | None = None
    images: Annotated[int, Field(ge=0)] | None = None
    answered: Annotated[float, Field(ge=0, le=1)] | None = None
    answered_accuracy: Annotated[float, Field(ge=0, le=1)] | None = None


DEFAULT_CONFIDENCE = ConfidenceRecord(threshold=DEFAULT_CONFIDENCE_THRESHOLD, source="default")


class BundleRecord(_Record):
    """The whole `graft.json`. `architecture` and `input` are exposed as the plain values the builders take."""

    format: Literal["graft.bundle"] = FORMAT
    version: Literal[2] = VERSION
    architecture: _Architecture
    input: _Input
    classes: list[str]
    parameters: Annotated[int, Field(ge=0)] | None = None
    metrics: dict[str, JsonValue] = {}
    provenance: Provenance = Provenance()
    # Absent in bundles written before graft calibrated it (and after a surgery that changed the outputs).
    confidence: ConfidenceRecord | None = None
    # Kept as recorded and typed on use (`export`): a damaged export record disables that export, not the bundle.
    exports: dict[str, JsonValue] = {}

    @field_validator("metrics", "provenance", "exports", mode="before")
    @classmethod
    def _null_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value  # older bundles wrote null for "none recorded"

    @model_validator(mode="after")
    def _classes_fit(self) -> BundleRecord:
        if len(self.classes) != self.architecture.num_classes:
            raise ValueError(f"{len(self.classes)} class names for a {self.architecture.num_classes}-class model")
        if len(set(self.classes)) != len(self.classes):
            repeated = sorted({c for c in self.classes if self.classes.count(c) > 1})
            raise ValueError(f"class names repeat ({', '.join(map(repr, repeated[:3]))}): classes are matched by name")
        return self

    @property
    def arch(self) -> Architecture:
        return Architecture(**self.architecture.model_dump())

    @property
    def spec(self) -> InputSpec:
        return self.input.spec()

    def to_json(self) -> dict:
        return self.model_dump(mode="json", exclude_none=False)

    def confidence_or_default(self) -> ConfidenceRecord:
        """The calibrated "not sure" threshold, else the documented default."""
        return self.confidence or DEFAULT_CONFIDENCE

    def export(self, name: str) -> tuple[ExportRecord | None, str | None]:
        """The typed record of export `name`, or None and why not (none recorded, or damaged)."""
        return export_record(self.exports, name)


def export_record(exports: dict, name: str) -> tuple[ExportRecord | None, str | None]:
    """`exports[name]` validated: (record, None), or (None, a one-line reason)."""
    if name not in exports:
        return None, f"no {name} export recorded"
    try:
        return ExportRecord.model_validate_json(json.dumps(exports[name]), strict=True), None
    except ValidationError as error:
        return None, f"the {name} export record is damaged ({describe(error)})"


def make_record(
    architecture: Architecture,
    spec: InputSpec,
    classes: list[str],
    *,
    parameters: int | None = None,
    metrics: dict | None = None,
    provenance: Provenance | dict | None = None,
    exports: dict | None = None,
    confidence: ConfidenceRecord | None = None,
) -> BundleRecord:
    """The record of a bundle in memory, validated exactly as a file is (so nothing invalid is ever written)."""
    data = {
        "architecture": architecture.to_dict() if isinstance(architecture, Architecture) else architecture,
        "input": spec.to_dict(),
        "classes": list(classes),
        "parameters": parameters,
        "metrics": metrics or {},
        "provenance": _plain(provenance),
        "exports": {k: _plain(v) for k, v in (exports or {}).items()},
        "confidence": confidence.model_dump(mode="json") if confidence is not None else None,
    }
    return _validate(data, "the bundle record")


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_unset=True)
    return value if value is not None else {}


def _validate(data: Any, where: str) -> BundleRecord:
    """One line for the first problem (and how many more), whatever is wrong in the record."""
    try:
        # Strict JSON-mode validation: "3" is not an int and "abc" is not a list, but JSON arrays are tuples.
        return BundleRecord.model_validate_json(json.dumps(data), strict=True)
    except ValidationError as error:
        raise GraftError(f"{where} is damaged: {describe(error)}") from None


def describe(error: ValidationError) -> str:
    """A pydantic error as one line: `architecture.head: Input should be 'pool' or 'flatten' (+2 more)`."""
    problems = error.errors()
    first = problems[0]
    where = ".".join(str(part) for part in first["loc"]) or "the record"
    more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
    return first_line(f"{where}: {first['msg']}{more}", 300)


def migrate(data: dict, where: str) -> dict:
    """Bring an older record up to `VERSION`; refuse newer ones and those of another format."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise GraftError(f"{where} is not a graft bundle description (format is not {FORMAT!r})")
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise GraftError(f"{where} is damaged: version {version!r} is not a bundle version")
    if version > VERSION:
        raise GraftError(f"{where}: bundle version {version} is newer than this graft reads (up to {VERSION})")
    if version == 1:
        data = _from_version_1(data, where)
    return data


def _from_version_1(data: dict, where: str) -> dict:
    architecture, spec = data.get("architecture"), data.get("input")
    if isinstance(architecture, dict) and isinstance(spec, dict):
        architecture = dict(architecture)
        recorded = architecture.pop("input_mode", None)
        if recorded is not None and recorded != spec.get("mode", "replicate"):
            raise GraftError(
                f"{where} is damaged: architecture.input_mode {recorded!r} and input.mode {spec.get('mode')!r} differ"
            )
        data = {**data, "architecture": architecture}
    return {**data, "version": 2}


def read(bundle_dir: str | Path) -> BundleRecord:
    """The record of the bundle in `bundle_dir`: the one place graft parses `graft.json`."""
    path = Path(bundle_dir) / META_FILE
    if not path.is_file():
        raise GraftError(f"{bundle_dir} is not a graft bundle: {META_FILE} is missing")
    return _validate(migrate(_parse(path), str(path)), str(path))


def _parse(path: Path) -> Any:
    """The one function that parses `graft.json` (tests count its calls: a command parses the record once).

    NaN and infinities (which Python's json writes and reads, but JSON has not) are read as null: a metric of a
    diverged run becomes "unknown", and a field that needs a number refuses it.
    """
    if path.exists() and not path.is_file():
        raise GraftError(f"{path} is damaged: not a regular file")
    try:
        with path.open("rb") as handle:
            text = handle.read(MAX_RECORD_BYTES + 1)
        if len(text) > MAX_RECORD_BYTES:
            raise GraftError(f"{path} is damaged: larger than {MAX_RECORD_BYTES // 2**20} MB")
        return json.loads(text, parse_constant=lambda _: None)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise GraftError(f"{path} is damaged: not JSON ({first_line(error)})") from None
    except OSError as error:
        raise GraftError(f"cannot read {path}: {first_line(error)}") from None


def is_bundle(path: str | Path) -> bool:
    """Whether `path` holds something graft wrote as a bundle (its format tag; the rest may still be damaged), so
    `--force` may replace it."""
    try:
        data = _parse(Path(path) / META_FILE)
    except GraftError:
        return False
    return isinstance(data, dict) and data.get("format") == FORMAT


def write(bundle_dir: str | Path, record: BundleRecord) -> Path:
    """Write `graft.json` atomically (temp file, then rename)."""
    return atomic_write_json(Path(bundle_dir) / META_FILE, record.to_json())


def update(bundle_dir: str | Path, change: Callable[[BundleRecord], BundleRecord]) -> BundleRecord:
    """Read, change and write back the record; the result is validated before anything is replaced."""
    new = change(read(bundle_dir))
    new = _validate(new.to_json(), f"{Path(bundle_dir) / META_FILE} (after the change)")
    write(bundle_dir, new)
    return new


def json_schema() -> dict:
    """The JSON Schema of `graft.json` (published as `graft schema` and docs/bundle.schema.json)."""
    schema = BundleRecord.model_json_schema(mode="serialization")
    schema["title"] = f"graft bundle record (graft.json), version {VERSION}"
    return schema


_Architecture.model_rebuild()
ParentRecord.model_rebuild()
