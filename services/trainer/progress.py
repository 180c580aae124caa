"""Ray Train progress events shown on a rich progress bar (``vlm train`` and ``vlm demo``)."""

from __future__ import annotations

from typing import Any

from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn


def progress_bar(**options: Any) -> Progress:
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"), TimeElapsedColumn())
    return Progress(*columns, **options)


class TrainingProgress:
    """Turns the events of :func:`services.trainer.job.run_training` into one bar (loss per
    step, evaluation progress) and one printed line per epoch."""

    def __init__(self, bar: Progress, epochs: int, label: str = "") -> None:
        self.bar, self.epochs, self.label = bar, epochs, label
        self.job: TaskID = bar.add_task(f"{label}preparing", total=None, info="")

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "step":
            self.bar.update(
                self.job,
                description=f"{self.label}epoch {event['epoch'] + 1}/{self.epochs}",
                total=self.epochs * event["steps"],
                completed=event["epoch"] * event["steps"] + event["step"],
                info=f"loss {event['loss']:.4f}",
            )
        elif kind == "epoch":
            figures = "  ".join(f"{k} {v:.4f}" for k, v in event.items() if k.startswith(("train_", "val_")))
            self.print(f"epoch {int(event['epoch'])}/{self.epochs}: {figures}  ({event['epoch_s']:.0f}s)")
        elif kind == "resumed":
            self.print(f"[yellow]worker group restarted; resumed from the checkpoint of epoch {event['epoch']}[/]")
        elif kind == "eval_step":
            self.bar.update(
                self.job, description=f"{self.label}evaluating", total=event["total"], completed=event["done"], info=""
            )
        elif "text" in event:
            self.print(event["text"])

    def print(self, text: str) -> None:
        self.bar.console.print(f"{self.label}{text}")
