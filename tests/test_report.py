"""The report: its interactive map's points and thumbnails, its optional sections, and the page in a real browser."""
import base64
import io

import pandas as pd
from PIL import Image

import interactive_map


def class_images(root, cls, n):
    return sorted(p for p in (root / cls).iterdir())[:n]


def test_relative_paths_match_the_longest_trailing_part_of_absolute_paths():
    table = pd.DataFrame({"path": ["a/x.jpg", "b/x.jpg", "y.jpg"]})
    paths = ["/data/b/x.jpg", "/data/a/x.jpg", "/data/c/y.jpg", "/data/c/z.jpg", "/other/x.jpg"]
    assert interactive_map.match_by_path_suffix(paths, table) == [1, 0, 2, None, None]


def test_points_carry_thumbnails_predictions_and_the_predicted_colour(tiny_demo, tmp_path):
    seen, unseen = "darksphere", "Retaria"
    train, test = class_images(tiny_demo, seen, 3), class_images(tiny_demo, seen, 5)[3:]
    new_image = tmp_path / "new" / "sample_1.png"
    new_image.parent.mkdir()
    Image.open(train[0]).save(new_image)
    coords = pd.DataFrame(
        [{"split": "train", "label": seen, "path": str(p)} for p in train]
        + [{"split": "test", "label": seen, "path": str(p)} for p in test]
        + [{"split": "unseen", "label": unseen, "path": str(class_images(tiny_demo, unseen, 1)[0])},
           {"split": "predict", "label": None, "path": str(new_image)},
           {"split": "unseen", "label": unseen, "path": str(tmp_path / "gone.png")}])
    coords["x"], coords["y"] = range(len(coords)), 0.0
    test_predictions = pd.DataFrame({"path": [f"{seen}/{p.name}" for p in test], "label": seen,
                                     "predicted": [seen, "chainthin"], "probability": [0.91, 0.55]})
    predictions = pd.DataFrame({"path": ["sample_1.png"], "predicted": ["Odontella"], "probability": [0.75]})

    points = interactive_map.map_points(coords, test_predictions, predictions).set_index("file")

    assert points.loc[test[0].name, "prediction"] == "predicted <b>darksphere</b>, p = 0.91 \u2713"
    assert points.loc[test[1].name, "prediction"] == "predicted <b>chainthin</b>, p = 0.55 \u2717"
    assert points.loc[train[0].name, "prediction"] == ""  # the classifier trained on it: no prediction shown
    new = points.loc["sample_1.png"]
    assert (new["colour_class"], new["label"], new["prediction"]) == ("Odontella", "no label",
                                                                     "predicted <b>Odontella</b>, p = 0.75")
    assert points.loc["gone.png", "thumbnail"] == ""  # a file gone since the map: the point stays, without image
    for uri in points.drop(index="gone.png")["thumbnail"]:
        assert uri.startswith("data:image/jpeg;base64,")
        with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as thumb:
            assert thumb.format == "JPEG" and thumb.size == (64, 64)
    assert list(points["split"]) == ["train"] * 3 + ["test"] * 2 + ["unseen"] * 2 + ["predict"]  # test over train
    assert interactive_map.class_order(points.reset_index()) == [seen, unseen, "Odontella"]
