#!/usr/bin/env python3
"""The seeds' overfit-one-batch recipe, as a user runs it by hand in Python on
the same pinned torch: eager MLP 784-256-10, Adam 1e-3, one fixed batch.
Prints one JSON line with loop and whole-process times.

Usage: recipe.py BATCH.pt STEPS [THREADS]
"""
import json
import sys
import time

START = time.perf_counter()
import torch  # noqa: E402  (import time is part of what a user waits for)
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def main():
    batch_path, steps = sys.argv[1], int(sys.argv[2])
    torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else 1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
    batch = torch.load(batch_path)
    x, y = batch["inputs"], batch["targets"]
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    loop_start = time.perf_counter()
    for step in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        if step % 20 == 0:
            print(f"step {step}: loss={loss.item():.6f}", file=sys.stderr)
    end = time.perf_counter()
    print(json.dumps({"loop_seconds": end - loop_start, "total_seconds": end - START,
                      "final_loss": loss.item()}))


if __name__ == "__main__":
    main()
