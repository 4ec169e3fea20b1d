from importlib import metadata

from era_core.cli import LOCK_FILE
from era_core.testing import duplicate_distributions, folder_digest, requires_torch, run_digest


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


def test_run_digest_is_the_folder_digest_but_for_the_lock_file(tmp_path):
    (tmp_path / "tb").mkdir()
    (tmp_path / "tb" / "events").write_bytes(b"e")
    (tmp_path / "config.yaml").write_text("lr: 1\n")
    (tmp_path / LOCK_FILE).write_text("1234\n")
    digest = run_digest(tmp_path)
    assert digest == {k: v for k, v in folder_digest(tmp_path).items() if k != LOCK_FILE}
    assert set(digest) == {"config.yaml", "tb/events"}
