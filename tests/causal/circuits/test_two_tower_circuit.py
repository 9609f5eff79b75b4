"""One circuit over both towers: corruption sides, the meeting point, the two-lane drawing."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

import vlmfast as vf
from tolerance import assert_close
from vlmfast.causal.circuits.draw import draw_circuit
from vlmfast.causal.circuits.meeting import meeting_point, route_through_embeddings
from vlmfast.causal.circuits.svg import circuit_to_svg
from vlmfast.causal.circuits.types import EMBED, LOGIT, CircuitEdge, CircuitNode
from vlmfast.causal.core.corruption import concept_corruption
from vlmfast.causal.core.metrics import MatchedScore
from vlmfast.data.pairs import read_pairs
from vlmfast.errors import InputError

SVG = "{http://www.w3.org/2000/svg}"
FAST: dict[str, Any] = dict(components=("heads",), null=20, grid=8, n_boot=50, seed=0)


@pytest.fixture(scope="module")
def red() -> tuple[Any, dict[str, Any], dict[str, Any]]:
    pair = vf.load_pair("synthetic:tiny").eval()
    records = read_pairs("synthetic:n=200,seed=13", 4, naming="red").records
    both = concept_corruption(pair, records, "red", "both-swap")
    text = concept_corruption(pair, records, "red", "text-swap")
    return pair, both, text


def _args(inp: dict[str, Any]) -> tuple[Any, ...]:
    return inp["images"], inp["texts"], inp["corrupt_images"], inp["corrupt_texts"]


def test_one_search_spans_both_towers_and_records_each_nodes_tower(red: Any) -> None:
    pair, both, _ = red
    c = vf.causal.find_circuit(pair, *_args(both), corrupt="both", **FAST)
    per = c.meta["per_tower"]
    heads = {t: pair.config.tower(t).layers * pair.config.tower(t).heads for t in per}
    assert {t: per[t]["candidates"] for t in per} == heads
    assert per["image"]["circuit"] + per["text"]["circuit"] == c.size
    assert {n.tower for n in c.order} == {"image", "text"}
    assert c.meta["corrupted"] == ["image", "text"] and c.meta["corrupt"] == "both"
    assert c.null is not None and 0 < c.null.pvalue <= 1  # the null as for one tower
    assert {r["tower"] for r in c.rows() if r["table"] == "component"} == {"image", "text"}
    # "text" keeps only the caption's corruption: image components then score 0
    t = vf.causal.find_circuit(pair, *_args(both), corrupt="text", **FAST)
    assert t.meta["corrupted"] == ["text"]
    img_scores = [s for n, s in zip(t.order, t.scores or [], strict=True) if n.tower == "image"]
    assert max(img_scores) == 0.0
    with pytest.raises(InputError, match="corrupt_images="):
        vf.causal.find_circuit(pair, *_args(red[2]), corrupt="both", **FAST)
    with pytest.raises(InputError, match="corrupt must be"):
        vf.causal.find_circuit(pair, *_args(both), corrupt="images", **FAST)


def test_meeting_point_splits_the_effect_between_the_towers(red: Any) -> None:
    pair, both, text = red
    meet = meeting_point(pair, *_args(both))
    assert meet.corrupted == ("image", "text")
    assert_close(meet.total, meet.exact["image"] + meet.exact["text"] + meet.interaction)
    one = meeting_point(pair, *_args(text), metric=MatchedScore("dot"))
    # one tower corrupted: no interaction, and the logit is linear in that embedding
    assert one.exact["image"] == 0.0 and one.attribution["image"] == 0.0
    # the numbers are differences of matched scores: rounding scales with the scores
    size = float(pair.logit_scale.exp()) * 4
    assert_close(one.interaction, 0.0, scale=size)
    assert_close(one.attribution["text"], one.exact["text"], scale=size)
    edges = [CircuitEdge("text.L0.H1", "text.L2.H0", 0.5), CircuitEdge("text.L2.H0", LOGIT, 2.0)]
    routed = route_through_embeddings(edges, one, ("image", "text"))
    assert CircuitEdge("text.L2.H0", EMBED["text"], 2.0) in routed
    assert [e.src for e in routed if e.dst == LOGIT] == [EMBED["image"], EMBED["text"]]


def test_the_drawing_has_two_lanes_meeting_in_the_logit(red: Any, tmp_path: Path) -> None:
    pair, both, _ = red
    c = vf.causal.find_circuit(pair, *_args(both), corrupt="both", **FAST)
    edges, files = draw_circuit(c, pair, both, tmp_path / "red", limit=8, title="red")
    assert [f.suffix for f in files] == [".dot", ".svg"]
    root = ET.fromstring(files[1].read_text())  # well-formed
    titles = [g.find(SVG + "title") for g in root.iter(SVG + "g")]
    keys = {t.text.split(":")[0] for t in titles if t is not None and t.text}
    drawn = c.nodes[:8]
    assert {n.key for n in drawn} | {LOGIT} <= keys
    towers = {n.tower for n in drawn}
    assert {EMBED[t] for t in towers} <= keys
    texts = {t.text for t in root.iter(SVG + "text")}
    assert {"image tower", "text tower", "logit"} <= texts
    assert not any(e.dst == LOGIT and e.src not in EMBED.values() for e in edges)
    assert "meeting" in c.meta and "trapezium" in files[0].read_text()


def _centre_y(shape: ET.Element) -> float:
    if "points" in shape.attrib:
        ys = [float(p.split(",")[1]) for p in shape.attrib["points"].split()]
        return sum(ys) / len(ys)
    if "cy" in shape.attrib:
        return float(shape.attrib["cy"])
    return float(shape.attrib["y"]) + float(shape.attrib["height"]) / 2


def test_svg_of_a_given_two_tower_graph() -> None:
    nodes = [CircuitNode("image", "heads", 1, 2), CircuitNode("text", "neurons", 0, 7)]
    edges = [
        CircuitEdge("image.L1.H2", EMBED["image"], 0.8),
        CircuitEdge("text.L0.N7", EMBED["text"], -0.4),
        CircuitEdge(EMBED["image"], LOGIT, 1.5),
        CircuitEdge(EMBED["text"], LOGIT, 0.9),
    ]
    labels = {EMBED["image"]: "dm +1.2", LOGIT: "dm +2, both <0.3>"}
    svg = circuit_to_svg(nodes, edges, labels)
    root = ET.fromstring(svg)
    centre: dict[str, float] = {}
    for g in root.iter(SVG + "g"):
        title = g.find(SVG + "title")
        shapes = [x for x in g if x.tag in (SVG + "polygon", SVG + "rect", SVG + "ellipse")]
        if title is None or title.text is None or not shapes:
            continue
        centre[title.text.split(":")[0]] = _centre_y(shapes[0])
    assert set(centre) == {"image.L1.H2", "text.L0.N7", *EMBED.values(), LOGIT}
    # the embeddings sit between the towers and the logit
    assert centre[LOGIT] < centre[EMBED["image"]] < centre["image.L1.H2"]
    assert "both &lt;0.3&gt;" in svg and len(list(root.iter(SVG + "path"))) == 4
    with pytest.raises(InputError, match="source"):
        circuit_to_svg(nodes, [CircuitEdge(EMBED["text"], "text.L0.N7", 1.0)])
