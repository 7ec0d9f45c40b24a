"""Train the small FasterViT-architecture model used by the accuracy tests (fixed seed, CPU, ~1 min).

Real data: scikit-learn's handwritten digits (8x8, upscaled by the model's own eval preprocessing).
Writes fastervit_deploy/data/digits_fastervit.pth.tar (an fvdeploy checkpoint: weights + config).
Usage: .venv/bin/python scripts/train_digits.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

from fastervit import create_model, save_checkpoint
from fastervit_deploy.data.datasets import digits_split, to_batch

BASE = "faster_vit_0_224"
# Every FasterViT code path at toy size: conv stages, HAT with 2x2 carrier windows and propagation.
CONFIG = dict(dim=24, in_dim=16, depths=[1, 1, 2, 1], num_heads=[1, 2, 4, 8], window_size=[7, 7, 3, 3],
              mlp_ratio=2, resolution=96, num_classes=10, do_propagation=True, drop_path_rate=0.0)
OUT = Path(__file__).resolve().parents[1] / "fastervit_deploy" / "data" / "digits_fastervit.pth.tar"
EPOCHS, BATCH, LR, SEED = 12, 64, 2e-3, 0


def accuracy(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(torch.from_numpy(x[i : i + 128])).argmax(1) for i in range(0, len(x), 128)])
    return float((pred.numpy() == y).mean())


def main() -> int:
    torch.manual_seed(SEED)
    model = create_model(BASE, **CONFIG)
    size, pre = model.input_size, model.pretrained_cfg
    train_imgs, y_train, test_imgs, y_test = digits_split()
    x_train, x_test = to_batch(train_imgs, size, pre), to_batch(test_imgs, size, pre)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.05)
    steps = EPOCHS * ((len(x_train) + BATCH - 1) // BATCH)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=steps)
    gen = np.random.default_rng(SEED)
    start = time.time()
    for epoch in range(EPOCHS):
        model.train()
        order = gen.permutation(len(x_train))
        for i in range(0, len(order), BATCH):
            idx = order[i : i + BATCH]
            loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x_train[idx])), torch.from_numpy(y_train[idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        print(f"epoch {epoch + 1}: loss {loss.item():.3f}, test acc {accuracy(model, x_test, y_test):.4f} "
              f"({time.time() - start:.0f} s)")
    acc = accuracy(model, x_test, y_test)
    save_checkpoint(model.eval(), OUT, base_model=BASE, dataset="sklearn digits (stratified 80/20, seed 0)",
                    test_accuracy=acc)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.1f} MB), held-out accuracy {acc:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
