from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from vlm_core.config import LocalSettings, Topics


def test_env_overrides() -> None:
    s = LocalSettings.from_env({"VLM_KAFKA_PORT": "40000", "VLM_STATE_DIR": "/tmp/x", "UNRELATED": "1"})
    assert s.kafka_port == 40000
    assert s.bootstrap_servers == "127.0.0.1:40000"
    assert str(s.state_dir) == "/tmp/x"


def test_bad_env_value_is_rejected() -> None:
    with pytest.raises(ValidationError):
        LocalSettings.from_env({"VLM_KAFKA_PORT": "not-a-port"})


def test_topic_names() -> None:
    t = Topics()
    assert (t.frames, t.results, t.dlq) == ("vlm.frames", "vlm.results", "vlm.frames.dlq")


def test_model_cpus_come_from_the_environment_or_the_running_stack(tmp_path: Path) -> None:
    settings = LocalSettings.from_env({"VLM_STATE_DIR": str(tmp_path)})
    assert settings.model_cpus == "" and settings.placement() is None
    settings.model_cpus_file.write_text("1\n")  # what `vlm local up --model-cpus 1` keeps
    assert LocalSettings.from_env({"VLM_STATE_DIR": str(tmp_path)}).model_cpus == "1"
    assert LocalSettings.from_env({"VLM_STATE_DIR": str(tmp_path), "VLM_MODEL_CPUS": ""}).model_cpus == ""


def test_model_cpus_this_machine_lacks_are_a_config_error_naming_the_option() -> None:
    from vlm_core.errors import ConfigError

    lacking = r"model CPUs 4096: this machine has CPUs .*\(--model-cpus / VLM_MODEL_CPUS\)"
    with pytest.raises(ConfigError, match=lacking):
        LocalSettings(model_cpus="4096").placement()
    with pytest.raises(ConfigError, match="is not a CPU list"):
        LocalSettings(model_cpus="one").placement()
