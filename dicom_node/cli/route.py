"""``dicom-node route STUDY_UID [--explain] [--json]``: how the routes apply to one study, and why.

What it shows is what the reconciler would decide now, with the settings given (their ``[[routes]]``, or
the shipped defaults), beside what the index holds: the stored routing reason and the study's jobs.
``--explain`` adds every rule's every condition, its verdict and the value it saw, per series. It only
reads the index. The ``--json`` document is described in docs/cli.md.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.markup import escape
from sqlalchemy import select

from dicom_node.cli.support import ConfigOption, JsonOption, console, errors, open_database, settings_or_exit
from dicom_node.index.models import Job, Study
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


def _rule(rule: RuleExplanation) -> dict[str, Any]:
    chosen = rule.chosen
    return {
        "index": rule.index,
        "pipeline": rule.route.pipeline,
        "select": rule.route.select,
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


def explanation_document(explanation: StudyExplanation, jobs: list[Job], defaults: bool) -> dict[str, Any]:
    """What ``route --json`` prints (``--explain`` or not: the document is the same)."""
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
            }
            for job in jobs
        ],
        "rules": [_rule(rule) for rule in explanation.rules],
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
        document = explanation_document(explanation, jobs, defaults=not settings.routes)
        if as_json:
            console.print_json(json.dumps(document))
            return
        _print(document, explanation, explain)


def register(app: typer.Typer) -> None:
    app.command()(route)
