"""Dataset validation: what a person sees when their dataset is wrong (fast, no training)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kontinual.trainer.dataset import validate
from kontinual.trainer.errors import TrainingError
from tests.support.synthetic import CLASS_NAMES, make_dataset, zip_dataset


def test_a_good_dataset_is_counted(tmp_path: Path) -> None:
    data = validate(make_dataset(tmp_path, n_train=5, n_valid=2, n_test=0))
    assert data.names == CLASS_NAMES
    assert data.images == {"train": 5, "valid": 2, "test": 0}
    assert data.eval_split == "valid"  # no test split: evaluate on valid


def test_label_out_of_range_names_the_file_and_line(tmp_path: Path) -> None:
    root = make_dataset(tmp_path, n_train=3)
    (root / "train/labels/train_0001.txt").write_text("0 0.5 0.5 0.1 0.1\n7 0.5 0.5 0.2 0.2\n")
    with pytest.raises(TrainingError) as err:
        validate(root)
    assert err.value.reason == "DatasetInvalid"
    assert "train/labels/train_0001.txt line 2: class 7 out of range 0..3" in err.value.message


def test_corrupt_image_is_named(tmp_path: Path) -> None:
    root = make_dataset(tmp_path, n_train=3)
    (root / "valid/images/valid_0000.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(TrainingError) as err:
        validate(root)
    assert err.value.reason == "DatasetInvalid"
    assert "valid/images/valid_0000.jpg: not a readable image" in err.value.message


def test_unnormalized_coordinates_are_reported(tmp_path: Path) -> None:
    root = make_dataset(tmp_path, n_train=2)
    (root / "test/labels/test_0000.txt").write_text("1 320 240 50 80\n")
    with pytest.raises(TrainingError, match="normalized to 0..1"):
        validate(root)


def test_no_labeled_training_image_is_dataset_empty(tmp_path: Path) -> None:
    root = make_dataset(tmp_path, n_train=3)
    for label in (root / "train/labels").glob("*.txt"):
        label.write_text("")
    with pytest.raises(TrainingError) as err:
        validate(root)
    assert err.value.reason == "DatasetEmpty"
    assert "train split has no labeled images" in err.value.message


def test_missing_data_yaml_and_bad_names(tmp_path: Path) -> None:
    root = make_dataset(tmp_path, n_train=1)
    (root / "data.yaml").write_text("nc: 2\nnames: [ball, ball]\n")
    with pytest.raises(TrainingError, match="class names repeat"):
        validate(root)
    (root / "data.yaml").unlink()
    with pytest.raises(TrainingError, match="data.yaml is missing"):
        validate(root)


def test_zip_holds_the_roboflow_layout(tmp_path: Path) -> None:
    import io
    import zipfile

    names = zipfile.ZipFile(io.BytesIO(zip_dataset(make_dataset(tmp_path, n_train=1, n_valid=1, n_test=1)))).namelist()
    assert "data.yaml" in names
    assert {"train/images/train_0000.jpg", "train/labels/train_0000.txt", "test/labels/test_0000.txt"} <= set(names)
