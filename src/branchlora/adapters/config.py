"""The adapter configuration: one dataclass, validated at construction, shared by every adapter kind."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields

from branchlora.typed import check_fields

KINDS = ("lora", "moelora", "branchlora", "hydralora", "proglora", "lilora", "tasklora", "hide", "clmoe")
ROUTING_INPUTS = ("first", "mean", "token")
INITS = ("gaussian", "kaiming")
# LLaVA-style preset: the seven Linear types of every language-model layer; never the vision tower
# (CLIP also names its attention q_proj / k_proj / v_proj), the projector or lm_head.
LLAVA_TARGETS = r"(?!.*vision)(.*\.)?(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
# LiLoRA's targets: the feed-forward Linears of every language-model layer, and every Linear of the projector.
FFN_PROJECTOR_TARGETS = (
    r"(?!.*vision)(.*\.)?(gate_proj|up_proj|down_proj)|(.*\.)?(multi_modal_projector|mm_projector)\..+"
)
# Target presets: on a known model family (models/family.py) they resolve through its anatomy; on any other
# module, to these regexes.
PRESETS = {"llava": LLAVA_TARGETS, "ffn+projector": FFN_PROJECTOR_TARGETS}


@dataclass
class AdapterConfig:
    """Hyper-parameters of an adapter; defaults are the papers' (r 128, alpha 256, N 8, k 2)."""

    kind: str = field(default="branchlora", metadata={"help": f"adapter kind: {', '.join(KINDS)}"})
    r: int = field(default=128, metadata={"help": "total rank (split over the N branches / E experts)"})
    alpha: float = field(default=256.0, metadata={"help": "scale numerator: s = alpha / r"})
    dropout: float = field(default=0.05, metadata={"help": "dropout on the adapter's input"})
    n_branches: int = field(default=8, metadata={"help": "N branches (branchlora, hydralora) or E experts", "min": 1})
    top_k: int = field(default=2, metadata={"help": "branches used per routing decision (branchlora)"})
    routing: str = field(
        default="first",
        metadata={"help": "router input: first (non-padding) token, mean of tokens, or per token"},
    )
    sub_rank: int = field(default=64, metadata={"help": "s_r of LiLoRA's per-task P (d_out x s_r) Q (s_r x r)"})
    init: str = field(default="gaussian", metadata={"help": "A init: gaussian N(0, 0.01^2) (CoIN) or kaiming (PEFT)"})
    targets: str | list[str] = field(
        default="llava",
        metadata={"help": "'llava' (the LM's 7 Linear types), 'ffn+projector', a regex, or module names/suffixes"},
    )

    def __post_init__(self) -> None:
        check_fields(self)
        if self.kind not in KINDS:
            raise ValueError(f"unknown adapter kind {self.kind!r}; valid kinds: {', '.join(KINDS)}")
        if self.r < 1:
            raise ValueError(f"r must be >= 1, got r={self.r}")
        if self.kind in ("moelora", "branchlora", "clmoe") and self.r % self.n_branches:
            raise ValueError(
                f"r={self.r} is not divisible by N={self.n_branches}: each of the N branches gets rank r/N"
            )
        if self.kind != "lora" and not 1 <= self.top_k <= self.n_branches:
            raise ValueError(f"top_k={self.top_k} must be between 1 and N={self.n_branches}")
        if self.sub_rank < 1:
            raise ValueError(f"sub_rank must be >= 1, got {self.sub_rank}")
        if self.routing not in ROUTING_INPUTS:
            raise ValueError(f"unknown routing {self.routing!r}; valid: {', '.join(ROUTING_INPUTS)}")
        if self.init not in INITS:
            raise ValueError(f"unknown init {self.init!r}; valid: {', '.join(INITS)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        _check_pattern(self.targets)

    @property
    def scale(self) -> float:
        return self.alpha / self.r

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> AdapterConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown adapter config keys {unknown}; valid keys: {sorted(known)}")
        return cls(**data)


def _check_pattern(targets: str | list[str]) -> None:
    """A regex in `targets` compiles now, so a typo fails with the config rather than when the model is wrapped."""
    if isinstance(targets, str) and targets not in PRESETS:
        try:
            re.compile(targets)
        except re.error as err:
            raise ValueError(f"targets {targets!r} is not a valid regular expression ({err})") from None
