"""`streamd stages try`: what each stage did to sample messages, and the verdict the consumer would reach."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from streamd.cli import main

from .probes import STAGES

SAMPLES = [
    {"id": "hot-1", "text": "t", "source": "lab", "temperature": 35},
    {"id": "noise-1", "text": "t", "source": "noise"},
    {"id": "bad-1", "text": "t", "source": "lab", "temperature": "warm"},
]


def config_file(tmp_path: Path, stages: list) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state"), "stages": stages}))
    return path


def test_each_message_is_explained_stage_by_stage_with_its_verdict(tmp_path, capsys):
    samples = tmp_path / "samples.ndjson"
    samples.write_text("\n".join(json.dumps(sample) for sample in SAMPLES) + "\nnot json\n")

    assert main(["stages", "try", "-c", str(config_file(tmp_path, STAGES)), "--file", str(samples), "--json"]) == 0

    hot, noise, bad, broken = json.loads(capsys.readouterr().out)
    assert [step["action"] for step in hot["steps"]] == ["kept", "set", "renamed", "dropped fields", "routed"]
    assert hot["stored"]["collection"] == "alerts" and hot["stored"]["document"]["data"]["f"] == 95.0
    assert noise["filtered"] == {"stage": "no-noise"} and "stored" not in noise
    assert bad["dead_letter"]["reason"] == "stage" and bad["dead_letter"]["stage_name"] == "fahrenheit"
    assert broken["dead_letter"]["reason"] == "not_json"


def test_the_text_form_names_every_stage_and_a_json_array_is_read_too(tmp_path, capsys):
    samples = tmp_path / "samples.json"
    samples.write_text(json.dumps(SAMPLES[:1]))
    assert main(["stages", "try", "-c", str(config_file(tmp_path, STAGES)), "--file", str(samples)]) == 0
    out = capsys.readouterr().out
    for name in ("no-noise", "fahrenheit", "tidy", "no-debug", "hot"):
        assert name in out
    assert "stored in alerts" in out


def test_without_samples_it_tries_generated_messages(tmp_path, capsys):
    assert main(["stages", "try", "-c", str(config_file(tmp_path, STAGES))]) == 0
    assert capsys.readouterr().out.count("=> stored in messages") == 5


def test_a_bad_stage_exits_2_and_an_unreadable_file_exits_1(tmp_path, capsys):
    bad = [{"name": "b", "kind": "filter", "where": "nope(1)"}]
    assert main(["stages", "try", "-c", str(config_file(tmp_path, bad))]) == 2
    assert "stages[0].where" in capsys.readouterr().err
    missing = str(tmp_path / "missing.ndjson")
    assert main(["stages", "try", "-c", str(config_file(tmp_path, STAGES)), "--file", missing]) == 1


def test_from_topic_reads_the_last_messages_of_the_topic(pipeline_config, tmp_path, capsys):
    from streamd import config as config_module

    from .probes import produce_raw

    produce_raw(pipeline_config, *(json.dumps({"id": f"m-{n}", "text": f"number {n}"}).encode() for n in range(5)))
    raw = config_module.to_mapping(pipeline_config)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))

    assert main(["stages", "try", "-c", str(path), "--from-topic", "2", "--json"]) == 0

    explained = json.loads(capsys.readouterr().out)
    assert len(explained) == 2
    assert all(entry["stored"]["document"]["_id"].startswith("m-") for entry in explained)
