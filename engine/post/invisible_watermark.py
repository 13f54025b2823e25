"""Invisible watermark: a short payload (a job id) hidden in the luma of every frame, robust to H.264.

Method: quantization index modulation (QIM) with a keyed dither on the 9 lowest AC coefficients of an 8x8
DCT taken over 4x4-pixel cell means of luma (so each DCT block covers 32x32 pixels: frequencies low enough
that H.264 keeps them). Each coefficient slot carries one bit of a 144-bit codeword (length byte + 16
payload bytes + CRC-8), every bit repeated over many slots in every frame; the detector sums a soft vote
over all slots of all frames, so even a short clip survives H.264 at CRF 23 (tests/test_watermark.py).
Luma is changed by adding the same amount to R, G and B, which leaves BT.601/709 chroma untouched. The
frame grid must not be cropped or rescaled between embedding and detection.

The quantizer step depends on `strength`; the detector tries every level of STRENGTHS unless told one.
Torch only, batched over frames; the frames stay on their device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import InvalidInputError

MAX_PAYLOAD_BYTES = 16
STRENGTHS = {"subtle": 0.4, "normal": 0.6, "strong": 1.0}
_BASE_STEP = 24.0 / 255.0          # quantizer step at strength 1.0, in 0..1 luma units (of cell means)
_KEY = 0x5EE15A17                  # fixed key: slot order and dither (a watermark, not a secret)
# low-frequency DCT positions carrying bits
_COEFFS = ((0, 1), (1, 0), (1, 1), (0, 2), (2, 0), (1, 2), (2, 1), (0, 3), (3, 0))
_CODE_BYTES = 1 + MAX_PAYLOAD_BYTES + 1
CODE_BITS = 8 * _CODE_BYTES
_CELL = 4                          # pixels per cell side: the DCT runs over cell means (8x8 cells a block)
_MIN_BLOCKS = 16                   # at least 4x4 blocks per frame
_FOUND_CONFIDENCE = 0.5            # a CRC-valid codeword read with less certainty is reported as no mark


@dataclass(frozen=True)
class Detection:
    found: bool
    payload: str | None
    confidence: float              # 0..1: how sure the detector is that a mark carrying `payload` is there
    strength: float | None = None  # the strength level it was read at

    def report(self) -> str:
        if self.found:
            return f"watermark found: payload {self.payload!r} (confidence {self.confidence:.3f})"
        return f"no watermark found (confidence of a mark {self.confidence:.3f})"


def crc8(data: bytes) -> int:
    """CRC-8, polynomial 0x07 (ATM/SMBus), initial value 0."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def _whitening() -> torch.Tensor:
    g = torch.Generator().manual_seed(_KEY ^ 0xA5A5)
    return torch.randint(0, 2, (CODE_BITS,), generator=g, dtype=torch.uint8)


def encode_codeword(payload: str) -> torch.Tensor:
    """payload → CODE_BITS bits (uint8 0/1), whitened so runs of padding are not runs of equal bits."""
    data = payload.encode("utf-8")
    if len(data) > MAX_PAYLOAD_BYTES:
        raise InvalidInputError(
            f"Invisible watermark payload {payload!r} is {len(data)} bytes in UTF-8; at most {MAX_PAYLOAD_BYTES} "
            "fit. Use a shorter id (for example a hash prefix of the job id).")
    body = bytes([len(data)]) + data.ljust(MAX_PAYLOAD_BYTES, b"\0")
    code = body + bytes([crc8(body)])
    bits = torch.tensor([(byte >> (7 - i)) & 1 for byte in code for i in range(8)], dtype=torch.uint8)
    return bits ^ _whitening()


def decode_codeword(bits: torch.Tensor) -> str | None:
    """CODE_BITS bits → payload, or None when the CRC, the length or the padding is wrong."""
    bits = bits.to(torch.uint8).cpu() ^ _whitening()
    code = bytes(int("".join(str(int(b)) for b in bits[i:i + 8]), 2) for i in range(0, CODE_BITS, 8))
    body, check = code[:-1], code[-1]
    length = body[0]
    if crc8(body) != check or length > MAX_PAYLOAD_BYTES or any(body[1 + length:]):
        return None
    try:
        return body[1:1 + length].decode("utf-8")
    except UnicodeDecodeError:
        return None


def _dct_matrix(device, dtype) -> torch.Tensor:
    n = 8
    k = torch.arange(n, dtype=torch.float64)
    m = torch.cos(math.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n)) * math.sqrt(2 / n)
    m[0] /= math.sqrt(2)
    return m.to(device=device, dtype=dtype)


def _layout(hb: int, wb: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """For a frame of hb x wb blocks: bit index and dither (fraction of a step) of every slot [hb, wb, K]."""
    slots = hb * wb * len(_COEFFS)
    g = torch.Generator().manual_seed(_KEY + 1000003 * hb + wb)
    order = torch.randperm(slots, generator=g)
    bit_index = (order % CODE_BITS).view(hb, wb, len(_COEFFS))
    dither = torch.rand(slots, generator=g, dtype=torch.float64).float().view(hb, wb, len(_COEFFS))
    return bit_index.to(device), dither.to(device)


def _blocks(frames: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """Luma of the block-aligned area, averaged over CELL x CELL pixels, as 8x8-cell blocks [B, hb, wb, 8, 8]."""
    if frames.ndim != 4 or frames.shape[-1] not in (1, 3, 4):
        raise InvalidInputError(f"Expected IMAGE frames [B,H,W,C] with 1, 3 or 4 channels, got shape {tuple(frames.shape)}.")
    b, h, w, c = frames.shape
    side = 8 * _CELL
    hb, wb = h // side, w // side
    if hb * wb < _MIN_BLOCKS:
        raise InvalidInputError(f"Frames of {w}x{h} are too small for the invisible watermark; it needs at least "
                                f"{side * 8}x{side * 8} pixels.")
    x = frames[:, :hb * side, :wb * side, :3].to(torch.float32)
    if c >= 3:
        luma = 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]
    else:
        luma = x[..., 0]
    if _CELL > 1:
        luma = torch.nn.functional.avg_pool2d(luma.unsqueeze(1), _CELL).squeeze(1)
    return luma.reshape(b, hb, 8, wb, 8).permute(0, 1, 3, 2, 4), hb, wb


def _coefficients(blocks: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    dct = d @ blocks @ d.T
    return torch.stack([dct[..., u, v] for u, v in _COEFFS], dim=-1)  # [B, hb, wb, K]


def embed_payload(frames: torch.Tensor, payload: str, strength: float = STRENGTHS["normal"]) -> torch.Tensor:
    """Hide `payload` (at most MAX_PAYLOAD_BYTES of UTF-8) in IMAGE frames [B,H,W,C] 0..1; same shape back."""
    if not payload:
        return frames
    if not 0.1 <= strength <= 4.0:
        raise InvalidInputError(f"Watermark strength {strength} is out of range; use 0.1 to 4 (levels: {STRENGTHS}).")
    bits = encode_codeword(payload).to(frames.device)
    blocks, hb, wb = _blocks(frames)
    d = _dct_matrix(frames.device, torch.float32)
    step = _BASE_STEP * strength
    bit_index, dither = _layout(hb, wb, frames.device)
    coeffs = _coefficients(blocks, d)
    offset = (dither + 0.5 * bits[bit_index].to(torch.float32)) * step    # lattice of this slot's bit
    target = torch.round((coeffs - offset) / step) * step + offset
    change = torch.zeros_like(blocks)                                    # [B, hb, wb, 8, 8] in DCT domain
    for k, (u, v) in enumerate(_COEFFS):
        change[..., u, v] = target[..., k] - coeffs[..., k]
    pixels = d.T @ change @ d                                            # back to pixel domain
    delta = pixels.permute(0, 1, 3, 2, 4).reshape(frames.shape[0], hb * 8, wb * 8)
    if _CELL > 1:  # every pixel of a cell moves by the cell's change
        delta = delta.repeat_interleave(_CELL, dim=1).repeat_interleave(_CELL, dim=2)
    side = 8 * _CELL
    out = frames.clone()
    region = out[:, :hb * side, :wb * side, :3]
    region += delta.to(frames.dtype).unsqueeze(-1)
    out.clamp_(0.0, 1.0)
    return out


def _vote_sums(frames: torch.Tensor, steps: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft votes of frames, summed per bit, for each quantizer step: (sums [S, CODE_BITS], counts [CODE_BITS])."""
    blocks, hb, wb = _blocks(frames)
    coeffs = _coefficients(blocks, _dct_matrix(frames.device, torch.float32))
    bit_index, dither = _layout(hb, wb, frames.device)
    idx = bit_index.expand_as(coeffs).reshape(-1)
    sums = torch.zeros(len(steps), CODE_BITS, dtype=torch.float32, device=frames.device)
    for i, step in enumerate(steps):
        # +1 on the lattice of bit 0, -1 on that of bit 1; mean 0, variance 1/2 on unmarked content
        vote = torch.cos(2 * math.pi * (coeffs / step - dither))
        sums[i].index_add_(0, idx, vote.reshape(-1))
    counts = torch.bincount(idx, minlength=CODE_BITS).to(torch.float32)
    return sums.double().cpu(), counts.double().cpu()


def _decide(sums: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Per-bit vote sums → (bits, confidence that every bit is right)."""
    z = sums / torch.sqrt(counts / 2)                  # standard normal per bit when there is no mark
    bits = (sums < 0).to(torch.uint8)
    # each bit is decided with certainty erf(|z|/sqrt 2) (0 = coin flip, 1 = sure); all must be right
    certainty = torch.erf(z.abs() / math.sqrt(2))
    confidence = float(torch.exp(torch.log(certainty.clamp_min(1e-300)).sum()).clamp(0, 1))
    return bits, confidence


def detect_chunks(chunks, strengths: tuple[float, ...] | None = None) -> Detection:
    """Like detect_payload, over an iterable of frame batches (a long video read a piece at a time)."""
    levels = list(strengths or STRENGTHS.values())
    steps = [_BASE_STEP * s for s in levels]
    total, counts, shape = None, None, None
    for frames in chunks:
        if shape is not None and frames.shape[1:3] != shape:
            raise InvalidInputError(f"Frames change size within the clip ({tuple(shape)} then {tuple(frames.shape[1:3])}).")
        shape = frames.shape[1:3]
        sums, n = _vote_sums(frames, steps)
        total, counts = (sums, n) if total is None else (total + sums, counts + n)
    if total is None:
        raise InvalidInputError("No frames to look for a watermark in: the clip is empty.")
    best = Detection(False, None, 0.0)
    for level, sums in zip(levels, total):
        bits, confidence = _decide(sums, counts)
        payload = decode_codeword(bits)
        if payload is None:
            confidence = 0.0   # the bits do not form a codeword: no mark at this level
        found = payload is not None and confidence >= _FOUND_CONFIDENCE
        candidate = Detection(found, payload if found else None, confidence, level if found else None)
        if (candidate.found, candidate.confidence) > (best.found, best.confidence):
            best = candidate
    return best


def detect_payload(frames: torch.Tensor, strengths: tuple[float, ...] | None = None, chunk: int = 16) -> Detection:
    """Look for a payload in IMAGE frames [B,H,W,C] 0..1 (decoded video frames: every frame adds evidence).

    `strengths`: the embedding levels to try (default: every level of STRENGTHS).
    """
    return detect_chunks((frames[i:i + chunk] for i in range(0, frames.shape[0], chunk)), strengths)


def read_video_chunks(path, max_frames: int = 0, chunk: int = 16):
    """Decode a video file with PyAV into IMAGE batches [b,H,W,3] float32 0..1 (at most max_frames; 0 = all)."""
    import pathlib

    import av
    import numpy as np

    p = pathlib.Path(str(path)).expanduser()
    if not p.is_file():
        raise InvalidInputError(f"Video file {p} does not exist: give the full path of the video to check.")
    try:
        container = av.open(str(p))
    except av.error.FFmpegError as e:
        raise InvalidInputError(f"{p} cannot be opened as a video ({e}).") from None
    with container:
        if not container.streams.video:
            raise InvalidInputError(f"{p} has no video stream.")
        batch = []
        for seen, frame in enumerate(container.decode(video=0), start=1):
            batch.append(frame.to_ndarray(format="rgb24"))
            if len(batch) == chunk:
                yield torch.from_numpy(np.stack(batch)).float() / 255.0
                batch = []
            if max_frames and seen >= max_frames:
                break
        if batch:
            yield torch.from_numpy(np.stack(batch)).float() / 255.0


def detect_payload_in_file(path, max_frames: int = 0, strengths: tuple[float, ...] | None = None) -> Detection:
    """Decode a video file (PyAV) and look for a payload in its frames."""
    return detect_chunks(read_video_chunks(path, max_frames), strengths)
