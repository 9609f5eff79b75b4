"""Concept vocabularies, caption labeling and prompt sets.

from vlmfast.data.concepts import ConceptLabeler
lab = ConceptLabeler.default()
lab.label("two tabby cats left of a red wooden bathtub")
# ['bathtub', 'tabby cat', 'red', 'wooden', 'left of']
labels = lab.label_texts(captions)   # ConceptLabels: bool [N, C], names, kinds

Relation labels are unordered (``left of`` on an image: two objects in different
columns); ``bound_relations`` names which object is where (``red left of blue``).
"""

from vlmfast.data.concepts.labeler import ConceptLabeler, tokenize
from vlmfast.data.concepts.labels import ConceptLabels
from vlmfast.data.concepts.prompts import (
    IMAGENET_TEMPLATES,
    OBJECT_ATTRIBUTE_TEMPLATE,
    imagenet_prompts,
    object_attribute_prompts,
)
from vlmfast.data.concepts.vocabulary import BUNDLED, Concept, Vocabulary, load_vocabulary

__all__ = [
    "BUNDLED",
    "IMAGENET_TEMPLATES",
    "OBJECT_ATTRIBUTE_TEMPLATE",
    "Concept",
    "ConceptLabeler",
    "ConceptLabels",
    "Vocabulary",
    "imagenet_prompts",
    "load_vocabulary",
    "object_attribute_prompts",
    "tokenize",
]
