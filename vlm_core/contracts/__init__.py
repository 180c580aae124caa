"""Every contract of the system in one package: what goes on Kafka and on disk.

- :mod:`frame` (``vlm.frame/v1``): one camera image on ``vlm.frames``.
- :mod:`result` (``vlm.result/v1``): one JSON document per frame on ``vlm.results``.
- :mod:`dlq` (``vlm.dlq/v1``): the headers a dead letter adds to its frame.
- :mod:`to_label` (``vlm.to_label/v2``, v1 still read): a low-confidence frame reference with its prediction.
- :mod:`labels` (``vlm.labels/v1``): one labeled sample on ``vlm.labels``.
- :mod:`snapshot` (``vlm.snapshot/v1``): the manifest of a materialised label snapshot.

Each ships its JSON Schema in ``schemas/``.
"""
