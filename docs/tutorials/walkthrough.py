# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The paper's analysis on the bundled model
#
# This tutorial walks the whole analysis on `synthetic:tiny`, the small CLIP that ships
# with vlmfast and needs no download: load the model, cache activations, train a sparse
# autoencoder (SAE), score its features for concepts, find the feature for **red**, trace
# where the image tower carries what the caption needs, find the circuit that binds the
# word *red* and ablate it. Every step is one library call; the data are kept tiny so the
# notebook runs in a few minutes on a laptop CPU (CI executes it on every change).
#
# The same steps at full size are one command: `vlmfast run --config examples/demo.toml`
# (see [the demo](../getting-started/demo.md)); on your own model and images, see
# [Your model, your images](../getting-started/your-data.md).

# %%
import tempfile
import time
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import display

import vlmfast as vf

warnings.filterwarnings("ignore", message="IProgress not found")  # no widgets here
torch.manual_seed(0)
torch.set_num_threads(1)  # the tiny model gains nothing from more threads
work = Path(tempfile.mkdtemp(prefix="vlmfast-tutorial-"))


def show(fig: plt.Figure) -> None:
    """Shows a figure inline (whatever matplotlib backend a library call has chosen)."""
    display(fig)
    plt.close(fig)


t_start = time.perf_counter()

# %% [markdown]
# ## 1. Load the pair
#
# `vf.load_pair` returns a `HookedPair`: both towers of a CLIP or SigLIP model with
# named hook points on every head, MLP neuron and residual stream. `synthetic:tiny` has
# 4 image layers and 3 text layers with 4 heads each; it was trained on the synthetic
# concept-binding benchmark (coloured shapes with captions), so its ground truth is known.

# %%
pair = vf.load_pair("synthetic:tiny")
print(pair.config)
print(len(pair.hook_points()), "hook points, e.g.", pair.hook_points()[:4])

# %% [markdown]
# ## 2. Cache activations
#
# `run_cache` runs the model over a data source and writes the chosen hooks' rows (one
# per image patch and caption token) into a Zarr activation store, with each sample's
# concept labels (what the image shows, what the caption says).

# %%
from vlmfast.caching import CacheConfig, run_cache

IMAGE_HOOK = "image.blocks.3.resid_post"  # the last image block's residual stream
store = run_cache(
    CacheConfig(
        model="synthetic:tiny",
        data="synthetic:n=400,seed=11",
        hooks=[IMAGE_HOOK],
        out=work / "store.zarr",
        positions="all",
        batch_size=100,
        overwrite=True,
        progress=False,
    ),
    log=lambda _msg: None,
)
print(IMAGE_HOOK, "rows:", store.n_rows(IMAGE_HOOK), "width:", store.width(IMAGE_HOOK))

# %% [markdown]
# ## 3. Train a sparse autoencoder
#
# `train_sae` is the one training recipe (the same one `vlmfast train-sae` and the
# pipeline use): a top-k SAE on the image patch rows (the CLS row left out).

# %%
from vlmfast.sae import TrainSAEConfig, train_sae

sae_result = train_sae(
    store,
    TrainSAEConfig(
        hook=IMAGE_HOOK, k=[16], n_latents=[256], lr=[1e-3], batch_size=256, steps=600, seed=0
    ),
    work / "sae",
    progress=False,
)
trained = sae_result.passes[0].saes[0]
sae = trained.sae
fig, ax = plt.subplots(figsize=(5, 3))
ax.plot(trained.fvu)
ax.set_xlabel("logged step")
ax.set_ylabel("fraction of variance unexplained")
ax.set_title("SAE training")
show(fig)

# %% [markdown]
# ## 4. Score the features
#
# `score_store` scores every SAE feature against every concept: here each feature's
# maximum over an image's patches, one value per image, against what the image shows.
# The AUROC says how well the feature separates images with the concept from images
# without it; each comes with a DeLong standard error.

# %%
from vlmfast.scoring import score_store

scores = score_store(store, IMAGE_HOOK, sae=sae, tokens="max")
image_scores = scores.per_modality["image"].scores
names = list(scores.concepts.names)
auroc = np.asarray(image_scores.auroc)  # [features, concepts]
se = np.asarray(image_scores.se)
print(len(names), "concepts:", names[:12], "...")

# %% [markdown]
# ## 5. Find the red feature
#
# The feature with the highest AUROC for `red`, with its 95% interval. The best of many
# features is an optimistic pick, so compare it with the next best: a feature that
# stands apart is the planted concept, a crowd of near-ties is not.

# %%
red = names.index("red")
order = np.argsort(-np.nan_to_num(auroc[:, red]))
red_feature = int(order[0])
a, half = auroc[red_feature, red], 1.96 * se[red_feature, red]
print(f"red feature: {red_feature}, AUROC {a:.3f} [{a - half:.3f}, {a + half:.3f}]")
print("next best:", [(int(f), round(float(auroc[f, red]), 3)) for f in order[1:4]])
best = [names[c] for c in np.argsort(-np.nan_to_num(auroc[red_feature]))[:3]]
print("its best concepts:", best)

fig, ax = plt.subplots(figsize=(6, 3))
ax.bar(range(len(order)), np.sort(np.nan_to_num(auroc[:, red]))[::-1])
ax.axhline(0.5, color="gray", lw=0.8, ls="--")
ax.set_xlabel("feature (sorted)")
ax.set_ylabel("AUROC for red")
ax.set_title("one feature stands out")
show(fig)

# %% [markdown]
# ## 6. Causal tracing
#
# ROME's corrupt-then-restore: corrupt the image tower's patch embeddings with noise,
# restore one hidden state at a time from the clean run, and read how much of the
# matched image-caption score comes back (recovery 0: nothing, 1: the clean score).
# The null (random restorations) gives each cell a p-value. Restoring the CLS row of the
# last layer restores the score trivially (it *is* the image's embedding); what the
# tracing localises is in the patch rows and the earlier layers.

# %%
from vlmfast.data.pairs import read_pairs

pairs = read_pairs("synthetic:n=8,seed=12", 8, what="tutorial trace").records
px = pair.preprocess([r.image for r in pairs])
tok = pair.tokenize([r.caption for r in pairs])
res = vf.causal.trace(pair, px, tok, "image", noise="3x", samples=4, seed=0, null=10)
print(res.summary())
show(res.plot())

# %% [markdown]
# ## 7. A circuit for *red*
#
# `find_circuit` ranks the text tower's heads and MLP neurons by attribution patching
# against a counterfactual (each caption's `red` swapped for `green`), then ablates all
# but the top k and reads the faithfulness curve f(k): the smallest set keeping 80% of
# the score is the circuit, and random orderings of the same components are its null.

# %%
from vlmfast.causal.core.corruption import concept_corruption

red_pairs = read_pairs(
    "synthetic:n=2000,seed=13", 12, what="tutorial circuit", naming="red", minimum=2
).records
inputs = concept_corruption(pair, red_pairs, "red", "text-swap")
print("swapped to:", inputs.get("swap"), "e.g.", red_pairs[0].caption)
circuit = vf.causal.find_circuit(
    pair,
    inputs["images"],
    inputs["texts"],
    inputs["corrupt_images"],
    inputs["corrupt_texts"],
    components=("heads", "neurons"),
    towers=("text",),
    ranking="atp",
    ablation="mean",
    target=0.8,
    null=20,
    seed=0,
)
lo, hi = circuit.faithfulness_interval
print(
    f"{circuit.size} of {circuit.n_nodes} components (sparsity {circuit.sparsity:.3f}, "
    f"p = {circuit.pvalue:.3g}); faithfulness {circuit.faithfulness:.3f} [{lo:.3f}, {hi:.3f}]"
)
print("top components (tower, kind, layer, index):", circuit.components[:5])
show(circuit.plot())

# %% [markdown]
# ## 8. Ablate it
#
# Two ablations. First the circuit itself: its *completeness* is the faithfulness with
# the circuit ablated and every other component kept (near 0: the rest cannot do the
# job without it), beside its faithfulness alone (the circuit kept, the rest ablated).

# %%
print(
    f"circuit kept, rest ablated: f = {circuit.faithfulness:.3f}; "
    f"circuit ablated, rest kept: f = {circuit.completeness:.3f}"
)

# %% [markdown]
# Then the red features of the SAE: `concept_intervention` sets the image SAE's five
# most red-selective features to their mean (inside the SAE, its error term kept) and
# measures each colour's zero-shot margin on fresh images, against random feature sets
# of the same size (the null, grey band). The effect is *targeted* only when red's
# margin drops beyond the null and more than the other colours' margins: read the
# verdict, not the bar alone (on this small SAE, trained for seconds, the red features
# share their work with others, and the verdict says so when it happens).

# %%
COLORS = ["red", "green", "blue", "yellow", "purple", "orange"]
units = vf.causal.top_units(scores, "red", n=5, modality="image")
ev = vf.causal.EvalSet.synthetic(64, max_objects=1, pair=pair)
r = vf.causal.concept_intervention(
    pair, units, mode="ablate", ablation="mean", eval_data=ev, concepts=COLORS,
    saes={"sae": sae}, null=20, seed=0,
)  # fmt: skip
margin = {row["measured"]: row for row in r.rows() if row["metric"] == "margin"}
v = r.verdict
print(
    f"red margin change {v['target_change']:+.2f} (null mean {v['null_mean_change']:+.2f}, "
    f"p = {v['pvalue']:.3f}); other colours {v['others_mean_change']:+.2f}; "
    f"targeted: {v['targeted']}"
)

fig, ax = plt.subplots(figsize=(6, 3))
ax.bar(COLORS, [margin[c]["delta"] for c in COLORS], color=["tab:red"] + ["tab:gray"] * 5)
ax.axhspan(margin["red"]["null_low"], margin["red"]["null_high"], color="gray", alpha=0.2)
ax.axhline(0, color="black", lw=0.8)
ax.set_ylabel("change of zero-shot margin")
ax.set_title("the red features mean-ablated")
show(fig)

# %% [markdown]
# ## Where next
#
# - The same steps for every concept at once, with a report: `vlmfast run --config
#   examples/demo.toml` ([the demo](../getting-started/demo.md)).
# - Each method in depth: the [guides](../guides/tracing.md).

# %%
print(f"tutorial ran in {time.perf_counter() - t_start:.0f} s")
