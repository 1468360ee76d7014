"""EPIC-Kitchens class lists and synonyms, ``--classes`` file formats, class-count check."""
from __future__ import annotations

import json

import pytest

from utils.io.labels import (check_class_count, epic_class_names, epic_classes, parse_label,
                          read_class_file)


@pytest.fixture(scope="module")
def verbs():
    return epic_classes("verb")


@pytest.fixture(scope="module")
def nouns():
    return epic_classes("noun")


def test_epic_lists_match_the_csv_sizes_and_order(verbs, nouns):
    verb_names, verb_synonyms = verbs
    noun_names, noun_synonyms = nouns
    assert len(verb_names) == 125 and len(noun_names) == 352
    assert verb_names[:4] == ["take", "put", "open", "close"]
    assert noun_names[:3] == ["Nothing", "pan", "pan:dust"]
    assert verb_names == epic_class_names("verb")
    assert "stir" in verb_synonyms["mix"] and "tear" in verb_synonyms["rip"]
    assert noun_synonyms["pan:dust"] == ["pan:dust", "dustpan"]


@pytest.mark.parametrize("clip, kind, expected", [
    ("stir-food-P03_05_6751", "verb", "mix"),         # synonym of "mix"
    ("tear-package-P17_03_20411", "verb", "rip"),      # synonym of "rip"
    ("cupboard-open-P30_06_37623", "noun", "cupboard"),  # noun clip: noun first
    ("open-cupboard-P03_05_6777", "verb", "open"),     # verb clip: verb first
    ("turn-on-tap-P01_01_12", "verb", "turn-on"),      # class key with '-'
    ("turn-tap-P01_01_12", "verb", "turn"),
    ("switch-on-light-P02_1", "verb", "turn-on"),      # synonym with '-'
    ("take-off-lid-P04_2", "verb", "remove"),          # longer synonym beats class "take"
    ("take-plate-P04_3", "verb", "take"),
    ("pan:dust-take-P01_5", "noun", "pan:dust"),        # class key with ':'
    ("dustpan-take-P01_6", "noun", "pan:dust"),
    ("pan-wash-P01_7", "noun", "pan"),
    ("do-something-P01_8", "verb", "do"),              # "do" is also a synonym of "finish"
    ("juggle-ball-P01_9", "verb", None),
])
def test_epic_clip_names(clip, kind, expected, verbs, nouns):
    names, synonyms = verbs if kind == "verb" else nouns
    assert parse_label(clip, names, synonyms) == expected


def test_parse_label_without_synonyms_is_unchanged(verbs):
    names, _ = verbs
    assert parse_label("stir-food-P03_05_6751", names) is None
    assert parse_label("open-cupboard-P03_05_6777", names) == "open"


def test_synonyms_in_either_direction_and_unknown_classes_ignored():
    names = ["mix", "rip"]
    assert parse_label("stir-x", names, {"stir": "mix"}) == "mix"
    assert parse_label("stir-x", names, {"mix": ["stir"]}) == "mix"
    assert parse_label("stir-x", names, {"blend": ["stir"]}) is None


def test_plain_text_file(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("# my classes\nrun\n\nwalk fast\njump-rope\n")
    assert read_class_file(path) == (["run", "walk fast", "jump-rope"], None)


def test_csv_with_name_column(tmp_path):
    path = tmp_path / "classes.csv"
    path.write_text("index,name\n1,walk\n0,run\n")
    assert read_class_file(path) == (["run", "walk"], None)
    path.write_text("class_key,comment\nrun,fast\nwalk,slow\n")
    assert read_class_file(path) == (["run", "walk"], None)


def test_json_list_and_object(tmp_path):
    path = tmp_path / "classes.json"
    path.write_text(json.dumps(["run", "walk"]))
    assert read_class_file(path) == (["run", "walk"], None)
    path.write_text(json.dumps({"classes": ["mix"], "synonyms": {"mix": ["stir"]}}))
    assert read_class_file(path) == (["mix"], {"mix": ["stir"]})


def test_epic_layout_csv(tmp_path):
    path = tmp_path / "epic.csv"
    path.write_text('verb_id,class_key,verbs\n1,rip,"[\'rip\', \'tear\']"\n'
                    '0,mix,"[\'mix\', \'stir\', \'stir-in\']"\n')
    names, synonyms = read_class_file(path)
    assert names == ["mix", "rip"]
    assert synonyms == {"mix": ["mix", "stir", "stir-in"], "rip": ["rip", "tear"]}
    assert parse_label("tear-package-P17_03_20411", names, synonyms) == "rip"
    # EPIC-KITCHENS-100 naming: id, key, instances
    path.write_text('id,key,instances,category\n0,take,"[\'take\', \'grab\']",retrieve\n')
    assert read_class_file(path) == (["take"], {"take": ["take", "grab"]})


@pytest.mark.parametrize("content, message", [
    ("", "lists no classes"),
    ("run\nrun\n", "more than once"),
    ("[1, 2]", "list of strings"),
    ("{not json", "not valid JSON"),
    ('id,name\nx,run\n', "must hold integers"),
])
def test_bad_class_files(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        read_class_file(path)
    with pytest.raises(ValueError, match="does not exist"):
        read_class_file(tmp_path / "missing.txt")


def test_check_class_count():
    check_class_count(3, ["a", "b", "c"])
    with pytest.raises(ValueError) as error:
        check_class_count(400, ["a", "b"])
    message = str(error.value)
    assert "400 outputs" in message and "2 classes" in message and "\n" not in message
