"""A small trained head on encoder frames (beyond the paper): attentive statistics pooling
and a linear or one-hidden-layer output, an alternative to :class:`binser.classifier.
ViewClassifier` (linear SVM on pooled mean+std) whose calibrated probabilities enter the
same score fusion (:mod:`binser.fusion`).

Input: a list of ``N`` utterances, each an ``(n_i, d)`` array of frames in time order
(``n_i >= 1``; as the pooling transformers of :mod:`binser.pooling` receive them).

Model (one *member*), for an utterance ``H`` ``(n, d)``:

* frames standardised per dimension with the mean and standard deviation (population;
  below 1e-8 counts as 1) of the member's training frames: ``h_t``;
* attention (Okabe et al.'s attentive statistics pooling, one weight per frame):
  ``e_t = v . tanh(W h_t + b)`` (``W`` ``(attention_dim, d)``), ``a = softmax_t(e)``;
* ``mu = sum_t a_t h_t``, ``sd = sqrt(max(sum_t a_t h_t^2 - mu^2, 1e-6))``, ``z = [mu, sd]``
  ``(2d,)``;
* ``z`` standardised per dimension over the batch in training (batch normalisation without
  learnt scale and shift; at prediction the running mean and variance of training, momentum
  0.1), as the SVM's features are standardised: ``zn``;
* output: ``hidden == 0``: ``logits = U dropout(zn) + c`` (linear); ``hidden > 0``:
  ``logits = U2 dropout(relu(U1 dropout(zn) + c1)) + c2`` (one hidden layer of ``hidden``).

Training (:meth:`AttentiveStatsHead.fit`, training data only): the classes are
``np.unique(y)``; the training rows are split by
:func:`binser.classifier.inner_splits` (``GroupKFold(min(val_splits, #speakers))`` over the
speakers; stratified without speakers) and member ``m`` (``m = 0..n_seeds-1``) holds out
split ``m mod #splits``: it is trained on the other speakers and early-stopped on the held-out
ones. Adam (``lr``, ``weight_decay``), mini-batches of ``batch_size`` utterances drawn from
``numpy.random.default_rng([random_state, m, epoch])`` (a permutation cut into chunks of
:data:`BUCKET` batches, each chunk sorted by length so that a batch pads little, batches
shuffled), class-balanced cross
entropy (weight ``N / (K * N_c)`` as ``class_weight="balanced"``); after each epoch the
held-out UA (mean recall over the classes present) is measured; the weights of the best epoch
(highest UA, ties: lower held-out balanced cross entropy, then the earlier epoch) are kept;
training stops after ``patience`` epochs without a better one or at ``max_epochs``. Member
``m``'s parameters are initialised under ``torch.manual_seed(random_state * 1000 + m)``
(the global torch generator is restored afterwards).

Calibration: each member's temperature ``t_m`` is fitted by log loss on its held-out logits
(:func:`binser.classifier.fit_temperature`; classes absent from its training part masked).
``predict_proba`` is the mean over members of ``softmax(t_m * logits_m)``;
``decision_function`` the mean of ``log softmax(t_m * logits_m)`` (calibrated log
probabilities; its arg-max may differ from :meth:`predict`'s in near ties); ``predict`` the
arg-max of ``predict_proba``. ``best_score_`` is the mean over members of the held-out UA at
the kept epoch (training speakers only, like ``ViewClassifier.best_score_``).

Determinism: all arithmetic in float32 on the CPU with ``num_threads`` torch threads (set
for the duration of ``fit``/``predict_proba`` and restored), so the same data, parameters
and ``random_state`` give the same probabilities bit for bit on one machine.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone

from .classifier import fit_temperature, inner_splits, temperature_proba
from .errors import ConfigError
from .parallel import torch_threads
from .pooling import _check_segments

STD_FLOOR = 1e-8
VAR_FLOOR = 1e-6
BUCKET = 8          # batches per length-sorted chunk of an epoch


def check_frames(frames: Sequence[np.ndarray], d: int | None = None) -> list[np.ndarray]:
    """A list of ``(n_i, d)`` float32 arrays (``n_i >= 1``, one ``d``, finite); a
    :class:`~binser.pooling.PoolingInputError` or ConfigError naming the first bad
    utterance otherwise."""
    out = _check_segments(frames, d, dtype=np.float32)
    bad = next((i for i, a in enumerate(out) if not np.isfinite(a).all()), None)
    if bad is not None:
        raise ConfigError(f"utterance {bad}: frames contain NaN or infinite values")
    return out


def _network(d: int, k: int, attention_dim: int, hidden: int, dropout: float,
             mean: np.ndarray, std: np.ndarray):
    """The member network (module docstring), standardisation held as buffers."""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
            self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))
            self.attention = nn.Sequential(nn.Linear(d, attention_dim), nn.Tanh(),
                                           nn.Linear(attention_dim, 1))
            layers = [nn.BatchNorm1d(2 * d, affine=False), nn.Dropout(dropout)]
            if hidden:
                layers += [nn.Linear(2 * d, hidden), nn.ReLU(), nn.Dropout(dropout),
                           nn.Linear(hidden, k)]
            else:
                layers += [nn.Linear(2 * d, k)]
            self.output = nn.Sequential(*layers)

        def forward(self, x, mask):              # x (B, T, d), mask (B, T) True on frames
            h = (x - self.mean) / self.std
            e = self.attention(h).squeeze(-1).masked_fill(~mask, float("-inf"))
            a = torch.softmax(e, dim=1).unsqueeze(-1)
            mu = (a * h).sum(1)
            var = (a * h * h).sum(1) - mu * mu
            return self.output(torch.cat([mu, var.clamp_min(VAR_FLOOR).sqrt()], dim=1))

    return Net()


def _batch(frames: list[np.ndarray], rows: np.ndarray):
    """Zero-padded ``(B, T, d)`` tensor of ``frames[rows]`` and its ``(B, T)`` frame mask."""
    import torch

    t = max(len(frames[i]) for i in rows)
    x = np.zeros((len(rows), t, frames[rows[0]].shape[1]), dtype=np.float32)
    mask = np.zeros((len(rows), t), dtype=bool)
    for j, i in enumerate(rows):
        x[j, :len(frames[i])] = frames[i]
        mask[j, :len(frames[i])] = True
    return torch.from_numpy(x), torch.from_numpy(mask)


def _length_batches(frames: list[np.ndarray], rows: np.ndarray, batch_size: int,
                    rng: np.random.Generator) -> list[np.ndarray]:
    """Mini-batches of ``rows`` for one epoch: a random permutation cut into chunks of
    ``BUCKET`` batches, each chunk sorted by length (stable) and cut into batches (less
    padding), the batches in a random order; a last batch of one row joins the one before."""
    order = rng.permutation(rows)
    batches = []
    for start in range(0, len(order), BUCKET * batch_size):
        chunk = order[start:start + BUCKET * batch_size]
        chunk = chunk[np.argsort([len(frames[i]) for i in chunk], kind="stable")]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    if len(batches) > 1 and len(batches[-1]) == 1:      # batch normalisation needs 2 rows
        batches[-2:] = [np.concatenate(batches[-2:])]
    return [batches[i] for i in rng.permutation(len(batches))]


def _logits(net, frames: list[np.ndarray], rows: np.ndarray, batch_size: int) -> np.ndarray:
    """Evaluation-mode logits ``(len(rows), K)``, rows batched by length (less padding)."""
    import torch

    net.eval()
    order = rows[np.argsort([len(frames[i]) for i in rows], kind="stable")]
    out = {}
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            part = order[start:start + batch_size]
            for i, z in zip(part, net(*_batch(frames, part)).numpy()):
                out[int(i)] = z
    return np.array([out[int(i)] for i in rows], dtype=np.float64)


def _ua(codes: np.ndarray, pred: np.ndarray) -> float:
    return float(np.mean([np.mean(pred[codes == c] == c) for c in np.unique(codes)]))


class AttentiveStatsHead(ClassifierMixin, BaseEstimator):
    """Attentive statistics pooling + linear (``hidden=0``) or one-hidden-layer output,
    trained on frames; ``n_seeds`` members, early stopping on held-out training speakers,
    temperature-calibrated probabilities (module docstring: the exact procedure).

    ``fit(frames, y, groups)``: ``frames`` a list of ``N`` ``(n_i, d)`` arrays of the
    TRAINING utterances, ``y`` ``N`` labels, ``groups`` ``N`` speaker ids (optional).
    Fitted attributes: ``classes_``, ``members_`` (torch modules), ``temperatures_``,
    ``epochs_`` (kept epoch per member, 1-based), ``member_scores_`` (held-out UA per
    member), ``best_score_`` (their mean), ``split_kind_``, ``n_features_in_`` (= ``d``).
    """

    def __init__(self, hidden: int = 0, attention_dim: int = 64, n_seeds: int = 3,
                 val_splits: int = 3, max_epochs: int = 40, patience: int = 6,
                 lr: float = 1e-3, weight_decay: float = 1e-3, dropout: float = 0.2,
                 batch_size: int = 16, inner_splits: int = 3, random_state: int = 0,
                 num_threads: int = 1):
        self.hidden = hidden
        self.attention_dim = attention_dim
        self.n_seeds = n_seeds
        self.val_splits = val_splits
        self.max_epochs = max_epochs
        self.patience = patience
        self.lr = lr
        self.weight_decay = weight_decay
        self.dropout = dropout
        self.batch_size = batch_size
        self.inner_splits = inner_splits
        self.random_state = random_state
        self.num_threads = num_threads

    # -- checks
    def _check_params(self) -> None:
        ints = {"hidden": (self.hidden, 0), "attention_dim": (self.attention_dim, 1),
                "n_seeds": (self.n_seeds, 1), "val_splits": (self.val_splits, 2),
                "max_epochs": (self.max_epochs, 1), "patience": (self.patience, 1),
                "batch_size": (self.batch_size, 1), "inner_splits": (self.inner_splits, 2),
                "num_threads": (self.num_threads, 1)}
        for name, (value, low) in ints.items():
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ConfigError(f"head: {name} must be an integer >= {low}, got {value!r}")
        for name, value in (("lr", self.lr), ("weight_decay", self.weight_decay)):
            if not np.isfinite(value) or value < 0 or (name == "lr" and value == 0):
                raise ConfigError(f"head: {name} must be a {'positive' if name == 'lr' else 'non-negative'} "
                                  f"finite number, got {value!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"head: dropout must lie in [0, 1), got {self.dropout!r}")

    # -- fitting
    def fit(self, frames: Sequence[np.ndarray], y, groups: Sequence | None = None
            ) -> "AttentiveStatsHead":
        """Train ``n_seeds`` members on ``(frames, y, groups)`` (nothing else is used)."""
        self._check_params()
        frames = check_frames(frames)
        y = np.asarray(y)
        if len(y) != len(frames):
            raise ConfigError(f"{len(y)} labels for {len(frames)} utterances")
        self.classes_, codes = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ConfigError(f"need at least 2 classes to train, found {list(self.classes_)}")
        splits, self.split_kind_ = inner_splits(codes, groups, int(self.val_splits),
                                                self.random_state)
        self.n_features_in_ = frames[0].shape[1]
        self.members_, self.temperatures_, self.epochs_, self.member_scores_ = [], [], [], []
        heldout, times = np.zeros((len(y), len(self.classes_))), np.zeros(len(y))
        with torch_threads(self.num_threads):
            for m in range(int(self.n_seeds)):
                train, val = splits[m % len(splits)]
                net, epoch, score, t, z = self._fit_member(frames, codes, train, val, m)
                self.members_.append(net)
                self.epochs_.append(epoch)
                self.member_scores_.append(score)
                self.temperatures_.append(t)
                heldout[val] += temperature_proba(z, t)
                times[val] += 1
        self.best_score_ = float(np.mean(self.member_scores_))
        scored = times > 0
        heldout[scored] /= times[scored, None]
        heldout[~scored] = np.nan
        self.heldout_proba_ = heldout
        return self

    def _fit_member(self, frames: list[np.ndarray], codes: np.ndarray, train: np.ndarray,
                    val: np.ndarray, m: int):
        """One member: ``(net at the kept epoch, epoch, held-out UA, temperature, held-out
        logits)``."""
        import torch

        k = len(self.classes_)
        stacked = np.concatenate([frames[i] for i in train]).astype(np.float64)
        std = stacked.std(axis=0)
        mean, std = stacked.mean(axis=0), np.where(std < STD_FLOOR, 1.0, std)
        counts = np.bincount(codes[train], minlength=k)
        weight = np.where(counts > 0, len(train) / (k * np.maximum(counts, 1)), 0.0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.random_state) * 1000 + m)
            net = _network(self.n_features_in_, k, int(self.attention_dim), int(self.hidden),
                           float(self.dropout), mean, std)
            loss_fn = torch.nn.CrossEntropyLoss(weight=torch.as_tensor(weight,
                                                                       dtype=torch.float32))
            opt = torch.optim.Adam(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
            target = torch.as_tensor(codes, dtype=torch.long)
            best, best_key, best_epoch, waited = None, None, 0, 0
            for epoch in range(1, int(self.max_epochs) + 1):
                net.train()
                rng = np.random.default_rng([int(self.random_state), m, epoch])
                for rows in _length_batches(frames, train, int(self.batch_size), rng):
                    opt.zero_grad()
                    loss_fn(net(*_batch(frames, rows)), target[rows]).backward()
                    opt.step()
                z = _logits(net, frames, val, int(self.batch_size))
                val_loss = float(loss_fn(torch.as_tensor(z, dtype=torch.float32),
                                         target[val]))
                key = (_ua(codes[val], z.argmax(1)), -val_loss)
                if best_key is None or key > best_key:
                    best_key, best_epoch, waited = key, epoch, 0
                    best = {n: p.detach().clone() for n, p in net.state_dict().items()}
                else:
                    waited += 1
                    if waited >= int(self.patience):
                        break
        net.load_state_dict(best)
        net.eval()
        z = _logits(net, frames, val, int(self.batch_size))
        seen = np.zeros((len(val), k), dtype=bool)
        seen[:, counts > 0] = True
        return net, best_epoch, float(best_key[0]), fit_temperature(z, codes[val], seen), z

    # -- prediction
    def heldout_oof_proba(self) -> np.ndarray:
        """The members' held-out probabilities ``(N, K)`` of the training utterances (each
        row scored by the member(s) that held its speakers out, calibrated; rows no member
        held out: NaN): out-of-fold scores for the nested fusion weights at no extra fit
        (cheaper than :meth:`oof_proba`; mildly optimistic, as each member was early-stopped
        on the rows it scores; training speakers only either way)."""
        self._check_fitted()
        return self.heldout_proba_

    def _check_fitted(self) -> None:
        if not hasattr(self, "members_"):
            raise ConfigError("this AttentiveStatsHead is not fitted yet; call fit first")

    def _member_log_proba(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """``(M, N, K)`` calibrated log probabilities of every member."""
        from scipy.special import log_softmax

        self._check_fitted()
        frames = check_frames(frames, self.n_features_in_)
        rows = np.arange(len(frames))
        with torch_threads(self.num_threads):
            return np.stack([log_softmax(t * _logits(net, frames, rows, int(self.batch_size)),
                                         axis=1)
                             for net, t in zip(self.members_, self.temperatures_)])

    def predict_proba(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """Calibrated probabilities ``(N, K)`` in ``classes_`` order (mean over members)."""
        return np.exp(self._member_log_proba(frames)).mean(axis=0)

    def decision_function(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """Mean over members of the calibrated log probabilities ``(N, K)``."""
        return self._member_log_proba(frames).mean(axis=0)

    def predict(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """Arg-max of :meth:`predict_proba` (first class on ties)."""
        proba = self.predict_proba(frames)
        return self.classes_[proba.argmax(axis=1)]

    # -- nested out-of-fold scores
    def oof_proba(self, frames: Sequence[np.ndarray], y, groups: Sequence | None = None
                  ) -> np.ndarray:
        """Out-of-fold calibrated probabilities ``(N, K)`` of the training utterances (for
        the nested fusion weights, as ``ViewClassifier.oof_proba``): the rows are split by
        :func:`binser.classifier.inner_splits` (``inner_splits``, speaker-grouped) and each
        part is predicted by ``clone(self).fit`` on the other parts. Columns follow
        ``np.unique(y)``; a class missing from a part's training rows gets probability 0.
        Costs ``inner_splits`` more fits."""
        frames = check_frames(frames)
        y = np.asarray(y)
        if len(y) != len(frames):
            raise ConfigError(f"{len(y)} labels for {len(frames)} utterances")
        classes, codes = np.unique(y, return_inverse=True)
        splits, _ = inner_splits(codes, groups, int(self.inner_splits), self.random_state)
        out = np.zeros((len(y), len(classes)))
        for train, test in splits:
            sub_groups = None if groups is None else np.asarray(groups)[train]
            model = clone(self).fit([frames[i] for i in train], y[train], sub_groups)
            present = np.searchsorted(classes, model.classes_)
            out[np.ix_(test, present)] = model.predict_proba([frames[i] for i in test])
        return out


def fold_proba(head: AttentiveStatsHead, frames: Sequence[np.ndarray], y, groups: Sequence,
               train: np.ndarray, test: np.ndarray, n_classes: int | None = None
               ) -> tuple[np.ndarray, AttentiveStatsHead]:
    """Fit ``head`` on the rows ``train`` of ``(frames, y, groups)`` only and score the rows
    ``test`` -> ``(proba (len(test), K), head)``; columns follow ``np.unique(y)`` over all
    rows (``n_classes`` of them if given), classes unseen in training get 0."""
    y = np.asarray(y)
    classes = np.unique(y)
    head.fit([frames[i] for i in train], y[train], np.asarray(groups)[train])
    proba = np.zeros((len(test), len(classes) if n_classes is None else int(n_classes)))
    proba[:, np.searchsorted(classes, head.classes_)] = head.predict_proba(
        [frames[i] for i in test])
    return proba, head
