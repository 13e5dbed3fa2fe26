"""Streaming activation statistics of two networks, every permutation group in one pass.

For a group with ``C`` channels, the activations ``a`` (net A) and ``b`` (net B) of one batch
have shape ``(B, C, *spatial)``; every pixel counts as a sample, so both are viewed as
``(N, C)`` with ``N = B·H·W``. The accumulators are float64:

    n,   Σ a_c,   Σ b_c,   Σ a_c²,   Σ b_c²,   Σ a_c b_d   (a C×C matrix)

from which :meth:`PairStatistics.correlation` gives
``corr[c, d] = cov(a_c, b_d) / (std(a_c)·std(b_d) + 1e-4)`` (the published matching score) and
:meth:`PairStatistics.relative_sq_error` gives, for a permutation ``p``,
``Σ‖a_c − b_{p(c)}‖² / Σ‖a_c‖²`` without another pass over the data;
:meth:`PairStatistics.chance_sq_error` is that error's expectation under a uniformly random
permutation of the live channels (its chance level), and :meth:`PairStatistics.dead` marks the
channels that are constant over the data.

**Mirror closure.** :func:`collect_twin_statistics` compares a net ``A`` with its flipped twin
``T`` on the same inputs, each batch ``x`` together with its mirror image ``flip x`` (unless
``mirror_closed=False``). Because the sample set is closed under the flip and
``T(x) = flip A(flip x)`` at an exact size, ``corr[c, d] = corr[d, c]``: the correlation
matrix is symmetric for *any* net, so a data set that is not mirror-symmetric (shoes that all
face one way) cannot make the matched permutations look like long cycles.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from gcnn.analysis.progress import progress

#: ``(x, y)`` batches of normalised images ``(B, C, H, W)`` and labels ``(B,)`` (or ``None``).
Batches = Iterable[tuple[Tensor, Tensor | None]]

CORRELATION_EPS = 1e-4


def as_samples(activation: Tensor) -> Tensor:
    """``(B, C, *spatial)`` → ``(B·∏spatial, C)`` float64: pixels count as samples."""
    if activation.dim() < 2:
        raise ValueError(f"expected an activation (B, C, ...), got shape {tuple(activation.shape)}")
    return activation.detach().double().movedim(1, -1).reshape(-1, activation.shape[1])


class PairStatistics:
    """First and second moments of two ``C``-channel activations ``a`` and ``b`` (float64)."""

    def __init__(self, channels: int) -> None:
        self.channels = channels
        self.count = 0
        self.sum_a = torch.zeros(channels, dtype=torch.float64)
        self.sum_b = torch.zeros(channels, dtype=torch.float64)
        self.sum_aa = torch.zeros(channels, dtype=torch.float64)
        self.sum_bb = torch.zeros(channels, dtype=torch.float64)
        self.sum_ab = torch.zeros(channels, channels, dtype=torch.float64)

    @torch.no_grad()
    def update(self, a: Tensor, b: Tensor) -> None:
        """Add one batch: ``a``, ``b`` of shape ``(B, C, *spatial)`` (same shape)."""
        if a.shape != b.shape or a.shape[1] != self.channels:
            raise ValueError(
                f"activations of shape {tuple(a.shape)} and {tuple(b.shape)} do not fit "
                f"{self.channels} channels"
            )
        sa, sb = as_samples(a), as_samples(b)
        dev = self.sum_a.device
        self.count += sa.shape[0]
        self.sum_a += sa.sum(0).to(dev)
        self.sum_b += sb.sum(0).to(dev)
        self.sum_aa += (sa * sa).sum(0).to(dev)
        self.sum_bb += (sb * sb).sum(0).to(dev)
        self.sum_ab += (sa.T @ sb).to(dev)

    def _require_data(self) -> None:
        if self.count == 0:
            raise ValueError("no samples collected")

    @property
    def mean_a(self) -> Tensor:
        self._require_data()
        return self.sum_a / self.count

    @property
    def mean_b(self) -> Tensor:
        self._require_data()
        return self.sum_b / self.count

    @property
    def std_a(self) -> Tensor:
        return (self.sum_aa / self.count - self.mean_a**2).clamp_min(0).sqrt()

    @property
    def std_b(self) -> Tensor:
        return (self.sum_bb / self.count - self.mean_b**2).clamp_min(0).sqrt()

    def covariance(self) -> Tensor:
        """``cov[c, d] = E[a_c b_d] − E[a_c] E[b_d]``, shape ``(C, C)``."""
        return self.sum_ab / self.count - torch.outer(self.mean_a, self.mean_b)

    def correlation(self) -> Tensor:
        """``corr = cov / (std_a ⊗ std_b + 1e-4)``, shape ``(C, C)``: the matching score."""
        return self.covariance() / (torch.outer(self.std_a, self.std_b) + CORRELATION_EPS)

    def relative_sq_error(self, perm: Tensor | None = None) -> float:
        """``Σ_c E[(a_c − b_{p(c)})²] / Σ_c E[a_c²]`` for ``p = perm`` (identity if ``None``)."""
        self._require_data()
        idx = torch.arange(self.channels) if perm is None else perm.to(torch.long).cpu()
        cross = self.sum_ab[torch.arange(self.channels), idx]
        sq = self.sum_aa.sum() + self.sum_bb[idx].sum() - 2 * cross.sum()
        return float(sq.clamp_min(0) / self.sum_aa.sum().clamp_min(1e-300))

    def dead(self, rel_tol: float = 1e-6) -> Tensor:
        """Channels constant over the data in ``a`` or ``b``: ``std ≤ rel_tol · max std``.

        ``BoolTensor (C,)``. A constant channel correlates with nothing (its correlation row is
        0), so it can be matched to any other constant channel at no cost: no verdict can rest
        on where it goes.
        """
        self._require_data()
        std_a, std_b = self.std_a, self.std_b
        tol_a = rel_tol * float(std_a.max()) if std_a.numel() else 0.0
        tol_b = rel_tol * float(std_b.max()) if std_b.numel() else 0.0
        return (std_a <= tol_a) | (std_b <= tol_b)

    def chance_sq_error(self, live: Tensor | None = None) -> float:
        r"""Expected :meth:`relative_sq_error` of a uniformly random permutation of ``live``.

        Dead channels stay fixed. With ``L`` live channels,
        ``E_p Σ_c E[a_c b_{p(c)}] = Σ_{dead c} E[a_c b_c] + (1/L) Σ_{c, d live} E[a_c b_d]``.
        """
        self._require_data()
        live = torch.ones(self.channels, dtype=torch.bool) if live is None else live.cpu()
        n_live = int(live.sum())
        cross = self.sum_ab.diagonal()[~live].sum()
        if n_live:
            cross = cross + self.sum_ab[live][:, live].sum() / n_live
        sq = self.sum_aa.sum() + self.sum_bb.sum() - 2 * cross
        return float(sq.clamp_min(0) / self.sum_aa.sum().clamp_min(1e-300))


ProbeFn = Callable[[Tensor], Mapping[str, Tensor | Sequence[Tensor]]]


def unflip(activation: Tensor) -> Tensor:
    """Undo a spatial flip of a probe activation: mirror the width if it has spatial dims."""
    return activation.flip(-1) if activation.dim() >= 3 else activation


def _as_list(value: Tensor | Sequence[Tensor]) -> Sequence[Tensor]:
    return [value] if isinstance(value, Tensor) else value


def _update(
    stats: dict[str, PairStatistics],
    acts_a: Mapping[str, Tensor | Sequence[Tensor]],
    acts_b: Mapping[str, Tensor | Sequence[Tensor]],
    unflip_b: bool,
) -> None:
    for name, a_list in acts_a.items():
        for a, b in zip(_as_list(a_list), _as_list(acts_b[name]), strict=True):
            if name not in stats:
                stats[name] = PairStatistics(a.shape[1])
            stats[name].update(a, unflip(b) if unflip_b else b)


@torch.no_grad()
def collect_pair_statistics(
    probe_a: ProbeFn,
    probe_b: ProbeFn,
    batches: Batches,
    *,
    flip_b: bool = False,
    mirror_closed: bool = False,
    device: torch.device | str = "cpu",
    desc: str = "statistics",
) -> dict[str, PairStatistics]:
    """Statistics of every group of ``probe_a`` vs ``probe_b`` in one pass over ``batches``.

    ``probe_*(x)`` returns ``{group: activation (B, C, *spatial)}`` or ``{group: [activations]}``
    (one per probe node; all of them count as samples), e.g. a
    :class:`~gcnn.analysis.probes.MultiProbe` output's second element. With ``flip_b=True``,
    net B sees ``x.flip(-1)`` and its activations are mirrored back: ``b = flip(a_B(flip x))``.
    With ``mirror_closed=True`` every batch is used together with its mirror image
    (``cat([x, flip x])``), so the statistics are closed under the flip.
    """
    stats: dict[str, PairStatistics] = {}
    for x, _ in progress(batches, desc=desc):
        x = x.to(device)
        if mirror_closed:
            x = torch.cat([x, x.flip(-1)])
        _update(stats, probe_a(x), probe_b(x.flip(-1) if flip_b else x), flip_b)
    if not stats:
        raise ValueError("no data: the batches were empty")
    return stats


def collect_twin_statistics(
    probe_model: ProbeFn,
    probe_twin: ProbeFn,
    batches: Batches,
    *,
    mirror_closed: bool = True,
    device: torch.device | str = "cpu",
) -> dict[str, PairStatistics]:
    """Statistics of a model (``a``) against its flipped twin (``b``) on the same inputs.

    This is the comparison the merge needs: the permutation found aligns the twin that is
    merged, at every input size (at an exact size the twin's activations equal the model's on
    flipped inputs, mirrored back). With ``mirror_closed`` (default) the inputs are every
    ``x`` and ``flip x``, which makes the correlation matrix symmetric at exact sizes.
    """
    return collect_pair_statistics(
        probe_model, probe_twin, batches, mirror_closed=mirror_closed, device=device
    )


def probe_function(probe: nn.Module) -> ProbeFn:
    """Adapt an ``ActivationProbe`` / ``MultiProbe`` (returns ``(out, acts)``) to a ProbeFn."""

    def run(x: Tensor) -> Mapping[str, Tensor | Sequence[Tensor]]:
        return probe(x)[1]

    return run
