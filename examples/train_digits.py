"""Softmax regression on scikit-learn's bundled 8x8 digits, trained with minibatch SGD in numpy.

No download: the data ships inside scikit-learn. Run it tracked on this machine with

    cairn run -e digits -p lr=0.1 -- python examples/train_digits.py

or unchanged in a TrainingRun (the operator injects the same CAIRN_* settings).
"""

import os
import time
import tempfile

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import cairn

# epoch_seconds: the least time an epoch takes (padded with sleep), so a live dashboard can follow
# this small model as it would a real one; it changes no result.
DEFAULTS = {"lr": 0.1, "epochs": 10, "batch_size": 64, "l2": 1e-4, "seed": 0, "epoch_seconds": 0.0}


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def main() -> None:
    cairn.init(experiment="digits", config=DEFAULTS)
    cfg = cairn.config
    rng = np.random.default_rng(int(cfg.seed))

    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=0.25, random_state=int(cfg.seed))
    n_classes = 10
    w = np.zeros((x.shape[1], n_classes))
    b = np.zeros(n_classes)
    onehot = np.eye(n_classes)

    step = 0
    for epoch in range(int(cfg.epochs)):
        epoch_started = time.monotonic()
        order = rng.permutation(len(x_train))
        for start in range(0, len(order) - int(cfg.batch_size) + 1, int(cfg.batch_size)):
            idx = order[start : start + int(cfg.batch_size)]
            xb, yb = x_train[idx], onehot[y_train[idx]]
            p = softmax(xb @ w + b)
            loss = -np.mean(np.sum(yb * np.log(p + 1e-12), axis=1)) + cfg.l2 * np.sum(w * w)
            grad = (p - yb) / len(idx)
            w -= cfg.lr * (xb.T @ grad + 2 * cfg.l2 * w)
            b -= cfg.lr * grad.sum(axis=0)
            acc = np.mean(p.argmax(axis=1) == y_train[idx])
            cairn.log({"loss": loss, "acc": acc}, step=step)
            step += 1
        val_p = softmax(x_val @ w + b)
        val_loss = -np.mean(np.log(val_p[np.arange(len(y_val)), y_val] + 1e-12))
        val_acc = np.mean(val_p.argmax(axis=1) == y_val)
        cairn.log({"val_loss": val_loss, "val_acc": val_acc, "epoch": epoch}, step=step - 1)
        print(f"epoch {epoch}: val_loss={val_loss:.4f} val_acc={val_acc:.4f}", flush=True)
        time.sleep(max(0.0, float(cfg.epoch_seconds) - (time.monotonic() - epoch_started)))

    model_path = os.path.join(tempfile.mkdtemp(), "model.npz")
    np.savez(model_path, w=w, b=b)
    cairn.log_artifact(model_path)
    cairn.finish()


if __name__ == "__main__":
    main()
