"""Listing: folders recursively, single files, globs, literal odd names, errors."""

from __future__ import annotations

import pytest

from clipvec_tasks.errors import ClipvecError
from clipvec_tasks.sources import list_images
from tests.conftest import make_image


def _names(uri):
    return [i.id.rsplit("/", 1)[-1] for i in list_images(str(uri))]


def test_folder_is_walked_recursively_in_stable_order(image_dir):
    items = list(list_images(str(image_dir)))
    assert len(items) == 7 and len({i.id for i in items}) == 7
    assert items == list(list_images(str(image_dir)))
    assert all(i.size > 0 and i.mtime is not None for i in items)


def test_single_file_and_glob(image_dir):
    assert _names(image_dir / "a.jpg") == ["a.jpg"]
    assert sorted(_names(f"{image_dir}/sub/**/*.png")) == ["f.png"]
    assert sorted(_names(f"{image_dir}/*.jpg")) == ["a.jpg"]


def test_hidden_files_and_non_images_are_skipped(tmp_path):
    make_image(tmp_path / "x.png")
    make_image(tmp_path / ".hidden.png")
    make_image(tmp_path / ".cache" / "y.png")
    (tmp_path / "x.txt").write_text("no")
    assert _names(tmp_path) == ["x.png"]


@pytest.mark.parametrize("name", ["é ü 写真.jpg", "with space.png", "hash#1.png", "pct%20.png",
                                  "q?.png", "br[1].png"])
def test_odd_names_round_trip(tmp_path, name):
    path = make_image(tmp_path / name, fmt="PNG")
    (item,) = list(list_images(str(tmp_path)))
    assert item.id == f"file://{path}" and item.uri == item.id
    assert (item,) == tuple(list_images(str(path)))  # the literal path, not a glob


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(ClipvecError, match="does not exist"):
        list(list_images(str(tmp_path / "nope")))
