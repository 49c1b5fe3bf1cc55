"""The message helpers of cnnlab.errors: counted nouns, so no message says "1 channel(s)"."""

import re

from cnnlab.errors import counted, noun_for


def test_counted_writes_one_and_many_apart():
    assert counted(1, "channel") == "1 channel" and counted(3, "channel") == "3 channels"
    assert counted(0, "file") == "0 files"
    assert counted(2, "batch", "batches") == "2 batches" and counted(1, "batch", "batches") == "1 batch"


def test_counted_writes_a_float_count_as_g_does():
    assert counted(1.0, "warm-up epoch") == "1 warm-up epoch"  # not "1.0 warm-up epoch"
    assert counted(0.5, "warm-up epoch") == "0.5 warm-up epochs"
    assert counted(2.0, "epoch") == "2 epochs"


def test_noun_for_is_the_noun_counted_writes():
    assert noun_for(1, "field") == "field" and noun_for(2, "field") == "fields"
    assert noun_for(3, "class", "classes") == "classes"
    for number in (1, 2, 1.0, 0.5):
        assert counted(number, "section").endswith(" " + noun_for(number, "section"))


def test_data_stats_counts_the_channels(cli):
    code, out, err = cli(["data", "stats", "digits"])
    assert code == 0, err
    assert re.search(r"digits: 10 classes, 1 channel, \d+x\d+ pixels", out), out
