"""Routing rules: shipped defaults on really indexed files, numeric comparisons, orientation, image type,
refusal reasons."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import select

from dicom_node.config import RouteSpec, load_settings
from dicom_node.errors import ConfigError
from dicom_node.index.database import Database
from dicom_node.index.models import Series, Study
from dicom_node.storage.ingest import Ingest, describe_instance
from dicom_node.storage.store import InstanceStore
from dicom_node.workflow.assembly import study_window
from dicom_node.workflow.criteria import series_extent
from dicom_node.workflow.defaults import NOT_CHEST_WORDS
from dicom_node.workflow.explain import explain_study
from dicom_node.workflow.routing import (
    DEFAULT_ROUTES,
    IMAGE_TYPE_ATTRIBUTES,
    KNOWN,
    NUMBER_ATTRIBUTES,
    PATTERN_ATTRIBUTES,
    STUDY_ATTRIBUTES,
    TEXT_ATTRIBUTES,
    compile_route,
    compile_routes,
    parse_number_test,
    route_study,
)
from tests.conftest import CXR
from tests.factories import HEAD_CT, UNTAGGED_CT, write_ct_series, write_description_only_radiograph


def _study(*series: Series, calling_ae: str = "CT1") -> Study:
    study = Study(study_instance_uid="1.2.3", modalities="", calling_ae_title=calling_ae)
    study.series = list(series)
    return study


def _series(id_: int, **attributes) -> Series:
    defaults = {"series_instance_uid": f"1.2.3.{id_}", "num_instances": 1, "series_number": id_}
    return Series(id=id_, **{**defaults, **attributes})


def _ct(id_: int, thickness: float, count: int, **attributes) -> Series:
    """A contiguous axial series: ``count`` slices ``thickness`` apart (ingest records their range)."""
    return _series(
        id_,
        modality="CT",
        orientation="axial",
        slice_thickness=thickness,
        num_instances=count,
        image_type="ORIGINAL\\PRIMARY\\AXIAL",
        slice_position_min=0.0,
        slice_position_max=thickness * (count - 1),
        **attributes,
    )


def test_chest_radiograph_frontal_only():
    routes = compile_routes([])
    frontal = _series(1, modality="DX", body_part_examined="CHEST", view_position="PA")
    lateral = _series(2, modality="DX", body_part_examined="CHEST", view_position="LL")
    decision = route_study(_study(lateral, frontal), routes)
    assert [(m.pipeline, m.series_id) for m in decision.matches] == [("cxr-classification", 1)]
    decision = route_study(_study(lateral), routes)
    assert decision.matches == () and "view_position LL not in ['PA', 'AP']" in decision.reason


def test_chest_ct_starts_nodules_and_vertebrae_on_the_thinnest_axial_series():
    routes = compile_routes([])
    thick = _ct(1, 5.0, 60, body_part_examined="CHEST")
    thin = _ct(2, 1.0, 300, body_part_examined="CHEST")
    scout = _ct(3, 0.5, 1, body_part_examined="CHEST")
    coronal = _ct(4, 0.5, 300, body_part_examined="CHEST")
    coronal.orientation = "coronal"
    decision = route_study(_study(thick, thin, scout, coronal), routes)
    assert {(m.pipeline, m.series_id) for m in decision.matches} == {
        ("ct-lung-nodules", 2),
        ("ct-vertebrae", 2),
    }


def test_series_description_alone_is_not_trusted():
    with pytest.raises(ConfigError, match="modality is required"):
        compile_route({"pipeline": "x", "match": {"series_description": "chest"}})
    # A CT head whose description says "chest" is still not a chest CT without the structural checks.
    routes = compile_routes([])
    head = _ct(1, 1.0, 20, body_part_examined="HEAD", series_description="chest")
    assert route_study(_study(head), routes).matches == ()


def test_numbers_orientation_image_type_and_calling_ae():
    route = compile_route(
        {
            "pipeline": "p",
            "match": {
                "modality": ["CT"],
                "slice_thickness": {"min": 0.5, "max": 2},
                "kvp": "100..140",
                "num_instances": "> 10",
                "orientation": "axial",
                "image_type": ["ORIGINAL"],
                "calling_ae": "CT1",
            },
        }
    )
    good = _ct(1, 1.0, 50, kvp=120.0)
    assert route.why_not(_study(good), good) is None
    assert "kvp 80.0" in route.why_not(_study(good), _ct(2, 1.0, 50, kvp=80.0))
    assert "num_instances 5" in route.why_not(_study(good), _ct(3, 1.0, 5, kvp=120.0))
    assert "calling AE" in route.why_not(_study(good, calling_ae="OTHER"), good)
    derived = _ct(4, 1.0, 50, kvp=120.0)
    derived.image_type = "DERIVED\\SECONDARY"
    assert "lacks" in route.why_not(_study(derived), derived)


@pytest.mark.parametrize(
    ("text", "inside", "outside"),
    [("<= 2.5", 2.5, 2.6), (">=50", 50, 49), ("1..3", 2, 3.5), (5, 5, 5.1), ("!= 0", 1, 0)],
)
def test_number_tests(text, inside, outside):
    test = parse_number_test(text, name="t")
    assert test(inside) and not test(outside) and not test(None)


def test_bad_rules_name_the_setting():
    with pytest.raises(ConfigError, match=r"routes\[0\] \(p\)\.match\.slice_thickness"):
        compile_route({"pipeline": "p", "match": {"modality": "CT", "slice_thickness": "thin"}})
    with pytest.raises(ConfigError, match="unknown criterion"):
        compile_route({"pipeline": "p", "match": {"modality": "CT", "colour": "red"}})
    assert len(compile_routes(DEFAULT_ROUTES)) == 3


def test_routes_are_checked_at_load_and_compiled_once(tmp_path):
    config = tmp_path / "node.toml"
    config.write_text(
        '[[routes]]\npipeline = "ct-lung-nodules"\nquiet_period = 120\n[routes.match]\n'
        'modality = "ct"\nslice_thickness = "<= 3"\n'
        '[[routes]]\npipeline = "ct-vertebrae"\nenabled = false\n[routes.match]\nmodality = "CT"\n'
    )
    settings = load_settings(config, environ={})
    assert isinstance(settings.routes[0], RouteSpec) and settings.routes[0].match.modality == ("CT",)
    routes = compile_routes(settings.routes)
    assert [r.pipeline for r in routes] == ["ct-lung-nodules"]
    # The reconciler and the assembler ask on every pass: the same settings give the same compiled rules.
    assert compile_routes(settings.routes) is routes
    assert compile_routes(settings.model_copy(update={"port": 0}).routes) is routes
    assert compile_routes([]) is compile_routes(())


def test_the_quiet_period_window_uses_routings_study_match_in_any_case(tmp_path):
    config = tmp_path / "node.toml"
    config.write_text(
        "quiet_period = 30\n"
        '[[routes]]\npipeline = "ct-lung-nodules"\nquiet_period = 120\n[routes.match]\n'
        'modality = "ct"\ncalling_ae = "scanner1"\n'
    )
    settings = load_settings(config, environ={})
    assert study_window(Study(modalities="CT\\SR", calling_ae_title="SCANNER1"), settings) == 120
    assert study_window(Study(modalities="ct", calling_ae_title="Scanner1 "), settings) == 120
    assert study_window(Study(modalities="MR", calling_ae_title="SCANNER1"), settings) == 30
    assert study_window(Study(modalities="CT", calling_ae_title="OTHER"), settings) == 30
    # Without routes of their own, the shipped defaults apply, and they widen nothing.
    assert study_window(Study(modalities="CT", calling_ae_title="X"), load_settings(environ={})) == 30


def test_routing_knows_every_criterion_the_settings_accept():
    from dicom_node.config.routes import CRITERIA, MatchBlock

    assert set(CRITERIA) == set(MatchBlock.model_fields) == KNOWN
    assert (
        set(TEXT_ATTRIBUTES)
        | set(PATTERN_ATTRIBUTES)
        | set(NUMBER_ATTRIBUTES)
        | set(IMAGE_TYPE_ATTRIBUTES)
        | set(STUDY_ATTRIBUTES)
        == KNOWN
    )


def test_criteria_are_tried_in_the_order_written():
    route = compile_route(
        {"pipeline": "p", "match": {"num_instances": ">= 40", "modality": "CT", "orientation": "axial"}}
    )
    coronal_mr = _series(1, modality="MR", orientation="coronal", num_instances=5)
    assert route.why_not(_study(coronal_mr), coronal_mr).startswith("num_instances 5")


# --- The shipped defaults on rows indexed by the real Ingest from real and generated files -------------


class Indexed:
    """A real index and store: files go in through ``describe_instance`` and ``Ingest.store_encoded``."""

    def __init__(self, root: Path, url: str | None = None) -> None:
        self.database = Database(url or f"sqlite:///{root / 'index.sqlite3'}")
        self.database.upgrade()
        self.ingest = Ingest(InstanceStore(root / "store"), self.database)

    def add(self, paths) -> str:
        study_uid = ""
        for path in paths:
            ds = dcmread(path, stop_before_pixels=True)
            received = describe_instance(ds, transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID))
            self.ingest.store_encoded(received, Path(path).read_bytes())
            study_uid = received.study_instance_uid
        return study_uid

    def route(self, study_uid: str, routes=None):
        """(decision, explanation) of the shipped defaults (or ``routes``) on the indexed study."""
        with self.database.sessions() as session:
            study = session.scalar(select(Study).where(Study.study_instance_uid == study_uid))
            compiled = compile_routes(routes or [])
            explanation = explain_study(study, compiled)
            decision = route_study(study, compiled)
            assert explanation.decision == decision  # explain applies the rules exactly as routing does
            return decision, explanation

    def study(self, study_uid: str) -> Study:
        with self.database.sessions() as session:
            study = session.scalar(select(Study).where(Study.study_instance_uid == study_uid))
            assert study is not None
            _ = list(study.series)
            return study


@pytest.fixture
def indexed(tmp_path):
    index = Indexed(tmp_path)
    yield index
    index.database.dispose()


@pytest.fixture
def indexed_anywhere(tmp_path, database_url):
    """``indexed`` on SQLite and on PostgreSQL (ingest's statements differ in what each accepts)."""
    index = Indexed(tmp_path, database_url)
    yield index
    index.database.dispose()


def _pipelines(decision) -> set[str]:
    return {m.pipeline for m in decision.matches}


def _rule(explanation, pipeline):
    return next(r for r in explanation.rules if r.route.pipeline == pipeline)


def _verdicts(rule, criterion):
    """Every verdict on ``criterion`` (match and match_any) of the rule's only series."""
    (evaluation,) = rule.series
    return [
        v
        for v in (*evaluation.match, *(v for b in evaluation.match_any for v in b))
        if v.criterion == criterion
    ]


def test_the_shared_siemens_ct_goes_to_vertebrae_by_geometry(indexed_anywhere, test_data):
    indexed = indexed_anywhere
    # BodyPartExamined PARTIALBODY, SeriesDescription "CT Body 3.0", 20 slices 2 mm apart, 3 mm thick.
    uid = indexed.add(sorted((test_data / "ct" / "totalseg_dicom").glob("*.dcm")))
    study = indexed.study(uid)
    assert study.requested_procedure_description == "PET/CT Onko/Infekt"
    assert "NPONKINF^SECTRA^PET/CT Onko/Infekt" in study.procedure_codes
    (series,) = study.series
    assert (series.body_part_examined, series.series_description) == ("PARTIALBODY", "CT Body 3.0")
    assert (series.slice_position_min, series.slice_position_max) == (-804.5, -766.5)
    assert series_extent(series) == 41.0  # 38 mm from first to last position, plus one 3 mm slice

    decision, explanation = indexed.route(uid)
    assert [(m.pipeline, m.series_instance_uid, m.requires) for m in decision.matches] == [
        ("ct-lung-nodules", series.series_instance_uid, ("lungs",)),
        ("ct-vertebrae", series.series_instance_uid, ("spine",)),
    ]
    vertebrae = _rule(explanation, "ct-vertebrae")
    assert vertebrae.chosen.id == series.id and vertebrae.why_chosen.startswith("thinnest of 1")
    (evaluation,) = vertebrae.series
    holding = [block for block in evaluation.match_any if all(v.passed for v in block)]
    assert [[v.criterion for v in block] for block in holding] == [
        ["body_part", "anatomic_region", "description_not"]
    ]
    # The nodule route takes it by geometry; its lung check decides on the pixels (the worker's job).
    nodules = _rule(explanation, "ct-lung-nodules")
    assert nodules.chosen.id == series.id and nodules.route.requires == ("lungs",)
    (extent,) = _verdicts(nodules, "extent_mm")
    assert extent.passed and extent.seen.startswith("41.0 (slice positions -804.5 to -766.5, thickness 3.0)")


@pytest.mark.parametrize(
    ("headers", "routed"),
    [
        ({}, True),  # StudyDescription "CHEST PA" is the only chest clue (ViewPosition PA)
        ({"StudyDescription": "Thorax p.a."}, True),
        ({"StudyDescription": "RX TORAX", "BodyPartExamined": "PORTABLE"}, True),  # only the description
        ({"StudyDescription": None, "SeriesDescription": "Tórax PA"}, True),
        ({"StudyDescription": None, "BodyPartExamined": "TORAX"}, True),
        ({"StudyDescription": None, "RequestedProcedureDescription": "Lunge 2 Ebenen"}, True),
        ({"StudyDescription": None}, True),  # a frontal view, and nothing names another region
        ({"StudyDescription": None, "SeriesDescription": "HAND PA"}, False),
        ({"StudyDescription": None, "ViewPosition": "AP", "BodyPartExamined": "KNEE"}, False),
        ({"StudyDescription": None, "BodyPartExamined": "PORTABLE"}, False),  # nothing says chest
        ({"StudyDescription": "CHEST LAT", "ViewPosition": "LL"}, False),
        ({"StudyDescription": "CHEST PA", "BodyPartExamined": "SKULL"}, False),  # tags that disagree
        ({"ViewPosition": None}, False),  # the classifier's pipeline refuses an unstated view
    ],
)
def test_radiographs_are_routed_on_any_chest_clue(indexed, tmp_path, headers, routed):
    path = write_description_only_radiograph(tmp_path / "dx.dcm", CXR, headers=headers)
    decision, _ = indexed.route(indexed.add([path]))
    assert _pipelines(decision) == ({"cxr-classification"} if routed else set()), decision.reason
    if not routed:
        assert decision.reason.startswith("no route matched — cxr-classification: series 1: ")


def test_coded_clues_route_a_radiograph(indexed, tmp_path):
    portable = {"BodyPartExamined": "PORTABLE"}  # so that the frontal view alone does not route it
    region = Dataset()
    region.CodeValue, region.CodingSchemeDesignator, region.CodeMeaning = "51185008", "SCT", "Chest"
    procedure = Dataset()
    procedure.CodeValue, procedure.CodingSchemeDesignator, procedure.CodeMeaning = (
        "RX12",
        "99LOCAL",
        "RX Thorax",
    )
    by_region = write_description_only_radiograph(
        tmp_path / "a.dcm", CXR, study_description=None, headers={"AnatomicRegionSequence": [region]}
    )
    by_code = write_description_only_radiograph(
        tmp_path / "b.dcm",
        CXR,
        study_description=None,
        headers={**portable, "ProcedureCodeSequence": [procedure]},
    )
    for path in (by_region, by_code):
        decision, _ = indexed.route(indexed.add([path]))
        assert _pipelines(decision) == {"cxr-classification"}
    assert indexed.study(indexed.add([by_code])).procedure_codes == "RX12^99LOCAL^RX Thorax"
    site_rule = {"pipeline": "cxr-classification", "match": {"modality": "DX", "procedure_code": ["rx12"]}}
    decision, _ = indexed.route(indexed.add([by_code]), [site_rule])
    assert _pipelines(decision) == {"cxr-classification"}


def test_the_real_radiograph_goes_to_cxr_classification(indexed):
    decision, explanation = indexed.route(indexed.add([CXR]))  # CR, BodyPartExamined CHEST, PA
    assert _pipelines(decision) == {"cxr-classification"}
    assert _rule(explanation, "cxr-classification").why_chosen.startswith("lowest series number of 1")


def test_a_head_ct_is_not_sent_to_the_nodule_or_spine_pipelines(indexed, tmp_path):
    # 64 slices 2.5 mm apart reach 160 mm: geometry alone would pass; the descriptions say HEAD.
    paths = write_ct_series(tmp_path / "head", 64, rows=16, columns=16, thickness=2.5, headers=HEAD_CT)
    decision, explanation = indexed.route(indexed.add(paths))
    assert decision.matches == ()
    nodules = _rule(explanation, "ct-lung-nodules").series[0]
    assert nodules.reason.endswith("study_description 'CT HEAD' matches description_not")
    geometry = nodules.match_any[3]
    assert [(v.criterion, v.wanted) for v in geometry if not v.passed] == [
        ("description_not", repr(NOT_CHEST_WORDS))  # the reason is brief; explain shows the whole pattern
    ]
    assert "ct-lung-nodules: series 2: body_part (none) not in" in decision.reason
    assert "study_description 'CT HEAD' matches description_not" in decision.reason.split("ct-vertebrae")[1]


def test_a_ct_without_body_part_or_description_is_routed_by_its_reach(indexed, tmp_path):
    long = write_ct_series(tmp_path / "long", 80, rows=16, columns=16, thickness=2.5, headers=UNTAGGED_CT)
    decision, _ = indexed.route(indexed.add(long))  # 200 mm, no tags: routed by geometry
    assert _pipelines(decision) == {"ct-lung-nodules", "ct-vertebrae"}
    # Whatever its reach: the content checks (lungs, spine) decide on its pixels before each pipeline.
    assert {m.requires for m in decision.matches} == {("lungs",), ("spine",)}
    short = write_ct_series(tmp_path / "short", 8, rows=16, columns=16, thickness=2.5, headers=UNTAGGED_CT)
    decision, explanation = indexed.route(indexed.add(short))  # 20 mm: less than one vertebra
    assert decision.matches == ()
    assert _rule(explanation, "ct-lung-nodules").series[0].reason == "num_instances 8 is not >= 10"


def test_extent_comes_from_slice_positions_not_the_instance_count(indexed_anywhere, tmp_path):
    indexed = indexed_anywhere
    # A dynamic series: 60 instances at 3 positions is 3.75 mm of patient, however many instances.
    dynamic = write_ct_series(tmp_path / "dyn", 60, rows=16, columns=16, z_positions=[0.0, 1.25, 2.5])
    decision, explanation = indexed.route(indexed.add(dynamic))
    assert decision.matches == ()
    assert _rule(explanation, "ct-lung-nodules").series[0].reason == "extent_mm 3.75 is not >= 30"
    # Feet first with mirrored columns, sent in reverse: the same reach, the same positions.
    flipped = write_ct_series(
        tmp_path / "ffs",
        50,
        rows=16,
        columns=16,
        thickness=2.5,
        headers={"PatientPosition": "FFS", "ImageOrientationPatient": [-1, 0, 0, 0, 1, 0]},
    )
    uid = indexed.add(reversed(flipped))
    (series,) = indexed.study(uid).series
    assert (series.slice_position_min, series.slice_position_max, series_extent(series)) == (
        -122.5,
        0.0,
        125.0,
    )
    assert _pipelines(indexed.route(uid)[0]) == {"ct-lung-nodules", "ct-vertebrae"}  # body part CHEST
