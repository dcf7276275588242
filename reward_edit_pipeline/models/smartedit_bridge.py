"""`SmartEditBridge`: SmartEdit's path from the multimodal LLM to the UNet (Huang et al., CVPR 2024), as one module.

::

    CLIP vision patch features [B, G², C_vis] ── vision_projection ──► LLM input embeddings (LLaVA's mm_projector)

    LLM states at the <img_i> tokens [B, N, D_llm]
        └─► Q-Former (learned queries [Q, D_q], BLIP-2 layout, cross-attention to the LLM states) ─► q [B, Q, D_q]
    BIM (bidirectional interaction module, SAM's two-way transformer):
        tokens  = query_proj(q)                       [B, Q, E]   ("modulate_head")
        image   = CLIP patch features as a grid       [B, E, G, G] + random-Fourier position encoding
        tokens', image' = two_way_transformer(image, pe, tokens)
    encoder_hidden_states = q + text_residual_scale · text_residual_proj(tokens')     [B, Q, D_q]  → UNet cross-attention
    image_residual        = image_residual_proj(bilinear(image', latent size))        [B, C0, h, w] → added after conv_in

Both residual projections start at zero (SmartEdit's zero-initialised heads). The equations follow the public
SmartEdit code (`inference_BIM_module` and the training forward); parameter names of the two-way transformer are
SAM's, so converted checkpoints map one to one (see `reward_edit_pipeline.convert_smartedit`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn
from transformers import Blip2QFormerConfig, Blip2QFormerModel


def image_token_names(num_image_tokens: int) -> list[str]:
    """SmartEdit's added LLM tokens whose states feed the Q-Former: `<img_0>` … `<img_{N-1}>`."""
    return [f"<img_{index}>" for index in range(num_image_tokens)]


@dataclass
class SmartEditBridgeOutput:
    """What the bridge gives the UNet.

    Attributes:
        encoder_hidden_states (`torch.Tensor` `[B, num_query_tokens, text_condition_dim]`): the UNet's text condition.
        image_residual (`torch.Tensor` `[B, unet_conv_in_channels, h, w]`): added to the UNet's `conv_in` output.
    """

    encoder_hidden_states: torch.Tensor
    image_residual: torch.Tensor


class TwoWayAttention(nn.Module):
    """Multi-head attention whose projections may narrow the width by `downsample_rate` (SAM's `Attention`)."""

    def __init__(self, embed_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        inner_dim = embed_dim // downsample_rate
        if inner_dim % num_heads:
            raise ValueError(f"`bim_num_heads` ({num_heads}) must divide the attention width ({inner_dim})")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(embed_dim, inner_dim)
        self.k_proj = nn.Linear(embed_dim, inner_dim)
        self.v_proj = nn.Linear(embed_dim, inner_dim)
        self.out_proj = nn.Linear(inner_dim, embed_dim)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        batch = query.shape[0]

        def heads(tensor: torch.Tensor) -> torch.Tensor:
            return tensor.view(batch, tensor.shape[1], self.num_heads, -1).transpose(1, 2)

        attended = F.scaled_dot_product_attention(
            heads(self.q_proj(query)), heads(self.k_proj(key)), heads(self.v_proj(value))
        )
        return self.out_proj(attended.transpose(1, 2).reshape(batch, query.shape[1], -1))


class TwoWayMLP(nn.Module):
    def __init__(self, embed_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embed_dim, hidden_dim)
        self.lin2 = nn.Linear(hidden_dim, embed_dim)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.lin2(F.relu(self.lin1(hidden_states)))


class TwoWayBlock(nn.Module):
    """Token self-attention → tokens attend to the image → token MLP → the image attends to the tokens
    (post-LayerNorm after each; the first block's self-attention sees no position encoding and has no residual)."""

    def __init__(self, embed_dim: int, num_heads: int, mlp_dim: int, downsample_rate: int, first: bool) -> None:
        super().__init__()
        self.first = first
        self.self_attn = TwoWayAttention(embed_dim, num_heads)
        self.norm1 = nn.LayerNorm(embed_dim)
        self.cross_attn_token_to_image = TwoWayAttention(embed_dim, num_heads, downsample_rate)
        self.norm2 = nn.LayerNorm(embed_dim)
        self.mlp = TwoWayMLP(embed_dim, mlp_dim)
        self.norm3 = nn.LayerNorm(embed_dim)
        self.norm4 = nn.LayerNorm(embed_dim)
        self.cross_attn_image_to_token = TwoWayAttention(embed_dim, num_heads, downsample_rate)

    def forward(
        self, tokens: torch.Tensor, image: torch.Tensor, token_pe: torch.Tensor, image_pe: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.first:
            tokens = self.norm1(self.self_attn(tokens, tokens, tokens))
        else:
            positioned = tokens + token_pe
            tokens = self.norm1(tokens + self.self_attn(positioned, positioned, tokens))
        image_keys = image + image_pe
        tokens = self.norm2(tokens + self.cross_attn_token_to_image(tokens + token_pe, image_keys, image))
        tokens = self.norm3(tokens + self.mlp(tokens))
        image = self.norm4(image + self.cross_attn_image_to_token(image_keys, tokens + token_pe, tokens))
        return tokens, image


class TwoWayTransformer(nn.Module):
    """SAM's two-way transformer: `depth` blocks, then a last token→image attention and LayerNorm."""

    def __init__(self, depth: int, embed_dim: int, num_heads: int, mlp_dim: int, downsample_rate: int = 2) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayBlock(embed_dim, num_heads, mlp_dim, downsample_rate, first=index == 0) for index in range(depth)
        )
        self.final_attn_token_to_image = TwoWayAttention(embed_dim, num_heads, downsample_rate)
        self.norm_final_attn = nn.LayerNorm(embed_dim)

    def forward(
        self, image: torch.Tensor, image_pe: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image, image_pe: `[B, E, H, W]`; tokens: `[B, N, E]`. Returns `(tokens [B, N, E], image [B, H·W, E])`."""
        image = image.flatten(2).transpose(1, 2)
        image_pe = image_pe.flatten(2).transpose(1, 2)
        token_pe = tokens
        for layer in self.layers:
            tokens, image = layer(tokens, image, token_pe, image_pe)
        tokens = tokens + self.final_attn_token_to_image(tokens + token_pe, image + image_pe, image)
        return self.norm_final_attn(tokens), image


class RandomFourierPositionEncoding(nn.Module):
    """`[sin, cos](2π · (2·xy − 1) · G)` on the centres of an H×W grid in [0, 1]² (G: a fixed `[2, E/2]` Gaussian
    matrix, part of the checkpoint). Returns `[E, H, W]`."""

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        if embed_dim % 2:
            raise ValueError(f"`bim_embed_dim` must be even (sin and cos halves), got {embed_dim}")
        self.register_buffer("gaussian_matrix", torch.randn(2, embed_dim // 2))

    def forward(self, height: int, width: int) -> torch.Tensor:
        matrix = self.gaussian_matrix
        ys = (torch.arange(height, device=matrix.device, dtype=matrix.dtype) + 0.5) / height
        xs = (torch.arange(width, device=matrix.device, dtype=matrix.dtype) + 0.5) / width
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # [H, W, (x, y)]
        angles = 2 * math.pi * ((2 * grid - 1) @ matrix)
        return torch.cat([angles.sin(), angles.cos()], dim=-1).permute(2, 0, 1)


#: Template fields: the instruction, where the image features go, and the `<img_0> … <img_{N-1}>` tokens.
INSTRUCTION_FIELD = "{instruction}"
IMAGE_FIELD = "{image}"
IMAGE_TOKENS_FIELD = "{image_tokens}"


def check_llm_generation(llm_generate: object, llm_max_new_tokens: object, allow_none: bool = False) -> None:
    """`llm_generate` must be a bool and `llm_max_new_tokens` an integer >= 1 (the bridge config's rule; the
    pipeline call also takes `None` for each, meaning the config's value: `allow_none=True`)."""
    if not (allow_none and llm_generate is None) and not isinstance(llm_generate, bool):
        accepted = "True, False or None" if allow_none else "True or False"
        raise ValueError(f"`llm_generate` must be {accepted}, got {llm_generate!r}")
    if not (allow_none and llm_max_new_tokens is None) and (
        isinstance(llm_max_new_tokens, bool) or not isinstance(llm_max_new_tokens, int) or llm_max_new_tokens < 1
    ):
        accepted = "an integer >= 1 or None" if allow_none else "an integer >= 1"
        raise ValueError(f"`llm_max_new_tokens` must be {accepted}, got {llm_max_new_tokens!r}")


def check_llm_templates(prompt_template: str, answer_template: str) -> None:
    """Refuse templates the pipeline cannot fill: `{instruction}` once in the prompt, `{image}` at most once there,
    `{image_tokens}` once in the answer, and no other `{...}` field."""
    fields = {"llm_prompt_template": prompt_template, "llm_answer_template": answer_template}
    allowed = {"llm_prompt_template": (INSTRUCTION_FIELD, IMAGE_FIELD), "llm_answer_template": (IMAGE_TOKENS_FIELD,)}
    for name, template in fields.items():
        if not isinstance(template, str):
            raise ValueError(f"`{name}` must be a string, got {type(template).__name__}")
        unknown = sorted(set(re.findall(r"\{[^{}]*\}", template)) - set(allowed[name]))
        if unknown or template.count("{") != template.count("}"):
            raise ValueError(f"`{name}` may use only the fields {list(allowed[name])}, got {template!r}")
    if prompt_template.count(INSTRUCTION_FIELD) != 1 or prompt_template.count(IMAGE_FIELD) > 1:
        raise ValueError(
            f"`llm_prompt_template` must contain '{INSTRUCTION_FIELD}' once and '{IMAGE_FIELD}' at most once, got "
            f"{prompt_template!r}"
        )
    if answer_template.count(IMAGE_TOKENS_FIELD) != 1:
        raise ValueError(f"`llm_answer_template` must contain '{IMAGE_TOKENS_FIELD}' once, got {answer_template!r}")


class SmartEditBridge(ModelMixin, ConfigMixin):
    r"""LLaVA connector + Q-Former + BIM: turns the MLLM's states into the UNet's two conditions.

    Args:
        llm_hidden_size (`int`, defaults to 4096): width of the LLM's hidden states (LLaVA-1.1 7B: 4096, 13B: 5120).
        vision_hidden_size (`int`, defaults to 1024): width of the CLIP vision features (ViT-L/14: 1024).
        vision_feature_layer (`int`, defaults to -2): the CLIP vision hidden state used (LLaVA: the penultimate).
        num_image_tokens (`int`, defaults to 32): the `<img_0>…<img_{N-1}>` tokens whose LLM states are read.
        num_query_tokens (`int`, defaults to 77): learned Q-Former queries = length of the UNet's text condition.
        qformer_hidden_size, qformer_num_layers, qformer_num_heads, qformer_intermediate_size,
        qformer_cross_attention_frequency, qformer_layer_norm_eps: the BERT-base-like Q-Former (768, 6, 12, 3072, 2).
        bim_embed_dim (`int`, defaults to 1024): width of the two-way transformer; must equal `vision_hidden_size`.
        bim_depth, bim_num_heads, bim_mlp_dim, bim_attention_downsample_rate: the two-way transformer (2, 8, 2048, 2).
        unet_conv_in_channels (`int`, defaults to 320): width of the UNet's `conv_in` output.
        text_residual_scale (`float`, defaults to 0.5): weight of the BIM's token output added to the Q-Former output.
        llm_prompt_template (`str`, defaults to `"{instruction}"`): the LLM's input text; `{instruction}` is replaced
            by the instruction, and the image features go where `{image}` stands (before the text if it is absent).
        llm_answer_template (`str`, defaults to `"{image_tokens}"`): the teacher-forced start of the LLM's answer,
            appended to the prompt; `{image_tokens}` (required, once) stands for `<img_0> … <img_{N-1}>`.
        llm_generate (`bool`, defaults to `False`): the pipeline's default for how the image-token states are
            obtained: `False` teacher-forces `llm_answer_template`; `True` lets the LLM generate (greedy) until it has
            emitted `num_image_tokens` image tokens, as SmartEdit's inference does.
        llm_max_new_tokens (`int`, defaults to 512): the most tokens the LLM may generate before the last image token.

    The converter (`reward_edit_pipeline.convert_smartedit`) writes SmartEdit's conversation (see docs/smartedit.md).
    """

    @register_to_config
    def __init__(
        self,
        llm_hidden_size: int = 4096,
        vision_hidden_size: int = 1024,
        vision_feature_layer: int = -2,
        num_image_tokens: int = 32,
        num_query_tokens: int = 77,
        qformer_hidden_size: int = 768,
        qformer_num_layers: int = 6,
        qformer_num_heads: int = 12,
        qformer_intermediate_size: int = 3072,
        qformer_cross_attention_frequency: int = 2,
        qformer_layer_norm_eps: float = 1e-12,
        bim_embed_dim: int = 1024,
        bim_depth: int = 2,
        bim_num_heads: int = 8,
        bim_mlp_dim: int = 2048,
        bim_attention_downsample_rate: int = 2,
        unet_conv_in_channels: int = 320,
        text_residual_scale: float = 0.5,
        llm_prompt_template: str = "{instruction}",
        llm_answer_template: str = IMAGE_TOKENS_FIELD,
        llm_generate: bool = False,
        llm_max_new_tokens: int = 512,
    ) -> None:
        super().__init__()
        if bim_embed_dim != vision_hidden_size:
            raise ValueError(
                f"`bim_embed_dim` ({bim_embed_dim}) must equal `vision_hidden_size` ({vision_hidden_size}): the BIM "
                "attends to the CLIP vision features as they are"
            )
        check_llm_templates(llm_prompt_template, llm_answer_template)
        check_llm_generation(llm_generate, llm_max_new_tokens)
        self.vision_projection = nn.Linear(vision_hidden_size, llm_hidden_size)
        self.query_tokens = nn.Parameter(torch.randn(1, num_query_tokens, qformer_hidden_size) * 0.02)
        qformer_config = Blip2QFormerConfig(
            hidden_size=qformer_hidden_size,
            num_hidden_layers=qformer_num_layers,
            num_attention_heads=qformer_num_heads,
            intermediate_size=qformer_intermediate_size,
            cross_attention_frequency=qformer_cross_attention_frequency,
            encoder_hidden_size=llm_hidden_size,
            layer_norm_eps=qformer_layer_norm_eps,
            use_qformer_text_input=False,
        )
        qformer_config._attn_implementation = "sdpa"
        self.qformer = Blip2QFormerModel(qformer_config)
        self.query_proj = nn.Linear(qformer_hidden_size, bim_embed_dim)
        self.two_way_transformer = TwoWayTransformer(
            bim_depth, bim_embed_dim, bim_num_heads, bim_mlp_dim, bim_attention_downsample_rate
        )
        self.position_encoding = RandomFourierPositionEncoding(bim_embed_dim)
        self.image_residual_proj = nn.Conv2d(bim_embed_dim, unet_conv_in_channels, kernel_size=1)
        self.text_residual_proj = nn.Linear(bim_embed_dim, qformer_hidden_size)
        for module in (self.image_residual_proj, self.text_residual_proj):
            nn.init.zeros_(module.weight)
            nn.init.zeros_(module.bias)

    def image_token_names(self) -> list[str]:
        """The added LLM tokens whose states feed the Q-Former: `<img_0>` … `<img_{N-1}>`."""
        return image_token_names(self.config.num_image_tokens)

    def select_vision_features(self, vision_hidden_states: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """CLIP vision hidden states (`output_hidden_states=True`) → patch features `[B, G², C]` (class token
        dropped), from `vision_feature_layer`, as LLaVA does."""
        return vision_hidden_states[self.config.vision_feature_layer][:, 1:]

    def project_vision_features(self, vision_features: torch.Tensor) -> torch.Tensor:
        """`[B, G², C_vis]` → LLM input embeddings `[B, G², D_llm]` (LLaVA's `mm_projector`)."""
        return self.vision_projection(vision_features.to(self.vision_projection.weight.dtype))

    def query(self, llm_image_token_states: torch.Tensor) -> torch.Tensor:
        """Q-Former: learned queries cross-attend to the LLM states `[B, N, D_llm]` → `[B, Q, D_q]`."""
        queries = self.query_tokens.expand(llm_image_token_states.shape[0], -1, -1)
        return self.qformer(
            query_embeds=queries, encoder_hidden_states=llm_image_token_states.to(queries.dtype)
        ).last_hidden_state

    def forward(
        self,
        llm_image_token_states: torch.Tensor,
        vision_features: torch.Tensor,
        latent_size: tuple[int, int],
    ) -> SmartEditBridgeOutput:
        """Compute the UNet's conditions.

        Args:
            llm_image_token_states (`torch.Tensor` `[B, N, llm_hidden_size]`): LLM states at the image tokens.
            vision_features (`torch.Tensor` `[B, G², vision_hidden_size]`): CLIP patch features (a square grid).
            latent_size (`(h, w)`): spatial size of the UNet's latents (image size / 8).
        """
        batch, num_patches, channels = vision_features.shape
        grid = math.isqrt(num_patches)
        if grid * grid != num_patches or channels != self.config.vision_hidden_size:
            raise ValueError(
                f"`vision_features` must be [B, G*G, {self.config.vision_hidden_size}] (a square patch grid), got "
                f"{tuple(vision_features.shape)}"
            )
        if llm_image_token_states.ndim != 3 or llm_image_token_states.shape[-1] != self.config.llm_hidden_size:
            raise ValueError(
                f"`llm_image_token_states` must be [B, N, {self.config.llm_hidden_size}], got "
                f"{tuple(llm_image_token_states.shape)}"
            )
        dtype = self.query_proj.weight.dtype
        query_output = self.query(llm_image_token_states)
        image = vision_features.to(dtype).transpose(1, 2).reshape(batch, channels, grid, grid)
        image_pe = self.position_encoding(grid, grid).unsqueeze(0).expand(batch, -1, -1, -1)
        tokens, image = self.two_way_transformer(image, image_pe, self.query_proj(query_output))
        image = image.transpose(1, 2).reshape(batch, channels, grid, grid)
        image = F.interpolate(image, size=tuple(latent_size), mode="bilinear", align_corners=False)
        encoder_hidden_states = query_output + self.config.text_residual_scale * self.text_residual_proj(tokens)
        return SmartEditBridgeOutput(
            encoder_hidden_states=encoder_hidden_states, image_residual=self.image_residual_proj(image)
        )
