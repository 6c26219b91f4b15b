"""``core.settings``: how a card records a training folder, and which folder on this machine a record names."""

from pathlib import Path

import pytest

from core import settings
from tests.conftest import small_card
from train.trainer.config import recipe_from_card


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    root = tmp_path / "elsewhere" / "shared" / "data"
    for name in ("cxr", "cxr-nih-adult", "hospital/site-a"):
        (root / name).mkdir(parents=True)
    monkeypatch.setenv(settings.DATA_ROOT_ENV, str(root))
    return root.resolve()


def test_a_folder_under_the_data_root_is_recorded_relative_to_it(data_root, tmp_path):
    assert settings.portable_data_path(data_root / "cxr") == "cxr"
    assert settings.portable_data_path(data_root / "hospital" / "site-a") == "hospital/site-a"
    assert settings.portable_data_path(data_root / "cxr" / ".." / "cxr-nih-adult") == "cxr-nih-adult"
    outside = tmp_path / "private"
    assert settings.portable_data_path(outside) == str(outside.resolve())


@pytest.mark.parametrize(
    "recorded, expected",
    [
        ("cxr", "cxr"),  # recorded relative: under this data root
        ("hospital/site-a", "hospital/site-a"),
        ("/other-machine/shared/data/cxr-nih-adult", "cxr-nih-adult"),  # an absolute record from another machine
        ("/srv/old/data/hospital/site-a", "hospital/site-a"),  # the longest tail that exists here wins
    ],
)
def test_a_record_names_the_folder_under_this_machines_data_root(data_root, recorded, expected):
    assert settings.local_data_path(recorded) == data_root / expected


def test_a_record_that_names_nothing_here_stays_as_recorded(data_root, tmp_path):
    assert settings.local_data_path("/srv/old/data/unknown-set") == Path("/srv/old/data/unknown-set")
    existing = tmp_path / "private"
    existing.mkdir()
    assert settings.local_data_path(existing) == existing.resolve()


def test_a_round_trip_through_the_card_gives_the_same_folder(data_root):
    for folder in (data_root / "cxr", data_root / "hospital" / "site-a"):
        assert settings.local_data_path(settings.portable_data_path(folder)) == folder


def test_the_active_versions_recipe_reads_its_folders_on_a_machine_with_the_data_elsewhere(data_root):
    """The CI clone's data root is not the one the shipped v1 and v2 were trained under."""
    for recorded in (
        ["cxr", "cxr-nih-adult"],
        ["/other-machine/shared/data/cxr", "/other-machine/shared/data/cxr-nih-adult"],
    ):
        card = small_card(training={"arch": "dcnn80-compact", "epochs": 12, "data": recorded})
        assert recipe_from_card(card).data == [str(data_root / "cxr"), str(data_root / "cxr-nih-adult")]
