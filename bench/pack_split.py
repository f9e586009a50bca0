"""Pack a dataset's training split, already resized, into one small zip for a remote GPU box.

    python bench/pack_split.py --data ../shared/data/utkface --resolution 64 --out .gpudata/utk64.zip

Each image goes through the decode the training loop uses (``diffengine.data.decode_image``: centre
square, antialiased Lanczos resize) and is stored as WebP q95 (~1.8 KB at 64 px, PSNR ~40 dB against the
decoded pixels; 23k images fit in ~40 MB). The held-out split (``heldout_split``, by file-name hash) is
left out, so the remote box trains with ``--holdout 0`` on exactly this machine's training split (the
names change to ``.webp``, so their hashes do too: a non-zero hold-out there would drop 5% more), and
scoring runs here against the untouched held-out originals.
"""

from __future__ import annotations

import argparse
import io
import sys
import zipfile
from pathlib import Path

from PIL import Image
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffengine.data import heldout_split, load_images, open_source


def pack(data: Path, resolution: int, holdout: float, out: Path, quality: int = 95) -> int:
    """Write ``out`` (temp name, then rename); returns the number of images packed."""
    source = open_source(data)
    train, _held = heldout_split(source.names, holdout)
    images = load_images(source, resolution, train)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:  # WebP is already compressed
        for name, image in zip(tqdm(train, desc="packing", unit="img"), images, strict=True):
            buf = io.BytesIO()
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(buf, "WEBP", quality=quality, method=6)
            zf.writestr(Path(name).with_suffix(".webp").name, buf.getvalue())
    tmp.replace(out)
    return len(train)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--holdout", type=float, default=0.05, help="must match bench/quality.py's --holdout")
    parser.add_argument("--quality", type=int, default=95)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    count = pack(args.data, args.resolution, args.holdout, args.out, args.quality)
    print(
        f"{args.out}: {count} training images at {args.resolution}px, "
        f"{args.out.stat().st_size / 2**20:.1f} MiB"
    )


if __name__ == "__main__":
    main()
