import random

from gpthf.data import splitter
from gpthf.data.splitter import build_splitter


def test_abbreviations_do_not_end_sentences():
    text = "Mr. Smith met Dr. Jones, e.g. at the U.S. embassy. Mrs. Lee came too."
    assert build_splitter().split(text) == [
        "Mr. Smith met Dr. Jones, e.g. at the U.S. embassy.",
        "Mrs. Lee came too.",
    ]


def test_quoted_speech_stays_with_its_attribution():
    text = '"Is it true?" she asked. He said "yes." Then they left.'
    assert build_splitter().split(text) == ['"Is it true?" she asked.', 'He said "yes."', "Then they left."]


def test_newlines_inside_sentences_collapse_and_blank_lines_split():
    text = "The rain\nfell all\n  night.\n\nCHAPTER TWO\n\nMorning came."
    assert build_splitter().split(text) == ["The rain fell all night.", "CHAPTER TWO", "Morning came."]


def test_empty_and_whitespace_documents_give_no_sentences():
    assert build_splitter().split("") == []
    assert build_splitter().split(" \n\n \t\n") == []


def test_text_without_punctuation_is_one_sentence():
    assert build_splitter().split("no full stop anywhere in this text") == [
        "no full stop anywhere in this text"
    ]


def test_fallback_trains_punkt_on_the_corpus(monkeypatch):
    monkeypatch.setattr(splitter, "_pretrained_parameters", lambda language: None)
    rng = random.Random(0)
    words = ["cat", "dog", "bird", "mat", "night", "dawn", "tree", "house", "river", "stone"]
    corpus = " ".join(f"The {rng.choice(words)} saw a {rng.choice(words)}. " for _ in range(400))
    sentences = build_splitter(training_text=corpus).split("The cat sat on the mat. Dogs bark at night.")
    assert sentences == ["The cat sat on the mat.", "Dogs bark at night."]


def test_unknown_language_falls_back_instead_of_failing():
    sentences = build_splitter("klingon", training_text="One. Two. Three.").split("Alpha beta. Gamma delta.")
    assert sentences == ["Alpha beta.", "Gamma delta."]
