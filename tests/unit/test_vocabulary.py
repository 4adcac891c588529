import pytest

from cmpf.vocabulary import VILD_PROMPT, VocabularyError, load_vocabulary_file, parse_class_list

import sys, pathlib
sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "parity"))
import golden  # noqa: E402


def test_inline_list_synonyms_and_things():
    v = parse_class_list("cat;dog, puppy;sky", things=["cat", "dog"])
    assert v.classes == (("cat",), ("dog", "puppy"), ("sky",))
    assert v.is_thing == (True, True, False)
    assert v.num_synonyms == [1, 2, 1]
    assert v.prompts()[:2] == [VILD_PROMPT[0].format("cat"), VILD_PROMPT[1].format("cat")]
    assert len(v.prompts()) == 4 * len(VILD_PROMPT)


@pytest.mark.parametrize("text", ["", " ; ;", ";"])
def test_empty_vocabulary_is_an_error(text):
    with pytest.raises(VocabularyError, match="empty"):
        parse_class_list(text)


def test_duplicate_class_names_are_an_error():
    with pytest.raises(VocabularyError, match="duplicate class name 'cat'"):
        parse_class_list("cat;dog;cat")


def test_unknown_thing_is_an_error():
    with pytest.raises(VocabularyError, match="not in the vocabulary"):
        parse_class_list("cat;dog", things=["bird"])


def test_official_file_format(tmp_path):
    f = tmp_path / "v.txt"
    f.write_text("1:person, child,girl\n2:invalid_class_id\n3:sky\n\n")
    v = load_vocabulary_file(f)
    assert v.classes == (("person", "child", "girl"), ("sky",))


def test_plain_list_file(tmp_path):
    f = tmp_path / "v.txt"
    f.write_text("cat\ndog,puppy\n")
    assert load_vocabulary_file(f).classes == (("cat",), ("dog", "puppy"))


def test_unreadable_and_empty_files(tmp_path):
    with pytest.raises(VocabularyError, match="cannot read"):
        load_vocabulary_file(tmp_path / "missing.txt")
    (tmp_path / "e.txt").write_text("\n\n")
    with pytest.raises(VocabularyError, match="empty vocabulary"):
        load_vocabulary_file(tmp_path / "e.txt")


def seen_mask(vocabulary, train):
    from cmpf.config import InferenceOptions

    return InferenceOptions().with_seen(train.classes).seen_mask(vocabulary.classes)


def test_seen_mask_is_exact_synonym_match():
    train = parse_class_list("person,child;tv")
    test = parse_class_list("kid,child;television;tv set,tv;Person")
    assert seen_mask(test, train) == [True, False, True, False]


@pytest.mark.skipif(not golden.available(), reason="../shared/reference is not present")
def test_official_vocabularies_counts():
    coco = load_vocabulary_file(golden.VOCABS / "coco_panoptic_with_prompt_eng.txt")
    ade = load_vocabulary_file(golden.VOCABS / "ade20k_150_with_prompt_eng.txt")
    assert len(coco) == 133 and sum(coco.num_synonyms) == 254
    assert len(ade) == 150 and sum(ade.num_synonyms) == 403
    assert sum(seen_mask(ade, coco)) == 64  # MODEL_SPEC.md §6.2
    for name in ("ade20k_847", "pascal_ctx_459", "pascal_ctx_59", "cityscapes", "mapillary_vistas",
                 "lvis_1203", "pascal_voc_21", "coco_stuff"):
        assert len(load_vocabulary_file(golden.VOCABS / f"{name}_with_prompt_eng.txt")) > 0


def test_named_thing_split(tmp_path):
    f = tmp_path / "v.txt"
    f.write_text("".join(f"{i + 1}:c{i}\n" for i in range(19)))
    v = load_vocabulary_file(f, things=["cityscapes"])
    assert [i for i, t in enumerate(v.is_thing) if t] == list(range(11, 19))
    with pytest.raises(VocabularyError, match="150-class"):
        load_vocabulary_file(f, things=["ade20k-150"])
