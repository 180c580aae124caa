from __future__ import annotations

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
