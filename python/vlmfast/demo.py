"""The end-to-end demo behind ``vlmfast demo`` (and ``make demo``): the pipeline of the
bundled config (``vlmfast/pipeline/demo.toml``) on the bundled ``synthetic:tiny`` CLIP and
the synthetic concept-binding benchmark, whose ground truth is exact.

Its stages (``vlmfast run``): cache both towers at every token (with the model's held-out
quality table), train a top-k SAE on the image block's patch rows and one on the text
block's token rows, score every feature and neuron per sample (the ground-truth table: the
best feature per planted shape and color, per modality; the paper's counts beside ours,
labelled as its claim), trace both towers, attribute every head / neuron / position (and
patch every head exactly), find each configured concept's circuit, ablate and steer its
top features, measure cross-modal binding (invariant features of a shared dictionary,
concept transfer, grounding heads), and write the report. A re-run skips every stage that is up to date.

Every number printed is computed in the run; nothing is a constant. This module is a
pipeline config (``DemoConfig``: overrides of the bundled ``demo.toml``) and the printing of
its results; the work is ``vlmfast.pipeline.run_pipeline``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmfast.pipeline.config import PipelineConfig


@dataclass
class DemoConfig:
    """Overrides of the bundled demo config (None: the config's value)."""

    out: Path = Path("runs/demo")
    """Run directory."""
    n_samples: int | None = None
    """Synthetic image-caption pairs cached (demo.toml: 3,000)."""
    seed: int | None = None
    """Seed of the data and of every stage (demo.toml: 11)."""
    eval_samples: int | None = None
    """Held-out samples of the model-quality table."""
    n_latents: int | None = None
    """Width of each SAE."""
    k: int | None = None
    """Active latents per row."""
    sae_steps: int | None = None
    """Training steps of each SAE."""
    sae_batch: int | None = None
    """Rows per SAE step."""
    stages: Sequence[str] | None = None
    """Stages to run (default: the config's, every stage)."""
    progress: bool | None = None
    """Show progress bars."""

    def to_pipeline(self, base: PipelineConfig | None = None) -> PipelineConfig:
        """The pipeline config: ``base`` (default: the bundled demo config) with these overrides."""
        from vlmfast.pipeline import demo_config

        cfg = base or demo_config()
        cfg.run.out = str(self.out)
        if self.seed is not None:
            cfg.run.seed = self.seed
        if self.n_samples is not None or self.seed is not None:
            n = self.n_samples if self.n_samples is not None else _spec_n(cfg.data.spec)
            cfg.data.spec = f"synthetic:n={n},seed={cfg.run.seed}"
        for value, section, name in (
            (self.eval_samples, cfg.quality, "eval_samples"),
            (self.n_latents, cfg.sae, "n_latents"),
            (self.k, cfg.sae, "k"),
            (self.sae_steps, cfg.sae, "steps"),
            (self.sae_batch, cfg.sae, "batch_size"),
            (self.progress, cfg.run, "progress"),
        ):
            if value is not None:
                setattr(section, name, value)
        if self.stages is not None:
            cfg.run.stages = list(self.stages)
        return cfg


def _spec_n(spec: str) -> int:
    for part in spec.split(":", 1)[-1].split(","):
        if part.startswith("n="):
            return int(part[2:])
    return 2000


def format_paper_table(score: dict[str, Any]) -> str:
    """The paper-style table of a score stage result: selective units per concept kind and
    modality (with intervals), % polysemantic, the planted concepts recovered, and the
    paper's counts beside ours, labelled as its claim."""
    mods = score.get("modalities") or {}
    claims = dict(score.get("paper_claims") or {})
    kinds: list[str] = []
    for m in mods.values():
        kinds += [k for k in m.get("by_kind", {}) if k not in kinds]
    head = f"  {'selective SAE features':<26}" + "".join(f"{m + ' (ours)':>18}" for m in mods)
    head += f"{'paper (its claim)':>28}"
    lines = [head]
    for kind in kinds:
        row = f"  {kind:<26}"
        for m in mods.values():
            c = m.get("by_kind", {}).get(kind)
            cell = "-" if not c else "{} [{}, {}]".format(c["count"], c["low"], c["high"])
            row += f"{cell:>18}"
        claim = claims.get(kind)
        lines.append(row + f"{'' if claim is None else f'{claim:,}':>28}")
    row = f"  {'% polysemantic':<26}"
    for m in mods.values():
        p = (m.get("polysemantic") or {}).get("percent")
        row += f"{'n/a' if p is None else f'{p:.1f}%':>18}"
    claim = claims.get("polysemantic_across_modalities_pct")
    lines.append(row + f"{'' if claim is None else f'{claim}% (across modalities)':>28}")
    truth = score.get("ground_truth")
    if truth:
        row = f"  {'planted concepts found':<26}"
        for m in mods:
            t = truth.get(m) or {}
            cell = "{}/{}".format(t.get("recovered"), t.get("of"))
            row += f"{cell:>18}"
        lines.append(row + f"{'(AUROC >= ' + str(truth['target_auroc']) + ')':>28}")
    if "relation" in kinds:
        lines.append(
            "  relation (unordered): two objects in different columns/rows"
            + (
                "; bound relation: which object is where (one unit vs the rest: a unit for "
                "the two objects' colors passes; the ground truth's probe asks the order)"
                if "bound relation" in kinds
                else ""
            )
        )
    if claims:
        lines.append(
            f"  paper column: {claims.get('label', 'the paper')}"
            + (f"; {claims['note']}" if claims.get("note") else "")
        )
    return "\n".join(lines)


def format_ground_truth(truth: dict[str, Any]) -> str:
    """The ground-truth table (best feature per planted concept and modality) from JSON."""
    mods = [m for m in ("image", "text") if m in truth]
    lines = [
        f"  {'concept':<10}"
        + "".join(f"{m + ' feature':>16}{'AUROC':>8}{'95% CI':>17}{'ok':>4}" for m in mods)
    ]
    for name, per in truth["concepts"].items():
        row = f"  {name:<10}"
        for m in mods:
            e = per[m]
            ci = f"[{e['ci'][0]:.3f}, {e['ci'][1]:.3f}]"
            row += f"{e['feature']:>16}{e['auroc']:>8.3f}{ci:>17}{'yes' if e['recovered'] else 'no':>4}"
        lines.append(row)
    if truth.get("bound_relations"):
        lines.append("")
        lines.append(format_bound_relations(truth["bound_relations"]))
    return "\n".join(lines)


def _num(x: Any) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def format_bound_relations(bound: dict[str, Any]) -> str:
    """The bound-relation rows of the ground truth (``vlmfast.scoring.relation_probe``): per
    modality and family, the probe's held-out accuracy [CI] against its shuffled-label
    null, beside the best single unit's and the best SAE feature's held-out AUROC."""
    if bound.get("unavailable"):
        return f"  bound relations: not measured: {bound['unavailable']}"
    lines = [
        "  bound relations (which object is where), on the samples where it or its reverse holds:"
    ]
    for mod, where in (bound.get("rows") or {}).items():
        lines.append(f"    {mod} rows: {where}")
    lines.append(
        f"  {'modality':<9}{'family':<16}{'n':>6}{'probe acc':>11}{'95% CI':>17}"
        f"{'null q95':>10}{'p':>8}{'best unit':>11}{'best feat':>11}"
    )
    for f in bound.get("families") or []:
        ci = f.get("accuracy_ci") or [None, None]
        cell = "n/a" if ci[0] is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"
        lines.append(
            f"  {f['modality']:<9}{f['name']:<16}{f.get('n_rows', 0):>6}"
            f"{_num(f.get('accuracy')):>11}{cell:>17}{_num(f.get('null_accuracy_q95')):>10}"
            f"{_num(f.get('pvalue')):>8}{_num(f.get('best_unit_auroc')):>11}"
            f"{_num(f.get('best_feature_auroc')):>11}"
        )
    for mod, same in (bound.get("unordered_identical") or {}).items():
        for name, share in same.items():
            lines.append(
                f"  {mod}: unordered {name} identical on {100 * share:.1f}% of samples "
                "(they say only: two objects in different columns/rows)"
            )
    for mod, p in (bound.get("pairs") or {}).items():
        lines.append(
            f"  {mod}: {p['significant']} of {p['probed']} probed single pairs (of {p['pairs']}) "
            f"beat the null (BH {p['alpha']})"
        )
    return "\n".join(lines)


def run_demo(
    cfg: DemoConfig | None = None,
    log: Callable[[str], None] = print,
    *,
    force: Sequence[str] = (),
    dry_run: bool = False,
) -> dict[str, Any]:
    """Runs the demo pipeline into ``cfg.out``; prints the ground-truth and paper-style tables
    and the report's path; returns ``{"run_dir", "stages", "results": {stage: result}}``."""
    from vlmfast.pipeline import run_pipeline

    cfg = cfg or DemoConfig()
    pipeline = cfg.to_pipeline()
    log(f"vlmfast demo: {pipeline.model.spec} on {pipeline.data.spec} -> {cfg.out}")
    res = run_pipeline(pipeline, cfg.out, force=force, dry_run=dry_run, log=log)
    out: dict[str, Any] = {
        "run_dir": res.run_dir,
        "stages": [s.to_dict() for s in res.stages],
        "results": {},
    }
    if dry_run:
        return out
    for stage in pipeline.run.stages:
        path = res.run_dir / stage / "result.json"
        if path.exists():
            out["results"][stage] = json.loads(path.read_text())
    score = out["results"].get("score")
    if score:
        if score.get("ground_truth"):
            log("")
            log("== ground truth: the best SAE feature for each planted shape and color")
            if score["ground_truth"].get("bound_relations"):
                log("   and, for bound relations, a linear probe beside the best unit")
            log(format_ground_truth(score["ground_truth"]))
        log("")
        log("== selective units, this run beside the paper's claim")
        log(format_paper_table(score))
    cross = out["results"].get("cross-modal")
    if cross:
        from vlmfast.pipeline.stages.crossmodal_text import format_crossmodal, format_two_tower
        from vlmfast.report.sec_crossmodal_causal import two_tower

        log("")
        log(
            "== cross-modal binding: invariant features, concept transfer, fusion, grounding, "
            "two-tower circuit"
        )
        log(format_crossmodal(cross))
        circuits = out["results"].get("circuit") or {}
        if two_tower(circuits) or not (cross.get("two_tower") or {}).get("circuits"):
            log(format_two_tower(circuits))
    report = res.run_dir / "report" / "report.html"
    log("")
    log(f"run directory: {res.run_dir}")
    log(f"report: {report}" if report.exists() else "report: not written (no report stage)")
    return out
