"""GPT-2 model shapes (layers / channels / heads) and their parameter counts."""
from __future__ import annotations

from dataclasses import dataclass

GPT2_PADDED_VOCAB = 50304  # llm.c pads 50257 to a multiple of 128


@dataclass(frozen=True, order=True)
class Shape:
    depth: int
    channels: int
    heads: int

    @classmethod
    def parse(cls, text: str) -> "Shape":
        """'1/64/1' -> Shape(1, 64, 1)."""
        parts = text.replace("x", "/").split("/")
        if len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
            raise ValueError("model shape %r: expected DEPTH/CHANNELS/HEADS, e.g. 1/64/1" % text)
        depth, channels, heads = (int(p) for p in parts)
        if channels % heads:
            raise ValueError("model shape %r: channels must be divisible by heads" % text)
        return cls(depth, channels, heads)

    @property
    def label(self) -> str:
        return "%d/%d/%d" % (self.depth, self.channels, self.heads)

    def flags(self):
        return ["-1d", str(self.depth), "-1c", str(self.channels), "-1h", str(self.heads)]

    def params(self, block_size: int = 1024) -> int:
        """Parameters of llm.c's GPT-2 layout (token and position embeddings, tied head), counted
        from the architecture: per layer 2 layernorms, qkv and projection, and the 4x MLP."""
        C, L = self.channels, self.depth
        layernorm = 2 * C
        attention = (C * 3 * C + 3 * C) + (C * C + C)
        mlp = (C * 4 * C + 4 * C) + (4 * C * C + C)
        return GPT2_PADDED_VOCAB * C + block_size * C + L * (2 * layernorm + attention + mlp) + layernorm


GPT2_124M = Shape(12, 768, 12)
DEFAULT_LADDER = (Shape(1, 64, 1), Shape(2, 128, 2), Shape(3, 192, 3))
