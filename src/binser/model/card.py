"""The model card (``MODEL_CARD.md`` of a model folder): data, system, protocol,
cross-validated scores when known, intended use and limits, from a :class:`Model` and its
``info`` (the training facts of model.json)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from .predict import Model, PoolingSpec


def model_card(model: Model) -> str:
    """MODEL_CARD.md text: data, system, protocol, scores, intended use and limits."""
    info = model.info
    lines = [f"# binser model: {info.get('dataset', 'unknown corpus')}", ""]
    if info.get("synthetic"):
        lines += ["**Trained on synthetic data** (binser's demo corpus): it is not a model "
                  "of human emotion and must not be used on real recordings.", ""]
    lines += _card_data(info) + _card_system(model) + _card_protocol(info)
    lines += _card_scores(info.get("cross_validation")) + _CARD_LIMITS
    return "\n".join(lines)


def _card_data(info: Mapping[str, Any]) -> list[str]:
    counts = ", ".join(f"{k} ({v})" for k, v in (info.get("label_counts") or {}).items())
    return ["## Data", "",
            f"- corpus: {info.get('dataset')} (folder `{info.get('corpus_folder')}`; "
            f"{info.get('n_utterances')} utterances, {info.get('n_speakers')} speakers, "
            f"{info.get('n_skipped', 0)} files skipped)",
            f"- labels: {counts}", ""]


def _card_backbone(model: Model) -> str:
    return model.backbones[model.views[0]].card_line(model.mode, model.layer)


def _card_system(model: Model) -> list[str]:
    from ..fusion import describe_weights

    weights = describe_weights(model.weights or {})
    lines = ["## System", "", _card_backbone(model),
             f"- views: {', '.join(model.views)}; pooling: {_card_pooling(model.pooling)}",
             "- per view: standardisation + linear SVM (class-balanced) + calibrated scores",
             f"- fusion: {model.fusion or 'none (single view)'} with weights {weights} "
             "(docs/METHOD.md eqs. M14-M16)",
             "- a view without signal in a file (e.g. the side of a mono file) scores 1/K "
             "per label there, so the other views decide; predictions list it"]
    if model.speaker_norm:
        lines.append(
            "- speaker normalisation (TRANSDUCTIVE, label-free): each view's features are "
            "standardised per speaker; at prediction the statistics come from that speaker's "
            "files in the same predict call (all files of a call are one speaker unless "
            f"speakers are given); a speaker with fewer than {model.min_utterances} files "
            "uses the average training speaker instead (the fallback), and each prediction "
            "says which statistics it used")
    return lines + [""]


def _card_pooling(pooling: PoolingSpec) -> str:
    if pooling.name.startswith("block-"):
        return f"{pooling.name} (blocks {pooling.blocks}, levels {pooling.levels})"
    return pooling.name


def _card_protocol(info: Mapping[str, Any]) -> list[str]:
    # The fusion's own out-of-fold UA is measured on the probabilities its weights were
    # chosen on (in-sample for the weights, optimistic): the card shows only the nested
    # cross-validated figures (--cross-validate).
    oof_text = ""
    lines = ["## Protocol", "",
             "- trained on ALL utterances of the corpus (the final model);",
             f"- {info.get('classifier_selection', '')};",
             f"- fusion weights: {info.get('fusion_selection') or 'not applicable'}{oof_text}"]
    selection = info.get("layer_selection")
    if selection:
        scores = ", ".join(f"{k}: {100 * v:.1f} %" for k, v in selection["scores"].items())
        lines[-1] += ";"
        lines.append(f"- encoder layer {selection['chosen']} ({selection['method']}; mean "
                     f"inner-CV UA per layer {scores})")
    return lines + [""]


_CARD_LIMITS = [
    "## Intended use and limits", "",
    "- Research on speech emotion recognition from stereo (binaural) recordings: predicts "
    "one of the training labels per file, with scores per label.",
    "- Scores are calibrated on the training corpus; on other recording set-ups, languages, "
    "speakers or label sets they are not reliable. Mono inputs make the side view silent.",
    "- Not for decisions about people (hiring, health, policing, surveillance).",
    "- Files are stored as JSON and safetensors only; loading runs no stored code.", ""]


def _card_scores(cv: Mapping[str, Any] | None) -> list[str]:
    from ..runnames import is_oracle

    if not cv:
        return ["## Cross-validated scores", "",
                "Not computed for this model (train with cross-validation to add them).", ""]
    lines = ["## Cross-validated scores", "",
             f"Protocol {cv.get('protocol')} ({cv.get('n_folds')} folds, "
             f"{cv.get('n_utterances')} utterances), speaker-independent:", "",
             "| run | UA % | WA % | macro-F1 % | UA 95% CI |", "|---|---|---|---|---|"]
    for r in cv.get("runs", []):
        lo, hi = r.get("ua_ci95", [float("nan")] * 2)
        ci = ("n/a (chosen on the test data)" if is_oracle(r["name"])
              else f"{100 * lo:.1f}-{100 * hi:.1f}")
        lines.append(f"| {r['name']} | {100 * r['ua']:.1f} | {100 * r['wa']:.1f} | "
                     f"{100 * r['macro_f1']:.1f} | {ci} |")
    return lines + ["", "Score fusions without a suffix choose their weights inside each "
                    "training fold (nested), as this model does; `@oracle` rows choose them "
                    "on the test data (the paper's practice, optimistic).", ""]


