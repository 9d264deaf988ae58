"""What Moola sends to Label Studio and reads back: the labeling config, a task with its
pre-annotation, and a reviewer's annotation parsed into a label, a span or a rejection.

Pure functions (standard library only), so the wire format is tested without a server.

The project shows each window as one TimeSeries object `ts` over the bar index 0-104 (the time
column `bar`): open, high, low and close on one plot (MultiChannel), optionally the 11 causal
features each on its own plot below. The reviewer answers with two controls:

- `span`: a TimeSeriesLabels region labelled `expansion`, from its first to its last bar
  (inclusive, as the labeled set's expansion_start / expansion_end);
- `pattern`: one choice, `consolidation`, `retracement` (spec.LABELS) or `reject` (no clear
  pattern, or a broken window: it stays out of the labeled set).

The pre-annotation is the selected run's answer in the same two controls, with its score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from xml.sax.saxutils import quoteattr

from moola_core.spec import FEATURE_NAMES, LABELS, WINDOW_LEN

OBJECT = "ts"
SPAN = "span"
PATTERN = "pattern"
SPAN_LABEL = "expansion"
REJECT = "reject"
TIME_COLUMN = "bar"
OHLC = ("open", "high", "low", "close")
OHLC_COLOURS = {"open": "#9e9e9e", "high": "#2e7d32", "low": "#c62828", "close": "#1f4e79"}


def labeling_config(with_features: bool = False) -> str:
    """The project's labeling config (Label Studio's XML)."""
    ohlc = "".join(
        f'<Channel column="{c}" legend="{c}" strokeColor="{OHLC_COLOURS[c]}" '
        f'displayFormat=",.4f"{"" if c == "close" else " strokeWidth=" + quoteattr("1")}/>'
        for c in OHLC
    )
    features = ""
    if with_features:
        features = "".join(
            f'<Channel column="{name.lower()}" legend="{name}" displayFormat=",.3f"/>'
            for name in FEATURE_NAMES
        )
    choices = "".join(f'<Choice value="{label}"/>' for label in LABELS)
    return (
        "<View>"
        '<Header value="$title"/>'
        '<Text name="hint" value="$hint"/>'
        f'<TimeSeriesLabels name="{SPAN}" toName="{OBJECT}">'
        f'<Label value="{SPAN_LABEL}" background="#ff9800"/>'
        "</TimeSeriesLabels>"
        f'<TimeSeries name="{OBJECT}" valueType="json" value="$ts" timeColumn="{TIME_COLUMN}" '
        'timeDisplayFormat=",.0f" durationDisplayFormat=",.0f" overviewChannels="close" '
        'overviewWidth="100%">'
        f"<MultiChannel>{ohlc}</MultiChannel>{features}"
        "</TimeSeries>"
        f'<Choices name="{PATTERN}" toName="{OBJECT}" choice="single-radio" required="true" '
        'showInline="true">'
        f'{choices}<Choice value="{REJECT}" hint="no clear pattern, or a broken window: keep it '
        'out of the labeled set"/>'
        "</Choices>"
        "</View>"
    )


def config_matches(existing: str) -> bool:
    """True when a project's config has the controls Moola reads back (it may differ in looks)."""
    return (
        all(f'name="{name}"' in existing for name in (OBJECT, SPAN, PATTERN))
        and f'value="{SPAN_LABEL}"' in existing
    )


@dataclass(frozen=True)
class PreAnnotation:
    """The selected run's answer for one window."""

    label: str  # one of spec.LABELS
    start: int
    end: int  # inclusive
    confidence: float  # the model's own (span or objectness) confidence
    class_prob: float  # probability of `label`
    score: float  # confidence x class_prob: Label Studio's prediction score

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "start": self.start,
            "end": self.end,
            "confidence": round(self.confidence, 4),
            "class_prob": round(self.class_prob, 4),
            "score": round(self.score, 4),
        }


def prediction_result(label: str, start: int, end: int) -> list[dict]:
    """A region and a choice in Label Studio's result format (predictions and annotations)."""
    return [
        {
            "id": "moola-span",
            "from_name": SPAN,
            "to_name": OBJECT,
            "type": "timeserieslabels",
            "value": {
                "start": int(start),
                "end": int(end),
                "instant": start == end,
                "timeserieslabels": [SPAN_LABEL],
            },
        },
        {
            "id": "moola-pattern",
            "from_name": PATTERN,
            "to_name": OBJECT,
            "type": "choices",
            "value": {"choices": [label]},
        },
    ]


def rejection_result() -> list[dict]:
    """A reviewer's `reject` answer (no span)."""
    return [
        {
            "id": "moola-pattern",
            "from_name": PATTERN,
            "to_name": OBJECT,
            "type": "choices",
            "value": {"choices": [REJECT]},
        }
    ]


def task_payload(
    *,
    key: str,
    window_id: str,
    batch: str,
    source: str,
    reason: str,
    ohlc,  # [105, 4] rows of o, h, l, c
    pre: PreAnnotation,
    model_version: str,
    features=None,  # [105, 11] or None
) -> dict:
    """One Label Studio task: the window's bars, Moola's keys, and the pre-annotation."""
    series: dict[str, list] = {TIME_COLUMN: list(range(WINDOW_LEN))}
    for i, name in enumerate(OHLC):
        series[name] = [float(row[i]) for row in ohlc]
    if features is not None:
        for i, name in enumerate(FEATURE_NAMES):
            # Label Studio reads channel column names in lower case
            series[name.lower()] = [float(v) if math.isfinite(v) else 0.0 for v in features[:, i]]
    hint = (
        f"model: {pre.label}, bars {pre.start}-{pre.end} (confidence {pre.confidence:.2f}, "
        f"class {pre.class_prob:.2f}); why now: {reason}"
    )
    return {
        "data": {
            "ts": series,
            "title": f"{window_id} ({source}, batch {batch})",
            "hint": hint,
            "moola_key": key,
            "window_id": window_id,
            "batch": batch,
            "source": source,
        },
        "predictions": [
            {
                "model_version": model_version,
                "score": round(pre.score, 6),
                "result": prediction_result(pre.label, pre.start, pre.end),
            }
        ],
    }


@dataclass(frozen=True)
class Answer:
    """A reviewer's annotation read back: a label and span, or a rejection."""

    rejected: bool
    label: str | None = None
    start: int | None = None
    end: int | None = None


class AnswerProblem(ValueError):
    """An annotation Moola cannot turn into a label (the sentence says what is wrong)."""


def read_answer(result: list[dict]) -> Answer:
    """Parse an annotation's `result` list; raises AnswerProblem with one sentence."""
    choices = [
        r for r in result or [] if r.get("from_name") == PATTERN and r.get("type") == "choices"
    ]
    spans = [
        r
        for r in result or []
        if r.get("from_name") == SPAN and r.get("type") == "timeserieslabels"
    ]
    picked = [c for r in choices for c in (r.get("value") or {}).get("choices") or []]
    if REJECT in picked:
        return Answer(rejected=True)
    if len(picked) != 1 or picked[0] not in LABELS:
        raise AnswerProblem(
            f"the pattern choice is {picked or 'missing'}; choose one of "
            f"{', '.join(LABELS)} or {REJECT}"
        )
    if len(spans) != 1:
        raise AnswerProblem(
            f"it marks {len(spans)} expansion spans; mark exactly one (or choose {REJECT})"
        )
    value = spans[0].get("value") or {}
    try:
        start, end = float(value["start"]), float(value["end"])
    except (KeyError, TypeError, ValueError):
        raise AnswerProblem("its span has no numeric start and end") from None
    if not (math.isfinite(start) and math.isfinite(end)):
        raise AnswerProblem("its span has no numeric start and end")
    if end < start:
        raise AnswerProblem(f"its span ends at bar {end:g} before it starts at bar {start:g}")
    last = WINDOW_LEN - 1
    # a region dragged with the mouse lands between bars: the nearest bar is meant
    if start < -0.5 or end > last + 0.5:
        raise AnswerProblem(f"its span {start:g}-{end:g} reaches outside the bars 0-{last}")
    return Answer(
        rejected=False,
        label=picked[0],
        start=min(last, max(0, int(round(start)))),
        end=min(last, max(0, int(round(end)))),
    )
