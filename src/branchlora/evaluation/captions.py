"""Caption metrics as UCIT scores its two caption tasks (HiDe-LLaVA's and MCITlib's eval_caption.py).

Their script runs pycocoevalcap's COCOEvalCap on a COCO-style reference file and prints seven numbers x 100:
BLEU-1..4, METEOR, ROUGE-L and CIDEr, plus "Average", the mean of the seven. COCOEvalCap also runs SPICE,
which downloads Stanford CoreNLP at first use and is not among the seven: it is skipped here. The scorers are
called directly, on PTB-tokenised captions (references and predictions tokenised apart, as COCOEvalCap does).
BLEU and CIDEr are corpus-level (CIDEr's n-gram weights come from all references of the task), so these are
scores of a whole task, never means of per-item scores. pycocoevalcap's tokenizer and METEOR run Java.
"""

from __future__ import annotations

import contextlib
import io
import shutil
from collections.abc import Sequence
from statistics import mean

CAPTION_METRICS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")


class CaptionToolsError(ValueError):
    """pycocoevalcap or Java is missing: caption tasks cannot be scored."""


def require_caption_tools(where: object) -> None:
    """Fail at benchmark load, in one line, when the caption metrics could not run at scoring time."""
    try:
        import pycocoevalcap  # noqa: F401  (only its presence is checked here)
    except ImportError:
        raise CaptionToolsError(f"{where}: caption metrics need pycocoevalcap: pip install 'branchlora[captions]'") \
            from None  # fmt: skip
    if shutil.which("java") is None:
        raise CaptionToolsError(f"{where}: caption metrics need Java (pycocoevalcap's tokenizer and METEOR run it); "
                                "install a JRE so that `java` is on the PATH")  # fmt: skip


def caption_scores(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """{metric: score x 100} for the seven of CAPTION_METRICS and "Average", their mean; item i's prediction
    is scored against references[i] (UCIT: the captions of image_id i + 1 in val_coco_type_3000.json)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"caption scores need one reference list per prediction, got {len(predictions)} predictions "
                         f"and {len(references)} reference lists")  # fmt: skip
    tokenizer = PTBTokenizer()
    with contextlib.redirect_stdout(io.StringIO()):  # its progress lines would break the run's display
        gts = tokenizer.tokenize({i: [{"caption": r} for r in refs] for i, refs in enumerate(references)})
        res = tokenizer.tokenize({i: [{"caption": p}] for i, p in enumerate(predictions)})
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    scores = dict(zip(CAPTION_METRICS[:4], bleu, strict=True))
    for name, scorer in (("METEOR", Meteor()), ("ROUGE_L", Rouge()), ("CIDEr", Cider())):
        scores[name], _ = scorer.compute_score(gts, res)
    out = {name: 100.0 * float(scores[name]) for name in CAPTION_METRICS}
    return out | {"Average": mean(out.values())}
