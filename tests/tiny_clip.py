"""A tiny open_clip architecture, built and saved at test time.

The tests load it through exactly the code path a real checkpoint takes
(``make("image-clip", model=CONFIG_JSON, pretrained=CHECKPOINT)``), so no
downloaded weights are needed and none are committed. The checkpoint is a plain
``state_dict`` of a randomly initialised (seeded) model, well under 1 MB.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

#: Name of the architecture; the config file is ``<TINY_NAME>.json`` and open_clip
#: knows the model by this stem once :class:`scanner.features.clip.Clip` registers it.
TINY_NAME = "likeness-tiny-vit"

#: ViT image tower at 32x32 px with 8x8 patches (16 patches + class token), two
#: blocks of width 64; a one-block text tower (required by open_clip's CLIP class).
#: Average pooling: with random weights the class token is dominated by its own
#: (input-independent) embedding, giving a mean pairwise cosine of ~0.9 on varied
#: images; pooling the patch tokens gives ~0.15-0.25, like a model that has learnt
#: something, and keeps a resized copy nearer than any other image.
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8, "pool_type": "avg"},
    "text_cfg": {"context_length": 16, "vocab_size": 128, "width": 32, "heads": 2, "layers": 1},
}

Variant = Literal["random", "constant", "zeros"]


def _state_dict(seed: int, variant: Variant) -> dict:
    import open_clip
    import torch

    torch.manual_seed(seed)
    # build from the config dict directly (not open_clip's global registry), so the
    # test proves that the scanner registers the config file itself
    model = open_clip.model.CLIP(**json.loads(json.dumps(TINY_CONFIG)))
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if variant == "constant":
        # ln_post scales the class token to zero and keeps its bias, so every image maps
        # to the same vector: the "collapsed" checkpoint the scanner must refuse
        sd["visual.ln_post.weight"].zero_()
        sd["visual.ln_post.bias"].normal_(0.0, 1.0)
    elif variant == "zeros":
        # a zero-filled checkpoint (e.g. an uninitialised export): every output is 0
        sd = {k: torch.zeros_like(v) for k, v in sd.items()}
    elif variant != "random":
        raise ValueError(f"unknown variant {variant!r}")
    return sd


def make_tiny_checkpoint(
    dirpath: str | Path,
    *,
    seed: int = 0,
    variant: Variant = "random",
    fmt: Literal["pt", "safetensors"] = "pt",
) -> tuple[Path, Path]:
    """Write the tiny model's config and a checkpoint for it.

    Parameters
    ----------
    dirpath : str or Path
        Folder to write into (created if missing).
    seed : int
        Seed of the random initialisation; different seeds give different weights.
    variant : {"random", "constant", "zeros"}
        ``random``: the seeded initialisation as is. ``constant``: every image maps
        to one vector. ``zeros``: every weight is zero, so every output is zero.
    fmt : {"pt", "safetensors"}
        ``pt`` writes ``torch.save(state_dict)``; ``safetensors`` a safetensors file.

    Returns
    -------
    config_path : Path
        ``<dirpath>/likeness-tiny-vit.json``, an open_clip model config.
    checkpoint_path : Path
        ``<dirpath>/likeness-tiny-vit-<variant>-s<seed>.<fmt>``.
    """
    import torch

    d = Path(dirpath)
    d.mkdir(parents=True, exist_ok=True)
    config_path = d / f"{TINY_NAME}.json"
    config_path.write_text(json.dumps(TINY_CONFIG, indent=2), encoding="utf-8")
    sd = _state_dict(seed, variant)
    ckpt = d / f"{TINY_NAME}-{variant}-s{seed}.{fmt}"
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(ckpt))
    else:
        torch.save(sd, ckpt)
    return config_path, ckpt
