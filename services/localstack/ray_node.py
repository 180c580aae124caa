"""A second Ray node on this machine, joined to the local head: ``python -m
services.localstack.ray_node GCS_ADDRESS PORT_BASE NUM_CPUS OBJECT_STORE_BYTES READY_FILE``.

``ray start --address`` cannot do this here: joining a cluster makes Ray trade the loopback
address for the machine's own, where the head is not listening. Ray's own test clusters
(``ray.cluster_utils``) start extra nodes this way, keeping every address on loopback. The
process holds the node (its raylet, object store and workers) until SIGTERM, and writes
READY_FILE once the node has joined.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

from vlm_core.config import ray_environment


def main(argv: list[str]) -> None:
    os.environ.update(ray_environment())  # before Ray is imported
    import ray._private.node
    import ray._private.parameter

    gcs_address, base, num_cpus, object_store = argv[0], int(argv[1]), int(argv[2]), int(argv[3])
    ready = Path(argv[4])
    ready.unlink(missing_ok=True)
    params = ray._private.parameter.RayParams(
        gcs_address=gcs_address,
        node_ip_address="127.0.0.1",
        num_cpus=num_cpus,
        num_gpus=0,
        object_store_memory=object_store,
        node_manager_port=base,
        object_manager_port=base + 1,
        metrics_export_port=base + 2,
        dashboard_agent_listen_port=base + 3,
        metrics_agent_port=base + 4,
        runtime_env_agent_port=base + 5,
        min_worker_port=base + 100,
        max_worker_port=base + 199,
        include_log_monitor=False,
    )
    node = ray._private.node.Node(params, head=False, shutdown_at_exit=False, spawn_reaper=True)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    print(f"ray node joined {gcs_address} on 127.0.0.1:{base}", flush=True)
    ready.write_text(f"{os.getpid()}\n")
    stopped.wait()
    ready.unlink(missing_ok=True)
    node.kill_all_processes(check_alive=False, allow_graceful=True)


if __name__ == "__main__":
    main(sys.argv[1:])
