"""Estimates of a sampler run's peak GPU memory and time, from the pack's benchmark table.

The table is one data file, `data/benchmarks.json`: a JSON list of rows, one per measurement, as
`scripts/bench.py` emits them (so new benchmark runs are appended, never retyped). Row schema:

| field | type | meaning |
| --- | --- | --- |
| `gpu` | str | `torch.cuda.get_device_name()`, e.g. "NVIDIA H100 80GB HBM3" (matched case-insensitively) |
| `driver`, `torch`, `date` | str | NVIDIA driver, torch version, ISO date of the measurement |
| `model_family` | str | "wan", "ltx" or "avatar" |
| `variant` | str | the family's variant id: "t2v-a14b", "i2v-a14b", "ti2v-5b" (Wan), "2b", "13b" (LTX, Avatar) |
| `size` | str | "480p" / "720p" (bench.py's sizes: 832x480, 1280x720) or "<width>x<height>" |
| `frames` | int | video frames of the measured clip |
| `precision`, `attention`, `compile` | str | the loader options measured (attention: the backend that ran) |
| `seconds_per_forward` | float | one transformer forward, one guidance branch (A14B: one expert), or `batch` of them |
| `tflops` | float or null | achieved TFLOP/s of that forward |
| `peak_gib` | float or null | peak GPU memory allocated during the forwards; null = not recorded |
| `notes` | str or list | anything worth knowing about the measurement |
| optional `text_encode_s`, `vae_decode_s`, `load_s` | float | per run: prompt encoding, decoding the clip, loading the model |
| optional `width`, `height` | int | the measured size when `size` is a label of another size table |
| optional `weights_gib` | float | GPU memory of the loaded weights (lets peak memory be extrapolated) |
| optional `batch` | int | guidance branches the measured forward ran as one batch (default 1; Avatar: 2) |
| optional `offload` | str | the loader's offload mode measured (default "none") |

bench.py's extra fields (`first_call_s`, `fraction_of_peak`, `model`, ...) may stay in a row; they are ignored.
Rows with an `implementation` other than "reelsmith" (bench.py --comfyui: ComfyUI's native model timed in the
same run) are skipped: the estimates are for Reelsmith's samplers.

How an estimate is made, for a GPU (the name in ComfyUI's `/system_stats`), a model variant, a precision and
compile mode, a size, a frame count and the guidance of each step:
- rows of that GPU, family, variant (I2V A14B uses T2V A14B rows: the same transformer size; a family with one
  model, Avatar, needs no variant), precision, compile mode and offload mode are the candidates (another compile
  or offload mode is used, and said, when the asked one was not measured);
- a row of the same size and frame count is used as measured; otherwise the row nearest in tokens is
  extrapolated: the self-attention share of its forward (from the matmul FLOP count of the model's config)
  scales quadratically in tokens, the rest linearly;
- a run = steps x forwards per step (2 when the step's CFG is above 1, else 1) x seconds per forward, plus text
  encoding and VAE decoding when the row has them (decoding scaled linearly in tokens); a sampler that batches
  both guidance branches into one forward (Avatar) runs one forward per step and window, costed from a row of the
  same batch (another batch is scaled linearly, and said);
- peak memory is the row's; at another size it is extrapolated when the row knows its weights' share,
  otherwise given as a bound from the nearest row that recorded it.
No candidate row: the estimate says "no measurement" and names what was measured instead.
"""

from __future__ import annotations

import functools
import json
import math
import pathlib
import re
from dataclasses import dataclass, field

from .errors import InvalidInputError

BENCHMARKS_PATH = pathlib.Path(__file__).resolve().parent.parent / "data" / "benchmarks.json"
REQUIRED_FIELDS = {
    "gpu": str, "driver": str, "torch": str, "date": str, "model_family": str, "variant": str, "size": str,
    "frames": int, "precision": str, "attention": str, "compile": str, "seconds_per_forward": (int, float),
}
NULLABLE_FIELDS = {"tflops": (int, float), "peak_gib": (int, float)}
OPTIONAL_FIELDS = {"text_encode_s": (int, float), "vae_decode_s": (int, float), "load_s": (int, float),
                   "width": int, "height": int, "weights_gib": (int, float), "batch": int, "offload": str}
FAMILIES = {"wan": "Wan 2.2", "ltx": "LTX-Video", "avatar": "Hunyuan Video Avatar"}  # id -> name in messages
SIZE_LABELS = {"480p": (832, 480), "720p": (1280, 720)}  # bench.py's sizes
# Variants whose transformer has another's size and cost (only the input channels differ).
SAME_COST_AS = {("wan", "i2v-a14b"): "t2v-a14b"}
TEXT_TOKENS = {"wan": 512, "ltx": 128, "avatar": 256}  # padded prompt length each family's transformer attends to
# Families with a single model: its variant id, so an estimate needs nothing from the loader's files.
SINGLE_VARIANT = {"avatar": "13b"}


@dataclass(frozen=True)
class BenchmarkRow:
    gpu: str
    model_family: str
    variant: str
    width: int
    height: int
    frames: int
    precision: str
    attention: str
    compile: str
    seconds_per_forward: float
    peak_gib: float | None
    date: str
    size_label: str
    weights_gib: float | None = None
    text_encode_s: float | None = None
    vae_decode_s: float | None = None
    load_s: float | None = None
    batch: int = 1
    offload: str = "none"
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    def describe(self) -> str:
        offload = f", offload {self.offload}" if self.offload != "none" else ""
        batch = f" at batch {self.batch}" if self.batch != 1 else ""
        return (f"{self.variant} {self.precision}, compile {self.compile}, attention {self.attention}{offload}, "
                f"{self.size_label} x {self.frames} frames "
                f"({self.seconds_per_forward:g} s/forward{batch}, {self.date})")


def _parse_size(text: str) -> tuple[int, int] | None:
    if text in SIZE_LABELS:
        return SIZE_LABELS[text]
    match = re.fullmatch(r"(\d+)x(\d+)", text.strip())
    return (int(match[1]), int(match[2])) if match else None


def parse_rows(data, source: str = "benchmark table") -> list[BenchmarkRow]:
    """Rows from the decoded JSON list; a malformed row is an error naming the row and the field."""
    if not isinstance(data, list):
        raise InvalidInputError(f"{source}: expected a JSON list of benchmark rows, found {type(data).__name__}.")
    rows = []
    for index, item in enumerate(data):
        where = f"{source}, row {index}"
        if not isinstance(item, dict):
            raise InvalidInputError(f"{where}: expected an object, found {type(item).__name__}.")
        if item.get("implementation", "reelsmith") != "reelsmith":
            continue  # a peer measured beside ours (ComfyUI's native model): kept for the README, not estimated
        for name, kind in REQUIRED_FIELDS.items():
            value = item.get(name)
            if value is None or isinstance(value, bool) or not isinstance(value, kind):
                raise InvalidInputError(f"{where}: field '{name}' is missing or not a {getattr(kind, '__name__', 'number')} "
                                        f"(found {value!r}). Fix the row (schema: engine/estimates.py).")
        for name, kind in {**NULLABLE_FIELDS, **OPTIONAL_FIELDS}.items():
            value = item.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, kind)):
                what = "a text" if kind is str else "a whole number" if kind is int else "a number"
                raise InvalidInputError(f"{where}: field '{name}' must be {what} or null, found {value!r}.")
        if name := next((n for n in NULLABLE_FIELDS if n not in item), None):
            raise InvalidInputError(f"{where}: field '{name}' is missing (use null when it was not recorded).")
        if item["model_family"] not in FAMILIES:
            raise InvalidInputError(f"{where}: model_family {item['model_family']!r} is not one of {', '.join(FAMILIES)}.")
        size = (item["width"], item["height"]) if "width" in item and "height" in item else _parse_size(item["size"])
        if size is None:
            raise InvalidInputError(f"{where}: size {item['size']!r} is neither {' nor '.join(SIZE_LABELS)} nor "
                                    "'<width>x<height>' (or give width and height).")
        if item["frames"] < 1 or item["seconds_per_forward"] <= 0 or item.get("batch", 1) < 1:
            raise InvalidInputError(f"{where}: frames, seconds_per_forward and batch must be positive.")
        rows.append(BenchmarkRow(
            gpu=item["gpu"], model_family=item["model_family"], variant=item["variant"], width=size[0], height=size[1],
            frames=item["frames"], precision=item["precision"], attention=item["attention"], compile=item["compile"],
            seconds_per_forward=float(item["seconds_per_forward"]),
            peak_gib=None if item["peak_gib"] is None else float(item["peak_gib"]), date=item["date"],
            size_label=item["size"], weights_gib=item.get("weights_gib"), text_encode_s=item.get("text_encode_s"),
            vae_decode_s=item.get("vae_decode_s"), load_s=item.get("load_s"), batch=item.get("batch", 1),
            offload=item.get("offload", "none"), raw=item))
    return rows


def load_rows(path: str | pathlib.Path = BENCHMARKS_PATH) -> list[BenchmarkRow]:
    """The table's rows, parsed once per version of the file (the editor asks on every widget change)."""
    path = pathlib.Path(path)
    try:
        stamp = path.stat().st_mtime_ns
    except OSError as error:
        raise InvalidInputError(f"{path}: cannot read the benchmark table ({error}).") from error
    return list(_parsed_rows(str(path), stamp))


@functools.lru_cache(maxsize=4)
def _parsed_rows(path: str, stamp: int) -> tuple[BenchmarkRow, ...]:
    try:
        data = json.loads(pathlib.Path(path).read_text())
    except OSError as error:
        raise InvalidInputError(f"{path}: cannot read the benchmark table ({error}).") from error
    except ValueError as error:
        raise InvalidInputError(f"{path}: not valid JSON ({error}).") from error
    return tuple(parse_rows(data, path))


def gpu_name_from_device(device_name: str) -> str:
    """ComfyUI's `/system_stats` device name ("cuda:0 NVIDIA H100 80GB HBM3 : cudaMallocAsync") -> the GPU's
    name as torch reports it ("NVIDIA H100 80GB HBM3"); "cpu" stays "cpu"."""
    text = (device_name or "").strip()
    text = re.sub(r"^CUDA\s+", "", text)
    text = re.sub(r"^(cuda|xpu|npu|mlu):\d+:?\s*", "", text)
    text = re.sub(r"\s+:\s*\S*$", "", text)
    return text.strip()


def _same_gpu(a: str, b: str) -> bool:
    return " ".join(a.lower().split()) == " ".join(b.lower().split())


# ------------------------------------------------------------------------------------------ model arithmetic

@dataclass(frozen=True)
class ModelShape:
    """What the time of one forward depends on: tokens per clip, and the matmul shape of the transformer."""
    frame_stride: int        # video frames per latent frame (after the first)
    pixels_per_token: int    # pixels along each side of one token (VAE stride x patch size)
    dim: int
    ffn_dim: int
    layers: int
    text_tokens: int

    def tokens(self, width: int, height: int, frames: int) -> int:
        latent_frames = (frames - 1) // self.frame_stride + 1
        return latent_frames * (height // self.pixels_per_token) * (width // self.pixels_per_token)

    def forward_flops(self, tokens: int) -> tuple[float, float]:
        """(self-attention scores and values, everything else): matmul FLOPs of one forward, 2 per multiply-add,
        the same count scripts/bench.py reports TFLOP/s with."""
        dim, text = self.dim, self.text_tokens
        attention = 2 * 2 * tokens * tokens * dim
        rest = (2 * tokens * dim * dim * 4          # self-attention q, k, v, o
                + 2 * tokens * dim * dim * 2        # cross-attention q, o
                + 2 * text * dim * dim * 2          # cross-attention k, v
                + 2 * 2 * tokens * text * dim       # cross-attention scores and values
                + 2 * tokens * dim * self.ffn_dim * 2)
        return attention * self.layers, rest * self.layers

    def time_scale(self, tokens_from: int, tokens_to: int) -> float:
        """How much longer a forward over `tokens_to` tokens takes than one over `tokens_from`: the
        attention share quadratically, the rest linearly in tokens."""
        attention, rest = self.forward_flops(tokens_from)
        share = attention / (attention + rest)
        ratio = tokens_to / tokens_from
        return share * ratio * ratio + (1 - share) * ratio


def model_shape(family: str, variant: str) -> ModelShape | None:
    """The shape of a known variant (from the configs the pack ships), None for one it cannot describe."""
    if family == "wan":
        from .models.wan_variants import WAN_VARIANTS
        found = WAN_VARIANTS.get(variant)
        if found is None:
            return None
        config = found.transformer_config_dict()
        from .pipelines.wan_validation import FRAME_STRIDE
        return ModelShape(FRAME_STRIDE, found.size_multiple, config["num_attention_heads"] * config["attention_head_dim"],
                          config["ffn_dim"], config["num_layers"], TEXT_TOKENS["wan"])
    if family == "ltx":
        from .models.ltx_variants import LTX_VARIANTS
        from .pipelines.ltx_validation import FRAME_STRIDE, SIZE_MULTIPLE
        found = LTX_VARIANTS.get(variant)
        if found is None:
            return None
        config = found.transformer_config_dict()
        dim = config["num_attention_heads"] * config["attention_head_dim"]
        return ModelShape(FRAME_STRIDE, SIZE_MULTIPLE, dim, 4 * dim, config["num_layers"], TEXT_TOKENS["ltx"])
    if family == "avatar" and variant == SINGLE_VARIANT["avatar"]:
        # HunyuanVideo's blocks attend jointly over video + text tokens instead of Wan's self + cross attention;
        # the formula serves only to split a forward into its quadratic and linear shares when scaling to a size.
        from .models.hunyuan_avatar_checkpoint import shipped_config
        from .pipelines.avatar_face_mask import LATENT_SPATIAL_COMPRESSION
        from .pipelines.avatar_windows import TEMPORAL_COMPRESSION
        config = shipped_config()
        dim = config["num_attention_heads"] * config["attention_head_dim"]
        return ModelShape(TEMPORAL_COMPRESSION, LATENT_SPATIAL_COMPRESSION * config["patch_size"], dim,
                          int(config["mlp_ratio"] * dim), config["num_layers"] + config["num_single_layers"],
                          TEXT_TOKENS["avatar"])
    return None


def guidance_branches(cfg: float) -> int:
    """Branches a step runs: with and without the prompt when CFG is above 1."""
    return 2 if cfg > 1.0 else 1


def forwards_per_run(phases, batched_guidance: bool = False, windows: int = 1) -> int:
    """Transformer forwards of a run: `phases` = [(steps, cfg), ...]; a step with CFG above 1 runs the model
    twice (with and without the prompt), or once on a batch of both with `batched_guidance`; a sampler that
    denoises in windows runs every step once per window."""
    return windows * sum(int(steps) * (1 if batched_guidance else guidance_branches(cfg)) for steps, cfg in phases)


# ------------------------------------------------------------------------------------------ the estimate

@dataclass
class EstimateRequest:
    gpu_device: str                  # /system_stats device name, or a bare GPU name
    model_family: str
    variant: str | None              # None: not known (model files missing and the name says nothing)
    precision: str
    compile: str
    width: int
    height: int
    frames: int
    phases: list                     # [(steps, cfg), ...]
    attention: str = "auto"
    two_experts_resident: bool = False  # A14B with offload none: both experts stay on the GPU
    variant_source: str = "weights"  # "weights" or "file name" (how the variant was found)
    offload: str = "none"            # the loader's offload mode
    batched_guidance: bool = False   # both guidance branches run as one batched forward (Avatar)
    windows: int = 1                 # windows every step runs over (Avatar's long audio)


@dataclass
class Estimate:
    status: str                      # "measured" | "extrapolated" | "no_measurement" | "unknown_model"
    gpu: str
    lines: list[str]                 # what the node shows, first line the headline
    seconds: float | None = None
    peak_gib: float | None = None
    peak_kind: str | None = None     # "measured" | "extrapolated" | "at most" | "at least" | None
    forwards: int | None = None
    row: dict | None = None          # the measurement used, as stored in the table

    def to_json(self) -> dict:
        return {"status": self.status, "gpu": self.gpu, "lines": self.lines, "seconds": self.seconds,
                "peak_gib": self.peak_gib, "peak_kind": self.peak_kind, "forwards": self.forwards, "row": self.row}


def format_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 90:
        return f"{seconds} s"
    minutes = round(seconds / 60)
    if minutes < 90:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def _size_text(width: int, height: int, frames: int) -> str:
    return f"{width}x{height}, {frames} frames"


def _candidates(rows, request: EstimateRequest, gpu: str, variant: str):
    return [r for r in rows if _same_gpu(r.gpu, gpu) and r.model_family == request.model_family
            and r.variant == variant]


def _nearest(rows, shape: ModelShape | None, tokens: int, request: EstimateRequest):
    exact = [r for r in rows if (r.width, r.height, r.frames) == (request.width, request.height, request.frames)]
    if exact:
        return exact[0], True
    if shape is None:
        return None, False
    return min(rows, key=lambda r: abs(math.log(shape.tokens(r.width, r.height, r.frames) / tokens))), False


def _peak(rows, used: BenchmarkRow, shape: ModelShape | None, tokens: int, exact: bool):
    """(GiB, kind, note) for the run's peak memory from the rows of the chosen configuration."""
    if exact and used.peak_gib is not None:
        return used.peak_gib, "measured", None
    recorded = [r for r in rows if r.peak_gib is not None]
    if not recorded or shape is None:
        where = f"at {used.size_label}" if exact else "for this configuration"
        return None, None, f"peak memory not recorded {where}"
    row = min(recorded, key=lambda r: abs(math.log(shape.tokens(r.width, r.height, r.frames) / tokens)))
    row_tokens = shape.tokens(row.width, row.height, row.frames)
    measured_at = f"{row.size_label} x {row.frames}"
    not_here = f"not recorded at {used.size_label}" if exact else "not measured at this size"
    if row.weights_gib is not None:
        value = row.weights_gib + (row.peak_gib - row.weights_gib) * tokens / row_tokens
        return value, "extrapolated", f"peak {not_here}: extrapolated from {measured_at} ({row.peak_gib:g} GiB)"
    if tokens <= row_tokens:
        return row.peak_gib, "at most", f"peak {not_here}; {measured_at} peaked at {row.peak_gib:g} GiB"
    return row.peak_gib, "at least", f"peak {not_here}; {measured_at} peaked at {row.peak_gib:g} GiB"


def _batch_notes(row: BenchmarkRow, request: EstimateRequest) -> list[str]:
    """What is scaled rather than measured when the run's batch differs from the row's."""
    if not request.batched_guidance:
        return [f"measured as one forward over a batch of {row.batch}: one branch taken as 1/{row.batch} of it"] \
            if row.batch != 1 else []
    notes = []
    for cfg in sorted({cfg for _, cfg in request.phases}):
        branches = guidance_branches(cfg)
        if branches != row.batch:
            notes.append(f"cfg {cfg:g} runs {branches} branch{'es' if branches > 1 else ''} per step: taken as "
                         f"{branches}/{row.batch} of the measured batch of {row.batch} (not measured)")
    return notes


AUTO_ATTENTION_ORDER = ("fp8", "cudnn", "sdpa")


def estimate(rows: list[BenchmarkRow], request: EstimateRequest) -> Estimate:
    gpu = gpu_name_from_device(request.gpu_device)
    family = request.model_family
    asked = request.variant or SINGLE_VARIANT.get(family)
    model = f"{FAMILIES.get(family, family)} {asked}"
    if asked is None:
        return Estimate("unknown_model", gpu, [f"No estimate: the {FAMILIES.get(family, family)} variant is not known "
                                               "until the loader's files are found."])
    variant = SAME_COST_AS.get((family, asked), asked)
    twin_note = [f"{asked} measured as {variant} (same transformer size)"] if variant != asked else []
    same_model = _candidates(rows, request, gpu, variant)
    if not same_model:
        elsewhere = sorted({r.gpu for r in rows if r.model_family == family and r.variant == variant})
        measured = f" (measured on: {', '.join(elsewhere)})" if elsewhere else ""
        return Estimate("no_measurement", gpu, [f"No measurement for this GPU ({gpu or 'unknown'}) "
                                                f"with {model}{measured}."])
    same_precision = [r for r in same_model if r.precision == request.precision]
    if not same_precision:
        measured = ", ".join(sorted({r.precision for r in same_model}))
        return Estimate("no_measurement", gpu, [f"No measurement for this GPU ({gpu}) with {model} at "
                                                f"precision {request.precision} (measured: {measured})."])
    notes = list(twin_note)
    if request.variant is not None and request.variant_source != "weights":
        notes.append(f"variant {request.variant} read from the {request.variant_source} (files not found)")
    chosen = [r for r in same_precision if r.compile == request.compile]
    if not chosen:
        chosen = same_precision
        notes.append(f"compile {request.compile} not measured: using compile {chosen[0].compile}")
        chosen = [r for r in chosen if r.compile == chosen[0].compile]
    if all(r.offload != request.offload for r in chosen):
        fallback = "none" if any(r.offload == "none" for r in chosen) else chosen[0].offload
        notes.append(f"offload {request.offload} not measured: figures for offload {fallback}")
        chosen = [r for r in chosen if r.offload == fallback]
    else:
        chosen = [r for r in chosen if r.offload == request.offload]
    if request.attention == "auto":
        # rows of the backend 'auto' would pick come first, so they win among equally near sizes
        # (engine/models/attention.py: fp8 on Hopper where the kernel fits the model, else cuDNN, else SDPA)
        chosen = sorted(chosen, key=lambda r: AUTO_ATTENTION_ORDER.index(r.attention)
                        if r.attention in AUTO_ATTENTION_ORDER else len(AUTO_ATTENTION_ORDER))
    elif any(r.attention == request.attention for r in chosen):
        chosen = [r for r in chosen if r.attention == request.attention]
    else:
        notes.append(f"measured with attention {chosen[0].attention}, not {request.attention}")

    shape = model_shape(family, variant)
    tokens = shape.tokens(request.width, request.height, request.frames) if shape else None
    row, exact = _nearest(chosen, shape, tokens, request)
    if row is None:
        return Estimate("no_measurement", gpu, [f"No measurement for this GPU ({gpu}) at "
                                                f"{_size_text(request.width, request.height, request.frames)} "
                                                f"(and no model shape to extrapolate with)."])
    scale = 1.0 if exact else shape.time_scale(shape.tokens(row.width, row.height, row.frames), tokens)
    branch_seconds = row.seconds_per_forward * scale / row.batch  # one guidance branch of one forward
    forwards = forwards_per_run(request.phases, request.batched_guidance, request.windows)
    branch_runs = forwards_per_run(request.phases, False, request.windows)
    seconds = branch_runs * branch_seconds
    per_forward = seconds / forwards if forwards else 0.0
    notes += _batch_notes(row, request)
    parts = []
    if row.text_encode_s is not None:
        seconds += row.text_encode_s
        parts.append("text encode")
    if row.vae_decode_s is not None:
        decode_scale = 1.0 if exact else tokens / shape.tokens(row.width, row.height, row.frames)
        seconds += row.vae_decode_s * decode_scale
        parts.append("VAE decode")
    missing = [p for p in ("text encode", "VAE decode") if p not in parts]
    if missing:
        notes.append(f"{' and '.join(missing)} not measured: not included")
    if row.load_s is not None:
        notes.append(f"first run also loads the model (~{format_duration(row.load_s)})")

    peak, peak_kind, peak_note = _peak(chosen, row, shape, tokens, exact)
    if peak_note:
        notes.append(peak_note)
    if peak_kind == "measured" and request.batched_guidance and \
            max(guidance_branches(cfg) for _, cfg in request.phases) < row.batch:
        peak_kind = "at most"  # a smaller batch than the measured one
    if request.two_experts_resident:
        notes.append("peak is one expert's forward; offload none keeps both A14B experts on the GPU"
                     + (f" (+{row.weights_gib:g} GiB)" if row.weights_gib is not None else ""))
        if peak is not None and row.weights_gib is not None:
            peak += row.weights_gib
    peak_text = {"measured": "≈ {:.1f} GiB", "extrapolated": "≈ {:.1f} GiB", "at most": "≤ {:.1f} GiB",
                 "at least": "> {:.1f} GiB"}.get(peak_kind, "unknown")
    peak_text = peak_text.format(peak) if peak is not None else peak_text
    if request.batched_guidance:
        steps = sum(int(s) for s, _ in request.phases)
        windows = f"{request.windows} window" + ("s" if request.windows != 1 else "")
        each = "per step and window" if request.windows != 1 else "per step"
        branches = max(guidance_branches(cfg) for _, cfg in request.phases)
        batch = "cond + uncond in one batch" if branches == 2 else "one branch, no guidance"
        headline = (f"≈ {format_duration(seconds)} for {steps} steps x {windows} ({per_forward:.2f} s {each}, "
                    f"{batch}) · peak {peak_text}")
    else:
        headline = (f"≈ {format_duration(seconds)} for {forwards} forwards ({per_forward:.2f} s each) · "
                    f"peak {peak_text}")
    if exact:
        source = f"{row.gpu}: measured {row.describe()}"
    else:
        source = f"{row.gpu}: extrapolated from {row.describe()}"
    return Estimate("measured" if exact else "extrapolated", gpu, [headline, source] + notes,
                    seconds=round(seconds, 1), peak_gib=None if peak is None else round(peak, 2),
                    peak_kind=peak_kind, forwards=forwards, row=row.raw)
