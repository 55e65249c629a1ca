"""A tiny, randomly initialised SAM checkpoint for tests: the real SamModel/SamProcessor classes and file
layout, ~100k parameters, built and saved in well under a second on CPU.

Random weights segment nothing in particular; what the tests check with it is the plumbing (loading from
a local directory offline, the box prompt, post-processing to the original size, the plausibility checks).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import SamConfig
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

IMAGE_SIZE = 128  # the processor resizes the longest edge to this and pads to a square
PATCH_SIZE = 16  # -> an 8x8 image embedding
HIDDEN = 32  # shared by vision output channels, prompt encoder and mask decoder (SAM requires it)


def build_tiny_sam(path: Path, seed: int = 0) -> Path:
    """Save a seeded tiny SamModel and its SamProcessor into ``path``; returns ``path``."""
    import torch
    from transformers import SamModel, SamProcessor

    path = Path(path)
    # fork_rng: seeding must not disturb the global torch RNG of the test session
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SamModel(_config())
    model.save_pretrained(path)
    SamProcessor(image_processor=_image_processor()).save_pretrained(path)
    return path


def _config() -> SamConfig:
    from transformers import SamConfig, SamMaskDecoderConfig, SamPromptEncoderConfig, SamVisionConfig

    vision = SamVisionConfig(
        hidden_size=32,
        output_channels=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        mlp_dim=64,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        window_size=4,
        global_attn_indexes=[1],
        num_pos_feats=HIDDEN // 2,
    )
    prompt = SamPromptEncoderConfig(hidden_size=HIDDEN, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE)
    decoder = SamMaskDecoderConfig(hidden_size=HIDDEN, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32)
    return SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)


def _image_processor() -> SamImageProcessorPil:
    # The PIL backend needs no torchvision (whose PyPI wheel breaks this environment's transformers);
    # SamProcessor.from_pretrained picks the backend that is installed when loading it back.
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    low_res = IMAGE_SIZE // 4  # the mask decoder upsamples the embedding 4x
    return SamImageProcessorPil(
        size={"longest_edge": IMAGE_SIZE},
        pad_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        mask_size={"longest_edge": low_res},
        mask_pad_size={"height": low_res, "width": low_res},
    )
