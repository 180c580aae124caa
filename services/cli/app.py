"""The ``vlm`` command line: the product's front door."""

from __future__ import annotations

import contextlib
import enum
import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from vlm_core.buffering import BufferPolicy
from vlm_core.config import LocalSettings, Topics, ray_environment
from vlm_core.cpu import format_cpu_list
from vlm_core.errors import VlmError

console = Console()
err_console = Console(stderr=True)

#: How a bench table names its cells, escaped: rich reads "[min-max]" as markup and drops it.
MEDIAN_SPREAD = "median \\[min-max]"

app = typer.Typer(
    name="vlm",
    help="vlm-stream: cameras -> Kafka -> Ray Serve (classify / detect / segment) -> Kafka.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
local_app = typer.Typer(help="Run the local single-node stack (Kafka KRaft, Ray, Prometheus).", no_args_is_help=True)
models_app = typer.Typer(help="Model zoo and registry.", no_args_is_help=True)
app.add_typer(local_app, name="local")
app.add_typer(models_app, name="models")
label_app = typer.Typer(help="Labeled data on the labels topic (vlm.labels/v1).", no_args_is_help=True)
app.add_typer(label_app, name="label")

BootstrapOpt = Annotated[
    str | None, typer.Option("--bootstrap", help="Kafka bootstrap servers (default: the local stack's broker).")
]


def _settings() -> LocalSettings:
    from services.localstack.security import use_operator_credentials

    settings = LocalSettings.from_env()
    use_operator_credentials(settings)
    return settings


def _status_table(statuses: list) -> Table:  # type: ignore[type-arg]
    table = Table(title="vlm local stack")
    for column in ("service", "state", "pid", "address", "log / detail"):
        table.add_column(column)
    colors = {"running": "green", "stopped": "yellow", "not installed": "dim", "unhealthy": "red"}
    for s in statuses:
        table.add_row(
            s.name,
            f"[{colors.get(s.state, 'white')}]{s.state}[/]",
            str(s.pid or "-"),
            s.address,
            s.detail or (str(s.log) if s.log else ""),
        )
    return table


@local_app.command("up")
def local_up(
    services: Annotated[
        list[str] | None, typer.Argument(help="kafka, ray, prometheus, labelstudio (default: all but labelstudio)")
    ] = None,
    brokers: Annotated[
        int | None,
        typer.Option(
            "--brokers",
            min=1,
            max=5,
            help="Kafka nodes: 3 is a cluster in a box (replication 3, min.insync.replicas 2). "
            "Kept in the state dir for later commands.",
        ),
    ] = None,
    ray_nodes: Annotated[
        int | None,
        typer.Option(
            "--ray-nodes",
            min=1,
            max=2,
            help="Ray nodes on this machine: 2 adds a second node (ray-2) for model replicas. Set VLM_RAY_NODES=2 "
            "for later commands.",
        ),
    ] = None,
    model_cpus: Annotated[
        str | None,
        typer.Option(
            "--model-cpus",
            help="CPUs (a list: 1, 2-3) the model replicas' forward passes run on alone; the services run on the "
            "others. Kept in the state dir while the stack runs.",
        ),
    ] = None,
    secure: Annotated[
        bool,
        typer.Option(
            "--secure",
            help="Kafka with SASL/SCRAM-SHA-512 over TLS and an ACL per principal (ingest, processor, trainer, "
            "labeler; admin for you). Kept in the state dir for later commands.",
        ),
    ] = False,
) -> None:
    """Start the local services (idempotent) and create the topics."""
    from services.localstack import LocalStack, create_default_topics
    from services.localstack.security import use_operator_credentials

    settings = _settings()
    if brokers is not None:
        settings = settings.model_copy(update={"kafka_brokers": brokers})
    if secure:
        settings = settings.model_copy(update={"kafka_secure": True})
    if ray_nodes is not None:
        settings = settings.model_copy(update={"ray_nodes": ray_nodes})
    if model_cpus is not None:
        settings = settings.model_copy(update={"model_cpus": model_cpus})
    stack = LocalStack(settings)
    with console.status("starting local services (the first start downloads Kafka's jars)..."):
        statuses = stack.up(services)
        if any(s.name == "kafka" and s.running for s in statuses):
            use_operator_credentials(settings)
            create_default_topics(stack.settings.bootstrap_servers)
            if settings.kafka_secure:
                from services.kafka_io.acls import apply_grants, pipeline_grants
                from vlm_core.pipeline import ProcessorSettings

                apply_grants(settings.bootstrap_servers, pipeline_grants(Topics(), ProcessorSettings().group_id))
    console.print(_status_table(statuses))
    _print_placement(settings)
    if settings.kafka_secure:
        console.print(
            f"Kafka speaks SASL_SSL; commands act as admin. To act as a principal: "
            f"set -a; . {settings.kafka_security_dir}/<ingest|processor|trainer|labeler>.env; set +a",
            markup=False,
        )


def _print_placement(settings: LocalSettings) -> None:
    if placement := settings.placement():
        console.print(
            f"model forward passes run on CPUs {format_cpu_list(placement.model)}, "
            f"the services on {format_cpu_list(placement.rest)}",
            markup=False,
        )


@local_app.command("down")
def local_down(
    services: Annotated[
        list[str] | None, typer.Argument(help="kafka, ray, prometheus, labelstudio (default: all)")
    ] = None,
) -> None:
    """Stop the local services by PID (idempotent)."""
    from services.localstack import LocalStack

    console.print(_status_table(LocalStack(_settings()).down(services)))


@local_app.command("status")
def local_status() -> None:
    """Show which local services run, with PIDs, ports and log files."""
    from services.localstack import LocalStack

    settings = _settings()
    console.print(_status_table(LocalStack(settings).status()))
    _print_placement(settings)


@app.command()
def ingest(
    source: Annotated[
        str | None, typer.Option(help="Source URI: file, rtsp://, http(s)://, device:N, synthetic://")
    ] = None,
    camera_id: Annotated[str | None, typer.Option("--camera-id", help="Camera id (the Kafka key).")] = None,
    sources: Annotated[Path | None, typer.Option(help="YAML file listing many cameras.")] = None,
    fps: Annotated[float, typer.Option(help="Frames per second per camera; 0 sends every frame, unpaced.")] = 10.0,
    max_width: Annotated[int, typer.Option("--max-width", help="Downscale wider frames to this width.")] = 640,
    jpeg_quality: Annotated[int, typer.Option("--jpeg-quality", min=1, max=100)] = 85,
    loop: Annotated[bool, typer.Option(help="Loop video files forever.")] = False,
    max_frames: Annotated[int | None, typer.Option("--max-frames", help="Stop each camera after N frames.")] = None,
    buffer_frames: Annotated[
        int, typer.Option("--buffer-frames", min=1, help="Frames kept per camera while the broker is away.")
    ] = 512,
    buffer_policy: Annotated[
        BufferPolicy,
        typer.Option(
            "--buffer-policy",
            help="A full buffer: block the camera, or drop_oldest (counted); auto blocks files and "
            "synthetic scenes and drops for live cameras.",
        ),
    ] = BufferPolicy.AUTO,
    topic: Annotated[str, typer.Option(help="Frames topic.")] = Topics().frames,
    bootstrap: BootstrapOpt = None,
    metrics_port: Annotated[int | None, typer.Option("--metrics-port", help="Prometheus endpoint port.")] = None,
    metrics_host: Annotated[
        str | None, typer.Option("--metrics-host", help="Metrics bind address (default loopback; 0.0.0.0 in pods).")
    ] = None,
) -> None:
    """Read cameras with OpenCV and publish their frames to Kafka."""
    from services.ingest.config import load_cameras
    from services.ingest.metrics import serve_metrics
    from services.ingest.worker import FPS_HINT, CameraConfig, IngestRunner

    if fps < 0:
        raise VlmError(f"--fps {fps:g} is negative", hint=FPS_HINT)
    settings = _settings()
    if sources is not None:
        cameras = load_cameras(sources)
    elif source and camera_id:
        cameras = [
            CameraConfig(
                camera_id,
                source,
                fps,
                max_width,
                jpeg_quality,
                loop=loop,
                max_frames=max_frames,
                buffer_frames=buffer_frames,
                buffer_policy=buffer_policy,
            )
        ]
    else:
        raise VlmError("give --source and --camera-id, or --sources FILE.yaml", hint="see `vlm ingest --help`")
    IngestRunner.check(cameras)  # a camera that can never work fails before anything starts
    port = metrics_port if metrics_port is not None else settings.ingest_metrics_port
    host = metrics_host or settings.host
    try:
        serve_metrics(port, host)
    except OSError as exc:
        raise VlmError(
            f"cannot serve ingest metrics on {host}:{port}: {exc.strerror or exc}",
            hint="another ingest may be running; pass --metrics-port N",
        ) from None
    runner = IngestRunner(cameras, bootstrap or settings.bootstrap_servers, topic)
    runner.start()
    console.print(
        f"ingesting {len(cameras)} camera(s) to {topic}; metrics on http://{host}:{port}/metrics", markup=False
    )
    try:
        while not runner.all_finished():
            time.sleep(1.0)
        if runner.buffered():
            console.print(f"waiting for {runner.buffered()} buffered frames to reach Kafka (Ctrl-C drops them)")
            runner.wait()
    except KeyboardInterrupt:
        console.print("stopping...")
    finally:
        runner.stop()
    for w in runner.workers:
        s = w.stats
        console.print(
            f"{w.config.camera_id}: read {s.read}, sent {s.sent}, dropped {s.dropped}, failed {s.failed}, "
            f"sends retried {s.retried}, reconnects {s.reconnects}",
            markup=False,
        )
    if runner.refused is not None:
        raise VlmError(
            f"Kafka refused the frames on {topic}: {runner.refused}",
            hint="this principal (VLM_KAFKA_SASL_USERNAME) needs WRITE on that topic; see `vlm local up --secure`",
        )
    stopped = [w for w in runner.workers if w.stats.permanent_error]
    if stopped:
        w = stopped[0]
        raise VlmError(f"camera {w.config.camera_id!r} stopped: {w.stats.permanent_error}")


@app.command()
def serve(
    config: Annotated[Path | None, typer.Option(help="Serve config file (default deploy/serve/pipeline.yaml).")] = None,
    app_name: Annotated[
        str | None, typer.Option("--app", help="Only this application of the config (default: every one).")
    ] = None,
    bootstrap: BootstrapOpt = None,
    ray_address: Annotated[
        str | None, typer.Option("--ray-address", help="Ray cluster (default: local stack).")
    ] = None,
    down: Annotated[bool, typer.Option("--down", help="Delete the applications instead.")] = False,
) -> None:
    """Deploy the Serve pipeline (StreamProcessor + model deployments) to Ray. An optional
    application whose weights this machine lacks is skipped, with the reason."""
    from services.inference import deploy as d

    settings = _settings()
    served = d.plan(config, app_name)
    d.connect(ray_address or settings.ray_address)
    if down:
        for name in served.applications:
            d.delete(name)
            console.print(f"deleted Serve application {name!r}", markup=False)
        return
    with console.status("checking that the models' weights are here..."):
        served = served.without_unavailable()
    for name, reason in served.skipped.items():
        cameras = ", ".join(served.skipped_cameras.get(name, [])) or "none"
        console.print(
            f"skipped optional application {name!r}: {reason}. Its cameras ({cameras}) go to the other "
            "applications' default models.",
            markup=False,
            highlight=False,
        )
    for name, pipeline in served.configs(bootstrap=bootstrap).items():
        if bootstrap is None and pipeline.bootstrap == LocalSettings().bootstrap_servers:
            # the shipped default means "the local stack"
            pipeline = pipeline.model_copy(update={"bootstrap": settings.bootstrap_servers})
        models = ", ".join(f"{t.value} {m.model_spec().name}" for t, m in pipeline.models.items())
        with console.status(f"deploying Serve application {name!r} (models load and warm up first)..."):
            d.deploy(pipeline, app_name=name)
        console.print(
            f"Serve application {name!r} is RUNNING ({models}); frames from {pipeline.bootstrap}", markup=False
        )


@app.command()
def results(
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new results.")] = False,
    camera: Annotated[str | None, typer.Option("--camera", help="Only this camera.")] = None,
    topic: Annotated[str, typer.Option(help="Results topic.")] = Topics().results,
    from_beginning: Annotated[bool, typer.Option("--from-beginning", help="Start at the oldest result.")] = False,
    limit: Annotated[int | None, typer.Option(help="Stop after N results.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print raw JSON documents.")] = False,
    bootstrap: BootstrapOpt = None,
) -> None:
    """Print results from the results topic readably."""
    from services.results import Follow, follow_results

    options = Follow(follow, camera, from_beginning, limit, as_json)
    follow_results(bootstrap or _settings().bootstrap_servers, topic, options, console=console)


@app.command()
def events(
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new events.")] = False,
    camera: Annotated[str | None, typer.Option("--camera", help="Only this camera.")] = None,
    event_type: Annotated[
        list[str] | None,
        typer.Option(
            "--type",
            help="Only this type (repeatable): line_crossed, zone_entered, zone_exited, dwell_exceeded, counts.",
        ),
    ] = None,
    topic: Annotated[str, typer.Option(help="Events topic.")] = Topics().events,
    from_beginning: Annotated[bool, typer.Option("--from-beginning", help="Start at the oldest event.")] = False,
    limit: Annotated[int | None, typer.Option(help="Stop after N events.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print raw JSON documents.")] = False,
    bootstrap: BootstrapOpt = None,
) -> None:
    """Print analytics events (line crossings, zone entries and exits, dwell, counts) readably."""
    from services.events import follow_events, parse_types
    from services.results import Follow

    options = Follow(follow, camera, from_beginning, limit, as_json)
    types = parse_types(event_type)
    follow_events(bootstrap or _settings().bootstrap_servers, topic, options, types=types, console=console)


@app.command()
def view(
    host: Annotated[str, typer.Option(help="Address to listen on; beyond loopback VLM_VIEW_TOKEN is required.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int | None, typer.Option(help="Port (default: VLM_VIEW_PORT, 28000).")] = None,
    config: Annotated[
        Path | None, typer.Option(help="Serve config whose topics, zones and lines to show (default: the shipped one).")
    ] = None,
    bootstrap: BootstrapOpt = None,
) -> None:
    """The live web view: every camera's frames with their results drawn, rates, models, events."""
    from services.view import ViewSettings, hub_from_config, serve_view

    settings = _settings()
    view_settings = ViewSettings(host=host, port=port or settings.view_port, token=os.environ.get("VLM_VIEW_TOKEN"))
    view_settings.check()
    hub = hub_from_config(config, bootstrap or settings.bootstrap_servers)
    console.print(f"live view on {view_settings.url} (Ctrl-C to stop)", markup=False)
    serve_view(hub, view_settings)


bench_app = typer.Typer(help="Benchmarks (JSON output).", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@bench_app.command("pipeline")
def bench_pipeline(
    task: Annotated[str, typer.Option(help="classification, detection or segmentation.")],
    model: Annotated[
        str | None,
        typer.Option(help="Architecture, or a registry version NAME@V (default: the task's default model)."),
    ] = None,
    frames: Annotated[int, typer.Option(help="Frames through each measurement.")] = 1000,
    repeat: Annotated[
        int, typer.Option("--repeat", min=1, help="Raw loop and pipeline alternately, N times each; medians.")
    ] = 3,
    frame_size: Annotated[
        str, typer.Option("--frame-size", help="Camera resolution: 320x240, 1280x720 or 1920x1080.")
    ] = "320x240",
    cameras: Annotated[int, typer.Option("--cameras", min=1, help="Synthetic cameras sharing the frames.")] = 2,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", min=1, help="Frames per batch (default: 16 classification, 8 others).")
    ] = None,
    max_batch_size: Annotated[
        int | None,
        typer.Option(
            "--max-batch-size", min=1, help="The model deployment's max_batch_size (default: the batch size)."
        ),
    ] = None,
    latency_seconds: Annotated[float, typer.Option("--latency-seconds", help="Paced latency phase length.")] = 10.0,
    latency_load: Annotated[
        float, typer.Option("--latency-load", help="The paced stream's rate, a fraction of the pipeline's.")
    ] = 0.5,
    latency_fps: Annotated[
        float | None,
        typer.Option(
            "--latency-fps",
            help="The paced stream's rate in frames a second, instead of --latency-load: "
            "one rate for every version compared.",
        ),
    ] = None,
    inflight: Annotated[int, typer.Option("--inflight", min=1, max=16, help="Processor batches in flight.")] = 2,
    tracking: Annotated[
        bool,
        typer.Option("--tracking/--no-tracking", help="Track the cameras (detection only), with a line and a zone."),
    ] = False,
    model_input: Annotated[
        str,
        typer.Option("--model-input", help="What the processor sends the model replica: decoded or encoded frames."),
    ] = "decoded",
    graph: Annotated[
        str,
        typer.Option("--graph", help="How a float model runs on the CPU, raw and in the replica: frozen or eager."),
    ] = "frozen",
    model_hosting: Annotated[
        str,
        typer.Option(
            "--model-hosting",
            help="Where the model runs: its own Serve deployment (deployments) or inside the processor (processor).",
        ),
    ] = "deployments",
    fetch_max_wait_ms: Annotated[
        int | None,
        typer.Option(
            "--fetch-max-wait-ms", min=1, max=500, help="The processor's fetch_max_wait_ms (default: its own)."
        ),
    ] = None,
    warmup_s: Annotated[
        float | None,
        typer.Option(
            "--warmup-s", min=0, help="The model replica's warmup_s: 0 warms up at the largest batch size only."
        ),
    ] = None,
    warm_up_frames: Annotated[
        int | None,
        typer.Option(
            "--warm-up-frames",
            min=0,
            help="Frames through the whole pipeline before the first run, not measured (default 3000; 0: none).",
        ),
    ] = None,
    model_cpus: Annotated[
        str | None,
        typer.Option(
            "--model-cpus",
            help="CPUs the forward passes (and the raw loop) run on alone, as `vlm local up --model-cpus` "
            "(default: the running stack's).",
        ),
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the report here (+ a PNG histogram).")] = None,
) -> None:
    """Raw model vs. the full pipeline (ingest -> Kafka -> Serve -> Kafka), N runs each,
    alternately: medians with the spread, CPU milliseconds per frame by process."""
    os.environ["OMP_NUM_THREADS"] = "1"  # before torch loads: the raw loop gets the replica's thread budget
    task_enum = _task(task, None if model is not None and "@" in model else model)  # a version: bench_spec checks
    from services.bench import parse_frame_size, run_repeated, write_outputs
    from vlm_core.models.spec import Graph
    from vlm_core.pipeline import ModelHosting, ModelInput

    width, height = parse_frame_size(frame_size)
    model_input_enum = _offered(ModelInput, "--model-input", model_input)
    model_hosting_enum = _offered(ModelHosting, "--model-hosting", model_hosting)
    graph_enum = _offered(Graph, "--graph", graph)
    command = "vlm bench pipeline " + " ".join(sys.argv[3:])
    bench, latencies = run_repeated(
        repeat,
        task_enum,
        model,
        frames,
        batch_size=batch_size,
        max_batch_size=max_batch_size,
        width=width,
        height=height,
        cameras=cameras,
        latency_seconds=latency_seconds,
        latency_load=latency_load,
        latency_fps=latency_fps,
        inflight=inflight,
        tracking=tracking,
        model_input=model_input_enum,
        model_hosting=model_hosting_enum,
        graph=graph_enum,
        fetch_max_wait_ms=fetch_max_wait_ms,
        warmup_s=warmup_s,
        **({"warm_up_frames": warm_up_frames} if warm_up_frames is not None else {}),
        settings=_settings() if model_cpus is None else _settings().model_copy(update={"model_cpus": model_cpus}),
        progress=lambda msg: console.print(f"[dim]{msg}[/]"),
        command=command,
    )
    first = bench.runs[0]
    tracked = ", tracking" if first.tracking else ""
    merged = f", model calls up to {first.max_batch_size}" if first.max_batch_size != first.batch_size else ""
    hosted = ", models in the processor" if first.model_hosting == "processor" else ""
    table = Table(
        title=f"vlm bench pipeline: {first.task} / {first.model} ({first.frame_size}, {first.cameras} cameras, "
        f"batch {first.batch_size}{merged}{tracked}{hosted}, forward on CPUs {first.forward_cpus}), "
        f"{MEDIAN_SPREAD} of {len(bench.runs)}"
    )
    paced_at = f"{latency_fps:g} fps" if latency_fps else f"{latency_load:g}"
    figures = {
        "raw fps": "raw_fps",
        "pipeline fps": "pipeline_fps",
        "ratio": "ratio",
        "ingest fps": "ingest_fps",
        f"p50 ms @{paced_at}": "latency_ms.p50",
        "p99 ms": "latency_ms.p99",
        "p99 / raw batch": "latency_p99_per_raw_batch",
        "mean batch": "mean_batch_size",
        "processor MB": "processor_peak_rss_mb",
    }
    for column in (*figures, "lost", "dups"):
        table.add_column(column, justify="right")

    def cell(key: str) -> str:
        figure = bench.summary.get(key)
        if figure is None:
            return "-"
        digits = 2 if key == "ratio" or "stage_" in key else 1 if figure["median"] < 100 else 0
        return f"{figure['median']:.{digits}f} [{figure['min']:.{digits}f}-{figure['max']:.{digits}f}]"

    lost = sum(r.frames_lost for r in bench.runs)
    table.add_row(*(cell(k) for k in figures.values()), str(lost), str(sum(r.duplicates for r in bench.runs)))
    console.print(table)
    cpu_tables = (
        ("CPU ms per frame by process", "process", "cpu_ms_per_frame"),
        ("CPU ms per frame by thread, the busiest of each process", "process / thread", "thread_cpu_ms_per_frame"),
        (
            "CPU ms per paced frame by thread, the busiest of each process",
            "process / thread",
            "latency_thread_cpu_ms_per_frame",
        ),
    )
    for title, heading, key in cpu_tables:
        names = getattr(first, key)
        if not names:
            continue
        cpu = Table(title=f"{title} ({MEDIAN_SPREAD})")
        cpu.add_column(heading)
        cpu.add_column("CPU ms / frame", justify="right")
        for name in names:
            cpu.add_row(name, cell(f"{key}.{name}"))
        console.print(cpu)
    # Each paced-stream figure over the whole stream and over its slowest 1 %.
    whole_and_tail = (
        ("process", first.latency_cores, "latency_cores", "latency_tail_cores", "cores by process"),
        ("per batch", first.latency_batch_medians, "latency_batch_medians", "latency_tail_batch_medians", "batches"),
    )
    for heading, names, whole, tail, what in whole_and_tail:
        if not names:
            continue
        split = Table(title=f"{what}, over the paced stream and its slowest 1 % ({MEDIAN_SPREAD})")
        split.add_column(heading)
        split.add_column("stream", justify="right")
        split.add_column("slowest 1 %", justify="right")
        for name in names:
            split.add_row(name, cell(f"{whole}.{name}"), cell(f"{tail}.{name}"))
        console.print(split)
    stage_tables = (
        ("stage_", first.stage_cpu_ms_per_frame, "processor and model replica"),
        ("latency_stage_", first.latency_stage_cpu_ms_per_frame, "during the paced stream"),
    )
    for prefix, names, during in stage_tables:
        if not names:
            continue
        stages = Table(title=f"ms per frame by stage, {during} ({MEDIAN_SPREAD})")
        stages.add_column("stage")
        for heading in ("CPU", "wall", "run queue"):
            stages.add_column(heading, justify="right")
        for name in names:
            stages.add_row(
                name, *(cell(f"{prefix}{kind}_ms_per_frame.{name}") for kind in ("cpu", "wall", "run_queue"))
            )
        console.print(stages)
    png = write_outputs(bench, latencies, json_out)
    if json_out:
        console.print(f"wrote {json_out} and {png}")
    if lost:
        raise VlmError(f"{lost} frames lost")


@bench_app.command("delivery")
def bench_delivery(
    task: Annotated[str, typer.Option(help="classification, detection or segmentation.")] = "classification",
    model: Annotated[str | None, typer.Option(help="Architecture (default: the task's default model).")] = None,
    frames: Annotated[int, typer.Option(help="Frames through each pipeline run.")] = 1000,
    runs: Annotated[int, typer.Option(help="Pairs of runs (at least once, exactly once); medians over them.")] = 3,
    latency_seconds: Annotated[float, typer.Option("--latency-seconds", help="Paced latency phase length.")] = 10.0,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the report here.")] = None,
) -> None:
    """What exactly once costs: throughput and latency of the same pipeline under both
    delivery modes, alternating, median of the runs with the spread."""
    os.environ["OMP_NUM_THREADS"] = "1"
    task_enum = _task(task, model)
    from services.bench_delivery import run_delivery_bench, write_report

    report = run_delivery_bench(
        task_enum,
        model,
        frames,
        runs=runs,
        latency_seconds=latency_seconds,
        settings=_settings(),
        progress=lambda msg: console.print(msg, markup=False),
        command=" ".join(["vlm", *sys.argv[1:]]),
    )
    console.print_json(
        json.dumps({"summary": report.summary, "exactly_once_ratio": report.exactly_once_ratio, "lost": report.lost})
    )
    write_report(report, json_path)
    if any(report.lost.values()):
        raise VlmError(f"frames lost: {report.lost}")


@app.command()
def chaos(
    fault: Annotated[
        list[str] | None,
        typer.Option(
            "--fault",
            help="broker_kill, processor_kill, model_kill, ray_node_loss, broker_outage, rolling_restart, "
            "serve_redeploy (repeatable; default: every one this stack can run).",
        ),
    ] = None,
    delivery: Annotated[
        list[str] | None, typer.Option("--delivery", help="at_least_once, exactly_once (repeatable; default both).")
    ] = None,
    per_camera: Annotated[int, typer.Option("--frames-per-camera", min=50, help="Frames of each of 2 cameras.")] = 400,
    fps: Annotated[float, typer.Option(help="Frames per second of each camera.")] = 20.0,
    outage_s: Annotated[float, typer.Option("--outage-seconds", help="broker_outage: seconds down.")] = 20.0,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the table here.")] = None,
) -> None:
    """Inject faults mid-stream into the running local stack, under each delivery mode, and
    count what was lost, what was seen twice and how long the stream stood."""
    from services.chaos import ChaosSettings, Fault, run_matrix, write_report
    from vlm_core.pipeline import Delivery

    settings = _settings()
    try:
        runnable = [f for f in Fault if f.runs_on(settings)]
        faults = [Fault(f) for f in fault] if fault else runnable
        deliveries = [Delivery(d) for d in delivery] if delivery else list(Delivery)
    except ValueError as exc:
        raise VlmError(str(exc), hint="see `vlm chaos --help` for the names") from None
    report = run_matrix(
        faults,
        deliveries,
        settings=settings,
        options=ChaosSettings(per_camera=per_camera, fps=fps, outage_s=outage_s),
        progress=lambda msg: console.print(msg, markup=False),
        command=" ".join(["vlm", *sys.argv[1:]]),
    )
    table = Table(title=f"vlm chaos ({settings.kafka_brokers} broker(s), {settings.ray_nodes} Ray node(s))")
    for column in ("fault", "delivery", "frames", "missing", "duplicates", "recovery s", "manual action"):
        table.add_column(column, justify="right")
    for o in report.outcomes:
        table.add_row(
            o.fault,
            o.delivery,
            str(o.frames),
            str(o.missing),
            str(o.duplicates),
            f"{o.recovery_s:.1f}",
            "yes" if o.manual_action else "no",
        )
    console.print(table)
    write_report(report, json_path)
    failed = [f"{o.fault}/{o.delivery}" for o in report.outcomes if not o.ok]
    if failed:
        raise VlmError(f"faults that lost frames or doubled them under exactly once: {', '.join(failed)}")


@bench_app.command("view")
def bench_view(
    viewers: Annotated[int, typer.Option(help="Concurrent WebSocket viewers.")] = 20,
    stalled: Annotated[int, typer.Option(help="Of them, viewers that never read.")] = 1,
    runs: Annotated[int, typer.Option(help="Runs of the two phases (report medians).")] = 3,
    phase_seconds: Annotated[float, typer.Option("--phase-seconds", help="Length of each phase.")] = 30.0,
    fps: Annotated[float, typer.Option(help="Frames per second of each of the two cameras.")] = 10.0,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the report here.")] = None,
) -> None:
    """The live view's cost: pipeline throughput and latency without and with many viewers
    (one stalled), the view's memory, and each viewer's frame rate."""
    from services.bench_view import run_view_bench, write_report

    report = run_view_bench(
        settings=_settings(),
        viewers=viewers,
        stalled=stalled,
        runs=runs,
        phase_s=phase_seconds,
        fps=fps,
        progress=lambda msg: console.print(msg, markup=False),
        command=" ".join(["vlm", *sys.argv[1:]]),
    )
    console.print_json(json.dumps(report.summary))
    write_report(report, json_path)


@bench_app.command("transport")
def bench_transport(
    frames: Annotated[int, typer.Option(min=10, help="Frames per run.")] = 300,
    frame_size: Annotated[str, typer.Option("--frame-size", help="WIDTHxHEIGHT of the frames.")] = "640x480",
    runs: Annotated[int, typer.Option(min=1, help="Runs (report medians and ranges).")] = 3,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the report here.")] = None,
) -> None:
    """What the view's server spends per frame: WebSocket (JPEG + JSON) against MJPEG (draw and re-encode)."""
    from services.bench_transport import run_transport_bench, write_report

    try:
        width, height = (int(v) for v in frame_size.lower().split("x"))
    except ValueError:
        raise VlmError(f"bad --frame-size {frame_size!r}", hint="use WIDTHxHEIGHT, e.g. 1280x720") from None
    report = run_transport_bench(
        frames=frames, width=width, height=height, runs=runs, command=" ".join(["vlm", *sys.argv[1:]])
    )
    console.print_json(json.dumps(report.summary))
    write_report(report, json_path)


@bench_app.command("tracking")
def bench_tracking(
    sequences: Annotated[int, typer.Option(min=1, help="Synthetic sequences (one camera each).")] = 10,
    frames: Annotated[int, typer.Option(min=50, help="Frames per sequence (10 fps).")] = 300,
    model: Annotated[str, typer.Option(help="Registry name of the detector (its production version).")] = (
        "scenes-detector"
    ),
    min_visibility: Annotated[
        float, typer.Option(min=0, max=1, help="Ground-truth items less visible than this are don't-care.")
    ] = 0.3,
    seed: Annotated[
        int, typer.Option(help="Seed of the first sequence; the benchmark is 100-109, tune on others (200).")
    ] = 100,
    tracker: Annotated[
        list[str] | None,
        typer.Option(help="KEY=VALUE over the bench's tracker thresholds (repeatable), e.g. high_score=0.5."),
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the report here.")] = None,
) -> None:
    """Tracking quality of the real pipeline: MOTA, IDF1, ID switches, line and zone counts vs. ground truth."""
    os.environ["OMP_NUM_THREADS"] = "1"
    from services.bench_tracking import run_tracking_bench, tracking_overrides, write_report

    report = run_tracking_bench(
        sequences=sequences,
        frames=frames,
        model_name=model,
        min_visibility=min_visibility,
        first_seed=seed,
        tracking=tracking_overrides(tracker or []),
        settings=_settings(),
        progress=lambda msg: console.print(f"[dim]{msg}[/]"),
        command="vlm bench tracking " + " ".join(sys.argv[3:]),
    )
    table = Table(
        title=f"vlm bench tracking: {report.model}, {report.sequences} x {report.frames_per_sequence} frames "
        f"(seeds {report.first_seed}-{report.first_seed + report.sequences - 1})",
        caption="tracker: " + ", ".join(f"{k}={v}" for k, v in report.tracking.items()),
    )
    for column in ("camera", "gt boxes", "MOTA", "IDF1", "ID sw", "FP", "FN", "line true", "line counted", "zone t/c"):
        table.add_column(column, justify="right")
    for s in report.per_sequence:
        table.add_row(
            s.camera_id,
            str(s.gt_boxes),
            f"{s.mota:.3f}",
            f"{s.idf1:.3f}",
            str(s.id_switches),
            str(s.false_positives),
            str(s.misses),
            f"in {s.line_true['in']} out {s.line_true['out']}",
            f"in {s.line_counted['in']} out {s.line_counted['out']}",
            f"{s.zone_true}/{s.zone_counted}",
        )
    table.add_row(
        "overall", "", f"{report.mota:.3f}", f"{report.idf1:.3f}", str(report.id_switches), "", "",
        "", f"exact {report.line_exact}/{report.sequences}", f"exact {report.zone_exact}/{report.sequences}",
    )  # fmt: skip
    console.print(table)
    write_report(report, json_out)
    if json_out:
        console.print(f"wrote {json_out}")
    if report.results_missing:
        raise VlmError(f"{report.results_missing} frames got no result")


@bench_app.command("soak")
def bench_soak(
    minutes: Annotated[float, typer.Option(min=1, help="How long to run.")] = 30.0,
    cameras: Annotated[int, typer.Option(min=1, help="Synthetic cameras.")] = 4,
    fps: Annotated[float, typer.Option(min=0.1, help="Frames per second per camera.")] = 5.0,
    model: Annotated[str, typer.Option(help="Registry name of the detector.")] = "scenes-detector",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the report here.")] = None,
) -> None:
    """A long tracked run: processor RSS and tracker state size over time, and reused ids."""
    os.environ["OMP_NUM_THREADS"] = "1"
    from services.bench_soak import run_soak, write_soak

    report = run_soak(
        minutes=minutes,
        cameras=cameras,
        fps=fps,
        model_name=model,
        settings=_settings(),
        progress=lambda msg: console.print(f"[dim]{msg}[/]"),
        command="vlm bench soak " + " ".join(sys.argv[3:]),
    )
    console.print(
        f"{report.results} results of {report.frames_sent} frames sent; processor RSS {report.rss_mb_start:.0f} -> "
        f"{report.rss_mb_end:.0f} MB; tracker state {report.state_bytes_start} -> {report.state_bytes_end} bytes; "
        f"{report.ids_issued} ids issued, {report.ids_reused} reused"
    )
    write_soak(report, json_out)
    if report.ids_reused:
        raise VlmError(f"{report.ids_reused} track ids were reused")


def _registry():  # type: ignore[no-untyped-def]
    from vlm_core.registry import ModelRegistry

    return ModelRegistry(_settings().registry_dir)


@models_app.command("list")
def models_list(name: Annotated[str | None, typer.Argument(help="Only this model.")] = None) -> None:
    """Every version in the registry, with status and primary metric."""
    registry = _registry()
    table = Table(title=f"model registry ({registry.root})")
    for column in ("model", "version", "task", "arch", "status", "primary metric", "created", "parent"):
        table.add_column(column)
    for model_name in [name] if name else registry.names():
        for v in registry.versions(model_name):
            score = v.metrics.get(v.primary_metric)
            table.add_row(
                v.name,
                str(v.version),
                v.task.value,
                v.arch,
                v.status.value,
                f"{v.primary_metric}={score:.4f}" if score is not None else "-",
                v.created_at,
                str(v.parent or "-"),
            )
    console.print(table)


@models_app.command("show")
def models_show(ref: Annotated[str, typer.Argument(help="NAME or NAME@VERSION.")]) -> None:
    """Everything recorded about one version."""
    import json

    console.print_json(json.dumps(_registry().resolve(ref).to_json()))


@models_app.command("promote")
def models_promote(
    ref: Annotated[str, typer.Argument(help="NAME@VERSION of the candidate.")],
    margin: Annotated[float, typer.Option(help="Required improvement of the primary metric.")] = 0.0,
    force: Annotated[bool, typer.Option("--force", help="Skip the gate.")] = False,
) -> None:
    """Run the promotion gate; the candidate serves only if it is at least as good as production."""
    from vlm_core.registry import parse_ref

    name, version = parse_ref(ref)
    if version is None:
        raise VlmError(f"promote needs a version: {ref!r}", hint=f"e.g. vlm models promote {name}@2")
    decision = _registry().promote(name, version, margin=margin, force=force)
    verdict = "[green]promoted[/]" if decision.promoted else "[yellow]refused[/]"
    console.print(f"{verdict} {decision.candidate.ref}: {decision.reason}")
    if not decision.promoted:
        raise typer.Exit(1)


@models_app.command("rollback")
def models_rollback(name: Annotated[str, typer.Argument(help="Model name.")]) -> None:
    """Serve the previous production version again."""
    restored = _registry().rollback(name)
    console.print(f"{name}: production is now {restored.ref}")


@models_app.command("rm")
def models_rm(refs: Annotated[list[str], typer.Argument(help="NAME@VERSION of each version to delete.")]) -> None:
    """Delete versions: weights, record and artifacts. Production, earlier production versions
    (rollback) and the parents of other versions are refused; a number is never reused."""
    from vlm_core.registry import parse_ref

    registry = _registry()
    targets = []
    for ref in refs:
        name, version = parse_ref(ref)
        if version is None:
            raise VlmError(f"rm needs a version: {ref!r}", hint=f"e.g. vlm models rm {name}@2")
        targets.append(registry.get(name, version))
    # Newest first: a version and its parent given together go child first.
    for target in sorted(targets, key=lambda v: v.version, reverse=True):
        freed = registry.delete(target)
        console.print(f"deleted {target.ref} ({target.status.value}, {freed / 1e6:.1f} MB)")


@models_app.command("prune")
def models_prune(
    name: Annotated[str, typer.Argument(help="Model name.")],
    keep: Annotated[
        int,
        typer.Option(min=0, help="Versions to keep besides production, earlier production ones and their parents."),
    ] = 3,
    rollback_depth: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Keep only this many earlier production versions for `vlm models rollback` "
            "(the rest may go; default: all stay).",
        ),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be deleted.")] = False,
) -> None:
    """Delete all but the newest --keep versions that nothing depends on."""
    registry = _registry()
    history = registry.rollback_history(name)
    dropped = history[: len(history) - len(registry.rollback_history(name, rollback_depth))]
    if dry_run:
        doomed = registry.prune_plan(name, keep, rollback_depth)
        if doomed:
            console.print(f"{name}: would delete {', '.join(v.ref for v in doomed)}")
    else:
        deleted = registry.prune(name, keep, rollback_depth)
        doomed = [version for version, _size in reversed(deleted)]
        if deleted:
            freed = sum(size for _version, size in deleted) / 1e6
            plural = "s" if len(deleted) != 1 else ""
            refs = ", ".join(v.ref for v in doomed)
            console.print(f"{name}: deleted {len(deleted)} version{plural} ({freed:.1f} MB): {refs}")
    if dropped:
        verb = "would leave" if dry_run else "left"
        numbers = ", ".join(f"v{n}" for n in dropped)
        console.print(f"{name}: {numbers} {verb} the rollback history (--rollback-depth {rollback_depth})")
    if not doomed:
        console.print(f"{name}: nothing to delete ({len(registry.versions(name))} versions, --keep {keep})")


@models_app.command("archs")
def models_archs() -> None:
    """List the architectures the zoo can build."""
    from vlm_core.models import Task, architectures

    table = Table(title="architectures")
    table.add_column("task")
    table.add_column("arch")
    for task in Task:
        for arch in architectures(task):
            table.add_row(task.value, arch)
    console.print(table)


_E = TypeVar("_E", bound=enum.Enum)


def _offered(choices: type[_E], flag: str, value: str) -> _E:
    """``value`` as one of an option's ``choices``, or one line naming them."""
    try:
        return choices(value)
    except ValueError:
        offered = [str(choice.value) for choice in choices]
        raise VlmError(
            f"{flag} {value!r} is not offered", hint=f"use {', '.join(offered[:-1])} or {offered[-1]}"
        ) from None


def _task(value: str, arch: str | None = None):  # type: ignore[no-untyped-def]
    """The Task named ``value``; with ``arch``, also check that the architecture does it."""
    from vlm_core.contracts.task import Task

    try:
        task = Task(value)
    except ValueError:
        raise VlmError(f"unknown task {value!r}", hint="use classification, detection or segmentation") from None
    if arch is not None:
        from vlm_core.models import get_architecture  # loads the zoo (torch): only to check an architecture

        if get_architecture(arch).task is not task:
            raise VlmError(f"{arch} is not a {value} architecture", hint="see `vlm models archs`")
    return task


@app.command()
def train(
    task: Annotated[str, typer.Option(help="classification, detection or segmentation.")],
    data: Annotated[
        str,
        typer.Option(
            help="fashion-mnist, scenes://?n=3000, an image-folder dir, coco:F.json, voc:DIR, or labels://DATASET "
            "(the labels topic, materialised into a snapshot first)."
        ),
    ],
    arch: Annotated[str | None, typer.Option(help="Architecture (default: the task's small default).")] = None,
    init: Annotated[
        str,
        typer.Option(
            help="auto (ImageNet MobileNetV2 backbone where the arch has one), none, a weights path, or a "
            "registry version NAME@V. A checkpoint of the same architecture and classes is fine-tuned whole; "
            "otherwise only its backbone is copied."
        ),
    ] = "auto",
    workers: Annotated[int, typer.Option(min=1, help="Ray Train workers (DDP processes).")] = 2,
    gpus_per_worker: Annotated[float, typer.Option("--gpus-per-worker", min=0)] = 0.0,
    cpus_per_worker: Annotated[float, typer.Option("--cpus-per-worker", min=0.1)] = 1.0,
    epochs: Annotated[int | None, typer.Option(min=1, help="Default: per task (10 / 8 / 8).")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1, help="Per worker.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (one-cycle schedule).")] = None,
    input_size: Annotated[int | None, typer.Option("--input-size", min=16, help="Square model input side.")] = None,
    crop_size: Annotated[
        int | None,
        typer.Option("--crop-size", min=16, help="Segmentation: train on random crops of this side (faster)."),
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(
            help="Ray Train checkpoint storage: a directory or a pyarrow/fsspec URI such as s3://bucket/path "
            "(default ~/.local/share/vlm-stream/train)."
        ),
    ] = None,
    name: Annotated[str | None, typer.Option(help="Registry name (default: from the data and task).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the train/validation split and the model init.")] = 0,
    shuffle_labels: Annotated[
        bool, typer.Option("--shuffle-labels", help="Train on permuted labels: a deliberately bad candidate.")
    ] = False,
    promote: Annotated[bool, typer.Option("--promote", help="Evaluate, gate and promote in one go.")] = False,
    margin: Annotated[float, typer.Option(help="Gate margin on the primary metric.")] = 0.0,
    gate: Annotated[
        list[str] | None,
        typer.Option(
            help="With --promote, gate on this domain instead (repeatable): NAME:DELTA=URI. Both versions are "
            "scored on the URI's held-out samples; the candidate needs production's score + DELTA on every one, "
            "e.g. --gate 'new:+0.05=scenes://?style=negative' --gate 'old:-0.05=scenes://'."
        ),
    ] = None,
    replay: Annotated[
        str | None,
        typer.Option(
            help="Also train on the first --replay-samples training samples of this data (same URIs as --data): "
            "a fine-tune on new labels that rehearses what the model knew."
        ),
    ] = None,
    replay_samples: Annotated[int, typer.Option("--replay-samples", min=1)] = 500,
    eval_limit: Annotated[int | None, typer.Option("--eval-limit", min=1, help="Held-out samples to use.")] = None,
    teacher: Annotated[
        str | None,
        typer.Option(
            help="Distil this registry version (NAME@V or NAME), a classifier or segmenter trained on the same "
            "classes: the loss also matches its softened outputs, and the new version is registered as its "
            "distill child, with the speed-up against it."
        ),
    ] = None,
    distill_weight: Annotated[
        float, typer.Option("--distill-weight", help="With --teacher: the share of the loss that matches it.")
    ] = 0.7,
    temperature: Annotated[float, typer.Option(help="With --teacher: the softening temperature.")] = 4.0,
) -> None:
    """Train on a Ray cluster (TorchTrainer, DDP), evaluate, register; optionally promote."""
    task_enum = _task(task, arch)
    from services.trainer.job import GateDomain, TrainRequest

    settings = _settings()
    init, arch = _resolve_init(init, arch, settings)
    request = TrainRequest(
        task=task_enum,
        data=_resolve_data(data, task_enum),
        arch=arch,
        init=init,
        workers=workers,
        gpus_per_worker=gpus_per_worker,
        cpus_per_worker=cpus_per_worker,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        input_size=input_size,
        crop_size=crop_size,
        name=name,
        seed=seed,
        shuffle_labels=shuffle_labels,
        promote=promote,
        margin=margin,
        gates=tuple(GateDomain.parse(g) for g in gate or ()),
        replay=replay,
        replay_samples=replay_samples,
        eval_limit=eval_limit,
        teacher=_teacher_spec(teacher, settings) if teacher else None,
        distill_weight=distill_weight,
        temperature=temperature,
    ).resolved()
    _run_training(request, data, storage)


def _train_derived(  # type: ignore[no-untyped-def]
    registry, ref: str, method, data: str, student: str | None, keep: float, training: dict[str, Any]
):
    """``vlm optimize --method distill|prune``: a version trained on Ray Train against ``ref``."""
    import time

    from services.trainer.job import TrainRequest
    from vlm_core.models.spec import Optimization
    from vlm_core.training.optimize import pruned_start

    source = registry.resolve(ref)
    data_uri = _resolve_data(data, source.task)
    if method is Optimization.DISTILL:
        _task(source.task.value, student)
        start: dict[str, object] = {"arch": student}
    else:
        # Beside Ray Train's checkpoints, which its workers read as well.
        stamp = time.strftime("%Y%m%d-%H%M%S")
        folder = _settings().registry_dir.parent / "train" / "pruned"
        pruned = folder / f"{source.name}-v{source.version}-{stamp}.safetensors"
        console.print(f"pruning {source.ref} to {keep:.0%} of each layer's channels")
        pruned_start(registry, source.ref, keep, pruned)
        start = {"arch": source.arch, "init": str(pruned), "pruned": True, "input_size": source.input_size}
    request = TrainRequest(
        task=source.task, data=data_uri, teacher=_teacher_spec(source.ref, _settings()), **start, **training
    ).resolved()
    return _run_training(request, data, None)


def _teacher_spec(ref: str, settings: LocalSettings) -> dict[str, object]:
    from vlm_core.registry import ModelRegistry

    registry = ModelRegistry(settings.registry_dir)
    version = registry.resolve(ref)
    registry.verify(version)
    return version.spec(registry.root).to_dict()


def _run_training(request, data: str, storage: str | None):  # type: ignore[no-untyped-def]
    """Check the request's data, then train it on the cluster with a progress bar, and say
    what came of it."""
    from services.localstack import LocalStack
    from services.trainer.job import run_training
    from services.trainer.progress import TrainingProgress, progress_bar

    settings = _settings()
    dataset = request.load_data()  # bad data fails here, before any cluster starts
    request.check_teacher_classes(dataset.class_names)
    request.check_gates()
    console.print(
        f"training {request.name}: {request.arch} on {data}, {request.workers} workers, {request.epochs} epochs, "
        f"batch {request.batch_size}/worker"
    )
    # Inside a Ray cluster (a RayJob, `ray exec`), RAY_ADDRESS names it; otherwise the local stack.
    ray_address = os.environ.get("RAY_ADDRESS")
    if not ray_address:
        LocalStack(settings).up(["ray"])
        ray_address = settings.ray_address
    # URIs (s3://, gs://, ...) go to Ray Train as they are; Path() would fold their "//".
    storage_dir = storage if storage else settings.registry_dir.parent / "train"
    with progress_bar(console=console) as bar:
        outcome = run_training(
            request,
            ray_address=ray_address,
            registry_dir=settings.registry_dir,
            storage=storage_dir,
            on_progress=TrainingProgress(bar, request.epochs),
            data=dataset,
        )
    figures = "  ".join(f"{k}={v:.4f}" for k, v in outcome.metrics.items())
    console.print(f"[green]registered {outcome.version.ref}[/] ({outcome.version.status.value}): {figures}")
    console.print(f"training {outcome.train_s:.0f}s, total {outcome.wall_s:.0f}s; checkpoint {outcome.checkpoint_path}")
    for artifact, path in outcome.artifacts.items():
        console.print(f"{artifact}: {path}")
    recorded = outcome.version.metrics
    if "speedup" in recorded:
        primary = outcome.version.primary_metric
        console.print(
            f"{outcome.version.optimization.value} of {outcome.version.name}@{outcome.version.parent}: {primary} "
            f"{recorded[primary]:.4f} against its {recorded['source_' + primary]:.4f}, "
            f"{recorded['fps']:.0f} against {recorded['source_fps']:.0f} fps ({recorded['speedup']:.2f}x, one thread; "
            f"{recorded['infer_speedup']:.2f}x without the preprocessing both share)"
        )
    if outcome.decision is not None:
        verdict = "[green]promoted[/]" if outcome.decision.promoted else "[yellow]refused[/]"
        console.print(f"gate: {verdict} {outcome.version.ref}: {outcome.decision.reason}")
    return outcome


@app.command("eval")
def eval_model(
    model: Annotated[str, typer.Option(help="NAME or NAME@VERSION from the registry.")],
    data: Annotated[str, typer.Option(help="Same data URIs as vlm train; the held-out split is used.")],
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many samples.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the metrics here.")] = None,
) -> None:
    """Evaluate a registered version on any data, through the serving Predictor."""
    import json

    from vlm_core.tasks import build_predictor
    from vlm_core.training.data import load_training_data
    from vlm_core.training.evaluate import evaluate, evaluation_overrides

    registry = _registry()
    version = registry.resolve(model)
    registry.verify(version)
    dataset = load_training_data(_resolve_data(data, version.task), version.task)
    predictor = build_predictor(version.spec(registry.root, **evaluation_overrides(version.task)))
    result = evaluate(predictor, dataset.test, limit=limit)
    table = Table(title=f"{version.ref} on {data} ({result.samples} held-out samples)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in result.metrics.items():
        table.add_row(key, f"{value:.4f}")
    console.print(table)
    if json_out:
        json_out.write_text(
            json.dumps({"model": version.ref, "data": data, "samples": result.samples, **result.metrics})
        )


@app.command("optimize")
def optimize(
    model: Annotated[str, typer.Option(help="NAME@VERSION (or NAME: its production version) to compress.")],
    method: Annotated[
        str,
        typer.Option(
            help="fold-bn, int8 (static, FX graph mode, x86 kernels), int8-onednn (oneDNN kernels, full 8-bit "
            "activations; CPUs with VNNI or AMX-INT8), bf16 or fp16 (the whole network cast, channels-last), "
            "distill (train --student on Ray Train against it; `vlm train --teacher` has every training option), "
            "or prune (--keep of each layer's channels, then fine-tuned on Ray Train against it)."
        ),
    ],
    calibration: Annotated[
        str,
        typer.Option(
            "--calibration",
            help="Data URI as for vlm train: int8 calibrates on its held-out training split, and both "
            "versions are scored on its test split.",
        ),
    ],
    samples: Annotated[int, typer.Option("--calibration-samples", min=1, help="Calibration samples.")] = 256,
    limit: Annotated[int | None, typer.Option(min=1, help="Score on at most this many held-out samples.")] = None,
    passes: Annotated[int, typer.Option("--timing-passes", min=1, help="Alternating timing passes.")] = 3,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the report here.")] = None,
    student: Annotated[
        str | None, typer.Option(help="distill: the student architecture (see `vlm models archs`).")
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(min=1, help="distill and prune: epochs on Ray Train (default: the data's recipe).")
    ] = None,
    keep: Annotated[float, typer.Option(help="prune: the share of each layer's channels kept.")] = 0.5,
    workers: Annotated[int, typer.Option(min=1, help="distill and prune: Ray Train workers.")] = 2,
    cpus_per_worker: Annotated[float, typer.Option("--cpus-per-worker", min=0.1)] = 1.0,
) -> None:
    """A compressed registry version (parent: the source), with its accuracy against the
    source on the same held-out data and its speed-up measured here. Promote it with
    `vlm models promote`: the gate decides on accuracy, as for any candidate."""
    import json

    from vlm_core.models.spec import Optimization
    from vlm_core.training.optimize import optimize_version

    method_enum = _offered(Optimization, "--method", method)
    if (student is not None) != (method_enum is Optimization.DISTILL):
        raise VlmError("--student goes with --method distill, and distill needs one", hint="see `vlm models archs`")
    registry = _registry()
    if method_enum.trains:
        training = {"epochs": epochs, "workers": workers, "cpus_per_worker": cpus_per_worker}
        outcome = _train_derived(registry, model, method_enum, calibration, student, keep, training)
        if json_out:
            version = outcome.version
            json_out.write_text(
                json.dumps(
                    {
                        "source": f"{version.name}@{version.parent}",
                        "version": version.ref,
                        "method": method_enum.value,
                        "arch": version.arch,
                        "data": calibration,
                        "metrics": version.metrics,
                        "source_fps": list(outcome.comparison.source_fps),
                        "fps": list(outcome.comparison.fps),
                        "source_infer_fps": list(outcome.comparison.source_infer_fps),
                        "infer_fps": list(outcome.comparison.infer_fps),
                    },
                    indent=2,
                )
            )
        return
    report = optimize_version(
        registry,
        model,
        method_enum,
        _resolve_data(calibration, registry.resolve(model).task),
        calibration_samples=samples,
        limit=limit,
        timing_passes=passes,
        progress=lambda message: console.print(f"[dim]{message}[/]"),
    )
    doc = report.to_json()
    table = Table(
        title=f"{report.version.ref}: {method_enum.value} of {report.source.ref} "
        f"({report.eval_samples} held-out samples)"
    )
    for column in ("", doc["primary_metric"], "fps (median)", "fps per pass"):
        table.add_column(column, justify="right")
    primary = doc["primary_metric"]
    table.add_row(
        report.source.ref,
        f"{report.source_metrics[primary]:.4f}",
        f"{report.version.metrics['source_fps']:.1f}",
        ", ".join(f"{f:.0f}" for f in report.source_fps),
    )
    table.add_row(
        report.version.ref,
        f"{report.metrics[primary]:.4f}",
        f"{report.version.metrics['fps']:.1f}",
        ", ".join(f"{f:.0f}" for f in report.fps),
    )
    console.print(table)
    console.print(
        f"speed-up {doc['speedup']:.2f}x ({doc['infer_speedup']:.2f}x without the preprocessing both share), "
        f"{primary} drop {doc['drop_points']:.2f} points; "
        f"promote with `vlm models promote {report.version.ref}` (add --margin -0.005 to accept a 0.5 point loss)"
    )
    host = report.host
    console.print(
        f"measured on {host.cpu} ({host.family_model or 'family unknown'}), {host.cpus} CPUs, "
        f"one torch thread; {' '.join(host.flags) or 'no AVX2'}"
    )
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(doc, indent=2) + "\n")


DatasetOpt = Annotated[str, typer.Option(help="Dataset name on the labels topic (letters, digits, . _ -).")]
TaskOpt = Annotated[str, typer.Option(help="classification, detection or segmentation.")]
LabelsTopicOpt = Annotated[str, typer.Option(help="Labels topic.")]


@label_app.command("push")
def label_push(
    source: Annotated[str, typer.Argument(help="An image-folder dir, coco:F.json, voc:DIR, scenes://?n=N, ...")],
    dataset: DatasetOpt,
    task: TaskOpt,
    limit: Annotated[int | None, typer.Option(min=1, help="Send at most N samples.")] = None,
    topic: LabelsTopicOpt = Topics().labels,
    bootstrap: BootstrapOpt = None,
) -> None:
    """Send a folder of labeled data to the labels topic, one record per sample."""
    task_enum = _task(task)
    from rich.progress import Progress

    from services.labels import push_labels

    with Progress(console=console) as bar:
        job = bar.add_task(f"pushing to {topic}", total=None)
        sent = push_labels(
            bootstrap or _settings().bootstrap_servers,
            topic,
            source,
            dataset=dataset,
            task=task_enum,
            limit=limit,
            on_progress=lambda done, total: bar.update(job, completed=done, total=total),
        )
    console.print(f"sent {sent} labeled {task_enum.value} samples of {source} to {topic} as dataset {dataset!r}")


@label_app.command("snapshot")
def label_snapshot(
    dataset: DatasetOpt,
    task: TaskOpt,
    out: Annotated[Path | None, typer.Option(help="Snapshot root (default: ~/.local/share/vlm-stream/datasets).")] = (
        None
    ),
    topic: LabelsTopicOpt = Topics().labels,
    bootstrap: BootstrapOpt = None,
) -> None:
    """Materialise a dataset's labels into a snapshot directory named by its content hash."""
    from services.labels import snapshot_labels

    settings = _settings()
    snapshot = snapshot_labels(
        bootstrap or settings.bootstrap_servers,
        topic,
        dataset=dataset,
        task=_task(task),
        root=out or settings.datasets_dir,
    )
    console.print(snapshot.describe())
    console.print(f"content hash {snapshot.content_hash}; train with --data {snapshot.path}")


@label_app.command("delete")
def label_delete(
    sample_ids: Annotated[list[str], typer.Argument(help="Sample ids to delete.")],
    dataset: DatasetOpt,
    topic: LabelsTopicOpt = Topics().labels,
    bootstrap: BootstrapOpt = None,
) -> None:
    """Delete samples from a dataset (tombstone records; later snapshots leave them out)."""
    from services.labels import delete_labels

    delete_labels(bootstrap or _settings().bootstrap_servers, topic, dataset=dataset, sample_ids=sample_ids)
    console.print(f"deleted {len(sample_ids)} samples from {dataset!r}")


studio_app = typer.Typer(help="Label Studio: sampled frames to tasks, annotations to labels.", no_args_is_help=True)
label_app.add_typer(studio_app, name="studio")


@studio_app.command("sync")
def label_studio_sync(
    dataset: Annotated[str, typer.Option(help="Dataset the labels go to (labels://DATASET trains on it).")],
    task: Annotated[str, typer.Option(help="classification or detection.")] = "detection",
    model: Annotated[
        str | None, typer.Option(help="NAME[@V] whose classes to label (default: the model the samples name).")
    ] = None,
    classes: Annotated[str | None, typer.Option(help="Comma-separated class names instead of --model.")] = None,
    url: Annotated[str | None, typer.Option(help="Label Studio URL (default: the local stack's).")] = None,
    min_score: Annotated[float, typer.Option(help="Pre-annotate only boxes scoring at least this.")] = 0.25,
    follow: Annotated[bool, typer.Option("--follow", help="Keep syncing every --interval seconds.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between syncs with --follow.")] = 10.0,
    bootstrap: BootstrapOpt = None,
) -> None:
    """Turn new to-label samples into Label Studio tasks (with the model's prediction) and
    completed annotations into vlm.labels records. Idempotent."""
    from services.labelstudio import StudioAccess, StudioSync, class_names_for, read_to_label

    settings = _settings()
    topics = Topics()
    kafka = bootstrap or settings.bootstrap_servers
    profile_task = _task(task)
    access = StudioAccess.resolve(url, os.environ.get("VLM_LABEL_STUDIO_TOKEN"), settings)
    if classes:
        names = [c.strip() for c in classes.split(",") if c.strip()]
    else:
        names = class_names_for(profile_task, model, read_to_label(kafka, topics.to_label)[0], settings)
    sync = StudioSync(
        access.client(),
        bootstrap=kafka,
        topics=topics,
        dataset=dataset,
        task=profile_task,
        class_names=names,
        min_score=min_score,
    )
    if not follow:
        report = sync.sync()
        console.print(f"{access.url}: {report.describe()}", markup=False)
        return
    console.print(f"syncing with {access.url} every {interval:g}s (Ctrl-C to stop)", markup=False)
    with contextlib.suppress(KeyboardInterrupt):
        sync.follow(interval, lambda r: console.print(r.describe(), markup=False), lambda: False)


def _resolve_init(init: str, arch: str | None, settings: LocalSettings) -> tuple[str, str | None]:
    """``--init NAME@V`` becomes that registry version's weights file, and its architecture
    unless ``--arch`` says otherwise; keywords and paths stay as they are."""
    if "@" not in init or Path(init).exists():
        return init, arch
    from vlm_core.registry import ModelRegistry

    registry = ModelRegistry(settings.registry_dir)
    version = registry.resolve(init)
    return str(registry.weights_path(version)), arch or version.arch


def _resolve_data(data: str, task) -> str:  # type: ignore[no-untyped-def]
    """``labels://DATASET`` becomes a fresh snapshot directory; other URIs stay as they are."""
    from services.labels import resolve_data

    settings = _settings()
    resolved, snapshot = resolve_data(
        data, task, bootstrap=settings.bootstrap_servers, topic=Topics().labels, root=settings.datasets_dir
    )
    if snapshot is not None:
        console.print(snapshot.describe())
    return resolved


@app.command()
def demo(
    duration: Annotated[float | None, typer.Option(help="Stop after N seconds (default: run until Ctrl-C).")] = None,
    fps: Annotated[float, typer.Option(help="Frames per second per camera.")] = 5.0,
    keep_stack: Annotated[bool, typer.Option("--keep-stack", help="Leave Kafka/Ray/Prometheus running.")] = False,
    train: Annotated[
        bool,
        typer.Option(
            "--train/--no-train",
            help="Train quick detection/segmentation models in the background where the registry has none.",
        ),
    ] = True,
) -> None:
    """The main job: local Kafka + Ray, the Serve pipeline, two cameras, a live summary."""
    from services.demo import run_demo

    run_demo(_settings(), console=console, duration_s=duration, fps=fps, stop_stack=not keep_stack, train_missing=train)


@app.command("loop")
def loop_command(
    drift: Annotated[
        str,
        typer.Option(
            help="How the drifting camera's scenes change: small (items at 40%, the measured run), clutter or negative."
        ),
    ] = "small",
    fps: Annotated[float | None, typer.Option(min=0.5, help="Frames per second per camera.")] = None,
    before: Annotated[float | None, typer.Option("--before", min=5, help="Seconds of stream before the drift.")] = None,
    labels: Annotated[int | None, typer.Option(min=1, help="Oracle labels of drifted frames to fine-tune on.")] = None,
    after: Annotated[float | None, typer.Option("--after", min=5, help="Seconds scored after the swap.")] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Fine-tuning epochs.")] = None,
    registry: Annotated[
        Path | None,
        typer.Option(help="Registry to use; one holding loop-detector skips its training (default: a fresh one)."),
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the report here.")] = None,
    keep_stack: Annotated[
        bool, typer.Option("--keep-stack", help="Leave Kafka, Ray and Label Studio running.")
    ] = False,
) -> None:
    """The closed loop, measured: drift, live accuracy, Label Studio labels, fine-tune, gate, hot swap.

    Unset options take the defaults of the run measured in the README."""
    from dataclasses import replace

    from services.localstack import LocalStack
    from services.loop import ClosedLoop, LoopSettings, write_report
    from vlm_core.datasets.scenes import SceneStyle

    try:
        style = SceneStyle(drift)
    except ValueError:
        raise VlmError(f"unknown drift {drift!r}", hint="use small, clutter or negative") from None
    if style is SceneStyle.BASE:
        raise VlmError("--drift base is no drift", hint="use small, clutter or negative")
    given = {"fps": fps, "before_s": before, "labels": labels, "after_s": after, "finetune_epochs": epochs}
    loop = replace(LoopSettings(drift=style, registry=registry), **{k: v for k, v in given.items() if v is not None})
    settings = _settings()
    stack = LocalStack(settings)
    already = {s.name for s in stack.status() if s.running}
    closed = ClosedLoop(settings, loop, say=lambda line: console.print(line, highlight=False, soft_wrap=True))
    try:
        report = closed.run(view_port=settings.view_port)
    finally:
        started = [n for n in ("kafka", "ray", "labelstudio") if n not in already]
        if started and not keep_stack:
            stack.down(started)
    for line in report.lines():
        console.print(line, highlight=False)
    if json_out is not None:
        write_report(report, json_out)
        console.print(f"report: {json_out}")
    if report.frames_without_result:
        raise VlmError(f"{report.frames_without_result} frames got no result")


def main() -> None:
    os.environ.update({k: v for k, v in ray_environment().items() if k not in os.environ})
    try:
        app()
    except VlmError as exc:
        hint = f" ({exc.hint})" if exc.hint else ""
        err_console.print(f"[red]error:[/] {exc}{hint}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
