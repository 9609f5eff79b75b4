"""Held-out evaluation of a CLIP on the synthetic benchmark (``vlmfast synth eval``).

Every figure is image->text top-1 accuracy among a small candidate set:

- ``hard_negatives``: ``test`` split, candidates = the true caption and its
  swapped-attributes and swapped-relation negatives (samples having at least one);
- ``vs_<kind>``: the true caption against that one negative kind (test split);
- ``all_negatives``: the true caption against all of its negatives (test split);
- ``zero_shot_shape`` / ``zero_shot_color``: one-object ``test`` images,
  candidates "a {shape}" over all shapes / "a {color} shape" over all colors;
- ``compositional``: ``compositional`` split, the true caption against all of its
  negatives; ``compositional_color_shape`` / ``compositional_relation`` per family.

The fresh evaluation seed is never the training seed (the CLI refuses that).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from vlmfast.data.synthetic import spec
from vlmfast.data.synthetic.captions import NEGATIVE_KINDS
from vlmfast.data.synthetic.dataset import SyntheticSample, make_samples, render_batch
from vlmfast.data.synthetic.model import pixels_from_uint8

ScoreFn = Callable[[np.ndarray, Sequence[str]], np.ndarray]
"""(uint8 images [B,H,W,3], texts) -> similarity [B, n_texts]."""


def clip_score_fn(model: Any, tokenizer: Any, batch_size: int = 256) -> ScoreFn:
    """A ScoreFn from an open_clip-style model (``encode_image``/``encode_text``)."""
    import torch

    def score(images: np.ndarray, texts: Sequence[str]) -> np.ndarray:
        model.eval()
        with torch.no_grad():
            imgs = []
            for k in range(0, len(images), batch_size):
                e = model.encode_image(pixels_from_uint8(images[k : k + batch_size]))
                imgs.append(torch.nn.functional.normalize(e, dim=-1))
            txts = []
            for k in range(0, len(texts), batch_size):
                e = model.encode_text(tokenizer(list(texts[k : k + batch_size])))
                txts.append(torch.nn.functional.normalize(e, dim=-1))
            return (torch.cat(imgs) @ torch.cat(txts).T).numpy()

    return score


def _candidate_accuracy(
    score: ScoreFn, samples: list[SyntheticSample], kinds: Sequence[str]
) -> tuple[float, int]:
    """Top-1 of the true caption among it and its negatives of ``kinds`` (samples with any)."""
    rows = [s for s in samples if any(k in s.negatives for k in kinds)]
    if not rows:
        return float("nan"), 0
    texts: list[str] = []
    spans = []
    for s in rows:
        cands = [s.caption.text] + [s.negatives[k].text for k in kinds if k in s.negatives]
        spans.append((len(texts), len(cands)))
        texts.extend(cands)
    uniq = sorted(set(texts))
    where = {t: i for i, t in enumerate(uniq)}
    sims = score(render_batch(rows), uniq)
    correct = 0
    for r, (start, count) in enumerate(spans):
        vals = [sims[r, where[t]] for t in texts[start : start + count]]
        correct += int(vals[0] > max(vals[1:]))  # ties count as wrong
    return correct / len(rows), len(rows)


def _zero_shot(score: ScoreFn, samples: list[SyntheticSample], attr: str) -> tuple[float, int]:
    rows = [s for s in samples if len(s.scene.objects) == 1]
    classes = spec.SHAPES if attr == "shape" else spec.COLORS
    prompts = [f"a {c}" if attr == "shape" else f"a {c} shape" for c in classes]
    prompts = [p.replace("a orange", "an orange") for p in prompts]
    sims = score(render_batch(rows), prompts)
    truth = np.asarray([classes.index(getattr(s.scene.objects[0], attr)) for s in rows])
    true_sim = sims[np.arange(len(rows)), truth]
    others = sims.copy()
    others[np.arange(len(rows)), truth] = -np.inf
    return float(np.mean(true_sim > others.max(axis=1))), len(rows)  # ties count as wrong


def evaluate(score: ScoreFn, seed: int, n: int = 2000) -> dict[str, Any]:
    """Every accuracy of the held-out table for ``n`` samples per split at ``seed``."""
    test = make_samples(seed, "test", range(n))
    comp = make_samples(seed, "compositional", range(n))
    single = [s for s in make_samples(seed + 1, "test", range(3 * n)) if len(s.scene.objects) == 1]
    single = single[:n]
    res: dict[str, tuple[float, int]] = {}
    res["hard_negatives"] = _candidate_accuracy(
        score, test, ("swapped_attributes", "swapped_relation")
    )
    for kind in NEGATIVE_KINDS:
        res[f"vs_{kind}"] = _candidate_accuracy(score, test, (kind,))
    res["all_negatives"] = _candidate_accuracy(score, test, NEGATIVE_KINDS)
    res["zero_shot_shape"] = _zero_shot(score, single, "shape")
    res["zero_shot_color"] = _zero_shot(score, single, "color")
    res["compositional"] = _candidate_accuracy(score, comp, NEGATIVE_KINDS)
    res["compositional_color_shape"] = _candidate_accuracy(score, comp[0::2], NEGATIVE_KINDS)
    res["compositional_relation"] = _candidate_accuracy(score, comp[1::2], NEGATIVE_KINDS)
    res["compositional_vs_swapped"] = _candidate_accuracy(
        score, comp, ("swapped_attributes", "swapped_relation")
    )
    return {
        "seed": seed,
        "n_per_split": n,
        "summary": {k: v[0] for k, v in res.items()},
        "counts": {k: v[1] for k, v in res.items()},
        "floors": dict(FLOORS),
    }


FLOORS: dict[str, float] = {
    "hard_negatives": 0.98,
    "zero_shot_shape": 0.98,
    "zero_shot_color": 0.98,
    "compositional": 0.90,
}
"""The quality floors of the bundled model (issue 4)."""


def evaluate_model(model: Any, tokenizer: Any, seed: int, n: int = 2000) -> dict[str, Any]:
    """``evaluate`` for an open_clip-style model."""
    return evaluate(clip_score_fn(model, tokenizer), seed, n)


def format_table(result: dict[str, Any]) -> str:
    """The held-out table as aligned text."""
    lines = [f"synthetic benchmark, held-out seed {result['seed']}", ""]
    lines.append(f"{'metric':28s} {'top-1':>8s} {'n':>6s} {'floor':>6s}")
    for key, acc in result["summary"].items():
        floor = result["floors"].get(key)
        fl = f"{floor:.2f}" if floor is not None else ""
        lines.append(f"{key:28s} {100 * acc:7.2f}% {result['counts'][key]:6d} {fl:>6s}")
    return "\n".join(lines)
