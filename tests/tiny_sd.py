"""A tiny random Stable Diffusion inpainting pipeline, built from configs and saved to disk.

The real layout of an SD 1.5 inpainting checkpoint (9-channel UNet: 4 noisy latents + 1 mask
+ 4 masked-image latents; KL VAE with 4 latent channels; CLIP text tower and BPE tokenizer;
a scheduler), only small enough to build in about a second and denoise 64 px on a CPU.
Loading it back with ``AutoPipelineForInpainting.from_pretrained`` exercises the same code
path as a downloaded checkpoint, offline. Its images are noise, which is all tests need.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from tests.tiny_tokenizer import write_clip_tokenizer

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

# BPE merges of a toy vocabulary; each result joins the vocab after the 512 byte tokens.
MERGES = [
    ("s", "h"),
    ("sh", "o"),
    ("sho", "e</w>"),
    ("o", "n</w>"),
    ("s", "t"),
    ("st", "r"),
    ("b", "e"),
    ("a", "c"),
    ("ac", "h</w>"),
    ("t", "h"),
    ("th", "e</w>"),
]
HIDDEN = 32  # text hidden size = UNet cross-attention dim


def _tokenizer() -> CLIPTokenizer:
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        write_clip_tokenizer(Path(tmp), MERGES)
        return CLIPTokenizer.from_pretrained(tmp, model_max_length=77)


def _text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    from transformers import CLIPTextConfig, CLIPTextModel

    # bos/eos/pad must be the tokenizer's ids: the text tower pools at the first eos.
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def _unet() -> UNet2DConditionModel:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=32,
        in_channels=9,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=HIDDEN,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
    )


def _vae() -> AutoencoderKL:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        sample_size=64,
    )


def build_tiny_sd_inpaint(path: Path, seed: int = 0) -> Path:
    """Save a tiny random StableDiffusionInpaintPipeline to ``path`` (same seed, same weights)."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionInpaintPipeline

    path = Path(path)
    torch.manual_seed(seed)
    tokenizer = _tokenizer()
    pipe = StableDiffusionInpaintPipeline(
        vae=_vae(),
        text_encoder=_text_encoder(tokenizer),
        tokenizer=tokenizer,
        unet=_unet(),
        scheduler=DDIMScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            clip_sample=False,
            set_alpha_to_one=False,
            steps_offset=1,
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(path)
    return path
