"""Routing rules: shipped defaults, numeric comparisons, orientation, image type, refusal reasons."""

from __future__ import annotations

import pytest

from dicom_node.config import RouteSpec, load_settings
from dicom_node.errors import ConfigError
from dicom_node.index.models import Series, Study
from dicom_node.workflow.assembly import study_window
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


def _study(*series: Series, calling_ae: str = "CT1") -> Study:
    study = Study(study_instance_uid="1.2.3", modalities="", calling_ae_title=calling_ae)
    study.series = list(series)
    return study


def _series(id_: int, **attributes) -> Series:
    defaults = {"series_instance_uid": f"1.2.3.{id_}", "num_instances": 1, "series_number": id_}
    return Series(id=id_, **{**defaults, **attributes})


def _ct(id_: int, thickness: float, count: int, **attributes) -> Series:
    return _series(
        id_,
        modality="CT",
        orientation="axial",
        slice_thickness=thickness,
        num_instances=count,
        image_type="ORIGINAL\\PRIMARY\\AXIAL",
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
