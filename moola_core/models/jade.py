"""JadeModel: a BiLSTM over a window of bars, a pattern classifier and an expansion-span head.

    x [B, T, F] --input dropout--> BiLSTMEncoder --> states [B, T, 2H]
        pooled (masked mean ++ max) [B, 4H] --> class head --> class_logits [B, 2]
        [pooled ++ state of the last bar] [B, 6H] --> under-way head (live) --> object_logit [B]
        states (++ position encoding [T, P]) --> span head, one of:
            pointer        start_logits, end_logits [B, T]; decoded as the best pair s <= e
            center_length  center, length [B] in bars (soft-argmax over bars); Huber loss
            crf            emissions [B, T, 2]; linear-chain CRF decoded by Viterbi

Loss (explicit, see docs/models.md):
    loss = class_weight * CE(class) + span_weight * span_loss
    pointer: (CE(start) + CE(end)) / 2 in nats; center_length: mean Huber over center and length,
    in bars; crf: negative log-likelihood per bar, in nats. With an objectness or under-way
    head: + object_weight * BCE(object_logit, target).

Imports only the standard library and torch: it runs on GPU hosts.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from moola_core import spans
from moola_core.models.crf import LinearChainCRF
from moola_core.models.encoder import BiLSTMEncoder

SPAN_HEADS = ("pointer", "center_length", "crf")

# The resolved model config is a plain JSON-able dict (it travels in model.json and the bundle).
DEFAULT_CONFIG: dict = {
    "arch": "jade",
    "n_features": 11,
    "window_len": 105,
    "n_classes": 2,
    "hidden": 48,  # 2 layers x 48 -> about 95K parameters in all
    "layers": 2,
    "dropout": 0.2,  # between LSTM layers and inside the heads
    "input_dropout": 0.1,  # on the bar features, before the encoder
    "span_head": "pointer",
    "position_encoding": False,  # sinusoidal bar-position features fed to the span head
    "position_dim": 16,
    "huber_delta": 1.0,  # bars; only for span_head == "center_length"
    "class_weight": 1.0,
    "span_weight": None,  # None -> the head's default in SPAN_WEIGHT_DEFAULTS
    "causal": False,  # one-directional encoder: a bar's state sees only earlier bars
    # An objectness head: one logit per window, "does it hold a pattern at all?", trained with
    # pattern-free windows (has_pattern False) next to the episodes. With it, confidence is its
    # calibrated probability; without it (default), confidence comes from the span pointer.
    "objectness": False,
    "object_weight": 1.0,
    # A model for live use (moola_core.train.live): trained on as-of cuts, windows that end
    # "now", its objectness head reads the last bar's state beside the pooled ones and says
    # whether an expansion is under way at the last bar; confidence is then the calibrated
    # P(expansion under way). `live: true` adds that head (objectness is implied).
    "live": False,
    # Fitted after training on the validation split (moola_core.train.calibration), stored in
    # model.json so the bundle carries them: temperatures that calibrate the class and
    # span-pointer probabilities, and the confidence below which predict() abstains.
    "temperature": 1.0,
    "span_temperature": 1.0,
    "object_temperature": 1.0,
    # Platt intercept of the objectness logit, prior shift included: p = sigmoid(z / T + bias)
    "object_bias": 0.0,
    "abstain_threshold": 0.0,
}

# Each span loss lives on its own scale. The pointer and CRF losses are in nats per decision,
# like the class loss, so they weigh 1. The Huber loss is in bars (about 10-20 at the start);
# weighing it 0.1 (a 10-bar error ~ one confident class mistake) trained the span too slowly on
# the synthetic set (val span IoU 0.24 vs 0.25 at weight 1 after 20 epochs), so it also weighs 1
# and the classifier shares the encoder with a louder span loss (see docs/models.md).
SPAN_WEIGHT_DEFAULTS = {"pointer": 1.0, "center_length": 1.0, "crf": 1.0}


def sinusoidal_positions(window_len: int, dim: int) -> torch.Tensor:
    """Fixed sine/cosine features of the bar index -> [T, dim] (dim even)."""
    positions = torch.arange(window_len, dtype=torch.float32)[:, None]  # [T, 1]
    # wavelengths from 2 bars up to about 4 x the window, so every position is distinguishable
    freqs = torch.exp(-math.log(4.0 * window_len) * torch.arange(0, dim, 2) / dim)  # [dim/2]
    angles = positions * freqs * math.pi  # [T, dim/2]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def _mlp(d_in: int, d_hidden: int, d_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(d_in, d_hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(d_hidden, d_out)
    )


class JadeModel(nn.Module):
    """Pattern classifier plus expansion-span head over one 105-bar window."""

    def __init__(self, config: dict):
        super().__init__()
        self.config = dict(config)
        c = self.config
        self.window_len = c["window_len"]
        self.span_head = c["span_head"]
        self.input_dropout = nn.Dropout(c["input_dropout"])
        self.encoder = BiLSTMEncoder(
            c["n_features"], c["hidden"], c["layers"], c["dropout"], causal=bool(c["causal"])
        )
        d_state = self.encoder.out_dim  # 2H
        self.class_head = _mlp(2 * d_state, c["hidden"], c["n_classes"], c["dropout"])

        d_bar = d_state
        if c["position_encoding"]:
            # non-persistent: rebuilt from the config, so weights stay interchangeable
            pe = sinusoidal_positions(self.window_len, c["position_dim"])
            self.register_buffer("positions", pe, persistent=False)
            d_bar += c["position_dim"]
        # two numbers per bar: start/end logits (pointer), out/in emissions (crf), or a
        # where-is-the-center logit and a length vote (center_length)
        self.span_net = _mlp(d_bar, c["hidden"], 2, c["dropout"])
        if c["live"]:
            # "is an expansion under way at the last bar?": the pooled window and "now"
            self.object_head = _mlp(3 * d_state, c["hidden"], 1, c["dropout"])
        elif c["objectness"]:
            self.object_head = _mlp(2 * d_state, c["hidden"], 1, c["dropout"])
        if self.span_head == "crf":
            self.crf = LinearChainCRF(2)

    # -- forward ---------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> dict[str, torch.Tensor]:
        """x float [B, T, F], valid bool [B, T] -> dict of raw head outputs (see module doc)."""
        x = x.masked_fill(~valid[:, :, None], 0.0)  # warm-up bars carry no information
        states = self.encoder(self.input_dropout(x))  # [B, T, 2H]

        weights = valid.float()[:, :, None]  # [B, T, 1]
        mean = (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # [B, 2H]
        peak = states.masked_fill(~valid[:, :, None], float("-inf")).amax(1)  # [B, 2H]
        peak = torch.nan_to_num(peak, neginf=0.0)  # a window without valid bars
        pooled = torch.cat([mean, peak], dim=1)  # [B, 4H]
        out = {"class_logits": self.class_head(pooled)}  # [B, C]
        if self.config["live"]:
            now = states[:, -1]  # [B, 2H]: the newest bar (a live window ends at "now")
            out["object_logit"] = self.object_head(torch.cat([pooled, now], dim=1))[:, 0]
        elif self.config["objectness"]:
            out["object_logit"] = self.object_head(pooled)[:, 0]  # [B]

        bars = states
        if self.config["position_encoding"]:
            pe = self.positions[None].expand(states.shape[0], -1, -1)  # [B, T, P]
            bars = torch.cat([states, pe], dim=2)  # [B, T, 2H + P]

        if self.span_head == "pointer":
            logits = self.span_net(bars)  # [B, T, 2]
            # finite fill: a (bad) gold index on a masked bar gives a large loss, not NaN
            logits = logits.masked_fill(~valid[:, :, None], -1e4)
            out["start_logits"], out["end_logits"] = logits[..., 0], logits[..., 1]
        elif self.span_head == "crf":
            out["emissions"] = self.span_net(bars) * weights  # [B, T, 2]; 0 on masked bars
        else:
            # center = soft-argmax of a per-bar attention (a regression in bar units that can
            # still point anywhere); length = the attention-weighted length vote, in 1..T
            raw = self.span_net(bars)  # [B, T, 2]
            attention = torch.softmax(raw[..., 0].masked_fill(~valid, -1e4), dim=1)  # [B, T]
            positions = torch.arange(self.window_len, device=x.device, dtype=attention.dtype)
            last = float(self.window_len - 1)
            out["center"] = (attention * positions).sum(1)  # [B] in 0..T-1
            out["length"] = 1.0 + last * torch.sigmoid((attention * raw[..., 1]).sum(1))  # [B]
        return out

    # -- loss ------------------------------------------------------------------------------
    def loss(
        self,
        out: dict[str, torch.Tensor],
        label: torch.Tensor,
        start: torch.Tensor,
        end: torch.Tensor,
        detached: bool = False,
        has_pattern: torch.Tensor | None = None,
        object_target: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict]:
        """Weighted multi-task loss -> (total, {"class": .., "span": ..}) for logging.

        With the objectness head, `has_pattern` (bool [B]; None: every window holds one) marks
        pattern-free windows: they count only in the objectness loss (binary cross-entropy,
        weighed `object_weight`, logged as "object"); class and span losses are means over the
        windows with a pattern (their label/start/end are ignored elsewhere, e.g. -1).
        `object_target` (bool [B]) is the objectness head's target when it differs from
        `has_pattern`: a live model's as-of cut shows an expansion (span and class known) that
        may be over by "now" (not under way).

        The parts are floats, or with `detached` detached tensors on the model's device (reading
        a float forces a host sync; a GPU loop sums tensors and reads once per epoch)."""
        c = self.config
        object_loss = None
        if "object_logit" in out:
            if object_target is None:
                object_target = has_pattern
            target = (
                torch.ones_like(out["object_logit"])
                if object_target is None
                else object_target.to(out["object_logit"].dtype)
            )
            object_loss = F.binary_cross_entropy_with_logits(out["object_logit"], target)
            if has_pattern is not None:
                keep = has_pattern.bool()
                out = {k: v[keep] for k, v in out.items()}
                label, start, end = label[keep], start[keep], end[keep]
        if label.shape[0]:
            class_loss, span_loss = self._task_losses(out, label, start, end)
        else:  # a batch of pattern-free windows only
            class_loss = span_loss = out["class_logits"].sum() * 0.0
        span_weight = c["span_weight"]
        if span_weight is None:
            span_weight = SPAN_WEIGHT_DEFAULTS[self.span_head]
        total = c["class_weight"] * class_loss + span_weight * span_loss
        parts = {"class": class_loss.detach(), "span": span_loss.detach()}
        if object_loss is not None:
            total = total + c["object_weight"] * object_loss
            parts["object"] = object_loss.detach()
        if not detached:
            parts = {k: float(v) for k, v in parts.items()}
        return total, parts

    def _task_losses(self, out, label, start, end) -> tuple[torch.Tensor, torch.Tensor]:
        """(class loss, span loss) over windows that hold a pattern."""
        c = self.config
        class_loss = F.cross_entropy(out["class_logits"], label)
        if self.span_head == "pointer":
            span_loss = 0.5 * (
                F.cross_entropy(out["start_logits"], start)
                + F.cross_entropy(out["end_logits"], end)
            )
        elif self.span_head == "crf":
            tags = spans.to_mask(start, end, self.window_len).long()  # [B, T]
            span_loss = self.crf.nll(out["emissions"], tags) / self.window_len
        else:
            center, length = spans.to_center_length(start, end)
            predicted = torch.stack([out["center"], out["length"]], dim=1)  # [B, 2]
            target = torch.stack([center, length], dim=1)
            span_loss = F.huber_loss(predicted, target, delta=c["huber_delta"])
        return class_loss, span_loss

    # -- decode ----------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, out: dict[str, torch.Tensor], valid: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw head outputs -> {"label", "start", "end", "class_probs", "confidence",
        "abstain"} (see predict)."""
        c = self.config
        class_probs = torch.softmax(out["class_logits"].float() / c["temperature"], dim=1)
        confidence = class_probs.max(dim=1).values
        if self.span_head == "pointer":
            start_lp = F.log_softmax(out["start_logits"].float() / c["span_temperature"], dim=1)
            end_lp = F.log_softmax(out["end_logits"].float() / c["span_temperature"], dim=1)
            start, end = spans.best_pair(start_lp, end_lp, valid)
            # the calibrated probability that this window holds an expansion at the decoded
            # place: start and end probability of the chosen pair
            rows = torch.arange(start.shape[0], device=start.device)
            confidence = torch.exp(start_lp[rows, start] + end_lp[rows, end])
        elif self.span_head == "crf":
            tags = self.crf.viterbi(out["emissions"].float())  # [B, T]
            inside = (tags == 1) & valid
            # no bar tagged in-span: fall back to the single bar the emissions favour most
            margin = out["emissions"][..., 1] - out["emissions"][..., 0]
            fallback = margin.masked_fill(~valid, float("-inf")).argmax(dim=1)
            start, end = spans.from_mask(inside, fallback)
        else:
            start, end = spans.from_center_length(out["center"], out["length"], self.window_len)
        if "object_logit" in out:
            # the calibrated probability that the window holds a pattern at all (objectness)
            # or that an expansion is under way at its last bar (live)
            logit = out["object_logit"].float() / c["object_temperature"] + c["object_bias"]
            confidence = torch.sigmoid(logit)
        return {
            "label": class_probs.argmax(dim=1),
            "start": start.long(),
            "end": end.long(),
            "class_probs": class_probs,
            "confidence": confidence,
            "abstain": confidence < c["abstain_threshold"],
        }

    @torch.no_grad()
    def predict(self, x: torch.Tensor, valid: torch.Tensor) -> dict[str, torch.Tensor]:
        """Eval-mode prediction: {"label" int64[B], "start" int64[B], "end" int64[B] (inclusive),
        "class_probs" float[B, 2] (temperature-calibrated), "confidence" float[B] (live model:
        calibrated P(an expansion is under way at the last bar); objectness
        head: calibrated probability that the window holds a pattern; else pointer head:
        calibrated probability of the decoded start and end; other heads: top class
        probability), "abstain" bool[B] (confidence below the threshold fitted on validation:
        the model says "no pattern here")}. Deterministic; restores the train/eval mode."""
        was_training = self.training
        self.eval()
        try:
            return self.decode(self.forward(x, valid), valid)
        finally:
            self.train(was_training)
