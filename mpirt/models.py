"""Built-in models and deterministic synthetic data for `mpirt train` and the benchmarks.

Data is a function of (seed, sample index) only, generated once up front, so any rank can
build any batch and a resumed run sees exactly the samples it would have seen. Labels come
from a fixed random teacher (MLP) or a fixed sparse Markov chain (transformer), so the loss
has something to learn and visibly falls; the CNN's images are its class's pattern at a random
shift under noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

MODELS = ("mlp", "transformer", "cnn")


class MLP(nn.Module):
    def __init__(self, d_in: int, hidden: int, layers: int, classes: int):
        super().__init__()
        dims = [d_in] + [hidden] * layers
        blocks = []
        for a, b in zip(dims, dims[1:]):
            blocks += [nn.Linear(a, b), nn.ReLU()]
        self.body = nn.Sequential(*blocks)
        self.head = nn.Linear(dims[-1], classes)

    def forward(self, x):
        return self.head(self.body(x))


class ConvNet(nn.Module):
    """A small ResNet on ``side`` x ``side`` one-channel images: BatchNorm after every
    convolution, so it has running statistics (buffers) to keep the same on every rank."""

    def __init__(self, side: int, width: int, blocks: int, classes: int):
        super().__init__()
        self.side = side

        def conv_bn():
            return [nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)]

        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.ModuleList(nn.Sequential(*conv_bn(), nn.ReLU(), *conv_bn()) for _ in range(blocks))
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        h = self.stem(x.view(-1, 1, self.side, self.side))
        for block in self.blocks:
            h = torch.relu(h + block(h))
        return self.head(h.mean(dim=(2, 3)))


class TinyTransformer(nn.Module):
    """A causal decoder-only transformer (pre-norm, no dropout, so runs are deterministic)."""

    def __init__(self, vocab: int, seq: int, d_model: int, layers: int, heads: int = 4):
        super().__init__()
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(seq, d_model)
        layer = nn.TransformerEncoderLayer(d_model, heads, 4 * d_model, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(seq), persistent=False)

    def forward(self, tokens):
        n = tokens.shape[1]
        h = self.tok(tokens) + self.pos(torch.arange(n, device=tokens.device))
        h = self.blocks(h, mask=self.mask[:n, :n], is_causal=True)
        return self.head(self.norm(h))


@dataclass
class Task:
    model: nn.Module
    inputs: torch.Tensor
    targets: torch.Tensor | None

    def to(self, device: torch.device) -> Task:
        """The model and the whole dataset (a few MB) on ``device``."""
        return Task(self.model.to(device), self.inputs.to(device),
                    None if self.targets is None else self.targets.to(device))

    def loss(self, indices: torch.Tensor) -> torch.Tensor:
        """Mean loss over the samples ``indices``."""
        indices = indices.to(self.inputs.device)
        if self.targets is not None:
            return F.cross_entropy(self.model(self.inputs[indices]), self.targets[indices])
        seq = self.inputs[indices]
        logits = self.model(seq[:, :-1])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), seq[:, 1:].reshape(-1))


def build(name: str, samples: int, seed: int, hidden: int | None = None, layers: int | None = None) -> Task:
    """Model ``name`` (same initial weights for the same seed) and its dataset of ``samples``."""
    g = torch.Generator().manual_seed(seed)
    if name == "mlp":
        d_in, classes = 32, 10
        torch.manual_seed(seed)
        model = MLP(d_in, hidden or 256, layers or 3, classes)
        x = torch.randn(samples, d_in, generator=g)
        teacher = torch.randn(d_in, 64, generator=g), torch.randn(64, classes, generator=g)
        y = (torch.tanh(x @ teacher[0]) @ teacher[1]).argmax(dim=1)
        return Task(model, x, y)
    if name == "transformer":
        vocab, seq = 64, 32
        torch.manual_seed(seed)
        model = TinyTransformer(vocab, seq, hidden or 64, layers or 2)
        # Each token has two likely successors: a pattern a small model learns within 100 steps.
        succ = torch.randint(0, vocab, (vocab, 2), generator=g)
        tokens = torch.empty(samples, seq + 1, dtype=torch.long)
        tokens[:, 0] = torch.randint(0, vocab, (samples,), generator=g)
        for t in range(seq):
            pick = torch.randint(0, 2, (samples,), generator=g)
            tokens[:, t + 1] = succ[tokens[:, t], pick]
        return Task(model, tokens, None)
    if name == "cnn":
        side, classes = 16, 10
        torch.manual_seed(seed)
        model = ConvNet(side, hidden or 32, layers or 2, classes)
        # Each image is its class's pattern, rolled by a random shift, under noise: a task that
        # convolutions with global pooling (blind to position) learn within 100 steps.
        y = torch.randint(0, classes, (samples,), generator=g)
        patterns = torch.randn(classes, side, side, generator=g)
        shift = torch.randint(0, side, (samples, 2), generator=g)
        rows = (torch.arange(side) - shift[:, :1]) % side
        cols = (torch.arange(side) - shift[:, 1:]) % side
        images = patterns[y[:, None, None], rows[:, :, None], cols[:, None, :]]
        x = images + torch.randn(samples, side, side, generator=g)
        return Task(model, x.reshape(samples, side * side), y)
    raise ValueError(f"unknown model {name!r}; built-in models: {', '.join(MODELS)}")
