"""The taxonomy is configuration: classes, aliases, one-line errors, and an open taxonomy for folder labels."""

from __future__ import annotations

import pytest

from cv_dataops.labels.taxonomy import Taxonomy, TaxonomyError


def test_classes_and_aliases_resolve_ignoring_case_and_spaces():
    taxonomy = Taxonomy.from_config({"classes": ["car", "Traffic Light"], "aliases": {"automobile": "car",
                                                                                      "signal": "traffic light"}})
    assert taxonomy.resolve("car") == "car"
    assert taxonomy.resolve("  CAR ") == "car"
    assert taxonomy.resolve("traffic   light") == "Traffic Light"
    assert taxonomy.resolve("Automobile") == "car"
    assert taxonomy.resolve("signal") == "Traffic Light"  # an alias resolves to the class as configured
    assert taxonomy.resolve("truck") is None
    assert taxonomy.resolve("") is None and taxonomy.resolve("   ") is None and taxonomy.resolve(None) is None
    assert "car" in taxonomy and "automobile" not in taxonomy and "CAR" not in taxonomy
    assert taxonomy.describe_unknown("truck") == "unknown class 'truck' (classes: car, Traffic Light)"
    assert not taxonomy.is_open


def test_a_plain_list_is_the_classes():
    assert Taxonomy.from_config(["cat", "dog"]).classes == ("cat", "dog")


def test_open_taxonomy_accepts_every_label_as_written():
    for taxonomy in (Taxonomy.from_config(None), Taxonomy.from_config({}), Taxonomy()):
        assert taxonomy.is_open
        assert taxonomy.resolve(" Golden  Retriever ") == "Golden Retriever"
        assert taxonomy.resolve("cat") == "cat" and taxonomy.resolve("Cat") == "Cat"
        assert taxonomy.resolve("") is None
        assert "cat" in taxonomy
        assert taxonomy.describe_unknown(" ") == "not a label: ' '"
    assert Taxonomy.from_config({"aliases": {"kitty": "cat"}}).resolve("KITTY") == "cat"


@pytest.mark.parametrize(("config", "message"), [
    ({"classes": ["car", "Car"]}, "duplicate class 'Car'"),
    ({"classes": ["car"], "aliases": {"automobile": "truck"}}, "alias 'automobile' points to 'truck', which is not"),
    ({"classes": ["car", "truck"], "aliases": {"truck": "car"}}, "alias 'truck' is also a class"),
    ({"classes": ["car", "bus"], "aliases": {"auto": "car", "AUTO": "bus"}}, "alias 'AUTO' is given twice"),
    ({"classes": ["car", ""]}, "non-empty string"),
    ({"classes": "car"}, "'classes' must be a list"),
    ({"classes": ["car"], "aliases": ["auto"]}, "'aliases' must be a mapping"),
    ({"classes": ["car"], "colours": {}}, "unknown key"),
    ("car", "not a string"),
])
def test_bad_configuration_is_one_line(config, message):
    with pytest.raises(TaxonomyError, match=message) as error:
        Taxonomy.from_config(config)
    assert "\n" not in str(error.value)


def test_version_follows_the_configuration():
    assert Taxonomy.from_config(["a", "b"]).version == Taxonomy.from_config(["a", "b"]).version
    assert Taxonomy.from_config(["a", "b"]).version != Taxonomy.from_config(["a", "c"]).version
