"""What defines one experiment: :class:`ExperimentSettings` (checked up front by
``validate``), the run modes, classifiers and layer policies, and the console line helper."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..backbones import is_encoder
from ..config import FrontEndConfig
from ..errors import ConfigError
from ..fusion import FOUR_VIEWS
from ..pooling import POOLINGS
from ..preflight import check_on_error
from ..validation import check_choice, check_choices, check_int_range
from ..views import all_views, feature_views, VIEWS


MODES = ("frozen", "finetune")


FINETUNE_NESTED_CAVEAT = (
    "fine-tuned mode: the fold's networks were fine-tuned on all its training speakers, so "
    "the out-of-fold scores that choose C and the nested fusion weights come from networks "
    "that saw those utterances (optimistic for the weights; the test speakers are never seen)")


FINETUNE_PRESETS = ("paper", "cpu")


BASELINES = ("opensmile",)


CLASSIFIERS = ("svm", "head")   # head: binser.head's runs beside the SVM's (head:<name>)


LAYER_POLICIES = ("auto", "auto-set")   # --layer values chosen per fold by inner CV


PROSODY_VIEW = "mid"   # the channel whose openSMILE functionals are the prosody view


@dataclass(frozen=True)
class ExperimentSettings:
    """Everything that defines one experiment (saved into ``results.json``)."""

    dataset: str
    root: str
    protocol: str = "loso"
    backbone: str = "efficientnet_lite0"     # or whisper-<size>; the CLI's "auto" resolves it
    input_size: int | None = None
    weights: str | None = None
    layer: int | str | None = None            # encoders: hidden-state index or "auto" (= None)
    allow_random: bool = False
    mode: str = "frozen"
    views: tuple[str, ...] = VIEWS
    poolings: tuple[str, ...] = POOLINGS
    blocks: int = 2
    levels: int | None = None
    pool_abs: bool = False                    # block pooling of |X|, |dX| (eqs. 6-7 as printed)
    fusion_pooling: str | None = None         # None: see resolved_fusion_pooling()
    fusion_search: str = "staged"             # the paper's two stages, or "joint"
    speaker_norm: bool = False                # add runs on speaker-normalised features
    ci_method: str = "speaker-bootstrap"
    manifest: str | None = None
    cache_dir: str | None = None
    batch_size: int = 64
    num_threads: int | None = None            # torch CPU threads (None: torch's default)
    n_boot: int = 1000
    seed: int = 0
    synthetic: bool = False
    on_error: str = "fail"                    # bad input files: "fail" before any work, or "skip"
    baselines: tuple[str, ...] = ()           # "opensmile": functionals + the same linear SVM
    baseline_sets: tuple[str, ...] = ("is10", "compare2016", "egemaps")
    baseline_views: tuple[str, ...] = ("left",)   # the paper's practice: the left channel
    finetune_preset: str = "paper"            # mode finetune: "paper" (SGD, 300 epochs) or "cpu"
    finetune_epochs: int | None = None        # override the preset's maximum epochs
    solver: str = "exact"                     # SVM solver: exact (binser.svm) or liblinear (reference)
    executor: str = "local"                   # where features and folds run: local or ray
    ray_address: str | None = None            # --executor ray: cluster address (None: local)
    augment: tuple[str, ...] = ()             # training-row augmentation (binser.augment): swap
    prosody: str | None = None                # openSMILE set of the prosody view (mid channel)
    classifier: str = "svm"                   # "head": also the trained head on the frames
    frontend: FrontEndConfig = field(default_factory=FrontEndConfig)

    def validate(self) -> None:
        from ..backbones import ALL_BACKBONES

        check_choice(self.backbone, ALL_BACKBONES, "backbone")
        check_choice(self.mode, MODES, "mode")
        check_choices(self.views, all_views(), "view", allow_empty=True)
        if self.mode == "finetune" and feature_views(self.views):
            raise ConfigError(f"--mode finetune fine-tunes a network per view; feature view(s) "
                              f"{', '.join(feature_views(self.views))} have none")
        check_choices(self.poolings, POOLINGS, "pooling", allow_empty=True)
        check_choices(self.baselines, BASELINES, "baseline", allow_empty=True)
        check_choices(self.poolings, POOLINGS, "pooling", option="--poolings")
        if self.fusion_pooling is not None and self.fusion_pooling not in self.poolings:
            raise ConfigError(f"--fusion-pooling {self.fusion_pooling} is not among the poolings "
                              f"run (--poolings {','.join(self.poolings)}): add it to "
                              f"--poolings or fuse one of those")
        from ..evaluation import CI_METHODS
        from ..fusion import SEARCHES

        check_choice(self.fusion_search, SEARCHES, "fusion search")
        check_choice(self.ci_method, CI_METHODS, "interval method")
        check_int_range(self.n_boot, "--n-boot", 1, integral_floats=True)
        if is_encoder(self.backbone):
            if self.mode != "frozen":
                raise ConfigError(f"{self.backbone}: only mode frozen is available for speech "
                                  "encoders")
            if not (self.layer is None or self.layer in LAYER_POLICIES
                    or (isinstance(self.layer, int) and self.layer >= 0)):
                raise ConfigError(f"--layer must be a non-negative integer, 'auto' or "
                                  f"'auto-set', got {self.layer!r}")
        elif self.layer is not None:
            raise ConfigError(f"--layer applies to speech encoders (whisper-*), not to "
                              f"{self.backbone}")
        if self.prosody is not None:
            from ..baselines import check_feature_set, require_opensmile

            check_feature_set(self.prosody)
            require_opensmile()
            if set(FOUR_VIEWS.split("+")) - set(self.views):
                raise ConfigError(f"--prosody joins the four-view fusion as its last stage: "
                                  f"--views must hold {FOUR_VIEWS.replace('+', ',')}")
        check_choice(self.classifier, CLASSIFIERS, "classifier")
        if self.classifier == "head":
            if not is_encoder(self.backbone) or not isinstance(self.resolved_layer(), int):
                raise ConfigError("--classifier head trains on one encoder layer's frames: "
                                  "use a speech encoder (whisper-*) with a layer index "
                                  "(--layer N; whisper-base's default, 3, is one)")
            if self.speaker_norm or self.augment:
                raise ConfigError("--classifier head does not take --speaker-norm or "
                                  "--augment (the head sees raw frames)")
        check_choice(self.finetune_preset, FINETUNE_PRESETS, "fine-tuning preset")
        from ..classifier import SOLVERS

        check_choice(self.solver, SOLVERS, "solver")
        check_on_error(self.on_error)
        from ..executors import check_executor

        check_executor(self.executor, self.ray_address)
        from ..augment import check_augment

        check_augment(self.augment, self.views, self.mode, self.baselines)
        self._validate_numbers_and_paths()

    def _validate_numbers_and_paths(self) -> None:
        """Every number and path, up front (before any file is decoded), in the CLI's words."""
        from ..evaluation import parse_protocol

        parse_protocol(self.protocol)

        check_int_range(self.batch_size, "--batch-size", 1, 65536)
        check_int_range(self.num_threads, "--threads", 1, 1024, optional=True)
        check_int_range(self.blocks, "--blocks", 1, 64)
        check_int_range(self.levels, "--levels", 1, 64, optional=True)
        check_int_range(self.finetune_epochs, "--epochs", 1, 100000, optional=True)
        check_int_range(self.seed, "--seed", 0, 2 ** 32 - 1)
        if not is_encoder(self.backbone):
            from ..backbones.imagenet import MIN_INPUT_SIZE

            check_int_range(self.input_size, "--input-size",
                            MIN_INPUT_SIZE.get(self.backbone, 32), 1024, optional=True)
        elif self.input_size is not None:
            raise ConfigError(f"--input-size applies to image CNNs, not to {self.backbone}")
        if self.weights is not None and str(self.weights) != "random":
            path = Path(self.weights)
            if not path.exists():
                raise ConfigError(f"--weights {path}: no such file or folder")
            allowed = ((".safetensors", ".pt", ".bin") if is_encoder(self.backbone)
                       else (".pth", ".pt", ".safetensors", ".bin"))
            if path.is_file() and path.suffix.lower() not in allowed:
                raise ConfigError(f"--weights {path}: not a weights file for {self.backbone} "
                                  f"(expected {', '.join(allowed)}"
                                  f"{' or a Hugging Face folder' if is_encoder(self.backbone) else ''})")
            if path.is_dir() and not is_encoder(self.backbone):
                raise ConfigError(f"--weights {path}: a folder; {self.backbone} takes one "
                                  f"{'/'.join(allowed)} file")
        if self.cache_dir is not None:
            from ..outputs import check_folder

            check_folder(self.cache_dir, "--cache-dir")

    def resolved_layer(self) -> int | str | None:
        """Encoders: the layer (or policy) given, else the backbone's default
        (:func:`binser.defaults.default_encoder_layer`: 3 for whisper-base, chosen by nested
        inner CV on the training speakers; ``"auto"`` for the other encoders). None for
        image CNNs."""
        if not is_encoder(self.backbone):
            return None
        if self.layer is None:
            from ..defaults import default_encoder_layer

            return default_encoder_layer(self.backbone)
        return self.layer

    def prosody_key(self) -> tuple[str, str] | None:
        """The prosody view's features key (``("opensmile", "<set>-mid")``; its run is the
        functionals alone, ``opensmile/<set>-mid``), or None without ``--prosody``."""
        if self.prosody is None:
            return None
        from ..baselines import baseline_run_name

        return tuple(baseline_run_name(self.prosody, PROSODY_VIEW).split("/", 1))

    def resolved_fusion_pooling(self) -> str:
        """The pooling whose scores are fused: ``fusion_pooling`` when given (it must be
        among ``poolings``); else the backbone's default (``stats`` for speech encoders, the
        paper's ``block-max`` for image CNNs) when it is run, else the first of ``poolings``:
        an option the user never set cannot stop a run."""
        if self.fusion_pooling is not None:
            return self.fusion_pooling
        default = "stats" if is_encoder(self.backbone) else "block-max"
        if default in self.poolings or not self.poolings:
            return default
        return self.poolings[0]

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "frontend"}
        out["views"] = list(self.views)
        out["poolings"] = list(self.poolings)
        for key in ("baselines", "baseline_sets", "baseline_views", "augment"):
            out[key] = list(getattr(self, key))
        out["frontend"] = self.frontend.to_dict()
        return out


def _progress(message: str, enabled: bool) -> None:
    if enabled:
        from ..progress import say

        say(f"[binser] {message}", file=sys.stdout)   # above the bars, never glued to one
