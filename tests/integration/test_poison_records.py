"""Malformed frames from an outside producer, mixed with good ones, on real Kafka and a
real Ray cluster: every good frame gets exactly one result, every bad frame exactly one
dead letter with its reason, and the processor replica never restarts."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections import Counter

import pytest
from kafka import KafkaProducer

from tests.frame_corpus import RESULT, headers, jpeg, malformed
from tests.integration.pipeline import PipelineTopics, read_topic, running_pipeline
from vlm_core import metrics as m
from vlm_core.metrics import counter_total
from vlm_core.stream import DLQ_SOURCE_HEADER, dlq_reason

pytestmark = pytest.mark.integration

UNICODE_CAMERA = "камера-1 📷"


def test_malformed_corpus_dead_letters_each_bad_frame_once_and_the_stream_goes_on(
    pipeline_env: tuple[str, str], settings
) -> None:  # type: ignore[no-untyped-def]
    from services.inference.deploy import processor_stats

    ray_address, bootstrap = pipeline_env
    topics = PipelineTopics.fresh()
    now_ms = int(time.time() * 1000)
    cases = malformed(now_ms)
    good = [(f"good-{i % 3}".encode(), jpeg(seed=i), headers(f"good-{i % 3}", i, ts=now_ms)) for i in range(30)]
    expected_results = len(good) + sum(c.expected == RESULT for c in cases)
    bad = [c for c in cases if c.expected != RESULT]

    with running_pipeline(ray_address, bootstrap, topics, processor={"batch_size": 4}) as app:
        before = processor_stats(app)
        producer = KafkaProducer(bootstrap_servers=bootstrap, max_request_size=4 << 20)  # plain client
        for i, (key, value, hdrs) in enumerate(good):
            producer.send(topics.frames, key=key, value=value, headers=hdrs)
            if i < len(cases):
                case = cases[i]
                producer.send(topics.frames, key=case.key, value=case.value, headers=case.headers)
        # after the corpus: a good PNG and a good JPEG must still get their results
        from tests.frame_corpus import png

        producer.send(topics.frames, key=b"after", value=png(), headers=headers("after", 1, ts=now_ms, encoding="png"))
        producer.send(topics.frames, key=b"after", value=jpeg(), headers=headers("after", 2, ts=now_ms))
        producer.flush()
        producer.close()
        expected_results += 2

        results = [json.loads(r.value) for r in read_topic(bootstrap, topics.results, expected_results, 180)]
        dead = read_topic(bootstrap, topics.dlq, len(bad), 60)
        after = processor_stats(app)
        unicode_metric = _prometheus_value(settings, UNICODE_CAMERA)
        cli_hit = _vlm("results", "--camera", UNICODE_CAMERA, "--topic", topics.results, "--bootstrap", bootstrap)
        cli_miss = _vlm("results", "--camera", "nope", "--topic", topics.results, "--bootstrap", bootstrap)

    keys = Counter((r["camera_id"], r["seq"]) for r in results)
    want = Counter([(k.decode(), i) for i, (k, _v, _h) in enumerate(good)])
    want.update((c.camera_id, int(dict(c.headers or [])["vlm-seq"])) for c in cases if c.expected == RESULT)
    want.update([("after", 1), ("after", 2)])
    assert keys == want, f"missing {want - keys}, unexpected {keys - want}"

    sources = Counter(dict(r.headers)[DLQ_SOURCE_HEADER] for r in dead)
    assert all(n == 1 for n in sources.values()), f"dead letters repeated: {sources}"
    reasons = sorted((dlq_reason(r.headers) or "") for r in dead)
    assert reasons == sorted(c.expected for c in bad), "each bad frame has exactly one dead letter with its reason"

    assert after.pid == before.pid and after.actor_name == before.actor_name, "the replica was replaced"
    assert after.loop_restarts == 0, after.error
    assert counter_total(after.counters, m.FRAMES_DEAD_LETTERED) == len(bad)
    rise = after.peak_rss_mb - before.peak_rss_mb
    print(f"processor peak RSS {before.peak_rss_mb:.0f} -> {after.peak_rss_mb:.0f} MB (+{rise:.1f})")
    assert rise < 100, "the decompression bomb must be rejected before decoding"

    assert unicode_metric == 1, "the unicode camera's processed count reached Prometheus"
    assert cli_hit.returncode == 0 and UNICODE_CAMERA in cli_hit.stdout
    assert len(cli_hit.stdout.strip().splitlines()) == 1, "one result, one line when piped"
    assert cli_miss.returncode == 2 and "no results matched camera 'nope'" in cli_miss.stderr
    assert UNICODE_CAMERA in cli_miss.stderr and len(cli_miss.stderr.strip().splitlines()) == 1


def _vlm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.cli", *args], capture_output=True, text=True, timeout=120)


def _prometheus_value(settings, camera: str, timeout_s: float = 90) -> float:  # type: ignore[no-untyped-def]
    label = m.metric_label(camera).replace("\\", "\\\\")
    query = f'sum(ray_vlm_frames_processed_total{{camera_id="{label}"}})'
    url = f"{settings.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with urllib.request.urlopen(url, timeout=5) as resp:
            body = json.load(resp)
        if body["data"]["result"]:
            return float(body["data"]["result"][0]["value"][1])
        time.sleep(2)
    return 0.0


def test_a_crash_looping_processor_is_counted_and_replaced(pipeline_env: tuple[str, str], settings) -> None:  # type: ignore[no-untyped-def]
    """A processor whose loop cannot run (its broker address is dead) counts each restart,
    shows it in Ray's metrics, fails its health check and is replaced by Serve."""
    import socket

    from services.inference.deploy import processor_stats

    ray_address, bootstrap = pipeline_env
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{sock.getsockname()[1]}"
    topics = PipelineTopics.fresh()
    processor = {"max_loop_restarts": 1, "restart_window_s": 600}
    with running_pipeline(ray_address, bootstrap, topics, serve_bootstrap=dead, processor=processor) as app:
        first = processor_stats(app)
        deadline = time.monotonic() + 240
        seen_restarts, replaced = 0, False
        while time.monotonic() < deadline and not (replaced and seen_restarts):
            time.sleep(2)
            try:
                stats = processor_stats(app)
            except Exception:  # the replica is being replaced
                continue
            if stats.actor_name == first.actor_name:
                seen_restarts = max(seen_restarts, stats.loop_restarts)
                error = stats.error
            else:
                replaced = True
        exported = _exported_restarts(settings)
    assert seen_restarts >= 1 and "Kafka" in error, error
    assert replaced, "Serve must replace a replica whose loop keeps restarting"
    assert exported >= 1, "the restarts reach Ray's metrics export port"


def _exported_restarts(settings, timeout_s: float = 60) -> float:  # type: ignore[no-untyped-def]
    name = m.exported_name(m.LOOP_RESTARTS)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        url = f"http://{settings.host}:{settings.ray_metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as resp:
            lines = [line for line in resp.read().decode().splitlines() if line.startswith(name + "{")]
        total = sum(float(line.rsplit(" ", 1)[1]) for line in lines)
        if total:
            return total
        time.sleep(2)
    return 0.0
