"""Clean predictions per model and image: a service of the harness that several experiments share.

The accuracy experiment (Fig. 1B) writes them as its CSV; error distribution (Fig. 7),
misclassified images (Fig. 4) and scrambling (Fig. 5, clean accuracy) reuse them. The units (one per
model) live in the accuracy experiment's unit store, ``results/accuracy/.units/<run config hash>/``,
whoever asks first: a model is scored once per run config, and only what is missing is computed.
"""

from __future__ import annotations

import pandas as pd
import torch

from bagrepro.harness.plan import Work

#: the experiment whose unit store holds the predictions (its CSVs are these predictions)
OWNER = "accuracy"
TOP_K = 5


def score_batch(model: torch.nn.Module, batch: torch.Tensor, labels: torch.Tensor) -> pd.DataFrame:
    """One row per image of a batch [B, 3, H, W] in [0, 1] with labels [B]: true class, top-5
    predicted classes, true-class logit and probability, top-1 / top-5 hits."""
    with torch.inference_mode():
        logits = model(model.zoo_spec.preprocess.normalize(batch)).float().cpu()
    k = min(TOP_K, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    frame = pd.DataFrame({"true_class": labels.numpy()})
    for rank in range(k):
        frame[f"pred_{rank + 1}"] = top[:, rank].numpy()
    frame["true_logit"] = logits.gather(1, labels[:, None])[:, 0].numpy()
    frame["true_prob"] = logits.softmax(1).gather(1, labels[:, None])[:, 0].numpy()
    frame["correct_top1"] = (top[:, 0] == labels).numpy()
    frame["correct_top5"] = (top == labels[:, None]).any(1).numpy()
    return frame


def predict(ctx, model: torch.nn.Module, images, desc: str) -> pd.DataFrame:
    """Per-image predictions of one model on an image set: ``image_id`` + :func:`score_batch`'s columns."""
    frames = []
    for batch, labels, ids in ctx.progress(images.batches(ctx.batch_size), desc=desc, unit="batch"):
        frame = score_batch(model, batch.to(ctx.device, non_blocking=True), labels)
        frame.insert(0, "image_id", ids)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def clean_predictions(ctx, names: list[str]) -> pd.DataFrame:
    """Per-image predictions of the models ``names`` on the run's images (model, role, image_id, ...),
    from the shared unit store, computing (through ``ctx.map_units``: sharded under torchrun when the
    calling experiment is) only the models that are missing."""
    def compute(name: str) -> pd.DataFrame:
        frame = predict(ctx, ctx.inference_model(name), ctx.images(), name)
        frame.insert(0, "model", name)
        frame.insert(1, "role", ctx.profile.role_of(name))
        return frame

    frames = ctx.map_units(ctx.units(owner=OWNER), list(names), compute)
    return pd.concat(frames.values(), ignore_index=True)


def clean_work(ctx, names: list[str]) -> list[Work]:
    """--plan: the clean predictions of ``names`` that :func:`clean_predictions` would compute: not
    finished in the unit store (with --force: every one; the store is not opened, as opening it
    under --force clears it), and not planned already in this run (``ctx.planned``)."""
    count = len(ctx.images())
    store = None if ctx.force else ctx.units(owner=OWNER)
    missing = [name for name in names
               if ("clean", name) not in ctx.planned and (store is None or not store.done(name))]
    ctx.planned.update(("clean", name) for name in names)
    return [Work(name, "clean predictions", count, count) for name in missing]
