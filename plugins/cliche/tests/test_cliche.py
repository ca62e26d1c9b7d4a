"""cliche's logic, natively (pytest). The same cases run through the host as a component in
tests/plugins_e2e.rs."""

import random

import pytest

from pipehost_plugin import InvalidConfig
from pipehost_plugin.testing import assert_stream_matches_whole, run_stream
from plugin import Cliche

P = Cliche()


def run(text, config="{}"):
    return P.process(text, None, P.config(config))


def test_removes_english_stock_phrases():
    assert run("Great question! The sky is blue. I hope this helps!") == "The sky is blue."
    assert run("As an AI language model, I cannot feel.") == "I cannot feel."


def test_rewrites_and_keeps_the_capital():
    assert run("I'm sorry, but the shop is closed.") == "Still, the shop is closed."
    assert run("That's great! And that's great news.") == "Nice! And nice news."
    assert run("I’m sorry to hear that.") == "That sounds hard.", "curly apostrophe"
    assert run("THAT'S GREAT news") == "Nice news"


def test_removes_chinese_stock_phrases():
    assert run("作为一个AI，我没有感情。我理解你的感受。希望这对你有帮助！") == "我没有感情。"
    assert run("作为一个AI语言模型，我无法回答。") == "我无法回答。"


def test_leftmost_longest():
    # "I'm sorry, but" wins over "I'm sorry" at the same position.
    assert run("I'm sorry, but no. I'm sorry.") == "Still, no. Sadly."


def test_config_rules_keep_presets_and_case():
    config = '{"presets": ["en"], "rules": {"To be honest, ": ""}, "keep": ["That\'s great!", "that\'s great"]}'
    assert run("To be honest, That's great! 作为一个AI，好。", config) == "That's great! 作为一个AI，好。"
    assert run("GREAT QUESTION! x", '{"case_sensitive": true}') == "GREAT QUESTION! x"
    assert run("Great question! x", '{"presets": []}') == "Great question! x"


@pytest.mark.parametrize(
    "config, message",
    [
        ('{"presets": ["fr"]}', "presets: unknown preset 'fr'"),
        ('{"rules": {"": "x"}}', "rules: a phrase must not be empty"),
        ('{"rulez": {}}', "rulez: unknown field `rulez`"),
        ('{"rules": {"a": 1}}', "rules.a: expected a string, got a number"),
        ('{"presets": "en"}', "presets: expected an array, got a string"),
        ("{", "not valid JSON"),
    ],
)
def test_config_errors_name_the_field(config, message):
    with pytest.raises(InvalidConfig) as e:
        P.config(config)
    assert e.value.message.startswith(message), e.value.message


def test_stream_holds_back_only_a_possible_phrase():
    stream = P.open(P.config("{}"), None)
    assert stream.push("Hello. I'm sor") == "Hello. "
    assert stream.push("ry, b") == ""
    assert stream.push("ut no") == "Still, no"
    assert stream.finish() == ""


ATOMS = ["I'm sorry", "I’m", ", but", " ", "that's great", "!", "Great question", "作为一个AI", "，",
         "我理解你的感受", "。", "希望这对你有帮助", "！", "hello", "I", "'", "a", "\n", "👍"]


def test_stream_equals_whole_for_random_chunkings():
    rng = random.Random(14)
    for _ in range(300):
        text = "".join(rng.choice(ATOMS) for _ in range(rng.randint(0, 25)))
        sizes = [rng.randint(1, 7) for _ in range(rng.randint(1, 3))]
        assert_stream_matches_whole(P, text, "{}", sizes)
        assert_stream_matches_whole(P, text, '{"case_sensitive": true, "rules": {"a": "b"}}', sizes)


def test_run_stream_never_stops():
    assert run_stream(P, "Great question! ok", "{}", (3,)) == ("ok", False)


def test_case_folding_is_ascii_only_and_keeps_positions():
    # Only ASCII letters (and the curly apostrophe) fold: "É" does not match "é", and the
    # text around a match keeps its non-ASCII characters and their places.
    config = '{"presets": [], "rules": {"Été": "summer", "ok": "OK"}}'
    assert run("été, Été, ÉTÉ", config) == "été, Summer, ÉTÉ"
    assert run("Ünïcödé OK ok Ok 👍 oK", config) == "Ünïcödé OK OK OK 👍 OK"
    assert run("I’M SORRY, BUT 好", '{"presets": ["en"]}') == "Still, 好"
