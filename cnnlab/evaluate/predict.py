"""``cnnlab predict``: class names and probabilities for image files, with the training preprocessing.

Each image is decoded (EXIF orientation applied), converted to the model's channels (gray <-> RGB),
resized so its short side is the training size and centre-cropped, then normalised with the
training mean/std, all read from the checkpoint. Files that cannot be decoded are skipped and listed.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cnnlab.errors import CnnlabError


def collect_images(inputs: list[str | Path]) -> tuple[list[Path], list[dict]]:
    """Image files named directly or found (recursively, sorted) in folders; other files are listed as skipped."""
    from cnnlab.data.sources import IMAGE_EXTENSIONS

    files, skipped = [], []
    for item in map(Path, inputs):
        if item.is_dir():
            for path in sorted(p for p in item.rglob("*") if p.is_file() and not p.name.startswith(".")):
                if path.suffix.lower() in IMAGE_EXTENSIONS:
                    files.append(path)
                else:
                    skipped.append({"path": str(path), "reason": "not an image file (by its extension)"})
        elif item.is_file():
            files.append(item)  # named on purpose: try to decode it whatever its extension
        else:
            raise CnnlabError(f"'{item}' does not exist: name image files or folders of images.")
    return files, skipped


@torch.no_grad()
def predict_files(checkpoint: str | Path, inputs: list[str | Path], *, topk: int = 5, ema: bool = False,
                  batch_size: int = 64, device="cpu") -> dict:
    """``{"predictions": [{path, top: [{class, probability}]}], "skipped": [{path, reason}], ...}``."""
    from cnnlab.data.sources import read_image, resize_square
    from cnnlab.evaluate.evaluate import load_model

    if topk < 1:
        raise CnnlabError(f"--topk must be at least 1, got {topk}.")
    loaded = load_model(checkpoint, ema=ema, device=device)
    channels, size = int(loaded.meta["in_chans"]), int(loaded.meta["image_size"])
    mean = torch.tensor(loaded.meta["mean"], dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(loaded.meta["std"], dtype=torch.float32).view(1, -1, 1, 1)
    files, skipped = collect_images(inputs)
    decoded: list[tuple[Path, torch.Tensor]] = []
    for path in files:
        try:
            decoded.append((path, resize_square(read_image(path, channels).unsqueeze(0), size)))  # (1, C, S, S)
        except CnnlabError as err:
            skipped.append({"path": str(path), "reason": str(err)})
    k = min(topk, len(loaded.classes))
    predictions = []
    for start in range(0, len(decoded), batch_size):
        chunk = decoded[start:start + batch_size]
        x = torch.cat([image for _, image in chunk]).float().div(255)  # (B, C, S, S) in [0, 1]
        x = ((x - mean) / std).to(device)
        probs = torch.softmax(loaded.model(x).float(), dim=1).cpu()
        values, indices = probs.topk(k, dim=1)
        for (path, _), row_values, row_indices in zip(chunk, values, indices):
            predictions.append({"path": str(path), "top": [
                {"class": str(loaded.classes[i]), "probability": float(p)} for p, i in zip(row_values, row_indices)]})
    return {"checkpoint": str(loaded.path), "model": loaded.meta["model"], "weights": loaded.weights,
            "image_size": size, "channels": channels, "predictions": predictions, "skipped": skipped}
