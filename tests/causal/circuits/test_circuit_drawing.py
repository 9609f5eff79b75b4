"""Circuit drawings: valid XML / DOT, deterministic, escaped, one shape per node."""

from __future__ import annotations

import re
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest

from vlmfast.causal.circuits.dot import circuit_to_dot, quote
from vlmfast.causal.circuits.svg import circuit_to_svg
from vlmfast.causal.circuits.types import LOGIT, CircuitEdge, CircuitNode
from vlmfast.errors import InputError

SVG = "{http://www.w3.org/2000/svg}"


def _graph() -> tuple[list[CircuitNode], list[CircuitEdge]]:
    nodes = [
        CircuitNode("image", "heads", 0, 1),
        CircuitNode("image", "neurons", 0, 7),
        CircuitNode("image", "heads", 2, 3),
        CircuitNode("text", "heads", 1, 0),
        CircuitNode("text", "features", 1, 42, "text.blocks.1.resid_post"),
        CircuitNode("text", "errors", 1, 5, "text.blocks.1.resid_post"),
    ]
    edges = [
        CircuitEdge("image.L0.H1", "image.L0.N7", 0.5),
        CircuitEdge("image.L0.H1", "image.L2.H3", -0.25),
        CircuitEdge("image.L0.N7", "image.L2.H3", 0.125),
        CircuitEdge("image.L2.H3", LOGIT, 1.0),
        CircuitEdge("image.L0.H1", LOGIT, 0.01),
        CircuitEdge("text.L1.H0", "text.L1.F42", 0.3),
        CircuitEdge("text.L1.F42", LOGIT, -0.7),
        CircuitEdge("text.L1.E5", LOGIT, 0.2),
    ]
    return nodes, edges


LABELS = {"image.L2.H3": 'red <&> "blue"', "text.L1.F42": "a]]>b & </svg>"}


def test_svg_parses_counts_and_is_deterministic() -> None:
    nodes, edges = _graph()
    svg = circuit_to_svg(nodes, edges, LABELS, title="color <circuit>")
    root = ET.fromstring(svg)
    assert root.tag == SVG + "svg"
    vb = [float(v) for v in root.attrib["viewBox"].split()]
    assert vb[2] > 0 and vb[3] > 0
    # one <g> with a <title> per node, plus the logit
    groups = [g for g in root.iter(SVG + "g") if g.find(SVG + "title") is not None]
    titles = [g.find(SVG + "title").text or "" for g in groups]  # type: ignore[union-attr]
    assert len(groups) == len(nodes) + 1
    assert sorted(t.split(":")[0] for t in titles) == sorted([n.key for n in nodes] + ["logit"])
    paths = list(root.iter(SVG + "path"))
    assert len(paths) == len(edges)
    # strongest edge widest, colour by sign
    by_title = {p.find(SVG + "title").text: p for p in paths}  # type: ignore[union-attr]
    strong = by_title["image.L2.H3 -> logit: 1"]
    weak = by_title["image.L0.H1 -> logit: 0.01"]
    assert float(strong.attrib["stroke-width"]) > float(weak.attrib["stroke-width"])
    assert by_title["text.L1.F42 -> logit: -0.7"].attrib["stroke"] != strong.attrib["stroke"]
    # byte-identical for the same input, whatever the input order
    assert circuit_to_svg(nodes[::-1], edges[::-1], dict(LABELS), title="color <circuit>") == svg
    # labels and title escaped, and readable back
    texts = [t.text for t in root.iter(SVG + "text")]
    assert 'red <&> "blue"' in texts
    assert "color <circuit>" in texts
    assert "<&>" not in svg and "&lt;&amp;&gt;" in svg


def test_svg_layout_towers_layers_logit() -> None:
    nodes, edges = _graph()
    root = ET.fromstring(circuit_to_svg(nodes, edges))
    centre: dict[str, tuple[float, float]] = {}
    for g in root.iter(SVG + "g"):
        title = g.find(SVG + "title")
        if title is None or title.text is None:
            continue
        texts = g.findall(SVG + "text")
        if texts:
            centre[title.text.split(":")[0]] = (
                float(texts[0].attrib["x"]),
                float(texts[0].attrib["y"]),
            )
    img = [v for k, v in centre.items() if k.startswith("image")]
    txt = [v for k, v in centre.items() if k.startswith("text")]
    assert max(x for x, _ in img) < min(x for x, _ in txt)  # image left, text right
    assert centre["image.L0.H1"][1] > centre["image.L0.N7"][1] > centre["image.L2.H3"][1]
    assert centre["logit"][1] < min(y for k, (_, y) in centre.items() if k != "logit")
    assert min(x for x, _ in img) < centre["logit"][0] < max(x for x, _ in txt)
    # error nodes are dashed
    dashed = [r for r in root.iter(SVG + "rect") if "stroke-dasharray" in r.attrib]
    assert len(dashed) == 2  # the node and its legend swatch


def test_svg_min_effect_and_bad_edges() -> None:
    nodes, edges = _graph()
    root = ET.fromstring(circuit_to_svg(nodes, edges, min_effect=0.2))
    assert len(list(root.iter(SVG + "path"))) == sum(abs(e.effect) >= 0.2 for e in edges)
    with pytest.raises(InputError, match="not in nodes"):
        circuit_to_svg(nodes, [CircuitEdge("image.L9.H0", LOGIT, 1.0)])
    with pytest.raises(InputError, match="non-finite"):
        circuit_to_svg(nodes, [CircuitEdge("image.L0.H1", LOGIT, float("nan"))])
    with pytest.raises(InputError, match="engine"):
        circuit_to_svg(nodes, edges, engine="cairo")
    empty = ET.fromstring(circuit_to_svg([], []))
    assert float(empty.attrib["viewBox"].split()[2]) > 0


def _dot_nodes(dot: str) -> set[str]:
    return set(re.findall(r'^\s+"([^"]+)" \[label=', dot, flags=re.M))


def test_dot_structure_and_escaping() -> None:
    nodes, edges = _graph()
    dot = circuit_to_dot(nodes, edges, LABELS)
    assert dot.startswith("digraph circuit {") and dot.rstrip().endswith("}")
    assert dot.count("{") == dot.count("}")
    assert "subgraph cluster_image" in dot and "subgraph cluster_text" in dot
    assert dot.index("cluster_image") < dot.index("cluster_text")
    assert _dot_nodes(dot) == {n.key for n in nodes} | {"logit"}
    assert len(re.findall(r'^  "[^"]+" -> "[^"]+" \[', dot, flags=re.M)) == len(edges)
    assert '"L2 H3\\nred <&> \\"blue\\""' in dot  # newline and quotes escaped
    assert '{ rank=same; "image.L0.H1"; "image.L0.N7"; }' in dot
    assert dot == circuit_to_dot(nodes[::-1], edges[::-1], LABELS)
    widths = {m[0]: float(m[1]) for m in re.findall(r"(\S+ -> \S+) \[penwidth=([\d.]+)", dot)}
    assert widths['"image.L2.H3" -> "logit"'] > widths['"image.L0.H1" -> "logit"']
    assert quote('a\\b"c\nd') == '"a\\\\b\\"c\\nd"'


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz dot not installed")
def test_dot_renders_with_graphviz() -> None:
    nodes, edges = _graph()
    done = subprocess.run(
        ["dot", "-Tsvg"], input=circuit_to_dot(nodes, edges, LABELS), capture_output=True,
        text=True, check=True,
    )  # fmt: skip
    assert ET.fromstring(done.stdout).tag.endswith("svg")
    assert ET.fromstring(circuit_to_svg(nodes, edges, LABELS, engine="dot")).tag.endswith("svg")


def test_zero_edges_are_not_drawn() -> None:
    nodes, edges = _graph()
    zero = [*edges, CircuitEdge("text.L1.H0", LOGIT, 0.0)]
    assert circuit_to_svg(nodes, zero) == circuit_to_svg(nodes, edges)
    assert circuit_to_dot(nodes, zero) == circuit_to_dot(nodes, edges)


def test_wide_rows_wrap() -> None:
    hook = "image.blocks.1.resid_pre"
    nodes = [CircuitNode("image", "features", 1, i, hook) for i in range(20)]
    nodes.append(CircuitNode("image", "heads", 0, 0))
    edges = [CircuitEdge(n.key, LOGIT, 1.0 + i) for i, n in enumerate(nodes)]
    root = ET.fromstring(circuit_to_svg(nodes, edges))
    width = float(root.attrib["viewBox"].split()[2])
    assert width < 8 * 100 + 300  # 8 columns, not 20
    ys = set()
    for g in root.iter(SVG + "g"):
        title, text = g.find(SVG + "title"), g.find(SVG + "text")
        if title is not None and text is not None and "F" in (title.text or ""):
            ys.add(float(text.attrib["y"]))
    assert len(ys) == 3  # 20 features on lines of 8, 8, 4
