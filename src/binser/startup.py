"""One corpus start-up for everything that learns from a corpus (``binser experiment``,
``binser train``): load, check the labels, screen the files.

:func:`start_corpus` returns a :class:`StartedCorpus`:

- ``corpus``: the :class:`~binser.corpora.Corpus` of the usable utterances, in the loader's
  order (``settings.on_error="skip"`` leaves bad files out; ``"fail"`` stops on the first
  bad corpus before any expensive work, naming every bad file, :mod:`binser.preflight`);
- ``skipped``: ``[(path, reason), ...]`` of the files left out (results.json's ``skipped``);
- ``classes``: the corpus's labels, in the corpus's order; a corpus with fewer than two is
  refused before any file is decoded (:class:`~binser.errors.ConfigError`).

Nothing is decoded twice: the screening is the only pass over the audio here.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .corpora import Corpus, corpus as load_corpus
from .errors import ConfigError
from .preflight import screen_corpus


@dataclass(frozen=True)
class StartedCorpus:
    """A corpus ready to learn from: usable utterances, the files left out, the classes."""

    corpus: Corpus
    skipped: list[tuple[Path, str]]

    @property
    def classes(self) -> list[str]:
        """The emotion classes (the corpus's labels, at least two)."""
        return list(self.corpus.labels)


def check_classes(corpus: Corpus, dataset: str, root: str, purpose: str) -> None:
    """ConfigError unless ``corpus`` has at least two labels (``purpose``: what needs them,
    e.g. "a study", "a model")."""
    if len(corpus.labels) < 2:
        raise ConfigError(f"{dataset} at {root}: {len(corpus.labels)} emotion class(es) "
                          f"({', '.join(corpus.labels) or 'none'}); {purpose} needs at least 2")


def start_corpus(settings: Any, corpus_loader: Callable[..., Corpus] | None = None,
                 progress: bool = True, purpose: str = "a study") -> StartedCorpus:
    """Load ``settings.dataset`` at ``settings.root`` (``settings.manifest``), check it has
    two or more classes, then screen every file (:func:`binser.preflight.screen_corpus` with
    ``settings.on_error`` and ``settings.frontend``).

    ``settings``: an :class:`~binser.experiment.ExperimentSettings` (already validated);
    ``corpus_loader``: ``(dataset, root, manifest=...) -> Corpus`` (default
    :func:`binser.corpora.corpus`); ``purpose`` names the caller in the class-count error.
    """
    corpus = (corpus_loader or load_corpus)(settings.dataset, settings.root,
                                            manifest=settings.manifest)
    check_classes(corpus, settings.dataset, settings.root, purpose)
    corpus, skipped = screen_corpus(corpus, settings.on_error, settings.frontend,
                                    progress=progress)
    return StartedCorpus(corpus, skipped)
