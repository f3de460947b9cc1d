#!/usr/bin/env python3
"""Writes the GPU-only cases of tools/gpu-check.sh: real TorchScript artifacts
whose behaviour differs between CPU and CUDA by design.

  gpu_memory_hog        forward() allocates 4 GiB blocks on the input's device
                        until 256 GiB are held: more than any single GPU has.
                        On CPU it allocates nothing (a tiny healthy MLP), so a
                        mistaken CPU run cannot exhaust host memory.
  gpu_fp16_overflow     an MLP whose hidden activations are scaled by 1e5 before
                        the second matmul and back after, run with --dtype fp16:
                        autocast's cast to fp16 overflows (65504 is fp16's max)
                        while fp32 is healthy. CPU autocast runs it too, so both
                        devices must name MIXED_PRECISION_OVERFLOW.
  gpu_embedding_oob     token ids past the embedding table: the CPU op raises
                        (FORWARD_ERROR), the CUDA kernel fails a device-side
                        assert, which must be DEVICE_ASSERT naming the op via
                        the CPU replay, not an INTERNAL_ERROR.
  gpu_upsample_atomics  a conv net with bilinear upsampling, whose CUDA backward
                        accumulates with atomicAdd (one of the kernels
                        setDeterministicAlgorithms only warns about): the
                        bitwise replay may differ on CUDA, never on CPU.

Writes OUT/<case>.model.pt, OUT/<case>.batch.pt and OUT/gpu_manifest.json,
entries shaped like tools/zoo/make_zoo.py's manifest plus `cuda_verdicts`
(verdicts acceptable on CUDA) and `cuda_codes` (codes required on CUDA).

Usage: make_gpu_cases.py OUT_DIR
"""
import json
import os
import sys
import warnings
from typing import Final, List

import torch
import torch.nn as nn
import torch.nn.functional as F

warnings.filterwarnings("ignore")  # TorchScript deprecation notices.

# 64 blocks of 2^30 float32 (4 GiB each) = 256 GiB, well over an H200's 141 GB.
HOG_BLOCKS = 64
HOG_BLOCK_ELEMENTS = 1 << 30


class GpuMemoryHog(nn.Module):
    blocks: Final[int]
    block_elements: Final[int]

    def __init__(self):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 4))
        self.blocks = HOG_BLOCKS
        self.block_elements = HOG_BLOCK_ELEMENTS

    def forward(self, x):
        held: List[torch.Tensor] = []
        if x.device.type == "cuda":
            for _ in range(self.blocks):
                # zeros, not empty: the pages are really written, not just reserved.
                held.append(torch.zeros(self.block_elements, device=x.device))
        out = self.fc(x)
        for t in held:
            out = out + t[0]
        return out


class UpsampleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 16 * 16, 10)

    def forward(self, x):
        # 8x8 -> 16x16: each input pixel feeds several output pixels, so the
        # backward sums many contributions into one cell (atomicAdd on CUDA).
        h = F.interpolate(F.relu(self.conv(x)), scale_factor=2.0, mode="bilinear",
                          align_corners=False)
        return self.fc(h.flatten(1))


class ScaledHidden(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 4)

    def forward(self, x):
        # Same function as fc2(relu(fc1(x))) in exact arithmetic; the 1e5 scale
        # of fc2's input is past fp16's range.
        return self.fc2(F.relu(self.fc1(x)) * 1.0e5) * 1.0e-5


class EmbeddingBag(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.fc = nn.Linear(8, 3)

    def forward(self, ids):
        return self.fc(self.emb(ids).mean(1))


def oob_token_batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 10, (8, 5), generator=g)
    ids[3, 2] = 12  # Past the 10-row table.
    return {"inputs": ids, "targets": torch.randint(0, 3, (8,), generator=g)}


def classification_batch(n, shape, classes, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {"inputs": torch.randn(n, *shape, generator=g),
            "targets": torch.randint(0, classes, (n,), generator=g)}


CASES = [
    dict(name="gpu_memory_hog", build=lambda: (GpuMemoryHog(), classification_batch(8, (8,), 4)),
         verdict="PASS", codes=["OVERFIT_CONVERGED"], flags=["--timeout", "120"],
         cuda_verdicts=["ERROR"], cuda_codes=["WORKER_OOM"],
         doc=f"Holds {HOG_BLOCKS} x 4 GiB on the GPU (256 GiB): more than the card has. "
             "CPU: a tiny healthy MLP."),
    dict(name="gpu_fp16_overflow",
         build=lambda: (ScaledHidden(), classification_batch(8, (16,), 4)),
         verdict="FAIL", codes=["MIXED_PRECISION_OVERFLOW"], flags=["--dtype", "fp16"],
         cuda_verdicts=["FAIL"], cuda_codes=["MIXED_PRECISION_OVERFLOW"],
         doc="Hidden activations x1e5 under fp16 autocast: overflow in fp16, healthy in fp32."),
    dict(name="gpu_embedding_oob", build=lambda: (EmbeddingBag(), oob_token_batch()),
         verdict="FAIL", codes=["FORWARD_ERROR"], flags=[],
         cuda_verdicts=["FAIL"], cuda_codes=["DEVICE_ASSERT"],
         doc="A token id past the embedding table: CPU raises, CUDA asserts in the kernel."),
    dict(name="gpu_upsample_atomics",
         build=lambda: (UpsampleNet(), classification_batch(16, (3, 8, 8), 10)),
         verdict="PASS", codes=["OVERFIT_CONVERGED"], flags=[],
         cuda_verdicts=["PASS", "WARN"], cuda_codes=["OVERFIT_CONVERGED"],
         doc="Bilinear upsampling: CUDA's backward uses atomicAdd; a NONDETERMINISTIC WARN "
             "on CUDA is the GPU-only finding this probes for."),
]


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    manifest = []
    for c in CASES:
        torch.manual_seed(0)
        model, batch = c["build"]()
        mp = os.path.join(out, c["name"] + ".model.pt")
        bp = os.path.join(out, c["name"] + ".batch.pt")
        torch.jit.script(model).save(mp)
        torch.save(batch, bp)
        manifest.append({k: v for k, v in c.items() if k != "build"}
                        | {"model": mp, "batch": bp, "service_only": False})
    with open(os.path.join(out, "gpu_manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    print(f"wrote {len(manifest)} GPU cases to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
