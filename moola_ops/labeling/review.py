"""What reviewers did with a batch: per task its state and verdict, per batch the keeper rate.

A task is `pending` (no annotation yet), `skipped` (the reviewer pressed Skip), `deleted`
(gone from Label Studio), `invalid` (an annotation Moola cannot read: the sentence says why) or
`done`. A done task's verdict is judged against the pre-annotation Moola sent:

- accepted: the same pattern and the same span, as-is;
- edited: the pattern changed or a span end moved;
- rejected: the reviewer chose `reject` (the window stays out of the labeled set).

keeper rate = accepted / done: the share of the model's (or the auto-labeler's) answers a
person kept unchanged. Where two reviewers annotated one task, their agreement is the share of
such tasks with the same answer (pattern, or both reject) and the mean IoU of their spans.
The answer that counts is the ground-truth annotation if one is marked, else the newest.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field

from moola_ops.labeling import tasks as T

STATES = ("done", "pending", "skipped", "deleted", "invalid")
VERDICTS = ("accepted", "edited", "rejected")


@dataclass
class TaskReview:
    """One task of a batch, as Label Studio holds it now."""

    key: str
    task_id: int
    window_id: str
    source: str
    state: str  # one of STATES
    verdict: str | None = None  # one of VERDICTS when done
    answer: T.Answer | None = None
    reviewer: str = ""
    reviewed_at: str = ""
    seconds: float | None = None  # Label Studio's lead time of the counting annotation
    reviewers: list[str] = field(default_factory=list)
    agree: bool | None = None  # two reviewers gave the same answer (None: one reviewer)
    agree_iou: float | None = None
    problem: str = ""  # why the annotation is invalid

    def sentence(self, url: str, project_id: int) -> str:
        return (
            f"task {self.task_id} (window {self.window_id}): {self.problem}; fix it in Label "
            f"Studio ({url}/projects/{project_id}/data?task={self.task_id}) or pass --skip-invalid"
        )

    def to_dict(self) -> dict:
        out = asdict(self)
        out["answer"] = None if self.answer is None else asdict(self.answer)
        return out


def review_tasks(batch: dict, exported: dict[int, dict], users: dict[int, str]) -> list[TaskReview]:
    """Every task of `batch` against the project's export (task id -> exported task)."""
    out = []
    for record in batch["tasks"]:
        task = exported.get(int(record["task_id"]))
        review = TaskReview(
            record["key"], int(record["task_id"]), record["window_id"], record["source"], "deleted"
        )
        out.append(review)
        if task is None:
            continue
        annotations = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
        if not annotations:
            cancelled = any(a.get("was_cancelled") for a in task.get("annotations") or [])
            review.state = "skipped" if cancelled else "pending"
            continue
        answers = []
        for a in annotations:
            try:
                answers.append((a, T.read_answer(a.get("result") or [])))
            except T.AnswerProblem as exc:
                review.state, review.problem = "invalid", str(exc)
                break
        if review.state == "invalid":
            continue
        answers.sort(key=lambda pair: (bool(pair[0].get("ground_truth")), _when(pair[0])))
        counting, answer = answers[-1]
        review.state = "done"
        review.answer = answer
        review.verdict = verdict(record["pre"], answer)
        review.reviewer = _who(counting, users)
        review.reviewed_at = _when(counting)
        lead = counting.get("lead_time")
        review.seconds = float(lead) if isinstance(lead, (int, float)) else None
        by_reviewer: dict[str, T.Answer] = {}
        for a, ans in answers:
            by_reviewer.setdefault(_who(a, users), ans)
        review.reviewers = sorted(by_reviewer)
        if len(by_reviewer) >= 2:
            first, second = list(by_reviewer.values())[:2]
            review.agree, review.agree_iou = agreement(first, second)
    return out


def verdict(pre: dict, answer: T.Answer) -> str:
    """accepted / edited / rejected against the pre-annotation sent with the task."""
    if answer.rejected:
        return "rejected"
    same = (answer.label, answer.start, answer.end) == (pre["label"], pre["start"], pre["end"])
    return "accepted" if same else "edited"


def agreement(a: T.Answer, b: T.Answer) -> tuple[bool, float | None]:
    """(same answer, span IoU or None when either rejected)."""
    if a.rejected or b.rejected:
        return a.rejected and b.rejected, None
    inter = max(0, min(a.end, b.end) - max(a.start, b.start) + 1)
    union = (a.end - a.start + 1) + (b.end - b.start + 1) - inter
    return a.label == b.label, round(inter / union, 4)


def _who(annotation: dict, users: dict[int, str]) -> str:
    who = annotation.get("completed_by")
    if isinstance(who, dict):
        return str(who.get("email") or who.get("id"))
    try:
        return users.get(int(who), str(who))
    except (TypeError, ValueError):
        return str(who)


def _when(annotation: dict) -> str:
    return str(annotation.get("updated_at") or annotation.get("created_at") or "")


def summarize(batch: dict, reviews: list[TaskReview]) -> dict:
    """One batch's figures: tasks, states, verdicts, keeper rate, agreement, time per task."""
    done = [r for r in reviews if r.state == "done"]
    counts = {s: sum(r.state == s for r in reviews) for s in STATES}
    verdicts = {v: sum(r.verdict == v for r in done) for v in VERDICTS}
    doubled = [r for r in done if r.agree is not None]
    ious = [r.agree_iou for r in doubled if r.agree_iou is not None]
    seconds = [r.seconds for r in done if r.seconds is not None]
    imported = {t for record in batch.get("imports", []) for t in record.get("task_ids", [])}
    return {
        "batch": batch["batch"],
        "project_id": batch["project_id"],
        "created_at": batch["created_at"],
        "run_id": batch["run_id"],
        "tasks": len(reviews),
        **counts,
        **verdicts,
        "keeper_rate": round(verdicts["accepted"] / len(done), 4) if done else None,
        "double_reviewed": len(doubled),
        "agreement": round(sum(r.agree for r in doubled) / len(doubled), 4) if doubled else None,
        "agreement_iou": round(statistics.fmean(ious), 4) if ious else None,
        "seconds_per_task": round(statistics.median(seconds), 1) if seconds else None,
        "imported": len(imported),
        "by_source": {
            s: sum(r.source == s for r in reviews) for s in sorted({r.source for r in reviews})
        },
    }
