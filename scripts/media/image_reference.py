#!/usr/bin/env python3
"""Fixtures of the image encoder (crates/media/src/image.rs) and their reference outputs.

    PY=$(scripts/media-venv.sh) && "$PY" scripts/media/image_reference.py

Writes about sixty image files to crates/media/tests/fixtures/images/ — the sample images
scikit-image ships (skimage.data: astronaut, coffee, chelsea, rocket, camera, ...) saved
as JPEG, PNG and WebP at several qualities and sizes, plus odd ones: grayscale, CMYK
JPEG, progressive JPEG, 1x1, a 6000x4000 smooth image, a 4000x250 panorama, transparent
and palette PNGs, 16-bit PNGs (written by the small PNG writer below, since Pillow cannot
write 48-bit RGB), interlaced PNG, lossless / lossy / alpha WebP — and, for each file,
what PyTorch computes with the model definition written for these weights
(`efficientnet_lite_pytorch`, the lukemelas port with TensorFlow "SAME" padding):

* `features`: the 1,280-d globally average-pooled output of the head conv + BN + ReLU6
  (not normalised; the encoder L2-normalises it), 6 significant digits;
* `top5`: the five most probable ImageNet classes of the `_fc` head (index, softmax
  probability).

into crates/media/tests/fixtures/images/reference.json. The weights are the converted
ones the Rust encoder reads (`kernelize models install EfficientNet-Lite0`:
$KERNELIZE_MODELS_DIR or ~/.local/share/kernelize/models, EfficientNet-Lite0/
model.safetensors), loaded into the PyTorch module by name, strictly.

Preprocessing (`preprocess` below; crates/media/src/image/preprocess.rs is the same
arithmetic), as TensorFlow's EfficientNet evaluation (`_decode_and_center_crop`,
CROP_PADDING = 32, MEAN_RGB = 127, STDDEV_RGB = 128 for the lite models):

1. decode with PIL and `.convert("RGB")` (alpha dropped, not composited; palette,
   grayscale and CMYK expanded as PIL does), except that 16-bit grayscale keeps the high
   byte of each sample (PIL's own conversion clips it to 255, i.e. white);
2. centre crop of the square side max(1, floor(min(h, w) * 224 / 256)) at offsets
   ((h - side + 1) // 2, (w - side + 1) // 2);
3. resize to 224x224 on float32 data with torch's antialiased bicubic filter
   (`F.interpolate(mode="bicubic", antialias=True, align_corners=False)`: Keys cubic,
   a = -0.5, support scaled by the downscaling factor, width pass then height pass);
4. (x - 127) / 128 per channel.

Deterministic: the images come from scikit-image's files and fixed arithmetic, Pillow's
encoders run with fixed settings (rerunning rewrites identical files given the same
pinned versions, scripts/tests/requirements-media.txt).
"""

import io
import json
import os
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "crates/media/tests/fixtures/images"
CLASSES = ROOT / "crates/media/src/imagenet_classes.txt"

SIZE = 224
CROP_PADDING = 32
MEAN = 127.0
STD = 128.0


def models_dir() -> Path:
    """The models directory, as kernelize_embed::models::models_dir resolves it."""
    if os.environ.get("KERNELIZE_MODELS_DIR"):
        return Path(os.environ["KERNELIZE_MODELS_DIR"])
    xdg = os.environ.get("XDG_DATA_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "kernelize" / "models"
    return Path.home() / ".local/share/kernelize/models"


def read_safetensors(path: Path) -> dict:
    """All tensors of a float32 safetensors file (the format is a length-prefixed JSON
    header and raw little-endian data; no extra package needed)."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] != "F32":
            raise SystemExit(f"{path}: tensor {name} is {info['dtype']}, expected F32")
        start, end = info["data_offsets"]
        array = np.frombuffer(data[8 + n + start : 8 + n + end], dtype="<f4").reshape(info["shape"])
        tensors[name] = torch.from_numpy(array.copy())
    return tensors


def load_model():
    """EfficientNet-Lite0 of `efficientnet_lite_pytorch` with the installed weights, in
    eval mode (BatchNorm from running statistics, eps 1e-3; dropout off)."""
    from efficientnet_lite_pytorch import EfficientNet

    path = models_dir() / "EfficientNet-Lite0" / "model.safetensors"
    if not path.exists():
        raise SystemExit(f"{path} not found: run `kernelize models install EfficientNet-Lite0` first")
    model = EfficientNet.from_name("efficientnet-lite0")
    model.load_state_dict(read_safetensors(path), strict=True)
    return model.eval()


def to_rgb(img: Image.Image) -> np.ndarray:
    """HxWx3 uint8 RGB, as the encoder decodes (step 1 of the module doc)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        gray = (np.asarray(img).astype(np.uint32) >> 8).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    return np.asarray(img.convert("RGB"))


def preprocess(rgb: np.ndarray) -> torch.Tensor:
    """1x3x224x224 float32 input of the network (steps 2-4 of the module doc)."""
    h, w = rgb.shape[:2]
    side = max(1, min(h, w) * SIZE // (SIZE + CROP_PADDING))
    top, left = (h - side + 1) // 2, (w - side + 1) // 2
    crop = np.array(rgb[top : top + side, left : left + side], copy=True)
    x = torch.from_numpy(crop).permute(2, 0, 1).unsqueeze(0).float()
    if side != SIZE:
        x = F.interpolate(x, size=(SIZE, SIZE), mode="bicubic", antialias=True, align_corners=False)
    return (x - MEAN) / STD


def load_image(data: bytes) -> np.ndarray:
    """Decoded RGB pixels of an image file's bytes."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return to_rgb(img)


@torch.inference_mode()
def forward(model, batch: torch.Tensor):
    """(pooled 1,280-d features, logits) of a batch of preprocessed images."""
    features = model.extract_features(batch).mean(dim=(2, 3))
    return features, model._fc(features)


# ---------------------------------------------------------------------------------------
# Fixture images


def png_bytes(pixels: np.ndarray, interlace: bool = False) -> bytes:
    """A PNG of 8- or 16-bit gray / gray+alpha / RGB / RGBA `pixels` (HxW or HxWxC), no
    filtering, written here because Pillow cannot write 16-bit colour PNGs."""
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    h, w, c = pixels.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    depth = 16 if pixels.dtype == np.uint16 else 8
    be = pixels.astype(">u2") if depth == 16 else pixels.astype(np.uint8)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    def rows(block: np.ndarray) -> bytes:
        return b"".join(b"\x00" + row.tobytes() for row in block)

    if interlace:
        # Adam7: seven passes of sub-images, each row-filtered on its own.
        passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
        raw = b"".join(rows(be[y0::dy, x0::dx]) for x0, y0, dx, dy in passes if be[y0::dy, x0::dx].size)
    else:
        raw = rows(be)
    ihdr = struct.pack(">IIBBBBB", w, h, depth, colour_type, 0, 0, 1 if interlace else 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def pil_bytes(img: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


def resized(img: Image.Image, width: int) -> Image.Image:
    """`img` scaled to `width` pixels wide (Lanczos), to keep the fixtures small."""
    height = max(1, round(img.height * width / img.width))
    return img.resize((width, height), Image.Resampling.LANCZOS)


def fixtures() -> dict:
    """File name -> bytes of every fixture image."""
    import skimage.data as data

    def rgb(name: str) -> Image.Image:
        return Image.fromarray(getattr(data, name)()).convert("RGB")

    def gray(name: str) -> Image.Image:
        # binary_blobs is random: seeded.
        a = data.binary_blobs(rng=0) if name == "binary_blobs" else getattr(data, name)()
        if a.dtype == bool:
            a = a.astype(np.uint8) * 255
        elif a.dtype != np.uint8:
            a = np.clip(a * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(a, mode="L")

    files = {}
    # The colour photographs, each in a couple of formats and sizes.
    files["astronaut.jpg"] = pil_bytes(rgb("astronaut"), "JPEG", quality=90)
    files["astronaut-q40-320.jpg"] = pil_bytes(resized(rgb("astronaut"), 320), "JPEG", quality=40)
    files["astronaut-256.webp"] = pil_bytes(resized(rgb("astronaut"), 256), "WEBP", quality=80)
    files["coffee.jpg"] = pil_bytes(rgb("coffee"), "JPEG", quality=85)
    files["coffee-444.jpg"] = pil_bytes(resized(rgb("coffee"), 300), "JPEG", quality=95, subsampling=0)
    files["coffee-progressive.jpg"] = pil_bytes(rgb("coffee"), "JPEG", quality=75, progressive=True)
    files["coffee-lossless.webp"] = pil_bytes(resized(rgb("coffee"), 240), "WEBP", lossless=True)
    files["chelsea.jpg"] = pil_bytes(rgb("chelsea"), "JPEG", quality=90)
    files["chelsea.png"] = pil_bytes(resized(rgb("chelsea"), 260), "PNG")
    files["chelsea-q60.webp"] = pil_bytes(rgb("chelsea"), "WEBP", quality=60)
    files["rocket.jpg"] = pil_bytes(rgb("rocket"), "JPEG", quality=85)
    files["rocket-q95-400.jpg"] = pil_bytes(resized(rgb("rocket"), 400), "JPEG", quality=95)
    files["hubble.jpg"] = pil_bytes(rgb("hubble_deep_field"), "JPEG", quality=80)
    files["ihc.jpg"] = pil_bytes(rgb("immunohistochemistry"), "JPEG", quality=85)
    files["ihc-300.webp"] = pil_bytes(resized(rgb("immunohistochemistry"), 300), "WEBP", quality=85)
    files["retina-700.jpg"] = pil_bytes(resized(rgb("retina"), 700), "JPEG", quality=85)
    files["colorwheel.png"] = pil_bytes(resized(rgb("colorwheel"), 200), "PNG")
    left, right, _ = data.stereo_motorcycle()
    files["motorcycle.jpg"] = pil_bytes(Image.fromarray(left), "JPEG", quality=80)
    files["motorcycle-right-360.webp"] = pil_bytes(resized(Image.fromarray(right), 360), "WEBP", quality=75)
    # Grayscale (mode L) as JPEG, PNG and WebP (WebP stores it as colour).
    files["camera.png"] = pil_bytes(resized(gray("camera"), 384), "PNG")
    files["camera-gray.jpg"] = pil_bytes(gray("camera"), "JPEG", quality=85)
    files["brick-gray.jpg"] = pil_bytes(resized(gray("brick"), 256), "JPEG", quality=85)
    files["grass-gray.webp"] = pil_bytes(resized(gray("grass"), 256), "WEBP", quality=80)
    files["gravel-gray.jpg"] = pil_bytes(resized(gray("gravel"), 256), "JPEG", quality=80)
    files["moon-gray.jpg"] = pil_bytes(gray("moon"), "JPEG", quality=80)
    files["coins.png"] = pil_bytes(gray("coins"), "PNG")
    files["clock-gray.jpg"] = pil_bytes(gray("clock"), "JPEG", quality=90)
    files["page.png"] = pil_bytes(gray("page"), "PNG")
    files["text.png"] = pil_bytes(gray("text"), "PNG")
    files["cell-gray.jpg"] = pil_bytes(resized(gray("cell"), 300), "JPEG", quality=85)
    files["microaneurysms.png"] = pil_bytes(gray("microaneurysms"), "PNG")  # 102x102: upscaled
    files["phantom.png"] = pil_bytes(resized(gray("shepp_logan_phantom"), 200), "PNG")
    faces = data.lfw_subset()  # 25x25 float faces in [0, 1]
    files["face-25.png"] = pil_bytes(Image.fromarray((faces[0] * 255 + 0.5).astype(np.uint8)), "PNG")
    # Bit depths and colour types.
    files["horse-1bit.png"] = pil_bytes(gray("horse").convert("1"), "PNG")
    files["checkerboard-1bit.png"] = pil_bytes(gray("checkerboard").convert("1"), "PNG")
    files["blobs-1bit.png"] = pil_bytes(resized(gray("binary_blobs"), 256).convert("1"), "PNG")
    files["coffee-palette.png"] = pil_bytes(resized(rgb("coffee"), 300).quantize(64), "PNG")
    pal = resized(rgb("chelsea"), 240).quantize(32)
    files["chelsea-palette-transparent.png"] = pil_bytes(pal, "PNG", transparency=0)
    logo = Image.fromarray(data.logo())  # RGBA, transparent background
    files["logo-rgba.png"] = pil_bytes(resized(logo, 250), "PNG")
    files["logo-rgba.webp"] = pil_bytes(resized(logo, 250), "WEBP", quality=80)
    files["logo-rgba-lossless.webp"] = pil_bytes(resized(logo, 200), "WEBP", lossless=True)
    camera_la = resized(gray("camera"), 200)
    camera_la.putalpha(resized(gray("moon"), 200))
    files["camera-la.png"] = pil_bytes(camera_la, "PNG")
    rocket_small = np.asarray(resized(rgb("rocket"), 240)).astype(np.uint16)
    # Low bytes of 255: a converter that rounds (v / 257) instead of keeping the high byte
    # (as PIL and the encoder do) would be off by one on most samples.
    files["rocket-rgb16.png"] = png_bytes(rocket_small * 256 + 255)
    alpha16 = np.full(rocket_small.shape[:2] + (1,), 40000, np.uint16)
    files["rocket-rgba16.png"] = png_bytes(np.concatenate([rocket_small * 257, alpha16], axis=2))
    moon16 = np.asarray(resized(gray("moon"), 200)).astype(np.uint16) * 257
    files["moon-gray16.png"] = png_bytes(moon16)
    files["moon-gray16-interlaced.png"] = png_bytes(moon16, interlace=True)
    files["astronaut-interlaced.png"] = png_bytes(np.asarray(resized(rgb("astronaut"), 200)), interlace=True)
    files["astronaut-cmyk.jpg"] = pil_bytes(resized(rgb("astronaut"), 300).convert("CMYK"), "JPEG", quality=90)
    # Extreme sizes.
    files["one-pixel.png"] = pil_bytes(Image.new("RGB", (1, 1), (200, 30, 60)), "PNG")
    files["one-pixel.jpg"] = pil_bytes(Image.new("RGB", (1, 1), (20, 130, 220)), "JPEG", quality=95)
    files["three-by-two.png"] = pil_bytes(Image.fromarray(np.arange(18, dtype=np.uint8).reshape(2, 3, 3) * 14), "PNG")
    yy, xx = np.mgrid[0:4000, 0:6000].astype(np.float32)
    smooth = np.stack(
        [
            127 + 100 * np.sin(xx / 700.0) * np.cos(yy / 900.0),
            127 + 100 * np.cos((xx + yy) / 1100.0),
            127 + 90 * np.sin(np.hypot(xx - 3000, yy - 2000) / 500.0),
        ],
        axis=2,
    )
    files["smooth-6000x4000.jpg"] = pil_bytes(Image.fromarray(smooth.astype(np.uint8)), "JPEG", quality=70)
    del yy, xx, smooth
    strip = [resized(rgb(n), 600).resize((600, 250), Image.Resampling.LANCZOS) for n in ["coffee", "rocket", "chelsea", "astronaut", "hubble_deep_field"]]
    pano = Image.new("RGB", (4000, 250))
    for i, part in enumerate(strip):
        pano.paste(part, (i * 800, 0))
        pano.paste(part.transpose(Image.Transpose.FLIP_LEFT_RIGHT), (i * 800 + 600, 0))
    files["panorama-4000x250.jpg"] = pil_bytes(pano, "JPEG", quality=80)
    files["tall-180x1200.png"] = pil_bytes(resized(rgb("rocket"), 1200).rotate(90, expand=True).resize((180, 1200)), "PNG")
    return files


def main() -> None:
    torch.manual_seed(0)
    OUT.mkdir(parents=True, exist_ok=True)
    classes = CLASSES.read_text().splitlines()
    model = load_model()
    files = fixtures()
    for old in OUT.iterdir():
        if old.name != "reference.json" and old.name not in files:
            old.unlink()
    images = []
    for name in sorted(files):
        (OUT / name).write_bytes(files[name])
        with Image.open(io.BytesIO(files[name])) as img:
            fmt = {"JPEG": "JPEG", "PNG": "PNG", "WEBP": "WebP"}[img.format]
            width, height = img.size
            img.load()
            rgb = to_rgb(img)
        features, logits = forward(model, preprocess(rgb))
        probs = torch.softmax(logits[0].double(), dim=0)
        top = torch.topk(probs, 5)
        images.append(
            {
                "file": name,
                "format": fmt,
                "width": width,
                "height": height,
                "features": [float(f"{v:.6g}") for v in features[0].tolist()],
                "top5": [{"index": int(i), "probability": round(float(p), 6)} for p, i in zip(top.values, top.indices)],
            }
        )
        label = classes[int(top.indices[0])]
        print(f"{name:36s} {fmt:5s} {width:5d}x{height:<5d} {label} ({float(top.values[0]):.3f})", file=sys.stderr)
    reference = {
        "model": "EfficientNet-Lite0",
        "generator": "scripts/media/image_reference.py",
        "torch": torch.__version__,
        "pillow": Image.__version__,
        "images": images,
    }
    (OUT / "reference.json").write_text(json.dumps(reference, separators=(",", ":")) + "\n")
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"{len(images)} images, {total / 1e6:.2f} MB in {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
