#!/usr/bin/env python3
"""Builds the Preflight model zoo: real TorchScript artifacts and batches.

Healthy architectures (MLP, CNN, ResNet-style, LSTM, Transformer, regression,
multi-label, a model with its own loss) and at least one fault for every
finding code. Writes OUT/<case>.model.pt, OUT/<case>.batch.pt and
OUT/manifest.json, which lists for every case the CLI flags to use, the exact
verdict expected and the finding codes that must appear.

Every case whose model torch.export.export can capture with the pinned torch
also gets a `.pt2` twin, OUT/<case>.model.pt2 (torch.export.save of the same
module with the same weights, exported in train mode with the batch's inputs,
static shapes), which must get the same verdict and codes
(tests/e2e/pt2_twins_test.py). The manifest says for every case either
"pt2": PATH or "pt2": null with "pt2_reason", why there is no twin (the
exporter's own error, first line, or why the case cannot have one). A model
with its own loss(output, target) is exported as the `.pt2` custom-loss
contract instead (see LossProgram).

Usage: make_zoo.py OUT_DIR [--only NAME ...]
"""
import argparse
import contextlib
import io
import json
import logging
import os
import sys
import warnings
import zipfile
from typing import List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

# TorchScript's deprecation notices (FutureWarning on every script/save), and
# nothing else: torch.export must run here without any warning (tested).
warnings.filterwarnings("ignore", category=FutureWarning,
                        message=r"`torch\.jit\.\w+` is deprecated")

CASES = []
NEVER_RETURNS = ("forward() never returns, in Python as in TorchScript: tracing it for "
                 "torch.export would not end either")


def case(name, verdict, codes, flags=None, doc="", service_only=False, no_pt2=None,
         example=None, hints=None):
    """service_only: hostile models that only the sandboxed service contains.
    no_pt2: why this case has no `.pt2` twin, for a case that cannot have one
    for a reason other than an export error (e.g. a forward() that never
    returns, which tracing would not survive either). example: the inputs to
    export with, for a case whose batch holds none (a malformed batch).
    hints: {code: text} that finding's hint must contain (the named cause)."""
    def register(fn):
        CASES.append(dict(name=name, verdict=verdict, codes=codes, flags=flags or [],
                          doc=doc or (fn.__doc__ or "").strip(), build=fn,
                          service_only=service_only, no_pt2=no_pt2, example=example,
                          hints=hints or {}))
        return fn
    return register


def gen(seed):
    return torch.Generator().manual_seed(seed)


def classification_batch(n, shape, classes, seed=1):
    g = gen(seed)
    return {"inputs": torch.randn(n, *shape, generator=g),
            "targets": torch.randint(0, classes, (n,), generator=g)}


def mlp(sizes, act=nn.ReLU):
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


# --- Healthy architectures ---------------------------------------------------

@case("mlp", "PASS", ["OVERFIT_CONVERGED"],
      doc="The seeds' reference case: MLP 784-256-10, batch 32.")
def _():
    torch.manual_seed(0)
    return mlp([784, 256, 10]), classification_batch(32, (784,), 10)


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 7 * 7, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


@case("cnn", "PASS", ["OVERFIT_CONVERGED"], doc="Two conv layers + pooling on 1x28x28.")
def _():
    torch.manual_seed(0)
    return SmallCNN(), classification_batch(16, (1, 28, 28), 10)


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                       nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.short(x))


class ResNetStyle(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16),
                                  nn.ReLU())
        self.layers = nn.Sequential(BasicBlock(16, 16, 1), BasicBlock(16, 32, 2),
                                    BasicBlock(32, 64, 2))
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        x = self.layers(self.stem(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


@case("resnet", "PASS", ["OVERFIT_CONVERGED"],
      doc="ResNet-style net (3 residual stages with BatchNorm), 3x32x32, batch 8.")
def _():
    torch.manual_seed(0)
    return ResNetStyle(), classification_batch(8, (3, 32, 32), 10)


class ResNet18(nn.Module):
    """ResNet-18 layout (2-2-2-2 basic blocks, 64..512 channels) for 32x32 inputs."""

    def __init__(self, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64),
                                  nn.ReLU())
        blocks = []
        cin = 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(512, classes)

    def forward(self, x):
        x = self.layers(self.stem(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


@case("resnet18", "PASS", ["OVERFIT_CONVERGED"],
      doc="ResNet-18 (11M parameters), batch 8 of 3x32x32: the benchmark's large case.")
def _():
    torch.manual_seed(0)
    return ResNet18(), classification_batch(8, (3, 32, 32), 10)


class LSTMClassifier(nn.Module):
    def __init__(self, vocab=50, emb=32, hidden=64, classes=5):
        super().__init__()
        self.emb = nn.Embedding(vocab, emb)
        self.lstm = nn.LSTM(emb, hidden, num_layers=2, batch_first=True)
        self.fc = nn.Linear(hidden, classes)

    def forward(self, tokens):
        out, _ = self.lstm(self.emb(tokens))
        return self.fc(out[:, -1])


def token_batch(n, length, vocab, classes, seed=1):
    g = gen(seed)
    return {"inputs": torch.randint(0, vocab, (n, length), generator=g),
            "targets": torch.randint(0, classes, (n,), generator=g)}


@case("lstm", "PASS", ["OVERFIT_CONVERGED"],
      doc="Embedding + 2-layer LSTM sequence classifier.")
def _():
    torch.manual_seed(0)
    return LSTMClassifier(), token_batch(16, 12, 50, 5)


class TinyTransformer(nn.Module):
    def __init__(self, vocab=64, d=32, heads=4, layers=2, classes=4, length=16):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(1, length, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, heads, dim_feedforward=64, dropout=0.1,
                                           batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.fc = nn.Linear(d, classes)

    def forward(self, tokens):
        h = self.encoder(self.emb(tokens) + self.pos)
        return self.fc(self.norm(h.mean(1)))


@case("transformer", "PASS", ["OVERFIT_CONVERGED"],
      doc="2-layer Transformer encoder (dropout 0.1) over token sequences.")
def _():
    torch.manual_seed(0)
    return TinyTransformer(), token_batch(16, 16, 64, 4)


@case("regression", "PASS", ["OVERFIT_CONVERGED"], flags=["--loss", "mse"],
      doc="MLP regression with mse on [N, 1] targets.")
def _():
    torch.manual_seed(0)
    g = gen(1)
    x = torch.randn(32, 8, generator=g)
    y = (x[:, :1] * 2 - x[:, 1:2]) + 0.1 * torch.randn(32, 1, generator=g)
    return mlp([8, 64, 64, 1]), {"inputs": x, "targets": y}


@case("multilabel", "PASS", ["OVERFIT_CONVERGED"], flags=["--loss", "bce_with_logits"],
      doc="Multi-label classifier: 6 independent labels, bce_with_logits.")
def _():
    torch.manual_seed(0)
    g = gen(1)
    x = torch.randn(32, 64, generator=g)
    y = (torch.rand(32, 6, generator=g) > 0.5).float()
    return mlp([64, 256, 6]), {"inputs": x, "targets": y}


class OwnLoss(nn.Module):
    """A model that exports its own loss(output, target)."""

    def __init__(self):
        super().__init__()
        self.net = mlp([16, 64, 3])

    def forward(self, x):
        return self.net(x)

    @torch.jit.export
    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # Temperature-scaled cross-entropy: still reaches zero on one batch.
        return F.nll_loss(F.log_softmax(output / 0.5, dim=1), target)


@case("own_loss", "PASS", ["OVERFIT_CONVERGED"],
      doc="Exports loss(output, target); overrides --loss.")
def _():
    torch.manual_seed(0)
    return OwnLoss(), classification_batch(24, (16,), 3)


class LabelSmoothing(nn.Module):
    """Cross-entropy with label smoothing 0.1: its minimum on 7 classes is ~0.42, far
    above 1% of the initial loss."""

    def __init__(self):
        super().__init__()
        self.net = mlp([20, 64, 7])

    def forward(self, x):
        return self.net(x)

    @torch.jit.export
    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output, target, label_smoothing=0.1)


@case("label_smoothing", "PASS", ["CONVERGED_TO_FLOOR"],
      doc="Healthy classifier trained with label smoothing 0.1 (own loss): it memorises the "
          "batch and stops at the loss's floor (~0.45) with the gradient collapsed.")
def _():
    torch.manual_seed(0)
    return LabelSmoothing(), classification_batch(16, (20,), 7)


@case("soft_targets", "PASS", ["CONVERGED_TO_FLOOR"],
      doc="Built-in cross_entropy with soft probability targets (0.9 on the label, the rest "
          "spread): the floor is the targets' entropy; memorised by the most probable class.")
def _():
    torch.manual_seed(0)
    b = classification_batch(16, (20,), 5)
    soft = torch.full((16, 5), 0.1 / 4)
    soft[torch.arange(16), b["targets"]] = 0.9
    return mlp([20, 64, 5]), {"inputs": b["inputs"], "targets": soft}


class Contrastive(nn.Module):
    """CLIP/InfoNCE-style: two encoders, L2-normalised embeddings, and the N x N
    similarity logits at a fixed temperature 0.5 (cosines in [-1, 1], so the
    logits are bounded in [-2, 2])."""

    def __init__(self):
        super().__init__()
        self.image = mlp([24, 64, 32])
        self.text = mlp([12, 64, 32])

    def forward(self, x, t):
        a = F.normalize(self.image(x), dim=1)
        b = F.normalize(self.text(t), dim=1)
        return a @ b.t() / 0.5


@case("contrastive", "PASS", ["CONVERGED_TO_FLOOR"],
      doc="Contrastive (InfoNCE) on 16 pairs: logits are cosine similarities / 0.5, targets "
          "arange(N), built-in cross_entropy. Bounded logits give a floor: at best (matched "
          "cosine 1, the others -1/15) log(1 + 15 e^-2.13) = 1.02, 37% of the initial ln 16.")
def _():
    torch.manual_seed(0)
    g = gen(1)
    return Contrastive(), {"inputs": (torch.randn(16, 24, generator=g),
                                      torch.randn(16, 12, generator=g)),
                           "targets": torch.arange(16)}


class Vae(nn.Module):
    """A Gaussian VAE with its own loss: forward returns (reconstruction, mu,
    logvar) from a latent sampled by the reparameterisation trick (so every
    step draws fresh noise), loss = mean squared reconstruction error + beta x
    the KL divergence from the unit Gaussian. The KL term never reaches zero
    while the reconstructions are sharp: the loss has a floor."""

    def __init__(self, features=16, hidden=64, latent=4, beta=0.01):
        super().__init__()
        self.latent = latent
        self.beta = beta
        self.encoder = mlp([features, hidden, 2 * latent])
        self.decoder = mlp([latent, hidden, features])

    def forward(self, x) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        stats = self.encoder(x)
        mu, logvar = stats[:, :self.latent], stats[:, self.latent:]
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decoder(z), mu, logvar

    @torch.jit.export
    def loss(self, output: Tuple[torch.Tensor, torch.Tensor, torch.Tensor],
             target: torch.Tensor) -> torch.Tensor:
        recon, mu, logvar = output
        kl = -0.5 * torch.mean(torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1))
        return F.mse_loss(recon, target) + self.beta * kl


@case("vae", "PASS", ["CONVERGED_TO_FLOOR"], flags=["--lr", "0.01"],
      doc="Gaussian VAE (own loss: MSE + 0.01 x KL) reconstructing 16 samples of rank-2 data "
          "through a 4-d sampled latent: the KL term keeps a floor ~5% of the initial loss, "
          "and the sampled latent makes every step's loss and gradient noisy.")
def _():
    torch.manual_seed(0)
    g = gen(1)
    x = torch.randn(16, 2, generator=g) @ torch.randn(2, 16, generator=g) / 2 ** 0.5
    return Vae(), {"inputs": x, "targets": x}


@case("contrastive_low_lr", "FAIL", ["LOSS_PLATEAU"], flags=["--lr", "1e-5"],
      doc="The contrastive model at lr 1e-5: a plateau far above its floor with the gradient "
          "norm not collapsed and half the pairs unmatched; not CONVERGED_TO_FLOOR.")
def _():
    torch.manual_seed(0)
    g = gen(1)
    return Contrastive(), {"inputs": (torch.randn(16, 24, generator=g),
                                      torch.randn(16, 12, generator=g)),
                           "targets": torch.arange(16)}


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(10, 32)
        self.b = nn.Linear(6, 32)
        self.head = nn.Linear(32, 4)

    def forward(self, x, y):
        return self.head(F.relu(self.a(x) + self.b(y)))


@case("multi_input", "PASS", ["OVERFIT_CONVERGED"],
      doc="forward(x, y) with a tuple of input tensors.")
def _():
    torch.manual_seed(0)
    g = gen(1)
    return TwoInputs(), {"inputs": (torch.randn(16, 10, generator=g),
                                    torch.randn(16, 6, generator=g)),
                         "targets": torch.randint(0, 4, (16,), generator=g)}


@case("tuple_batch", "PASS", ["OVERFIT_CONVERGED"],
      doc="The batch as a plain (inputs, targets) tuple.")
def _():
    torch.manual_seed(0)
    b = classification_batch(16, (64,), 3)
    return mlp([64, 128, 3]), (b["inputs"], b["targets"])


@case("slow_converging", "WARN", ["LOSS_PLATEAU"], flags=["--loss", "bce_with_logits"],
      doc="Healthy but small: with Adam at 1e-3 the loss is still falling steeply after "
          "500 steps. A warning (with the verified lr hint), not a failure.")
def _():
    torch.manual_seed(0)
    g = gen(1)
    x = torch.randn(32, 20, generator=g)
    y = (torch.rand(32, 6, generator=g) > 0.5).float()
    return mlp([20, 64, 6]), {"inputs": x, "targets": y}


@case("slow_linear", "WARN", ["LOSS_PLATEAU"],
      doc="A linear classifier (32 features, 4 classes): at Adam 1e-3 still falling at 500 "
          "steps. lr x10 and the 4x-budget experiment both converge: named, a warning.")
def _():
    torch.manual_seed(0)
    return nn.Linear(32, 4), classification_batch(16, (32,), 4)


@case("prob_targets_invalid", "ERROR", ["DATA_INVALID"],
      doc="Multi-hot rows (two 1s per sample) as probability targets for cross_entropy: "
          "the rows do not sum to 1.")
def _():
    torch.manual_seed(0)
    g = gen(1)
    t = torch.zeros(16, 6)
    t[torch.arange(16), torch.randint(0, 6, (16,), generator=g)] = 1.0
    t[torch.arange(16), torch.randint(0, 6, (16,), generator=g)] = 1.0
    t[t.sum(1) < 2, 0] += 1.0  # Two labels everywhere (sum 2, or 1 + 1 on class 0).
    return mlp([20, 32, 6]), {"inputs": torch.randn(16, 20, generator=g), "targets": t}


# --- Faults: input and static ---------------------------------------------------

@case("artifact_truncated", "ERROR", ["ARTIFACT_INVALID"],
      doc="The model file cut in half (an interrupted upload).")
def _():
    torch.manual_seed(0)
    return ("truncate", mlp([784, 256, 10])), classification_batch(32, (784,), 10)


@case("artifact_not_torchscript", "ERROR", ["ARTIFACT_INVALID"],
      doc="A state_dict saved with torch.save instead of a TorchScript module.")
def _():
    torch.manual_seed(0)
    return ("state_dict", mlp([4, 3])), classification_batch(8, (4,), 3)


@case("batch_wrong_keys", "ERROR", ["DATA_INVALID"],
      doc="Batch dict with keys x/y instead of inputs/targets.",
      example=lambda: (torch.randn(8, 4, generator=gen(1)),))
def _():
    torch.manual_seed(0)
    b = classification_batch(8, (4,), 3)
    return mlp([4, 3]), {"x": b["inputs"], "y": b["targets"]}


@case("batch_not_tensors", "ERROR", ["DATA_INVALID"],
      doc="Batch whose inputs are a string, not tensors.",
      example=lambda: (torch.randn(2, 4, generator=gen(1)),))
def _():
    torch.manual_seed(0)
    return mlp([4, 3]), {"inputs": "image.png", "targets": torch.tensor([0, 1])}


@case("class_out_of_range", "ERROR", ["DATA_INVALID"],
      doc="Targets hold class 12 but the model has 10 outputs.")
def _():
    torch.manual_seed(0)
    b = classification_batch(16, (20,), 10)
    b["targets"][3] = 12
    return mlp([20, 32, 10]), b


@case("no_trainable_params", "FAIL", ["NO_TRAINABLE_PARAMS"],
      doc="Every parameter frozen.")
def _():
    torch.manual_seed(0)
    m = mlp([20, 32, 10])
    for p in m.parameters():
        p.requires_grad_(False)
    return m, classification_batch(16, (20,), 10)


@case("param_frozen", "PASS", ["PARAM_FROZEN", "OVERFIT_CONVERGED"],
      doc="First layer frozen (fine-tuning): informational only.")
def _():
    torch.manual_seed(0)
    m = mlp([128, 256, 10])
    for p in m[0].parameters():
        p.requires_grad_(False)
    return m, classification_batch(16, (128,), 10)


@case("data_non_finite", "FAIL", ["DATA_NON_FINITE"],
      doc="NaN in the inputs (a missing value in the pipeline).")
def _():
    torch.manual_seed(0)
    b = classification_batch(16, (20,), 10)
    b["inputs"][2, 5] = float("nan")
    b["inputs"][7, 1] = float("inf")
    return mlp([20, 32, 10]), b


@case("forward_error", "FAIL", ["FORWARD_ERROR"],
      doc="Model built for 100 features fed 784.")
def _():
    torch.manual_seed(0)
    return mlp([100, 32, 10]), classification_batch(16, (784,), 10)


class NonScalarLoss(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = mlp([8, 16, 3])

    def forward(self, x):
        return self.net(x)

    @torch.jit.export
    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output, target, reduction="none")


@case("loss_error", "FAIL", ["LOSS_ERROR"],
      doc="Own loss returns per-sample values (reduction='none'), not a scalar.")
def _():
    torch.manual_seed(0)
    return NonScalarLoss(), classification_batch(8, (8,), 3)


class InplaceAfterSigmoid(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x):
        h = torch.sigmoid(self.fc1(x))
        h.mul_(2.0)  # Overwrites the output sigmoid's backward needs.
        return self.fc2(h)


@case("backward_error", "FAIL", ["BACKWARD_ERROR"],
      doc="In-place op on a tensor saved for backward.")
def _():
    torch.manual_seed(0)
    return InplaceAfterSigmoid(), classification_batch(8, (8,), 3)


# --- Faults: at init -------------------------------------------------------------

class Scaled(nn.Module):
    def __init__(self, net, scale: float):
        super().__init__()
        self.net = net
        self.scale = scale

    def forward(self, x):
        return self.net(x) * self.scale


@case("init_loss_high", "WARN", ["INIT_LOSS_SUSPICIOUS", "OVERFIT_CONVERGED"],
      doc="Output layer scaled x50: loss at init far above ln C, still trainable.")
def _():
    torch.manual_seed(0)
    return Scaled(mlp([784, 256, 10]), 50.0), classification_batch(32, (784,), 10)


class SoftmaxHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = mlp([20, 64, 10])

    def forward(self, x):
        return torch.softmax(self.net(x), dim=1)


@case("softmax_before_ce", "FAIL", ["OUTPUTS_LOOK_LIKE_PROBABILITIES", "LOSS_PLATEAU"],
      doc="softmax applied before cross_entropy: loss cannot go below ~1.46.")
def _():
    torch.manual_seed(0)
    return SoftmaxHead(), classification_batch(16, (20,), 10)


@case("broadcast_mse", "FAIL", ["LOSS_SHAPE_BROADCAST"], flags=["--loss", "mse"],
      doc="Output [N, 1] against targets [N]: mse broadcasts to [N, N].")
def _():
    torch.manual_seed(0)
    g = gen(1)
    x = torch.randn(32, 8, generator=g)
    return mlp([8, 32, 1]), {"inputs": x, "targets": x[:, 0] * 2}


class IgnoresInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = mlp([20, 32, 10])

    def forward(self, x):
        x = torch.zeros_like(x)  # A leftover debugging line.
        return self.net(x)


@case("ignores_input", "FAIL", ["OUTPUT_IGNORES_INPUT"],
      doc="forward() overwrites its input with zeros.")
def _():
    torch.manual_seed(0)
    return IgnoresInput(), classification_batch(16, (20,), 10)


# --- Faults: numerics ------------------------------------------------------------

class LogOfInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = mlp([20, 32, 10])

    def forward(self, x):
        return self.net(torch.log(x))  # Negative inputs -> NaN.


@case("output_non_finite", "FAIL", ["OUTPUT_NON_FINITE", "LOSS_DIVERGED"],
      doc="log() of standardised (partly negative) inputs.")
def _():
    torch.manual_seed(0)
    return LogOfInput(), classification_batch(16, (20,), 10)


class NaiveLogSoftmaxLoss(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = mlp([20, 32, 10])

    def forward(self, x):
        return self.net(x) * 200.0

    @torch.jit.export
    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        p = torch.softmax(output, dim=1)
        return -torch.log(p.gather(1, target.unsqueeze(1))).mean()


@case("loss_non_finite", "FAIL", ["LOSS_NON_FINITE"],
      doc="log(softmax(x)) by hand on large logits: softmax underflows, log(0) = -inf.")
def _():
    torch.manual_seed(0)
    return NaiveLogSoftmaxLoss(), classification_batch(16, (20,), 10)


class PairwiseDistance(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(20, 32)
        self.fc2 = nn.Linear(33, 10)

    def forward(self, x):
        h = self.fc1(x)
        # Hand-written pairwise distance: sqrt of 0 on the diagonal has an
        # infinite derivative, and inf * 0 = NaN in backward.
        dist = torch.sqrt(((h.unsqueeze(1) - h.unsqueeze(0)) ** 2).sum(-1))
        return self.fc2(torch.cat([h, dist.mean(1, keepdim=True)], 1))


@case("grad_non_finite", "FAIL", ["GRAD_NON_FINITE"],
      doc="Hand-written pairwise distance: finite forward, NaN gradient from sqrt(0).")
def _():
    torch.manual_seed(0)
    return PairwiseDistance(), classification_batch(16, (20,), 10)


@case("param_non_finite", "FAIL", ["PARAM_NON_FINITE", "EXPLODING_ACTIVATIONS"],
      flags=["--optimizer", "sgd", "--lr", "1000"],
      doc="Output scaled by 1e37 with plain SGD: one update overflows the weights (the "
          "1e37 output is also an exploding forward).")
def _():
    torch.manual_seed(0)
    return Scaled(mlp([20, 10]), 1e37), classification_batch(16, (20,), 10)


@case("param_nan_at_load", "FAIL", ["PARAM_NON_FINITE"],
      doc="A NaN planted in a first-layer weight (a broken checkpoint): named at load, "
          "before any step, instead of as a NaN output.")
def _():
    torch.manual_seed(0)
    m = mlp([20, 32, 10])
    with torch.no_grad():
        m[0].weight[3, 7] = float("nan")
    return m, classification_batch(16, (20,), 10)


# --- Faults: gradient flow -------------------------------------------------------

class UnusedBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = mlp([20, 64, 10])
        self.aux = nn.Linear(20, 10)  # Defined, never used.

    def forward(self, x):
        return self.net(x)


@case("param_no_grad", "WARN", ["PARAM_NO_GRAD", "OVERFIT_CONVERGED"],
      doc="A layer that is never used in forward().")
def _():
    torch.manual_seed(0)
    return UnusedBranch(), classification_batch(16, (20,), 10)


@case("dead_units", "WARN", ["DEAD_UNITS", "OVERFIT_CONVERGED"],
      doc="80% of the hidden ReLU units start with bias -10: dead for every sample.")
def _():
    torch.manual_seed(0)
    m = mlp([784, 256, 10])
    with torch.no_grad():
        m[0].bias[: int(0.8 * 256)] = -10.0
    return m, classification_batch(32, (784,), 10)


@case("vanishing_gradient", "FAIL", ["VANISHING_GRADIENT"],
      doc="12 sigmoid layers deep, no normalisation or skips.")
def _():
    torch.manual_seed(0)
    return mlp([20] + [64] * 12 + [10], act=nn.Sigmoid), classification_batch(16, (20,), 10)


@case("exploding_gradient", "FAIL", ["EXPLODING_GRADIENT", "LOSS_DIVERGED"],
      flags=["--optimizer", "sgd", "--lr", "0.5", "--loss", "mse"],
      doc="Plain SGD far above the stability limit: each update makes the next gradient "
          "larger until it overflows.")
def _():
    torch.manual_seed(0)
    g = gen(1)
    x = torch.randn(32, 8, generator=g) * 2
    return mlp([8, 32, 1]), {"inputs": x, "targets": x[:, :1] - x[:, 1:2]}


class ExplodingRNN(nn.Module):
    def __init__(self, d=8, hidden=32, classes=5):
        super().__init__()
        self.rnn = nn.RNN(d, hidden, nonlinearity="relu", batch_first=True)
        self.fc = nn.Linear(hidden, classes)
        with torch.no_grad():
            self.rnn.weight_hh_l0.copy_(3 * torch.eye(hidden))  # Recurrent gain 3.

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.fc(out[:, -1])


@case("exploding_activations", "FAIL", ["EXPLODING_ACTIVATIONS"],
      hints={"EXPLODING_ACTIVATIONS": "Verified: smaller_init (rnn's weights x0.1)"},
      doc="ReLU RNN whose recurrent weight is 3*I: activations triple per step over 56 "
          "steps, logits ~1e25 at init. Scaling rnn's weights by 0.1 converges.")
def _():
    torch.manual_seed(0)
    g = gen(1)
    return ExplodingRNN(), {"inputs": torch.randn(16, 56, 8, generator=g),
                            "targets": torch.randint(0, 5, (16,), generator=g)}


# --- Faults: the overfit curve ---------------------------------------------------

class GradientReversal(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = mlp([20, 64, 10])

    def forward(self, x):
        y = self.net(x)
        # Value y, gradient -dy: a domain-adaptation layer left in by mistake.
        return 2 * y.detach() - y


@case("loss_rising", "FAIL", ["LOSS_RISING"],
      doc="A gradient-reversal layer on the output: every update increases the loss.")
def _():
    torch.manual_seed(0)
    return GradientReversal(), classification_batch(16, (20,), 10)


class LogLikelihoodLoss(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = mlp([20, 64, 10])

    def forward(self, x):
        return self.net(x)

    @torch.jit.export
    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # Minimises log p instead of -log p.
        return F.log_softmax(output, dim=1).gather(1, target.unsqueeze(1)).mean()


@case("loss_diverged", "FAIL", ["LOSS_DIVERGED"],
      doc="Own loss minimises log-probability: falls without bound.")
def _():
    torch.manual_seed(0)
    return LogLikelihoodLoss(), classification_batch(16, (20,), 10)


@case("loss_oscillating", "FAIL", ["LOSS_OSCILLATING"],
      flags=["--optimizer", "sgd", "--lr", "0.1", "--loss", "l1"],
      doc="Plain SGD with a fixed step on an l1 regression: it keeps overshooting the "
          "minimum.")
def _():
    torch.manual_seed(0)
    g = gen(1)
    x = torch.randn(32, 8, generator=g)
    y = (x[:, :1] * 2 - x[:, 1:2]) + 0.1 * torch.randn(32, 1, generator=g)
    return mlp([8, 64, 64, 1]), {"inputs": x, "targets": y}


@case("unstable_convergence", "WARN", ["UNSTABLE_CONVERGENCE"], flags=["--lr", "20"],
      doc="Adam at lr 20: the loss jumps from 2.3 to ~2e4 and touches 0 only because the "
          "logits blew up. Not a clean PASS; lr/100 converges without the spike.")
def _():
    torch.manual_seed(0)
    return mlp([20, 64, 10]), classification_batch(16, (20,), 10)


@case("loss_plateau_weight_decay", "FAIL", ["LOSS_PLATEAU"],
      flags=["--weight-decay", "1.0"],
      doc="L2 weight decay 1.0 with Adam: regularisation caps the fit.")
def _():
    torch.manual_seed(0)
    return mlp([20, 64, 10]), classification_batch(16, (20,), 10)


@case("loss_plateau_low_lr", "FAIL", ["LOSS_PLATEAU"], flags=["--lr", "1e-5"],
      doc="Learning rate 100x too low: the loss creeps down.")
def _():
    torch.manual_seed(0)
    return mlp([20, 64, 10]), classification_batch(16, (20,), 10)


class Quantised(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = mlp([20, 64, 10])

    def forward(self, x):
        return torch.round(self.net(x) * 4) / 4  # round() has zero gradient.


@case("loss_flat", "FAIL", ["LOSS_FLAT", "PARAM_NO_GRAD"],
      doc="Outputs rounded (fake quantisation without a straight-through estimator).")
def _():
    torch.manual_seed(0)
    return Quantised(), classification_batch(16, (20,), 10)


class HeavyDropout(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(20, 128)
        self.drop = nn.Dropout(0.6)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        return self.fc2(self.drop(F.relu(self.fc1(x))))


@case("loss_noisy", "FAIL", ["LOSS_NOISY"], flags=["--steps", "300"],
      doc="Dropout 0.6 on a small net: the loss keeps jumping around its floor.")
def _():
    torch.manual_seed(0)
    return HeavyDropout(), classification_batch(32, (20,), 10)


# --- Structural faults (the probes of checks/structure.cc) -------------------

def quadrants(n=48, seed=1):
    """2-D points labelled by the parity of their quadrant (XOR): no linear
    map separates them."""
    g = gen(seed)
    x = torch.randn(n, 2, generator=g)
    return {"inputs": x, "targets": ((x[:, 0] > 0) ^ (x[:, 1] > 0)).long()}


@case("linear_stack", "FAIL", ["MODEL_LINEAR"],
      doc="Three Linear layers with no activation between them on XOR-labelled points: one "
          "linear map; the probe f(a x1 + (1-a) x2) = a f(x1) + (1-a) f(x2) names it.")
def _():
    torch.manual_seed(0)
    return mlp([2, 32, 32, 2], act=nn.Identity), quadrants()


class SigmoidOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = mlp([8, 64, 1])

    def forward(self, x):
        return torch.sigmoid(self.net(x))


@case("sigmoid_output_wide_targets", "FAIL", ["OUTPUT_SATURATED"], flags=["--loss", "mse"],
      doc="A sigmoid after the last layer of a regressor whose targets span about -3..3: the "
          "bounded output cannot reach most of them.")
def _():
    torch.manual_seed(0)
    g = gen(1)
    x = torch.randn(32, 8, generator=g)
    return SigmoidOut(), {"inputs": x, "targets": x[:, :1] * 2 - x[:, 1:2]}


@case("class_ids_as_values", "FAIL", ["TARGET_LOSS_MISMATCH"], flags=["--loss", "l1"],
      doc="Class ids 0..3 as float targets of a one-output sigmoid model under l1: labels "
          "treated as values the output cannot reach.")
def _():
    torch.manual_seed(0)
    b = classification_batch(24, (8,), 4)
    return SigmoidOut(), {"inputs": b["inputs"], "targets": b["targets"].float().unsqueeze(1)}


@case("bottleneck_rank", "FAIL", ["OUTPUT_LOW_RANK"],
      doc="A 1-unit bottleneck before a 16-class head: logits of rank 1 for a batch that "
          "needs rank 15 (a 2-unit one still fits 12 classes with lr x10: no fault).")
def _():
    torch.manual_seed(0)
    return (nn.Sequential(nn.Linear(32, 1), nn.Linear(1, 16)),
            classification_batch(48, (32,), 16))


class InPlaceAugment(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = mlp([20, 32, 10])

    def forward(self, x):
        # In-place augmentation: mutates the caller's batch on every call.
        x.add_(0.05 * torch.randn_like(x))
        return self.net(x)


@case("nondeterministic", "WARN", ["NONDETERMINISTIC"],
      doc="forward() adds noise to its input in place: every run starts from a different "
          "batch, so the same seed does not reproduce it.")
def _():
    torch.manual_seed(0)
    return InPlaceAugment(), classification_batch(16, (20,), 10)


class InfiniteLoop(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        i = 0
        while i >= 0:  # Never ends.
            i += 1
        return self.fc(x)


@case("worker_timeout", "ERROR", ["WORKER_TIMEOUT"], flags=["--timeout", "5"],
      no_pt2=NEVER_RETURNS,
      doc="forward() never returns: the child is killed at the deadline.")
def _():
    torch.manual_seed(0)
    return InfiniteLoop(), classification_batch(4, (4,), 3)


# --- Hostile models: contained only by the service's sandbox ------------------

class ReadsPasswd(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        leak = torch.from_file("/etc/passwd", shared=False, size=16, dtype=torch.uint8)
        return self.fc(x) + leak.float().sum() * 0


@case("hostile_read_file", "ERROR", ["SANDBOX_VIOLATION"], service_only=True,
      doc="Reads /etc/passwd with torch.from_file: Landlock refuses the open.")
def _():
    torch.manual_seed(0)
    return ReadsPasswd(), classification_batch(4, (4,), 3)


class WritesFile(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        # shared=True creates and maps the file read-write: a file write.
        out = torch.from_file("/tmp/preflight-hostile-write", shared=True, size=4096,
                              dtype=torch.uint8)
        out.fill_(65)
        return self.fc(x) + out[0].float() * 0


@case("hostile_write_file", "ERROR", ["SANDBOX_VIOLATION"], service_only=True,
      doc="Creates and writes /tmp/preflight-hostile-write via a shared mapping.")
def _():
    torch.manual_seed(0)
    return WritesFile(), classification_batch(4, (4,), 3)


class SavesTensor(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        # TorchScript's aten::save writes through std::fstream and ignores a
        # failed open: nothing raises, the check would carry on and PASS.
        torch.save(x, "/tmp/preflight-hostile-save")
        return self.fc(x)


@case("hostile_torch_save", "ERROR", ["SANDBOX_VIOLATION"], service_only=True,
      no_pt2="torch.save runs in Python while torch.export traces and is not recorded in the "
      "program (the .pt2 loader also refuses aten::save)",
      doc="torch.save to /tmp from forward(): the refused open raises nothing.")
def _():
    torch.manual_seed(0)
    return SavesTensor(), classification_batch(4, (4,), 3)


class HugeAllocation(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        big = torch.ones(512 * 1024 * 1024 * 1024 // 4)  # 512 GiB of float32.
        return self.fc(x) + big[0]


@case("hostile_allocation", "ERROR", ["WORKER_OOM"], service_only=True,
      doc="Allocates 512 GiB: refused by the job's address-space limit.")
def _():
    torch.manual_seed(0)
    return HugeAllocation(), classification_batch(4, (4,), 3)


@case("hostile_infinite_loop", "ERROR", ["WORKER_TIMEOUT"], flags=["--timeout", "3"],
      service_only=True, no_pt2=NEVER_RETURNS,
      doc="forward() never returns: killed at the deadline.")
def _():
    torch.manual_seed(0)
    return InfiniteLoop(), classification_batch(4, (4,), 3)


class DeepExpression(nn.Module):
    """Its saved source is rewritten (see save_model) so that the constant
    below sits inside 100000 nested parentheses: a 4 KiB file whose load
    overflows the native stack of LibTorch's recursive-descent parser."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x) + 987654


@case("hostile_segfault", "ERROR", ["WORKER_CRASHED"], service_only=True,
      no_pt2="the fault is TorchScript source text (nested parentheses); a .pt2 holds no "
      "source (the .pt2 analogue, a 10^6-node graph, is in tests/e2e/pt2_hostile_test.py)",
      doc="A TorchScript file whose source nests 100000 parentheses: loading it "
          "overflows the native stack (SIGSEGV) inside torch::jit::load.")
def _():
    torch.manual_seed(0)
    return ("deep_nesting", DeepExpression()), classification_batch(4, (4,), 3)


def _spin(x: torch.Tensor) -> torch.Tensor:
    y = x
    for _ in range(1000):
        y = y * 1.0
    return y


class ForkFlood(nn.Module):
    """TorchScript's only fork: torch.jit.fork, which queues tasks on the
    job's fixed inter-op thread pool. Forks without end; never returns."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        futures: List[torch.jit.Future[torch.Tensor]] = []
        while len(futures) >= 0:
            futures.append(torch.jit.fork(_spin, x))
        return self.fc(x)


@case("hostile_fork_flood", "ERROR", ["WORKER_TIMEOUT|WORKER_OOM"], flags=["--timeout", "3"],
      service_only=True, no_pt2="torch.jit.fork without end: TorchScript-only, and tracing the "
      "loop for torch.export would not end",
      doc="Forks torch.jit.fork tasks without end: threads stay bounded by the pool; the "
          "queued tasks end at the deadline or, on a fast machine, the memory limit.")
def _():
    torch.manual_seed(0)
    return ForkFlood(), classification_batch(4, (4,), 3)


NESTING_DEPTH = 100000


def nest_constant(path, constant="987654", depth=NESTING_DEPTH):
    """Rewrites the saved top-level source so `constant` sits inside `depth`
    parentheses. The source's debug map no longer matches, so it is dropped."""
    with zipfile.ZipFile(path) as src:
        entries = [(i, src.read(i.filename)) for i in src.infolist()]
    with zipfile.ZipFile(path, "w") as out:
        for info, data in entries:
            if info.filename.endswith("/code/__torch__.py.debug_pkl"):
                continue
            if info.filename.endswith("/code/__torch__.py"):
                text = data.decode()
                assert text.count(constant) == 1, text
                data = text.replace(constant, "(" * depth + constant + ")" * depth).encode()
            out.writestr(info, data)


def save_model(model, path):
    kind = None
    if isinstance(model, tuple):
        kind, model = model
    if kind == "state_dict":
        torch.save(model.state_dict(), path)
        return
    scripted = torch.jit.script(model)
    scripted.save(path)
    if kind == "deep_nesting":
        nest_constant(path)
    if kind == "truncate":
        truncate(path)


class LossProgram(nn.Module):
    """The `.pt2` custom-loss contract (README, "Artifact contract";
    service/engine/exported/exported_model.h): one program whose forward
    takes the model's inputs and then the targets and returns (output, loss),
    the loss 0-d: here (model(*inputs), model.loss(output, targets)). A .pt2
    holds one program, so the loss cannot travel as a second method the way
    TorchScript's @torch.jit.export loss does."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, *inputs_and_targets):
        *inputs, targets = inputs_and_targets
        output = self.model(*inputs)
        loss = self.model.loss(output, targets)
        # The contract's output is one tensor: a tuple output (a VAE's
        # reconstruction, mu, logvar) gives its first, as TorchScript's
        # FirstTensor reading does.
        return (output[0] if isinstance(output, tuple) else output), loss


def has_own_loss(model):
    return callable(getattr(type(model), "loss", None))


def example_inputs(c, batch):
    """The positional inputs to export with: the batch's (as the engine will
    call forward), or the case's own example for a malformed batch."""
    if c["example"] is not None:
        return c["example"]()
    inputs = batch["inputs"] if isinstance(batch, dict) else batch[0]
    return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)


@contextlib.contextmanager
def quiet_export():
    """torch.export.export without its noise: a failed capture logs
    tracebacks and prints its partial graph to stderr before raising (the
    manifest keeps the error's first line), and nn.LSTM's flat-weights
    notice is a UserWarning about torch's own module, nothing a user can act
    on. The same silencing as the Python client's (client/python)."""
    manager = logging.Logger.manager
    loggers = [logging.getLogger(n) for n in list(manager.loggerDict)
               if n == "torch" or n.startswith("torch.")]
    was = [lg.disabled for lg in loggers]
    for lg in loggers:
        lg.disabled = True
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.filterwarnings("ignore", category=UserWarning,
                                    message=r"The tensor attributes self\.\w+\._flat_weights")
            yield
    finally:
        for lg, disabled in zip(loggers, was):
            lg.disabled = disabled


def save_twin(c, model, batch, path):
    """Writes the case's `.pt2` twin to `path`: None, or why there is none."""
    if c["no_pt2"]:
        return c["no_pt2"]
    kind = None
    if isinstance(model, tuple):
        kind, model = model
    if kind == "state_dict":
        return ("the artifact is a state_dict (torch.save), not a program: the same file in "
                "either format")
    args = example_inputs(c, batch)
    if has_own_loss(model):
        targets = batch["targets"] if isinstance(batch, dict) else batch[1]
        model, args = LossProgram(model), (*args, targets)
    model.train()  # The engine trains the program; training IR bakes the flags in.
    try:
        with quiet_export():
            program = torch.export.export(model, args)
    except Exception as e:  # noqa: BLE001  (every export failure is a reason, recorded)
        lines = str(e).strip().splitlines()
        return f"torch.export.export failed: {type(e).__name__}: {lines[0] if lines else ''}"
    torch.export.save(program, path)
    if kind == "truncate":
        truncate(path)
    return None


def truncate(path):
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--only", nargs="*")
    args = ap.parse_args()
    args.out = os.path.abspath(args.out)  # The manifest's paths work from anywhere.
    os.makedirs(args.out, exist_ok=True)
    manifest = []
    for c in CASES:
        if args.only and c["name"] not in args.only:
            continue
        model, batch = c["build"]()
        mp = os.path.join(args.out, c["name"] + ".model.pt")
        bp = os.path.join(args.out, c["name"] + ".batch.pt")
        save_model(model, mp)
        torch.save(batch, bp)
        # A fresh build: the twin starts from the same initial weights, not
        # from what scripting may have touched.
        model, batch = c["build"]()
        tp = os.path.join(args.out, c["name"] + ".model.pt2")
        if os.path.exists(tp):
            os.unlink(tp)  # A twin from an earlier run must not outlive its reason.
        reason = save_twin(c, model, batch, tp)
        twin = {"pt2": None, "pt2_reason": reason} if reason else {"pt2": tp}
        manifest.append({k: c[k] for k in ("name", "verdict", "codes", "flags", "doc",
                                           "service_only", "hints")}
                        | {"model": mp, "batch": bp} | twin)
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    twins = sum(1 for m in manifest if m["pt2"])
    print(f"wrote {len(manifest)} cases to {args.out} ({twins} with a .pt2 twin)",
          file=sys.stderr)


if __name__ == "__main__":
    main()
