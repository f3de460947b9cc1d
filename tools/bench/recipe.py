#!/usr/bin/env python3
"""The seeds' overfit-one-batch recipe, as a user runs it by hand in Python on
the same pinned torch: the eager nn.Module of a zoo case (same class, same
initialisation), Adam 1e-3, one fixed batch, a fixed number of steps.
Prints one JSON line with loop and whole-process times.

Usage: recipe.py --case NAME --steps N [--threads 1]
"""
import argparse
import json
import os
import sys
import time

START = time.perf_counter()
import torch  # noqa: E402  (import time is part of what a user waits for)
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "zoo"))
import make_zoo  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", default="mlp")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    c = next(c for c in make_zoo.CASES if c["name"] == args.case)
    model, batch = c["build"]()
    x, y = batch["inputs"], batch["targets"]
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    loop_start = time.perf_counter()
    for step in range(args.steps):
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
