from importlib import metadata

from era_core.testing import duplicate_distributions, requires_torch


def _dist_info(root, name, version):
    folder = root / f"{name.replace('-', '_')}-{version}.dist-info"
    folder.mkdir()
    (folder / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return metadata.PathDistribution(folder)


def test_duplicate_distributions_names_each_twice_installed_one(tmp_path):
    dists = [
        _dist_info(tmp_path, "torch", "2.15.0"),
        _dist_info(tmp_path, "numpy", "2.1.0"),
        _dist_info(tmp_path, "Torch", "2.14.0"),  # names compare as the installer does
        _dist_info(tmp_path, "typing_extensions", "4.12.0"),
        _dist_info(tmp_path, "typing-extensions", "4.15.0"),
    ]
    assert duplicate_distributions(dists) == {
        "torch": ["2.14.0", "2.15.0"],
        "typing-extensions": ["4.12.0", "4.15.0"],
    }


def test_this_environment_has_no_duplicates():
    assert duplicate_distributions() == {}


def test_requires_torch_skips_only_below_the_minimum():
    assert requires_torch("2.4", "floor").args == (False,)
    older = requires_torch("999.0", "a future feature")
    assert (
        older.args == (True,) and older.kwargs["reason"] == "needs torch >= 999.0: a future feature"
    )
