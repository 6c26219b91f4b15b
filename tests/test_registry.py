"""core.registry: versions, the active pointer, atomic publishing."""

import pytest

from core import registry
from tests.conftest import publish_random_version


def test_publish_activate_and_list(isolated_folders):
    root = isolated_folders / "weights"
    publish_random_version(root, "v1")
    publish_random_version(root, "v2", activate=False)
    assert registry.list_versions(root) == ["v1", "v2"]
    assert registry.active_version(root) == "v1"
    registry.set_active("v2", root)
    assert registry.active_version(root) == "v2"
    assert registry.load_card(root=root)["version"] == "v2"
    assert registry.load_model("v1", root).count_params() > 0


def test_incomplete_and_staging_folders_are_never_listed(isolated_folders):
    root = isolated_folders / "weights"
    publish_random_version(root, "v1")
    staging = registry.new_staging_dir(root)
    (staging / registry.CARD_FILE).write_text("{}")
    (root / "half").mkdir()
    (root / "half" / registry.CARD_FILE).write_text("{}")
    assert registry.list_versions(root) == ["v1"]
    with pytest.raises(registry.ModelVersionError, match="incomplete"):
        registry.publish(staging, "v2", root=root)
    registry.remove_stale_staging(root)
    assert not staging.exists()


def test_active_version_and_deleting(isolated_folders):
    root = isolated_folders / "weights"
    publish_random_version(root, "v1")
    publish_random_version(root, "v2", activate=False)
    with pytest.raises(registry.ModelVersionError, match="active"):
        registry.delete_version("v1", root)
    registry.delete_version("v2", root)
    assert registry.list_versions(root) == ["v1"]
    with pytest.raises(registry.ModelVersionError, match="already exists"):
        publish_random_version(root, "v1")


def test_missing_weights_give_a_clear_error(isolated_folders):
    with pytest.raises(registry.ModelVersionError, match="No active model version"):
        registry.load_card()
    with pytest.raises(registry.ModelVersionError, match="not a valid"):
        registry.version_dir("../etc")


def test_damaged_model_file_is_a_model_version_error(isolated_folders):
    root = isolated_folders / "weights"
    publish_random_version(root, "v1")
    (root / "v1" / registry.MODEL_FILE).write_bytes(b"not a keras file")
    with pytest.raises(registry.ModelVersionError, match="cannot be loaded"):
        registry.load_model("v1", root)
