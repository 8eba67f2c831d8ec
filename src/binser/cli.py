"""The `binser` command: a thin layer over the Python API (each command is a few calls)."""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Collection, Sequence

from . import __version__
from .cache import default_cache_dir  # noqa: F401  (re-exported: binser.cli.default_cache_dir)
from .errors import BinserError, ConfigError
from .validation import float_type, int_type


def _layer(text: str) -> int | str:
    """--layer: 'auto', 'auto-set' or a layer number >= 0."""
    return text if text in ("auto", "auto-set") else _non_negative_int(text)


_positive_int = int_type(1)          # argparse types: binser.validation
_non_negative_int = int_type(0)
_positive_float = float_type()


def _csv_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _channel_pair(text: str) -> tuple[int, int]:
    """--channels I,J: two different 0-based channel indices, the left and the right one."""
    from .config import check_channel_pair

    parts = [part.strip() for part in text.split(",")]
    try:
        if len(parts) != 2:
            raise ValueError
        return check_channel_pair(tuple(int(part) for part in parts))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two 0-based channel indices I,J (e.g. "
                                         f"0,1), got {text!r}") from None
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


CHANNELS_HELP = ("files with more than two channels: the 0-based channels to use as left and "
                 "right, e.g. 2,3 (default: the file's own one or two)")


def add_channels_option(p: argparse.ArgumentParser, help: str = CHANNELS_HELP) -> None:
    """``--channels I,J`` (see :data:`CHANNELS_HELP`)."""
    p.add_argument("--channels", type=_channel_pair, default=None, metavar="I,J", help=help)


def frontend_from_args(args: argparse.Namespace):
    """The front-end configuration the options ask for (the paper's, plus ``--channels``)."""
    from .config import FrontEndConfig

    return FrontEndConfig(channels=getattr(args, "channels", None))


def add_corpus_options(p: argparse.ArgumentParser, out_help: str) -> None:
    """--dataset, --root, --manifest and --out, shared by experiment and train."""
    p.add_argument("--dataset", required=True, help="corpus name (see 'binser datasets')")
    p.add_argument("--root", required=True, help="corpus folder")
    p.add_argument("--manifest", default=None, help="CSV manifest (csv and baum1s corpora)")
    p.add_argument("--out", required=True, help=out_help)
    add_label_options(p)


LABEL_MAP_HELP = ("rename labels after reading: 'canonical' (binser's synonyms: happy -> joy, "
                  "angry -> anger ...; labels with no canonical form are left out as "
                  "problems) or WORD=LABEL pairs, e.g. frustrated=anger,happy=joy (default: "
                  "the corpus's labels as written, lower-cased)")
SPEAKERS_FROM_HELP = ("folder corpus: where the speaker is: prefix (the file name before its "
                      "first _ or -, default), folder (<root>/<label>/<speaker>/<file>) or "
                      "regex:PATTERN (group 'speaker' of PATTERN in the path below the root)")


def add_label_options(p: argparse.ArgumentParser) -> None:
    """``--label-map`` and ``--speakers-from`` (see :func:`binser.corpora.corpus`)."""
    p.add_argument("--label-map", default=None, metavar="MAP", help=LABEL_MAP_HELP)
    p.add_argument("--speakers-from", default=None, metavar="RULE", help=SPEAKERS_FROM_HELP)


def corpus_loader_from_args(args: argparse.Namespace):
    """``binser.corpora.corpus`` with ``--label-map`` and ``--speakers-from`` bound (both
    checked here, before any work); None when neither is given."""
    label_map, rule = getattr(args, "label_map", None), getattr(args, "speakers_from", None)
    if label_map is None and rule is None:
        return None
    import functools

    from .corpora import corpus, parse_label_map, speaker_rule

    speaker_rule(rule)
    return functools.partial(corpus, label_map=parse_label_map(label_map), speakers_from=rule)


def corpus_from_args(args: argparse.Namespace):
    """The corpus of ``--dataset/--root`` (or the positional ``dataset root``),
    ``--manifest``, ``--label-map`` and ``--speakers-from``."""
    from .corpora import corpus

    load = corpus_loader_from_args(args) or corpus
    return load(args.dataset, args.root, manifest=args.manifest)


def add_experiment_options(p: argparse.ArgumentParser, fusion_pooling: bool = True) -> None:
    """The options of an experiment (experiment, demo, train); ``fusion_pooling``: with
    ``--fusion-pooling`` (train has its own ``--pooling``, which is the same)."""
    from .experiment import CLASSIFIERS, FINETUNE_PRESETS, MODES, ExperimentSettings
    from .pooling import POOLINGS
    from .preflight import ON_ERROR

    d = ExperimentSettings(dataset="", root="")
    p.add_argument("--protocol", default=d.protocol,
                   help="loso | losgo:K | split (default: %(default)s)")
    p.add_argument("--backbone", default="auto",
                   help="auto (whisper-base when its weights are given or cached, else the "
                        "paper's ImageNet CNN) | whisper-tiny|base|small|medium|large-v3 | "
                        "efficientnet_lite0 | alexnet (default: %(default)s)")
    p.add_argument("--layer", type=_layer, default=None,
                   help="speech encoders: hidden-state index (0 = input embedding) or 'auto': "
                        "the layer with the best inner-CV UA on the training speakers "
                        "(experiment: per outer fold and view; train: one layer for all "
                        "views, on all speakers); experiment also takes 'auto-set': per outer "
                        "fold and view the greedy set of up to 3 layers, side by side; "
                        "default: 3 for whisper-base (chosen by nested inner CV on the "
                        "training speakers, RESULTS.md), auto for the other encoders (image "
                        "CNNs have no layer choice)")
    p.add_argument("--speaker-norm", action="store_true",
                   help="also run every system on speaker-normalised features (transductive, "
                        "label-free: each speaker standardised over their own utterances)")
    p.add_argument("--fusion-search", default=d.fusion_search, choices=("staged", "joint"),
                   help="fusion weights: the paper's two stages (alpha, beta, then lambda) or "
                        "all three jointly (default: %(default)s)")
    p.add_argument("--ci-method", default=d.ci_method,
                   choices=("speaker-bootstrap", "utterance-bootstrap"),
                   help="UA interval: resample speakers (default) or utterances")
    p.add_argument("--input-size", type=_positive_int, default=None,
                   help="backbone input size in pixels (default: the backbone's)")
    p.add_argument("--weights", default=None,
                   help="backbone weights: a .pth/.safetensors file (CNNs); for whisper-* a "
                        "Hugging Face folder (model.safetensors + config.json), such a "
                        ".safetensors file, or an openai-whisper .pt checkpoint")
    p.add_argument("--allow-random", action="store_true",
                   help="allow a randomly initialised backbone when no weights are available")
    p.add_argument("--mode", default=d.mode, choices=MODES,
                   help="frozen ImageNet features (default) or per-view fine-tuning per fold")
    p.add_argument("--finetune-preset", default=d.finetune_preset, choices=FINETUNE_PRESETS,
                   help="paper: SGD, batch 30, lr 0.001, up to 300 epochs with early stopping; "
                        "cpu: reduced (96 px, last blocks only, 8 epochs) for a 2-core CPU")
    p.add_argument("--epochs", type=_positive_int, default=None,
                   help="maximum fine-tuning epochs")
    p.add_argument("--views", type=_csv_list, default=d.views,
                   help="comma-separated views (default: left,right,mid,side)")
    p.add_argument("--poolings", type=_csv_list, default=d.poolings,
                   help=f"comma-separated poolings (default: all of {','.join(d.poolings)})")
    if fusion_pooling:
        p.add_argument("--classifier", default=d.classifier, choices=CLASSIFIERS,
                       help="svm: the paper's linear SVM per view (default); head: also a "
                            "trained head per view (attentive statistics over the frames, "
                            "binser.head; runs head:<view>/stats and head:score-fusion/..., "
                            "compared with the SVM's; needs an encoder and one layer)")
        p.add_argument("--prosody", default=None, metavar="SET",
                       help="add a prosody view: the openSMILE functionals SET (egemaps, "
                            "compare2016, is10) of the mid channel, fused after the four "
                            "views as their last stage (weight eta on the training "
                            "speakers); needs binser[opensmile]")
        p.add_argument("--fusion-pooling", default=None, choices=POOLINGS, metavar="POOLING",
                       help=f"the pooling whose per-view scores are fused, one of "
                            f"{', '.join(POOLINGS)}; must be among --poolings (default: "
                            "stats for whisper-* encoders, block-max for image CNNs, else "
                            "the first of --poolings)")
    p.add_argument("--blocks", type=_positive_int, default=d.blocks,
                   help="blocks l (default: 2)")
    p.add_argument("--abs-pooling", action="store_true",
                   help="block pooling of |X| and |dX| (the paper's eqs. 6-7 as printed) "
                        "instead of the signed values")
    p.add_argument("--levels", type=_positive_int, default=None, help="multi-level pooling 1..L")
    p.add_argument("--batch-size", type=_positive_int, default=d.batch_size,
                   help="segments per network call (default: %(default)s)")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="torch CPU threads for extraction and fine-tuning (default: torch's)")
    p.add_argument("--seed", type=_non_negative_int, default=d.seed,
                   help="random seed (default: %(default)s)")
    p.add_argument("--n-boot", type=_positive_int, default=d.n_boot,
                   help="bootstrap resamples for the UA CI (default: %(default)s)")
    p.add_argument("--cache-dir", default=None,
                   help="feature cache (default: $BINSER_CACHE_DIR or ~/.cache/binser)")
    p.add_argument("--baselines", type=_csv_list, default=(),
                   help="add hand-crafted baselines: opensmile (IS10, ComParE 2016, eGeMAPS "
                        "functionals + the same SVM; needs binser[opensmile])")
    p.add_argument("--baseline-views", type=_csv_list, default=d.baseline_views,
                   help="views for the baselines (default: left, the paper's practice)")
    p.add_argument("--on-error", choices=ON_ERROR, default=d.on_error,
                   help="bad input files (unreadable, silent, too short ...): fail lists them "
                        "all before any work; skip leaves them out and lists them in "
                        "results.json (default: %(default)s)")
    p.add_argument("--no-report", action="store_true", help="write results.json only")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    add_channels_option(p)
    add_executor_options(p)


EXECUTOR_WORK = "feature extraction and the fold classifiers"   # experiment, train, demo


def add_executor_options(p: argparse.ArgumentParser, work: str = EXECUTOR_WORK) -> None:
    """``--executor`` and ``--ray-address`` (where ``work`` runs; same numbers)."""
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help=f"where to run {work}: this machine, or a Ray cluster (needs "
                        "binser[ray]); the results are identical (default: %(default)s)")
    p.add_argument("--ray-address", default=None, metavar="ADDRESS",
                   help="--executor ray: the cluster to join ('auto', 'ray://host:10001'); "
                        "default: $RAY_ADDRESS, else a new local cluster")


def settings_from_args(args: argparse.Namespace, dataset: str, root: str,
                       synthetic: bool = False):
    from .experiment import ExperimentSettings, resolve_backbone

    cache_dir = str(args.cache_dir or default_cache_dir())
    backbone = resolve_backbone(args.backbone, args.weights, cache_dir)
    if args.backbone == "auto" and not getattr(args, "quiet", False):
        print(f"[binser] backbone: {backbone}"
              + ("" if backbone.startswith("whisper-") else
                 " (whisper-base weights not found: pass --weights FOLDER with the Hugging "
                 "Face openai/whisper-base files for the stronger default)"), file=sys.stderr)
    return ExperimentSettings(
        dataset=dataset, root=str(root), protocol=args.protocol, backbone=backbone,
        layer=args.layer, speaker_norm=args.speaker_norm, fusion_search=args.fusion_search,
        ci_method=args.ci_method,
        input_size=args.input_size, weights=args.weights, allow_random=args.allow_random,
        mode=args.mode, views=tuple(args.views), poolings=tuple(args.poolings),
        blocks=args.blocks, levels=args.levels, pool_abs=args.abs_pooling,
        fusion_pooling=getattr(args, "fusion_pooling", None),
        manifest=getattr(args, "manifest", None),
        cache_dir=cache_dir, batch_size=args.batch_size,
        n_boot=args.n_boot, seed=args.seed, synthetic=synthetic,
        on_error=getattr(args, "on_error", "fail"), baselines=tuple(args.baselines),
        baseline_views=tuple(args.baseline_views), finetune_preset=args.finetune_preset,
        finetune_epochs=args.epochs, num_threads=getattr(args, "threads", None),
        executor=getattr(args, "executor", "local"),
        ray_address=getattr(args, "ray_address", None),
        augment=tuple(getattr(args, "augment", None) or ()), frontend=frontend_from_args(args),
        prosody=getattr(args, "prosody", None), classifier=getattr(args, "classifier", "svm"))


def print_summary(results: dict) -> None:
    """The headline numbers of an experiment, one run a line."""
    from .runnames import is_oracle

    print(f"\n{results['dataset']} ({'SYNTHETIC, ' if results.get('synthetic') else ''}"
          f"{results['protocol']}, {results['n_utterances']} utterances, "
          f"backbone {results['backbone']}):")
    print(f"{'run':<42}{'UA %':>8}{'WA %':>8}{'F1 %':>8}   UA 95% CI")
    for r in results["runs"]:
        lo, hi = r["ua_ci95"]
        ci = ("n/a (chosen on the test data)" if is_oracle(r["name"])
              else f"{100 * lo:.1f}-{100 * hi:.1f}")
        print(f"{r['name']:<42}{100 * r['ua']:>8.2f}{100 * r['wa']:>8.2f}"
              f"{100 * r['macro_f1']:>8.2f}   {ci}")
    print_claims(results.get("comparisons") or [])
    for line in results.get("small_sample_warnings") or []:
        print(f"warning: {line}")


def print_claims(comparisons: list[dict]) -> None:
    """The paired claims, one line each, after a line stating the smallest p attainable with
    their speakers (raw and after Holm's correction across the claims)."""
    if not comparisons:
        return
    s, m = max(c["n_speakers"] for c in comparisons), len(comparisons)
    floor = min(c.get("p_floor", 1.0) for c in comparisons)
    lowest = min(1.0, m * floor)
    meaning = ("no outcome can reach 0.05 after Holm, so none can be decided" if lowest > 0.05
               else "'undecided': the test could have reached 0.05 but did not (no evidence "
                    "either way, not evidence of equality)")
    print(f"claims ({s} speakers, {m} claim{'s' if m != 1 else ''}): smallest attainable p "
          f"{floor:.3g}, after Holm {lowest:.3g}; {meaning}")
    for c in comparisons:
        holm = f", Holm {c['p_holm']:.3g}" if "p_holm" in c else ""
        print(f"claim {c['claim']}: {100 * c['diff']:+.2f} points, p {c['p_value']:.3g}{holm}"
              f" -> {c['verdict']}")


def cmd_datasets(args: argparse.Namespace) -> int:
    from .corpora import DATASETS

    for name, description in DATASETS.items():
        print(f"{name:<10}{description}")
    return 0


def cmd_scan(args: argparse.Namespace) -> int:
    """Exit status 0: every file usable; 1: some cannot be used (counted by cause)."""
    from .preflight import apply_on_error, check_corpus, format_problems
    from .scan import causes_by_kind, format_scan, scan_corpus, unusable_summary

    config = frontend_from_args(args)
    found = corpus_from_args(args)
    checked = check_corpus(found, config, progress=not args.quiet)
    apply_on_error(checked, args.on_error)   # fail: every bad file listed, before the scan
    report = scan_corpus(found, progress=not args.quiet, on_error=args.on_error,
                         channels=config.channels)
    print(format_scan(report))
    print(f"files an experiment cannot use (left out with --on-error skip): "
          f"{checked.n_bad}\n{format_problems(checked.problems)}".rstrip())
    naming = len(found.problems)
    summary = unusable_summary(causes_by_kind(checked.problems[:naming],
                                              checked.problems[naming:]),
                               len(found) + naming)
    if summary:
        print(f"binser: {summary}", file=sys.stderr)
    return 1 if summary else 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from .preflight import check_file

    figure = args.output
    if figure:
        from .outputs import check_output_file

        check_output_file(figure, "-o")
    config = frontend_from_args(args)
    check_file(args.file, config)   # AudioError naming the file and cause (silent, too short ...)
    from .inspection import LABEL_WIDTH, format_inspection, inspect_file, mono_note

    result = inspect_file(args.file, config, figure=figure)
    note = mono_note(result)
    if note:
        print(f"binser: warning: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(format_inspection(result))
        if figure:
            print(f"{'figure:':<{LABEL_WIDTH}}{figure}")
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    from .experiment import run_experiment

    loader = corpus_loader_from_args(args)
    settings = settings_from_args(args, args.dataset, args.root)
    results = run_experiment(settings, out=args.out, progress=not args.quiet,
                             report=not args.no_report,
                             **({"corpus_loader": loader} if loader else {}))
    print_summary(results)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .fusion import describe_weights
    from .model import train_model

    ignored = [option for option, given in (("--baselines", args.baselines),
                                            ("--no-report", args.no_report)) if given]
    if ignored:
        raise ConfigError(f"{' and '.join(ignored)}: not used by train (a model has no "
                          "baselines and no report; use 'binser experiment')")
    loader = corpus_loader_from_args(args)
    settings = settings_from_args(args, args.dataset, args.root)
    fusion = None if args.fusion == "none" else args.fusion
    model = train_model(settings, args.out, fusion=fusion, progress=not args.quiet,
                        cross_validate=args.cross_validate, overwrite=args.overwrite,
                        corpus_loader=loader)
    backbone = model.backbones[model.views[0]].name
    layer = f" layer {model.layer}" if model.layer is not None else ""
    print(f"model saved to {args.out}: labels {', '.join(model.labels)}; views "
          f"{', '.join(model.views)}; backbone {backbone}{layer}; pooling "
          f"{model.pooling.name}; fusion {model.fusion or 'none'} "
          f"({describe_weights(model.weights or {})})"
          + ("; speaker-normalised (transductive)" if model.speaker_norm else ""))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .benchmark import BenchOptions, default_emovo_root, run_bench

    options = BenchOptions(root=Path(args.root) if args.root else default_emovo_root(),
                           quick=args.quick, parts=_csv_list(args.parts), threads=args.threads,
                           batch=args.batch_size, seconds=args.seconds,
                           work=Path(args.work) if args.work else None,
                           whisper_weights=Path(args.whisper_weights) if args.whisper_weights
                           else None,
                           serve_model=Path(args.serve_model) if args.serve_model else None,
                           cache_dir=str(args.cache_dir or default_cache_dir()))
    say = (lambda line: print(line, file=sys.stderr, flush=True)) if args.json else print
    figures = run_bench(options, report=say)
    if args.json:
        print(json.dumps({**figures["summary"], "details": figures}, indent=2))
    return 0


def cmd_scenes(args: argparse.Namespace) -> int:
    from .scenes import SceneSettings, make_scenes

    settings = SceneSettings(seed=args.seed, snr=args.snr, rt60=args.rt60,
                             interferer_prob=args.interferer_prob, sir=args.sir,
                             azimuth=args.azimuth, hrir=args.hrir, downmix=args.downmix)
    found = corpus_from_args(args)
    done = make_scenes(found, args.out, settings, progress=not args.quiet)
    rate = f", {done['xrt']:.0f}x real time" if done["made"] else ""
    print(f"scenes: {done['files']} files in {done['out']} ({done['made']} made, "
          f"{done['kept']} already there; {done['audio_s']:.0f} s of audio in "
          f"{done['wall_s']:.1f} s{rate}); read them back with --dataset scenes --root "
          f"{done['out']}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .cli_format import format_prediction
    from .inputs import expand_inputs
    from .model import Model, read_speakers_csv

    args.files = [str(p) for p in expand_inputs(args.files)]   # folders and globs, up front

    if args.plot is not None:   # checked before any work
        from .outputs import check_output_file

        check_output_file(args.plot, "--plot")
    model = Model.load(args.model)
    if args.channels is not None:   # which channels of the files to read, not the model
        import dataclasses

        model.frontend = dataclasses.replace(model.frontend, channels=args.channels)
    option = "--speaker" if args.speaker is not None else "--speakers" if args.speakers else None
    if option and not model.speaker_norm:
        raise ConfigError(f"{option}: model {args.model} was trained without speaker "
                          "normalisation (train --speaker-norm), so it takes no speakers; "
                          f"drop {option}")
    if (args.online or args.warm_up is not None) and not model.speaker_norm:
        raise ConfigError(f"--online: model {args.model} was trained without speaker "
                          "normalisation (train --speaker-norm); drop --online/--warm-up")
    if args.warm_up is not None and not args.online:
        raise ConfigError("--warm-up is the warm-up of --online; add --online")
    speakers = ([args.speaker] * len(args.files) if args.speaker is not None else
                read_speakers_csv(args.speakers, args.files) if args.speakers else None)
    if args.per_channel:   # two-party recordings: one speaker per channel
        from .serve.commands import predict_per_channel

        if speakers is not None or args.online:
            raise ConfigError("--per-channel takes no --speaker/--speakers/--online (each "
                              "file's channels keep running statistics of their own windows)")
        return predict_per_channel(model, args)
    from .executors import make_executor

    executor = make_executor(args.executor, args.ray_address)   # one-line error without ray
    predictions = model.predict(args.files, timeline=args.timeline or args.plot is not None,
                                batch_size=args.batch_size, progress=not args.quiet,
                                on_error=args.on_error, speakers=speakers, executor=executor,
                                online=args.online, warm_up=args.warm_up)
    if args.plot is not None:
        from .plots import plot_predictions

        plot_predictions(predictions, model.labels, args.plot)
        for p in predictions if not args.timeline else ():
            p.timeline = None   # drawn, not printed
    if args.json:
        print(json.dumps([p.to_dict() for p in predictions], indent=2))
    else:
        for prediction in predictions:
            print(format_prediction(prediction))
    fallback = [p for p in predictions if (p.speaker_norm or "").startswith("fallback")]
    if fallback and args.online:
        print(f"binser: note: online speaker normalisation used the average training speaker "
              f"(fallback) for {len(fallback)} of {len(predictions)} file(s): the first "
              f"{(args.warm_up or model.min_utterances) - 1} files of each speaker (warm-up)",
              file=sys.stderr)
    elif fallback:
        print(f"binser: note: speaker normalisation used the average training speaker "
              f"(fallback) for {len(fallback)} of {len(predictions)} file(s): their speaker "
              f"has fewer than {model.min_utterances} files in this call; give more files "
              "per speaker (--speaker/--speakers) for their own statistics", file=sys.stderr)
    failed = sum(p.error is not None for p in predictions)
    if failed:
        print(f"binser: {failed} of {len(predictions)} file(s) could not be read (see above)",
              file=sys.stderr)
    return 1 if failed else 0


def cmd_stream(args: argparse.Namespace) -> int:
    from .serve.commands import run_stream

    return run_stream(args)


def cmd_serve(args: argparse.Namespace) -> int:
    from .serve.commands import run_serve

    return run_serve(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import make_demo_corpus
    from .experiment import run_experiment

    start = time.perf_counter()
    if args.backbone == "auto":   # quick and offline: the packaged ImageNet CNN
        args.backbone = "efficientnet_lite0"
        print("[binser] demo: backbone efficientnet_lite0 (packaged, no download); pass "
              "--backbone whisper-base --weights FOLDER for the speech encoder")
    from .outputs import OutputFolder

    out = Path(args.out)
    settings = settings_from_args(args, "folder", out / "corpus", synthetic=True)
    settings.validate()   # every setting, before the corpus is written
    target = OutputFolder(out, keep=("corpus",))   # checked and locked before any work
    root = make_demo_corpus(out / "corpus")
    print(f"[binser] synthetic stereo demo corpus in {root}")
    results = run_experiment(settings, out=target, progress=not args.quiet,
                             report=not args.no_report)
    print_summary(results)
    print(f"\nSYNTHETIC demo finished in {time.perf_counter() - start:.0f} s. Open "
          f"{out / 'report.html'} (or report.md); raw numbers in {out / 'results.json'}.")
    return 0


def _demo_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo_out", help="output folder (default: %(default)s)")
    add_experiment_options(p)
    p.set_defaults(func=cmd_demo)


def _datasets_options(p: argparse.ArgumentParser) -> None:
    p.set_defaults(func=cmd_datasets)


def _scan_options(p: argparse.ArgumentParser) -> None:
    from .preflight import ON_ERROR

    p.add_argument("dataset", help="corpus name (see 'binser datasets')")
    p.add_argument("root", help="corpus folder")
    p.add_argument("--manifest", default=None, help="CSV manifest (csv and baum1s corpora)")
    p.add_argument("--on-error", choices=ON_ERROR, default="skip",
                   help="skip: list bad files and scan the rest (default; exit status 1 "
                        "when any file cannot be used); fail: stop")
    add_label_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress output")
    add_channels_option(p)
    p.set_defaults(func=cmd_scan)


def _inspect_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="audio or video file")
    p.add_argument("-o", "--output", default=None,
                   help="save the four-view spectrogram figure here (.png, .pdf or .svg)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object (unrounded values)")
    add_channels_option(p)
    p.set_defaults(func=cmd_inspect)


def _experiment_options(p: argparse.ArgumentParser) -> None:
    add_corpus_options(p, out_help="output folder for results.json and the report")
    add_experiment_options(p)
    p.add_argument("--augment", type=_csv_list, nargs="?", const=("swap",), default=(),
                   help="experimental: add one copy of every training utterance to the "
                        "training rows (never to test folds): swap (left/right exchanged, no "
                        "new encoding) or jitter (random swap, +-3 dB inter-channel gain, "
                        "+-0.5 ms delay; each copy encoded again); bare --augment = swap")
    p.set_defaults(func=cmd_experiment)


def _train_options(p: argparse.ArgumentParser) -> None:
    from .fusion import FUSIONS
    from .pooling import POOLINGS

    add_corpus_options(p, out_help="model folder to write")
    p.add_argument("--fusion", default="left+right+mid+side",
                   choices=(*FUSIONS, "none"),
                   help="score fusion (none: train the single view given by --views)")
    p.add_argument("--pooling", "--fusion-pooling", dest="fusion_pooling", default=None,
                   choices=POOLINGS, metavar="POOLING",
                   help=f"the model's pooling, one of {', '.join(POOLINGS)} (default: stats "
                        "for whisper-* encoders, block-max for image CNNs, else the first of "
                        "--poolings)")
    p.add_argument("--cross-validate", action="store_true",
                   help="also cross-validate (--protocol) for the model card's scores")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model folder")
    add_experiment_options(p, fusion_pooling=False)
    p.set_defaults(func=cmd_train)


def _bench_options(p: argparse.ArgumentParser) -> None:
    from .benchmark import PARTS, BenchOptions

    bench_defaults = BenchOptions(root=Path("."))
    p.add_argument("--root", default=None,
                   help="EMOVO folder (default: $BINSER_EMOVO or ../shared/data/emovo)")
    p.add_argument("--quick", action="store_true",
                   help="84-file subset, default backbone only: a few minutes")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object (progress lines go to stderr)")
    p.add_argument("--parts", default=",".join(PARTS),
                   help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--threads", type=_positive_int, default=None, help="default: one per core")
    p.add_argument("--batch-size", type=_positive_int, default=bench_defaults.batch,
                   help="images per network call (default: %(default)s)")
    p.add_argument("--seconds", type=_positive_float, default=bench_defaults.seconds,
                   help="measuring time per backbone case")
    p.add_argument("--work", default=None,
                   help="folder for the study's cache and outputs (default: a temporary one)")
    p.add_argument("--whisper-weights", default=None,
                   help="whisper-base folder for the encoder part and the study (default: "
                        "$BINSER_WHISPER_BASE or ../shared/models/whisper-base)")
    p.add_argument("--serve-model", default=None,
                   help="model folder (binser train --out) for the serve part: load and "
                        "latency of 'binser serve' on loopback (without it: skipped)")
    p.add_argument("--cache-dir", default=None,
                   help="classifier part: the pooled-feature cache of the EMOVO study "
                        "(default: $BINSER_CACHE_DIR or ~/.cache/binser)")
    p.set_defaults(func=cmd_bench)


def _scenes_options(p: argparse.ArgumentParser) -> None:
    add_corpus_options(p, out_help="scene folder (FLAC files, scenes.csv, scenes.json); "
                                   "rerun with the same settings to resume")
    p.add_argument("--seed", type=_non_negative_int, default=0,
                   help="random seed; each file's draws depend only on it and the file's "
                        "path (default: %(default)s)")
    p.add_argument("--snr", default="0,5,10,20",
                   help="SNRs in dB to draw from, target vs diffuse noise at the ears "
                        "(default: %(default)s)")
    p.add_argument("--rt60", default="0.2:0.9",
                   help="reverberation time range LOW:HIGH in seconds (default: %(default)s)")
    p.add_argument("--interferer-prob", default="0.5",
                   help="probability of a competing talker (default: %(default)s)")
    p.add_argument("--sir", default="0,5,10",
                   help="SIRs in dB to draw from, target vs competing talker "
                        "(default: %(default)s)")
    p.add_argument("--azimuth", default="-90:90",
                   help="target azimuth range LOW:HIGH in degrees, 0 front, 90 left "
                        "(default: %(default)s)")
    p.add_argument("--hrir", default=None,
                   help="HRIR file: .npz (ir (M,2,N), sources (M,3), samplerate) or .sofa "
                        "(needs binser[sofa]); default: $BINSER_HRTF or "
                        "../shared/data/hrtf/mit-kemar.npz")
    p.add_argument("--downmix", default="first", choices=("first", "mean"),
                   help="how a stereo source becomes mono: its first channel or the mean "
                        "(default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    # values such as "--azimuth -45:45" or "--snr -5,0" start with '-': take every '-<digit>'
    # word as a value, not an option (argparse's own rule since Python 3.13)
    p._negative_number_matcher = re.compile(r"^-\.?\d")
    p.set_defaults(func=cmd_scenes)


def _predict_options(p: argparse.ArgumentParser) -> None:
    from .preflight import ON_ERROR

    p.add_argument("model", help="model folder written by 'binser train'")
    p.add_argument("files", nargs="+",
                   help="audio or video files, folders (their audio/video files, recursively) "
                        "or quoted glob patterns such as 'calls/*.wav'")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.add_argument("--timeline", action="store_true",
                   help="scores over time: per segment (CNNs) or per 1 s window, 0.5 s hop "
                        "(whisper)")
    p.add_argument("--plot", default=None, metavar="FILE.png",
                   help="draw the timeline into a figure: fused scores per label over time, "
                        "one panel per file")
    p.add_argument("--on-error", choices=ON_ERROR, default="skip",
                   help="skip: report unreadable files and go on (exit code 1); fail: stop")
    p.add_argument("--batch-size", type=_positive_int, default=64,
                   help="segments per network call (CNNs) or files encoded together (whisper)")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--speaker", default=None, metavar="NAME",
                     help="speaker-normalised models: every file is of speaker NAME (the "
                          "default too: all files of the call are one speaker)")
    who.add_argument("--speakers", default=None, metavar="FILE.csv",
                     help="speaker-normalised models: CSV with the columns path,speaker")
    p.add_argument("--online", action="store_true",
                   help="speaker-normalised models: each speaker's files in the order given, "
                        "each standardised with that speaker's files so far (itself and the "
                        "earlier ones), not all of them; the average training speaker until "
                        "--warm-up files")
    p.add_argument("--warm-up", type=_positive_int, default=None, metavar="N",
                   help="with --online: files a speaker needs before its own statistics "
                        "(default: the model's, 5)")
    p.add_argument("--per-channel", action="store_true",
                   help="two-party stereo recordings: each channel is one speaker with its own "
                        "label and timeline (windows where it is silent are marked so)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    add_channels_option(p, help="files with more than two channels: the 0-based channels to "
                                "use as left and right, e.g. 2,3 (default: the model's, as "
                                "trained, else the file's own one or two)")
    add_executor_options(p, work="feature extraction")   # predict has no folds
    p.set_defaults(func=cmd_predict)


# Each sub-command: its one-line help and the function that adds its options. Only the
# command being run gets its options (they import heavy modules for their choices), so
# `binser --help`, `binser datasets` and argument errors start fast; build_parser() with no
# argument builds every command (documentation, tests).
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {
    "demo": ("run the whole study on a small synthetic stereo corpus", _demo_options),
    "datasets": ("list the corpora binser knows by name", _datasets_options),
    "scan": ("count a corpus's utterances, labels, speakers; flag mono files", _scan_options),
    "inspect": ("facts about one audio/video file and its four views", _inspect_options),
    "experiment": ("the paper's experiments on a corpus", _experiment_options),
    "train": ("train the final system on a whole corpus; save a model", _train_options),
    "bench": ("speed and memory: binser vs librosa, bare PyTorch, openSMILE; the EMOVO study "
              "cold and warm", _bench_options),
    "scenes": ("binaural scenes: each utterance in a simulated room with noise and a "
               "competing talker, as stereo FLAC", _scenes_options),
    "predict": ("predict the emotion of audio/video files with a model", _predict_options),
}


def build_parser(commands: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The ``binser`` parser. ``commands``: the sub-commands that get their options (None:
    all); the others are listed with their help only."""
    from .serve.commands import SERVE_COMMANDS, add_parser

    parser = argparse.ArgumentParser(
        prog="binser", description="Binaural speech emotion recognition (Zhang et al. 2020).")
    parser.add_argument("--version", action="version", version=f"binser {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (text, add_options) in COMMANDS.items():
        p = sub.add_parser(name, help=text)
        if commands is None or name in commands:
            add_options(p)
    for name, func in (("stream", cmd_stream), ("serve", cmd_serve)):
        p = sub.add_parser(name, help=SERVE_COMMANDS[name])
        if commands is None or name in commands:
            add_parser(name, p)
            p.set_defaults(func=func)
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    """The sub-command named by ``argv`` (its first word when that is not an option)."""
    return argv[0] if argv and not argv[0].startswith("-") else None


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C (joblib then aborts its workers)."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def _stop_workers() -> None:
    """Kill joblib's reusable loky workers, if any were started (after an interruption)."""
    try:
        from joblib.externals.loky import reusable_executor

        executor = reusable_executor._executor
        if executor is not None:
            executor.shutdown(wait=False, kill_workers=True)
    except Exception:   # noqa: BLE001  (best effort on the way out)
        pass


def _describe_os_error(error: OSError) -> str:
    where = f"{error.filename}: " if error.filename else ""
    return f"{where}{error.strerror or error}"


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = _command_of(argv)
    parser = build_parser(() if command is None else (command,))
    args = parser.parse_args(argv)
    import signal
    import threading

    handler = None
    if threading.current_thread() is threading.main_thread():
        handler = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()   # a closed pipe shows here, not at interpreter exit
        return code
    except BinserError as error:
        print(f"binser: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        _stop_workers()
        terminated = isinstance(interrupt, Terminated)
        print(f"binser: {'terminated' if terminated else 'interrupted'}; finished work is kept "
              "in the cache, rerun to resume", file=sys.stderr)
        return 143 if terminated else 130
    except BrokenPipeError:   # `binser ... | head`: the reader left; stop quietly
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except OSError:
            pass
        return 141
    except OSError as error:
        print(f"binser: error: {_describe_os_error(error)}", file=sys.stderr)
        return 1
    finally:
        if handler is not None:
            signal.signal(signal.SIGTERM, handler)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """binser's own warnings as one line, ``binser: warning: <message>`` (no source path and
    line number); other libraries' warnings as Python shows them; both on lines of their own
    above any progress bars (:func:`binser.progress.show_warning`)."""
    from .progress import show_warning

    show_warning(message, category, filename, lineno, file, line)


_PYTHON_SHOWWARNING = warnings.showwarning


def run() -> int:
    """The ``binser`` command: :func:`main` with binser's warnings shown as one line each
    (in-process callers of :func:`main`, such as tests, keep Python's warning handling)."""
    warnings.showwarning = _show_warning
    try:
        return main()
    finally:
        warnings.showwarning = _PYTHON_SHOWWARNING


if __name__ == "__main__":
    sys.exit(run())
