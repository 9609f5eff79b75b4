"""Image-text data: pair sources, concept vocabularies and labels, and the
synthetic concept-binding benchmark with its bundled tiny CLIP.

    from vlmfast.data import open_source
    src = open_source("coco:/data/annotations/captions_val2017.json", limit=5000,
                      require="object,attribute")
    for rec in src:               # PairRecord(sample_id, image, caption, meta)
        ...
    print(src.report.summary())   # bad records skipped: counts and examples

Importing this package does not import torch.
"""

from vlmfast.data.records import BadRecordReport, PairRecord
from vlmfast.data.sources import PairSource, open_source

__all__ = ["BadRecordReport", "PairRecord", "PairSource", "open_source"]
