#!/usr/bin/env python3
"""Writes the .pt2 fixtures of exported_model_test into OUT_DIR.

Every program is made by the pinned torch (torch.export.export +
torch.export.save); next to each, NAME.ref.pt holds eager PyTorch's numbers
for the same weights as a torch.save'd dict {"inputs": ..., "targets": ...}
(the batch format the engine decodes), with "targets" the eager output.
The hostile archives are real archives edited in one field each.

Usage: make_pt2_fixtures.py OUT_DIR
"""
import io
import json
import os
import sys
import warnings
import zipfile

import torch
import torch.nn as nn

warnings.filterwarnings("ignore")
OUT = sys.argv[1]
os.makedirs(OUT, exist_ok=True)
torch.manual_seed(0)


def path(name):
    return os.path.join(OUT, name)


def save_ref(name, inputs, targets):
    torch.save({"inputs": inputs, "targets": targets}, path(name + ".ref.pt"))


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x):
        return self.net(x)


class ConvBn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc(x.view(x.size(0), -1))


class Drop(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(10, 64)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.drop(self.fc(x))


class NoGradRegion(nn.Module):
    """A frozen feature scale computed under no_grad: wrap_with_set_grad_enabled."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        with torch.no_grad():
            scale = x.abs().mean() + 1.0
        return self.fc(x / scale)


class OwnLoss(nn.Module):
    """The own-loss contract: forward(inputs..., targets) -> (output, 0-d loss)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x, y):
        out = self.fc(x)
        return out, nn.functional.cross_entropy(out, y)


class SignError(OwnLoss):
    """The sign-error fault in the own-loss contract: maximises the log-likelihood's negation."""

    def forward(self, x, y):
        out = self.fc(x)
        return out, -nn.functional.cross_entropy(out, y)


class IgnoresInput(Mlp):
    def forward(self, x):
        return self.net(x * 0.0)


def export(model, args, dynamic=None):
    return torch.export.export(model, args, dynamic_shapes=dynamic)


def main():
    batch = torch.export.Dim("batch", min=2, max=64)

    # MLP, static shapes: forward matches eager, gradients flow.
    m = Mlp()
    x = torch.randn(8, 12)
    torch.export.save(export(m, (x,)), path("mlp.pt2"))
    save_ref("mlp", x, m(x).detach())
    torch.save({"inputs": x, "targets": torch.randint(0, 3, (8,))}, path("mlp.batch.pt"))
    torch.save({"inputs": torch.randn(9, 12), "targets": torch.randint(0, 3, (9,))},
               path("mlp_batch9.batch.pt"))
    torch.export.save(export(IgnoresInput(), (x,)), path("ignores_input.pt2"))

    # Conv + BatchNorm, dynamic batch: train-mode output, running stats after
    # one train forward, eval output from the initial running stats.
    m = ConvBn()
    x = torch.randn(6, 2, 6, 6)
    ep = export(m, (x,), ({0: batch},))
    torch.export.save(ep, path("conv_bn.pt2"))
    m.eval()
    eval_out = m(x).detach()
    m.train()
    train_out = m(x).detach()
    save_ref("conv_bn", x, train_out)
    save_ref("conv_bn_eval", x, eval_out)
    save_ref("conv_bn_stats", m.bn.running_mean.clone(), m.bn.running_var.clone())
    torch.save({"inputs": torch.randn(3, 2, 6, 6), "targets": torch.randint(0, 5, (3,))},
               path("conv_bn_batch3.batch.pt"))
    torch.save({"inputs": torch.randn(65, 2, 6, 6), "targets": torch.randint(0, 5, (65,))},
               path("conv_bn_batch65.batch.pt"))
    # The same program in core ATen IR: functional BatchNorm whose new
    # running stats come back as signature buffer mutations.
    torch.export.save(ep.run_decompositions(), path("conv_bn_functional.pt2"))

    # Dropout: eval mode must match eager eval exactly.
    m = Drop()
    x = torch.randn(16, 10)
    torch.export.save(export(m, (x,)), path("dropout.pt2"))
    m.eval()
    save_ref("dropout_eval", x, m(x).detach())

    m = NoGradRegion()
    x = torch.randn(5, 6)
    torch.export.save(export(m, (x,)), path("no_grad.pt2"))
    save_ref("no_grad", x, m(x).detach())

    m = OwnLoss()
    x = torch.randn(8, 8)
    y = torch.randint(0, 4, (8,))
    torch.export.save(export(m, (x, y)), path("own_loss.pt2"))
    out, loss = m(x, y)
    torch.save({"inputs": x, "targets": y}, path("own_loss.batch.pt"))
    save_ref("own_loss", out.detach(), loss.detach())
    torch.export.save(export(SignError(), (x, y)), path("sign_error.pt2"))

    hostile()


def rewrite(src, dst, edit, compression=zipfile.ZIP_STORED):
    """Copies archive src to dst, passing each (name, bytes) through edit, which
    returns the new bytes."""
    with zipfile.ZipFile(path(src)) as zin, zipfile.ZipFile(path(dst), "w", compression) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, edit(info.filename, zin.read(info.filename)))


def edit_program(fn):
    def edit(name, data):
        if name.endswith("models/model.json"):
            doc = json.loads(data)
            fn(doc)
            return json.dumps(doc).encode()
        return data
    return edit


def retarget(target):
    def fn(doc):
        for n in doc["graph_module"]["graph"]["nodes"]:
            if n["target"] == "torch.ops.aten.relu.default":
                n["target"] = target
                return
        raise AssertionError("no relu node")
    return fn


def hostile():
    rewrite("mlp.pt2", "malformed_json.pt2",
            lambda n, d: d[: len(d) // 2] if n.endswith("models/model.json") else d)
    rewrite("mlp.pt2", "short_weight.pt2",
            lambda n, d: d[:-8] if n.endswith("data/weights/weight_0") else d)

    def traverse(name, data):
        if name.endswith("model_weights_config.json"):
            doc = json.loads(data)
            doc["config"]["net.0.weight"]["path_name"] = "../../../etc/passwd"
            return json.dumps(doc).encode()
        return data
    rewrite("mlp.pt2", "path_traversal.pt2", traverse)
    rewrite("mlp.pt2", "unknown_op.pt2", edit_program(retarget("torch.ops.aten.no_such_op.default")))
    rewrite("mlp.pt2", "file_op.pt2", edit_program(retarget("torch.ops.aten.from_file.default")))
    rewrite("mlp.pt2", "custom_op.pt2", edit_program(retarget("torch.ops.evil.relu.default")))

    def future_schema(doc):
        doc["schema_version"] = {"major": 9, "minor": 0}
    rewrite("mlp.pt2", "future_schema.pt2", edit_program(future_schema))

    def million_nodes(doc):
        relu = next(n for n in doc["graph_module"]["graph"]["nodes"]
                    if n["target"] == "torch.ops.aten.relu.default")
        arg = relu["inputs"][0]["arg"]["as_tensor"]["name"]
        doc["graph_module"]["graph"]["nodes"] = [
            {"target": "torch.ops.aten.relu.default",
             "inputs": [{"name": "self", "arg": {"as_tensor": {"name": arg}}}],
             "outputs": [{"as_tensor": {"name": f"r{i}"}}], "metadata": {}}
            for i in range(10**6)]
    # Deflated: the fixture stays small, the declared JSON size is ~100 MB.
    rewrite("mlp.pt2", "million_nodes.pt2", edit_program(million_nodes), zipfile.ZIP_DEFLATED)

    # A zip bomb: model.json inflates to 256 MiB (deflated to about 256 KiB).
    with zipfile.ZipFile(path("mlp.pt2")) as zin, \
            zipfile.ZipFile(path("zip_bomb.pt2"), "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith("models/model.json"):
                with zout.open(info.filename, "w", force_zip64=True) as f:
                    chunk = b" " * (1 << 20)
                    f.write(data)
                    for _ in range(256):
                        f.write(chunk)
            else:
                zout.writestr(info, data, compress_type=zipfile.ZIP_STORED)


if __name__ == "__main__":
    main()
