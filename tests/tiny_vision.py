"""Tiny, randomly initialised vision checkpoints for the QC adapters' tests: a Dinov2Model, a full CLIPModel
(text tower included, as openai/clip-vit-large-patch14 ships) and an improved-aesthetic-predictor MLP, in the
real classes and file layouts, each built and saved in well under a second on CPU.

Random weights judge nothing; what the tests check with them is the plumbing (offline loading from a local
directory, preprocessing, batching, the MLP layout and the errors of a wrong configuration).
"""

from __future__ import annotations

from pathlib import Path

IMAGE_SIZE = 32  # both models see 32x32 crops
PATCH_SIZE = 8  # -> 4x4 patches + CLS
DINOV2_HIDDEN = 32
CLIP_PROJECTION = 16
MLP_WIDTHS = (32, 16, 8, 4)  # the published predictor has 1024, 128, 64, 16


def build_tiny_dinov2(path: Path, seed: int = 0) -> Path:
    """Save a seeded tiny Dinov2Model into ``path``; returns ``path``."""
    import torch
    from transformers import Dinov2Config, Dinov2Model

    path = Path(path)
    config = Dinov2Config(
        hidden_size=DINOV2_HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
    )
    # fork_rng: seeding must not disturb the global torch RNG of the test session
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Dinov2Model(config)
    model.save_pretrained(path)
    return path


def build_tiny_clip(path: Path, seed: int = 0, projection_dim: int = CLIP_PROJECTION) -> Path:
    """Save a seeded tiny full CLIPModel (no tokenizer: the vision tower needs none) into ``path``."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    path = Path(path)
    # special token ids inside the toy vocabulary (the defaults, 49406/49407, are CLIP's real ones)
    text = {
        "vocab_size": 64,
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": 16,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "pad_token_id": 1,
    }
    vision = {
        "image_size": IMAGE_SIZE,
        "patch_size": PATCH_SIZE,
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
    }
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim))
    model.save_pretrained(path)
    return path


def build_tiny_aesthetic_mlp(
    path_file: Path, in_dim: int = CLIP_PROJECTION, seed: int = 0, suffix: str = ".pth"
) -> Path:
    """Save a seeded predictor MLP in the published layout as a state dict; returns the file written
    (``path_file`` with ``suffix``: .pth through torch.save, .safetensors through safetensors)."""
    import torch
    from torch import nn

    path = Path(path_file).with_suffix(suffix)
    widths = (in_dim, *MLP_WIDTHS, 1)
    # written out as the published class does it, independently of the adapter's builder
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers = nn.Sequential(
            nn.Linear(widths[0], widths[1]),
            nn.Dropout(0.2),
            nn.Linear(widths[1], widths[2]),
            nn.Dropout(0.2),
            nn.Linear(widths[2], widths[3]),
            nn.Dropout(0.1),
            nn.Linear(widths[3], widths[4]),
            nn.Linear(widths[4], widths[5]),
        )
    state = {f"layers.{key}": value.contiguous() for key, value in layers.state_dict().items()}
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, path)
    elif suffix == ".pth":
        torch.save(state, path)
    else:
        raise ValueError(f"suffix: expected '.pth' or '.safetensors', got {suffix!r}")
    return path
