"""Real-world folders (issue #9): free-text class names, folders as they come, huge crops, duplicates, small
unseen classes and a trunk cache that notices changed files."""
import unicodedata
import warnings

import pandas as pd
import pytest

import lab


def no_glyph_warnings(draw):
    """Run draw() (which saves a figure) and return matplotlib's 'Glyph ... missing' warnings: empty boxes."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        draw()
    return [str(w.message) for w in caught if "missing from font" in str(w.message)]


# --------------------------------------------------------------------------- 1. class names are free text
def test_figure_names_are_unique_stable_and_ascii():
    assert lab.figure_slug("chainthin") == "chainthin" and lab.figure_slug("01") == "01"
    assert lab.figure_slug("NA") == "NA" and lab.figure_slug("Rhabdonellidae") == "Rhabdonellidae"
    diatom, dinoflagellate = lab.figure_slug("珪藻"), lab.figure_slug("渦鞭毛藻")
    assert diatom != dinoflagellate and diatom.startswith("cls-") and len(diatom) == 12
    assert diatom == "cls-" + __import__("hashlib").sha256("珪藻".encode()).hexdigest()[:8]  # stable across runs
    assert lab.figure_slug("Ceratium furca").startswith("Ceratium_furca-")
    assert lab.figure_slug("Ceratium furca") != lab.figure_slug("Ceratium_furca")  # lossy slugs never collide
    assert lab.figure_slug("Cératium") == lab.figure_slug(unicodedata.normalize("NFD", "Cératium"))
    assert all(lab.figure_slug(n).isascii() for n in ("珪藻", "Cératium", "a/b", "x" * 300))
    assert len(lab.figure_slug("x" * 300)) < 80


def test_csv_text_columns_read_back_exactly(tmp_path):
    path = tmp_path / "t.csv"
    lab.save_csv(path, pd.DataFrame({"class": ["01", "NA", "None", "nan"], "mean": [1.5, float("nan"), 2.0, 3.0]}))
    table = lab.read_csv(path, ("class",))
    assert list(table["class"]) == ["01", "NA", "None", "nan"]
    assert table["mean"].dtype == float and table["mean"].isna().tolist() == [False, True, False, False]


def test_names_no_installed_font_can_draw_are_escaped_with_one_note(monkeypatch, capsys):
    monkeypatch.setattr(lab, "font_with", lambda code_points: None)  # a machine without any CJK font
    monkeypatch.setattr(lab, "_NOTED_UNDRAWABLE", set())
    shown = lab.drawable_names(["珪藻", "chainthin", "Cératium"])
    assert shown == ["\\u73ea\\u85fb", "chainthin", "Cératium"]  # DejaVu Sans has the accented Latin
    lab.drawable_names(["珪藻"])
    err = capsys.readouterr().err
    assert err.count("note: no installed font has the characters") == 1 and "'珪藻'" in err

    def draw():
        plt = lab.pyplot()
        fig, ax = plt.subplots()
        ax.set_title(shown[0])
        fig.canvas.draw()
        plt.close(fig)
    assert no_glyph_warnings(draw) == []


def test_an_installed_font_that_has_the_glyphs_is_used():
    import matplotlib
    name = "Ceratium ᶁ"  # U+1D81: not in DejaVu Sans, but in the STIX fonts matplotlib ships
    with matplotlib.rc_context():
        assert lab.drawable_names([name]) == [name]
        fallback = matplotlib.rcParams["font.family"][-1]
        assert fallback not in ("sans-serif", "DejaVu Sans") and not fallback.startswith("Last Resort")

        def draw():
            plt = lab.pyplot()
            fig, ax = plt.subplots()
            ax.set_title(name)
            fig.canvas.draw()
            plt.close(fig)
        assert no_glyph_warnings(draw) == []


def test_cjk_names_are_drawn_when_a_cjk_font_is_installed():
    import matplotlib
    if lab.font_with({ord("珪"), ord("藻")}) is None:
        pytest.skip("no installed font has CJK glyphs (e.g. apt install fonts-noto-cjk); the escaped fallback is "
                    "tested above")
    with matplotlib.rc_context():
        assert lab.drawable_names(["珪藻"]) == ["珪藻"]


