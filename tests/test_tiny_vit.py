"""MobileSAM's TinyViT encoder: bias layout, per-head qkv layout, no stale bias cache, end to end."""

from __future__ import annotations

import itertools

import numpy as np
import torch
from helpers import TINY_TINY_VIT, random_state_dict, write_checkpoint

import samkit
from samkit.model import build_sam
from samkit.model.tiny_vit import TinyViTBlock, WindowAttention


def reference_window_attention(attn: WindowAttention, x: torch.Tensor, window: int) -> torch.Tensor:
    """Attention inside one window written out term by term, biases enumerated in first-seen order."""
    points = list(itertools.product(range(window), range(window)))
    offsets: dict[tuple[int, int], int] = {}
    for p1, p2 in itertools.product(points, points):
        offsets.setdefault((abs(p1[0] - p2[0]), abs(p1[1] - p2[1])), len(offsets))
    heads, hd = attn.num_heads, attn.head_dim
    y = attn.qkv(attn.norm(x))  # (B, N, heads * 3 * hd), per head [q | k | v]
    out = torch.zeros(x.shape[0], len(points), heads * hd)
    for h in range(heads):
        q = y[..., h * 3 * hd : h * 3 * hd + hd]
        k = y[..., h * 3 * hd + hd : h * 3 * hd + 2 * hd]
        v = y[..., h * 3 * hd + 2 * hd : (h + 1) * 3 * hd]
        bias = torch.tensor(
            [[attn.attention_biases[h, offsets[(abs(a[0] - b[0]), abs(a[1] - b[1]))]].item() for b in points]
             for a in points]
        )
        scores = q @ k.transpose(-1, -2) * hd**-0.5 + bias
        out[..., h * hd : (h + 1) * hd] = torch.softmax(scores, -1) @ v
    return attn.proj(out)


def test_window_attention_matches_term_by_term_reference():
    torch.manual_seed(0)
    attn = WindowAttention(dim=12, num_heads=3, window=4).eval()
    with torch.no_grad():
        for p in attn.parameters():
            p.add_(torch.randn_like(p) * 0.3)
        x = torch.randn(2, 16, 12)
        torch.testing.assert_close(attn(x), reference_window_attention(attn, x, 4), rtol=1e-5, atol=1e-5)


def test_block_pads_windows_and_matches_unpadded_when_window_fits():
    torch.manual_seed(1)
    block = TinyViTBlock(dim=8, resolution=10, num_heads=2, window=4, mlp_ratio=2).eval()
    with torch.no_grad():
        x = torch.randn(1, 100, 8)
        out = block(x)
        assert out.shape == x.shape and torch.isfinite(out).all()
        # A window that covers the whole grid means plain attention over all tokens.
        whole = TinyViTBlock(dim=8, resolution=4, num_heads=2, window=4, mlp_ratio=2).eval()
        y = torch.randn(1, 16, 8)
        expected = y + reference_window_attention(whole.attn, y, 4)
        torch.testing.assert_close(whole.attn(y) + y, expected, rtol=1e-5, atol=1e-5)


def test_biases_loaded_after_eval_are_used():
    """The original caches biases at .eval(); loading weights afterwards must still take effect."""
    state = random_state_dict(TINY_TINY_VIT, seed=2)
    model = build_sam(TINY_TINY_VIT)  # already in eval mode
    model.load_state_dict(state)
    x = torch.randn(1, 3, 1024, 1024)
    with torch.no_grad():
        with_biases = model.image_encoder(x)
        fresh = build_sam(TINY_TINY_VIT)
        fresh.load_state_dict(state)
        fresh.train()
        fresh.eval()
        torch.testing.assert_close(fresh.image_encoder(x), with_biases)
        zeroed = dict(state)
        for key, value in state.items():
            if key.endswith("attention_biases"):
                zeroed[key] = torch.zeros_like(value)
        model.load_state_dict(zeroed)
        assert (model.image_encoder(x) - with_biases).abs().max() > 1e-4


def test_tiny_vit_checkpoint_end_to_end(tmp_path):
    path = write_checkpoint(tmp_path / "mobile.pt", TINY_TINY_VIT, seed=3)
    model = samkit.load_model(path, device="cpu")
    assert model.image_encoder.config.embed_dims == (16, 32, 40, 48)
    assert model.image_encoder.config.num_heads[1:] == (2, 2, 3)
    predictor = samkit.Predictor(model, precision="fp32")
    image = np.random.default_rng(0).integers(0, 255, (200, 300, 3)).astype(np.uint8)
    predictor.set_image(image)
    assert predictor.get_image_embedding().shape == (1, 256, 64, 64)
    masks, scores, low = predictor.predict(np.array([[150, 100]]), np.array([1]))
    assert masks.shape == (3, 200, 300) and scores.shape == (3,) and low.shape == (3, 256, 256)
