"""The circuit stage: text-swap corruption and a small real circuit with its drawing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import vlmfast as vf
from vlmfast.errors import InputError
from vlmfast.pipeline import PipelineConfig, run_pipeline
from vlmfast.pipeline.stages.circuit import (
    candidate_towers,
    concept_pairs,
    corrupt_pair_inputs,
    swap_word,
)


def test_text_swap_replaces_the_concept_word_only() -> None:
    assert swap_word("red") == "green" and swap_word("star") == "circle"  # wraps around
    with pytest.raises(InputError, match="text-swap"):
        swap_word("giraffe")
    pair = vf.load_pair("synthetic:tiny")
    records = concept_pairs("synthetic:n=200,seed=1", "red", 4)
    assert len(records) == 4 and all("red" in r.caption.split() for r in records)
    inputs = corrupt_pair_inputs(pair, records, "red", "text-swap", 0, 1.0)
    swapped = [r.caption.replace("red", "green") for r in records]
    assert torch.equal(inputs["corrupt_texts"], pair.tokenize(swapped))
    assert inputs["corrupt_images"] is None and inputs["swap"] == "green"
    noisy = corrupt_pair_inputs(pair, records, "red", "image-noise", 0, 1.0)
    assert noisy["corrupt_texts"] is None
    assert not torch.equal(noisy["corrupt_images"], noisy["images"])
    cfg = PipelineConfig()
    assert candidate_towers(cfg) == ["text"]
    cfg.circuit.corrupt = "image-noise"
    assert candidate_towers(cfg) == ["image"]


def test_circuit_stage_writes_each_concepts_circuit_and_drawing(tmp_path: Path) -> None:
    cfg = PipelineConfig()
    cfg.run.stages, cfg.run.progress = ["circuit"], False
    cfg.concepts.circuit = ["red"]
    cfg.circuit.data, cfg.circuit.pairs = "synthetic:n=200,seed=13", 4
    cfg.circuit.components, cfg.circuit.null, cfg.circuit.grid = ["heads"], 0, 8
    lines: list[str] = []
    run_pipeline(cfg, tmp_path, log=lines.append)
    res = json.loads((tmp_path / "circuit" / "result.json").read_text())
    red = res["red"]
    assert red["n_nodes"] == 12  # the text tower's 3 x 4 heads
    assert red["faithfulness"] >= 0.0 and red["size"] == len(red["nodes"]) >= 1
    assert red["meta"]["run"]["swap_to"] == "green" and red["meta"]["run"]["towers"] == ["text"]
    assert any(e["dst"] == "logit" for e in red["edges"])
    assert (tmp_path / "circuit" / "red.svg").read_text().lstrip().startswith("<")
    assert (tmp_path / "circuit" / "red.parquet").is_file()
    assert any("red (text-swap -> green)" in line for line in lines)


def test_both_swap_searches_both_towers(tmp_path: Path) -> None:
    cfg = PipelineConfig()
    cfg.run.stages, cfg.run.progress = ["circuit"], False
    cfg.concepts.circuit = ["red"]
    cfg.circuit.data, cfg.circuit.pairs, cfg.circuit.corrupt = (
        "synthetic:n=200,seed=13",
        4,
        "both-swap",
    )
    cfg.circuit.components, cfg.circuit.null, cfg.circuit.grid = ["heads"], 0, 8
    assert candidate_towers(cfg) == ["image", "text"]
    run_pipeline(cfg, tmp_path, log=lambda _: None)
    red = json.loads((tmp_path / "circuit" / "result.json").read_text())["red"]
    assert red["n_nodes"] == 16 + 12 and red["meta"]["corrupt"] == "both"
    assert set(red["meta"]["run"]["per_tower"]) == {"image", "text"}
    assert {e["src"] for e in red["edges"] if e["dst"] == "logit"} <= {"image.embed", "text.embed"}
