"""What the paper claims, shown beside this run's figures, labelled as the paper's.

Source: Onyemaechi & Uchehara, "Mechanistic Interpretability of Vision-Language Models:
Tracing Multimodal Concept Binding in CLIP and SigLIP" (the project's seed paper,
``shared/seed/``). Its models and data (CLIP-ViT-B/32, SigLIP-SO400M, 50k COCO/CC3M
pairs, 65k-latent SAEs with L0 = 32) are not this run's. These strings are displayed,
never used in a computation: nothing in vlmfast reads them as a constant or a target.
"""

from __future__ import annotations

CITATION = (
    "Onyemaechi & Uchehara, Mechanistic Interpretability of Vision-Language Models: "
    "Tracing Multimodal Concept Binding in CLIP and SigLIP"
)

# key -> (claim as the paper states it, where)
CLAIMS: dict[str, tuple[str, str]] = {
    "selective.object": ("1,842 SAE features selective for objects", "§4.1"),
    "selective.color": ("1,203 SAE features selective for colors", "§4.1"),
    "selective.relation": ("876 SAE features selective for spatial relations", "§4.1"),
    "polysemantic": ("14% of the selective features polysemantic across modalities", "§4.1"),
    "polysemantic.units": (
        "12-18% of MLP neurons and 7% of attention heads polysemantic, modality-invariant",
        "abstract",
    ),
    "invariant": (
        "'only 14% polysemantic ... suggesting modality-invariant concept encoding' (no % given)",
        "§4.1",
    ),
    "layers.image": ("vision layers 8-12 (of 12): heads attending to object patches", "§4.1"),
    "layers.text": ("text layers 6-9 (of 12): high causal effect for nouns, adjectives", "§4.1"),
    "heads.patching": ("layer-10 vision heads alone recover 62% of alignment ('dog')", "§4.2"),
    "ablate.retrieval": (
        "ablating MLP 11-12 fusion neurons: retrieval accuracy -23% on average",
        "§4.2",
    ),
    "ablate.targeted": (
        "ablation causes targeted misalignment without degrading overall performance",
        "§4.3",
    ),
    "steer.cosine": (
        "top-50 neurons: target cosine +0.18 on average, unrelated concepts decrease",
        "§4.3",
    ),
    "circuit.sparsity": (
        "'a small set of highly interpretable circuits' (sparsity = fraction of components "
        "recovering 80%; no figure given)",
        "§3.4, §V",
    ),
}


def claim(key: str) -> str:
    """``"<claim> (paper, §x)"``, the text a report cell shows."""
    text, where = CLAIMS[key]
    return f"{text} (paper, {where})"
