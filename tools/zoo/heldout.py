#!/usr/bin/env python3
"""A held-out set of structural faults: models no engine test was written for.

Each case is a small TorchScript model with one fault of a kind the published
taxonomies of real deep-learning faults list, and a batch it should be able to
fit without that fault. Its `doc` says which category it comes from:

  [H20] Humbatova et al. 2020, "Taxonomy of Real Faults in Deep Learning
        Systems" (ICSE): Model / Layers / Activation function, Layer
        properties, Tensors & Inputs, Training / Loss function, ...
  [I19] Islam et al. 2019, "A Comprehensive Study on Deep Learning Bug
        Characteristics" (FSE): data bugs, structural bugs (data flow,
        logic), model bugs.
  [Z18] Zhang et al. 2018, "An Empirical Study on TensorFlow Program Bugs"
        (ISSTA): incorrect model parameter or structure (IPS), unaligned
        tensor (UT), confusion with the computation model (CCM), API misuse.

The set is for measuring, not for fitting: batch 1 was written before the
structural probes (service/engine/checks/structure.cc) were built and the
baseline numbers of the engine without them are in the commit that added it;
batch 2 was written after the probes, without looking at the probes' results
on it first. Every case is a fault: none may get PASS
(tests/e2e/heldout_test.py). Writes OUT/<case>.model.pt, OUT/<case>.batch.pt
and OUT/manifest.json in make_zoo.py's format (verdict "!PASS", no codes).

Usage: heldout.py OUT_DIR [--only NAME ...] [--batch 1|2]
"""
import argparse
import json
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_zoo import classification_batch, gen, mlp, save_model  # noqa: E402

CASES = []


def case(name, batch, flags=None, doc="", known_miss=None):
    """known_miss: why the engine is known to PASS this fault (printed, not
    failed, by heldout_test.py; every other case must not PASS)."""
    def register(fn):
        CASES.append(dict(name=name, batch=batch, flags=flags or [], doc=doc, build=fn,
                          known_miss=known_miss))
        return fn
    return register


def rings(n=64, classes=4, seed=1):
    """2-D points labelled by their radius band: not linearly separable, easy
    for any small MLP with a non-linearity."""
    g = gen(seed)
    x = torch.randn(n, 2, generator=g)
    r = x.norm(dim=1)
    edges = torch.quantile(r, torch.linspace(0, 1, classes + 1)[1:-1])
    return {"inputs": x, "targets": torch.bucketize(r, edges)}


def smooth_regression(n=64, seed=1, scale=1.0):
    """Targets a smooth non-linear function of 2 inputs (one output)."""
    g = gen(seed)
    x = torch.randn(n, 2, generator=g)
    y = torch.sin(2 * x[:, :1]) * torch.cos(2 * x[:, 1:2]) + 0.5 * x[:, :1]
    return {"inputs": x, "targets": scale * y}


# --- Batch 1: written before the probes -------------------------------------

@case("missing_activation", 1,
      doc="[H20 Model/Layers/Activation function/Missing activation function] a 3-layer MLP "
          "with no non-linearity between its Linear layers, on ring-shaped classes.")
def _():
    torch.manual_seed(0)
    return mlp([2, 64, 64, 4], act=nn.Identity), rings()


class DetachedHidden(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(20, 4)
        self.fc2 = nn.Linear(4, 5)

    def forward(self, x):
        h = F.relu(self.fc1(x)).detach()  # The bug: cuts the graph below fc2.
        return self.fc2(h)


@case("detach_in_forward", 1,
      doc="[I19 structural/data flow; Z18 CCM] .detach() on the hidden layer inside forward: "
          "the first layer never learns, the head alone cannot fit.")
def _():
    torch.manual_seed(0)
    return DetachedHidden(), classification_batch(16, (20,), 5)


class NoGradEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = mlp([32, 64, 8])
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        with torch.no_grad():  # The bug: meant for a frozen encoder, freezes the whole path.
            h = self.enc(x)
        return self.head(F.relu(h))


@case("no_grad_in_forward", 1,
      doc="[Z18 CCM; I19 structural/data flow] the encoder runs under torch.no_grad() inside "
          "forward: no gradient reaches it.")
def _():
    torch.manual_seed(0)
    return NoGradEncoder(), classification_batch(32, (32,), 10)


class ArgmaxLookup(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(20, 8)
        self.table = nn.Embedding(8, 5)

    def forward(self, x):
        return self.table(self.fc(x).argmax(1))  # The bug: argmax is not differentiable.


@case("argmax_in_path", 1,
      doc="[H20 Model/Layers/wrong layer (non-differentiable op); Z18 APIM] a hard argmax "
          "routing between two trainable parts: the part before it gets no gradient.")
def _():
    torch.manual_seed(0)
    return ArgmaxLookup(), classification_batch(16, (20,), 5)


class RoundedFeatures(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(20, 16)
        self.fc2 = nn.Linear(16, 5)

    def forward(self, x):
        return self.fc2(torch.round(4 * self.fc1(x)))  # Quantised in training: zero gradient.


@case("round_in_path", 1,
      doc="[H20 Tensors&Inputs/wrong type (rounding, quantising in training)] torch.round "
          "on the hidden features: their gradient is zero everywhere.")
def _():
    torch.manual_seed(0)
    return RoundedFeatures(), classification_batch(16, (20,), 5)


class SignActivation(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(2, 32)
        self.fc2 = nn.Linear(32, 1)

    def forward(self, x):
        return self.fc2(torch.sign(self.fc1(x)))


@case("sign_activation", 1, flags=["--loss", "mse"],
      doc="[H20 Model/Layers/Activation function/wrong type of activation] torch.sign as the "
          "hidden activation of a regression MLP: no gradient to the first layer.")
def _():
    torch.manual_seed(0)
    return SignActivation(), smooth_regression()


class ClampedOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = mlp([2, 64, 64, 1])

    def forward(self, x):
        return torch.clamp(self.net(x), -1.0, 1.0)


@case("clamp_output", 1, flags=["--loss", "mse"],
      doc="[H20 Model/Layers/Activation function/wrong activation at output] the regression "
          "output clamped to [-1, 1] while the targets span about +-5.")
def _():
    torch.manual_seed(0)
    return ClampedOutput(), smooth_regression(scale=5.0)


class TanhOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = mlp([2, 64, 64, 1])

    def forward(self, x):
        return torch.tanh(self.net(x))


@case("tanh_output_unscaled_targets", 1, flags=["--loss", "mse"],
      doc="[H20 Training/Data preprocessing/missing target normalisation] a tanh output "
          "layer with regression targets 20x outside (-1, 1).")
def _():
    torch.manual_seed(0)
    return TanhOutput(), smooth_regression(scale=20.0)


class SigmoidRegressor(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = mlp([20, 64, 1])

    def forward(self, x):
        return torch.sigmoid(self.net(x))


@case("class_ids_under_sigmoid_mse", 1, flags=["--loss", "mse"],
      doc="[H20 Training/Loss function/wrong loss function] class ids 0..4 (as floats) as "
          "the target of a sigmoid output under mse: the output cannot exceed 1.")
def _():
    torch.manual_seed(0)
    b = classification_batch(16, (20,), 5)
    return SigmoidRegressor(), {"inputs": b["inputs"],
                                "targets": b["targets"].float().unsqueeze(1)}


class ReluOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = mlp([8, 64, 1])

    def forward(self, x):
        return F.relu(self.net(x))


@case("relu_on_output", 1, flags=["--loss", "mse"],
      doc="[H20 Model/Layers/Activation function/redundant activation at output] ReLU after "
          "the last layer of a regressor whose targets are half negative.")
def _():
    torch.manual_seed(0)
    g = gen(1)
    x = torch.randn(32, 8, generator=g)
    return ReluOutput(), {"inputs": x, "targets": x[:, :1] * 2 - x[:, 1:2]}


@case("bottleneck_width_1", 1,
      doc="[H20 Model/Layers/Layer properties/wrong number of neurons; Z18 IPS] a linear "
          "bottleneck of width 1 before a 10-class head: rank-1 logits.")
def _():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 1), nn.Linear(1, 10)), classification_batch(32, (64,), 10)


class SoftmaxOverBatch(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = mlp([20, 64, 5])

    def forward(self, x):
        return F.log_softmax(self.net(x), dim=0)  # The bug: dim 0 is the batch.


@case("log_softmax_over_batch", 1, flags=["--loss", "nll"],
      doc="[H20 Model/Layers/Layer properties/wrong dimension of softmax; Z18 UT] "
          "log_softmax over dim 0 (the batch) before nll: samples compete with each other.")
def _():
    torch.manual_seed(0)
    return SoftmaxOverBatch(), classification_batch(16, (20,), 5)


class PoolOverBatch(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 32)
        self.fc = nn.Linear(32, 5)

    def forward(self, tokens):
        return self.fc(self.emb(tokens).mean(0))  # Meant mean(1): pools over the batch.


@case("pool_over_batch", 1,
      doc="[Z18 UT; H20 Tensors&Inputs/wrong tensor shape] a bag-of-embeddings classifier "
          "that averages over dim 0 (the batch) instead of the sequence; batch size equals "
          "sequence length, so the shapes still line up.")
def _():
    torch.manual_seed(0)
    g = gen(1)
    return PoolOverBatch(), {"inputs": torch.randint(0, 50, (16, 16), generator=g),
                             "targets": torch.randint(0, 5, (16,), generator=g)}


class TransposeReshape(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = mlp([48, 64, 5])

    def forward(self, x):
        # x is [N, T, F]; meant x.reshape(N, T * F), but reshapes the [T, N, F]
        # transpose: each row mixes several samples.
        n = x.size(0)
        return self.net(x.transpose(0, 1).reshape(n, -1))


@case("transpose_reshape", 1,
      known_miss="the mixed rows still memorise one batch; the coupling probe measures it "
                 "(cross-sample change) but no finding code says 'samples mixed' yet",
      doc="[H20 Tensors&Inputs/wrong tensor shape (reshape after transpose); Z18 UT] a "
          "reshape of the transposed sequence tensor: every row mixes samples.")
def _():
    torch.manual_seed(0)
    g = gen(1)
    return TransposeReshape(), {"inputs": torch.randn(16, 6, 8, generator=g),
                                "targets": torch.randint(0, 5, (16,), generator=g)}


class WrongInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(2, 32)
        self.b = nn.Linear(2, 32)
        self.head = nn.Linear(32, 4)

    def forward(self, x, y):
        return self.head(F.relu(self.a(x) + self.b(x)))  # Copy-paste: meant self.b(y).


@case("ignores_second_input", 1,
      doc="[I19 structural/data flow (wrong variable)] a copy-paste bug feeds x to both "
          "branches; the labels depend only on y.")
def _():
    torch.manual_seed(0)
    g = gen(1)
    y = torch.randn(64, 2, generator=g)
    r = rings(64, 4, seed=2)
    return WrongInput(), {"inputs": (torch.randn(64, 2, generator=g), r["inputs"]),
                          "targets": r["targets"]}


class SaturatedSigmoid(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(20, 64)
        self.fc2 = nn.Linear(64, 5)

    def forward(self, x):
        return self.fc2(torch.sigmoid(200 * self.fc1(x)))


@case("saturated_sigmoid_hidden", 1,
      doc="[H20 Model/Weights/wrong weight initialisation; activation saturation] sigmoid "
          "hidden units with pre-activations scaled 200x: every unit sits at 0 or 1.")
def _():
    torch.manual_seed(0)
    return SaturatedSigmoid(), classification_batch(16, (20,), 5)


class StepActivation(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 6)

    def forward(self, x):
        h = (self.conv(x) > 0).float()  # A hard threshold: gradient zero.
        return self.fc(h.flatten(1))


@case("step_activation_cnn", 1,
      doc="[H20 Model/Layers/Activation function/wrong type (hard threshold)] a CNN whose "
          "conv features go through (h > 0).float().")
def _():
    torch.manual_seed(0)
    return StepActivation(), classification_batch(32, (1, 8, 8), 6)


# --- Batch 2: written after the probes, run once they were final ------------

class OneHotRouting(nn.Module):
    def __init__(self):
        super().__init__()
        self.gate = nn.Linear(16, 8)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        return self.head(F.one_hot(self.gate(x).argmax(1), 8).float())


@case("one_hot_argmax_routing", 2,
      doc="[H20 Model/Layers/wrong layer (non-differentiable routing); Z18 APIM] hard "
          "one-hot routing by argmax of a learned gate: the gate gets no gradient.")
def _():
    torch.manual_seed(0)
    return OneHotRouting(), classification_batch(24, (16,), 4)


class IntCastFeatures(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(12, 16)
        self.fc2 = nn.Linear(16, 1)

    def forward(self, x):
        return self.fc2((10 * self.fc1(x)).long().float())  # An integer cast in the path.


@case("int_cast_in_path", 2, flags=["--loss", "mse"],
      doc="[H20 Tensors&Inputs/wrong tensor type; I19 data bug (type)] the hidden features "
          "cast to long and back inside forward: no gradient below the cast.")
def _():
    torch.manual_seed(0)
    g = gen(3)
    x = torch.randn(48, 12, generator=g)
    return IntCastFeatures(), {"inputs": x, "targets": torch.tanh(x[:, :3]).sum(1, keepdim=True)}


class HardtanhOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = mlp([4, 64, 2])

    def forward(self, x):
        return F.hardtanh(self.net(x))


@case("hardtanh_output", 2, flags=["--loss", "smooth_l1"],
      doc="[H20 Model/Layers/Activation function/wrong activation at output] hardtanh after "
          "the last layer of a 2-output regressor with targets up to about +-4.")
def _():
    torch.manual_seed(0)
    g = gen(4)
    x = torch.randn(40, 4, generator=g)
    return HardtanhOutput(), {"inputs": x, "targets": torch.stack(
        (2 * x[:, 0] + x[:, 1], x[:, 2] - 2 * x[:, 3]), 1)}


class SoftplusOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = mlp([6, 64, 1])

    def forward(self, x):
        return F.softplus(self.net(x))


@case("softplus_output_signed_targets", 2, flags=["--loss", "mse"],
      doc="[H20 Model/Layers/Activation function/wrong activation at output] a softplus "
          "output (a positive-rate head) on signed regression targets.")
def _():
    torch.manual_seed(0)
    g = gen(5)
    x = torch.randn(32, 6, generator=g)
    return SoftplusOutput(), {"inputs": x, "targets": x[:, :1] - x[:, 1:2]}


class TinyEmbedding(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(40, 1)
        self.head = nn.Linear(1, 8)

    def forward(self, tokens):
        return self.head(self.emb(tokens).mean(1))


@case("embedding_dim_1", 2,
      doc="[H20 Model/Layers/Layer properties/wrong number of neurons; Z18 IPS] an "
          "embedding of width 1 under an 8-class head: one number per sequence.")
def _():
    torch.manual_seed(0)
    g = gen(6)
    return TinyEmbedding(), {"inputs": torch.randint(0, 40, (32, 10), generator=g),
                             "targets": torch.randint(0, 8, (32,), generator=g)}


class LinearCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 2)

    def forward(self, x):
        return self.fc(self.conv2(self.conv1(x)).flatten(1))  # No activation anywhere.


@case("cnn_without_activation", 2,
      doc="[H20 Model/Layers/Activation function/missing activation function] a two-conv "
          "CNN with no activation, classifying 4x4 images by whether their energy is above "
          "the median.")
def _():
    torch.manual_seed(0)
    g = gen(7)
    x = torch.randn(48, 1, 4, 4, generator=g)
    e = x.pow(2).flatten(1).sum(1)
    return LinearCNN(), {"inputs": x, "targets": (e > e.median()).long()}


def build(out, only=None, batches=(1, 2)):
    out = os.path.abspath(out)
    os.makedirs(out, exist_ok=True)
    manifest = []
    for c in CASES:
        if (only and c["name"] not in only) or c["batch"] not in batches:
            continue
        model, batch = c["build"]()
        mp = os.path.join(out, c["name"] + ".model.pt")
        bp = os.path.join(out, c["name"] + ".batch.pt")
        save_model(model, mp)
        torch.save(batch, bp)
        manifest.append({"name": c["name"], "heldout_batch": c["batch"], "verdict": "!PASS",
                         "codes": [], "flags": c["flags"], "doc": c["doc"], "hints": {}, "known_miss": c["known_miss"],
                         "service_only": False, "model": mp, "batch": bp, "pt2": None,
                         "pt2_reason": "held-out set: TorchScript only"})
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    print(f"wrote {len(manifest)} held-out cases to {out}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--batch", type=int, choices=(1, 2), action="append")
    args = ap.parse_args()
    build(args.out, args.only, tuple(args.batch or (1, 2)))


if __name__ == "__main__":
    main()
