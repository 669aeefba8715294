"""``dicom-node route STUDY_UID [--explain] [--json]``: how the routes apply to one study, and why.

What it shows is what the reconciler would decide now, with the settings given (their ``[[routes]]``, or
the shipped defaults), beside what the index holds: the stored routing reason and the study's jobs.
A rule that requires content checks shows what they measured on its chosen series: the figures its job
stored, else measured now from the stored files (a few hundred ms; ``"source"`` says which).
``--explain`` adds every rule's every condition, its verdict and the value it saw, per series. It only
reads the index. The ``--json`` document is described in docs/cli.md.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from sqlalchemy import select
from sqlalchemy.orm import Session

from dicom_node.cli.support import ConfigOption, JsonOption, console, errors, open_database, settings_or_exit
from dicom_node.index.models import Instance, Job, Study
from dicom_node.jobs.content import measure_series, stored_report
from dicom_node.workflow.criteria import Verdict
from dicom_node.workflow.explain import RuleExplanation, StudyExplanation, explain_study, series_label
from dicom_node.workflow.routing import SeriesEvaluation, compile_routes


def _verdict(verdict: Verdict) -> dict[str, Any]:
    return {
        "criterion": verdict.criterion,
        "verdict": "pass" if verdict.passed else "fail",
        "seen": verdict.seen,
        "wanted": verdict.wanted,
        "reason": verdict.reason,
    }


def _series(evaluation: SeriesEvaluation) -> dict[str, Any]:
    series = evaluation.series
    return {
        "series_instance_uid": series.series_instance_uid,
        "series_number": series.series_number,
        "modality": series.modality,
        "qualifies": evaluation.qualifies,
        "reason": evaluation.reason,
        "match": [_verdict(v) for v in evaluation.match],
        "match_any": [
            {"holds": all(v.passed for v in block), "conditions": [_verdict(v) for v in block]}
            for block in evaluation.match_any
        ],
    }


def content_checks(session: Session, storage_root: Path, rule: RuleExplanation, jobs: list[Job]) -> Any:
    """What the rule's content checks measured on its chosen series: the figures a job stored, else
    measured now from the stored files (``"source"`` says which); ``None`` if it requires none."""
    chosen = rule.chosen
    if chosen is None or not rule.route.requires:
        return None
    for job in reversed(jobs):
        report = stored_report(job)
        if job.pipeline == rule.route.pipeline and job.series_id == chosen.id and report is not None:
            return {"source": f"job {job.id}", **report}
    paths = session.scalars(
        select(Instance.path).where(Instance.series_id == chosen.id).order_by(Instance.id)
    )
    report = measure_series([storage_root / p for p in paths], rule.route.requires)
    return {"source": "measured now", **report}


def _rule(rule: RuleExplanation, checks: Any = None) -> dict[str, Any]:
    chosen = rule.chosen
    return {
        "index": rule.index,
        "pipeline": rule.route.pipeline,
        "select": rule.route.select,
        "requires": list(rule.route.requires),
        "content_checks": checks,
        "matched": chosen is not None,
        "shadowed_by": rule.shadowed_by,
        "chosen": None
        if chosen is None
        else {
            "series_instance_uid": chosen.series_instance_uid,
            "series_number": chosen.series_number,
            "why": rule.why_chosen,
        },
        "series": [_series(e) for e in rule.series],
    }


def explanation_document(
    explanation: StudyExplanation, jobs: list[Job], defaults: bool, checks: Sequence[Any] = ()
) -> dict[str, Any]:
    """What ``route --json`` prints (``--explain`` or not: the document is the same); ``checks`` holds
    each rule's ``content_checks``."""
    study = explanation.study
    return {
        "study_instance_uid": study.study_instance_uid,
        "state": study.state,
        "revision": study.revision,
        "routed_revision": study.routed_revision,
        "routes": "defaults" if defaults else "settings",
        "routing_reason": study.routing_reason,
        "decision": {
            "matches": [
                {"pipeline": m.pipeline, "series_instance_uid": m.series_instance_uid}
                for m in explanation.decision.matches
            ],
            "reason": explanation.decision.reason,
        },
        "jobs": [
            {
                "id": job.id,
                "pipeline": job.pipeline,
                "study_revision": job.study_revision,
                "series_instance_uid": job.series.series_instance_uid if job.series else None,
                "state": job.state,
                "error": job.error,
                "requires": [c for c in (job.requires or "").split(",") if c],
                "content_checks": stored_report(job),
            }
            for job in jobs
        ],
        "rules": [
            _rule(rule, checks[i] if i < len(checks) else None) for i, rule in enumerate(explanation.rules)
        ],
    }


def _print_verdicts(verdicts: tuple[Verdict, ...], indent: str) -> None:
    for v in verdicts:
        line = f"{indent}{'pass' if v.passed else 'FAIL'} {v.criterion}: saw {v.seen}; wants {v.wanted}"
        console.print(escape(line), soft_wrap=True, highlight=False)


def _print(document: dict[str, Any], explanation: StudyExplanation, explain: bool) -> None:
    def say(text: str) -> None:
        console.print(escape(text), soft_wrap=True, highlight=False)

    say(
        f"study {document['study_instance_uid']}: {document['state']}, revision {document['revision']}"
        f" (routed: {document['routed_revision']}); routes from the {document['routes']}"
    )
    say(f"stored routing reason: {document['routing_reason'] or '(none)'}")
    matches = document["decision"]["matches"]
    decided = ", ".join(f"{m['pipeline']} on {m['series_instance_uid']}" for m in matches)
    say(f"routed now: {decided or document['decision']['reason']}")
    for job in document["jobs"]:
        say(f"job {job['id']}: {job['pipeline']} (revision {job['study_revision']}) {job['state']}")
    for rule in explanation.rules:
        head = f"rule {rule.index} {rule.route.pipeline} (select {rule.route.select}): "
        if rule.shadowed_by is not None:
            head += f"not applied, rule {rule.shadowed_by} already runs this pipeline"
        elif rule.chosen is not None:
            head += f"{series_label(rule.chosen)} chosen, {rule.why_chosen}"
        else:
            head += "no series qualifies"
        say(head)
        say_checks(say, document["rules"][rule.index])
        for evaluation in rule.series:
            verdict = "qualifies" if evaluation.qualifies else f"refused: {evaluation.reason}"
            say(f"  {series_label(evaluation.series)} ({evaluation.series.modality or '?'}): {verdict}")
            if not explain:
                continue
            _print_verdicts(evaluation.match, "      ")
            for number, block in enumerate(evaluation.match_any, 1):
                holds = "holds" if all(v.passed for v in block) else "does not hold"
                say(f"    match_any [{number}] {holds}:")
                _print_verdicts(block, "      ")


def route(
    study_uid: Annotated[str, typer.Argument(help="Study Instance UID.")],
    explain: Annotated[
        bool, typer.Option("--explain", help="Every condition of every rule, with what it saw.")
    ] = False,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show how the routes apply to a study: pipelines, chosen series and why (--explain: every condition)."""
    settings = settings_or_exit(config)
    database = open_database(settings)
    routes = compile_routes(settings.routes)
    with database.sessions() as session:
        study = session.scalar(select(Study).where(Study.study_instance_uid == study_uid.strip()))
        if study is None:
            errors.print(f"[red]no study {escape(study_uid)}[/red]")
            raise typer.Exit(1)
        jobs = list(session.scalars(select(Job).where(Job.study_id == study.id).order_by(Job.id)).all())
        explanation = explain_study(study, routes)
        checks = [content_checks(session, settings.storage_root, rule, jobs) for rule in explanation.rules]
        document = explanation_document(explanation, jobs, defaults=not settings.routes, checks=checks)
        if as_json:
            console.print_json(json.dumps(document))
            return
        _print(document, explanation, explain)


def say_checks(say: Callable[[str], None], rule: dict[str, Any]) -> None:
    """The rule's content checks in words: each verdict with its figures, and where they came from."""
    report = rule.get("content_checks")
    if not rule.get("requires"):
        return
    if report is None:
        say(f"  requires {', '.join(rule['requires'])}: not measured (no series chosen)")
        return
    if "error" in report:
        say(f"  requires {', '.join(rule['requires'])}: not measured ({report['error']})")
        return
    for name, check in report["checks"].items():
        verdict = "pass" if check["passed"] else "FAIL"
        say(f"  content check {name} ({report['source']}): {verdict}, {check['reason']}")


def register(app: typer.Typer) -> None:
    app.command()(route)
