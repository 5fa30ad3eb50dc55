"""Running a padded batch on its real tokens only, and the hidden states such a forward returns.

A padded batch spends most of a BERT forward on padding that no real token attends to. The encoder
therefore runs its embeddings, projections, FFNs, LayerNorms and dropouts on the N real tokens
(:class:`TokenPacking`), and only attention scatters back to ``[B, T]``; real tokens get the same
values as with padding computed (bench_sandwich, MiniLM, 7 widths, MRPC batch 16, 2 threads:
dynamic padding 2.60 -> 2.35 s/step; padded to 128, together with the cheaper dropout of
:mod:`models.fast_ops`, 4.65 -> 2.95 s/step).

:class:`HiddenStates` keeps a packed forward's states at the real tokens and pads one only when it
is indexed, so a loss over the real tokens never builds the padded copies (a zero-fill, an index
and an index_put per state per width; a MiniDisc sandwich step, MRPC dynamic batches, MiniLM,
7 widths: 1.60 -> 1.50 s).
"""

import contextlib
from collections.abc import Iterator, Sequence

import torch

_keep_padding = 0  # how many keep_padding() blocks are open


@contextlib.contextmanager
def keep_padding() -> Iterator[None]:
    """Run eager forwards on the exported graph's path: every token, padding included, goes through the
    embeddings, projections and FFNs, attention masks the padding, and the mask is applied even to a batch
    without padding. The values at real tokens are the same; the work is what ONNX Runtime does with the
    exported graph, so timing PyTorch inside this block compares the two runtimes on equal work."""
    global _keep_padding
    _keep_padding += 1
    try:
        yield
    finally:
        _keep_padding -= 1


def padding_kept() -> bool:
    """Whether forwards keep and mask the padding instead of skipping it: while exporting (one graph serves
    every input, so it cannot branch on which tokens are real) or inside :func:`keep_padding`."""
    return _keep_padding > 0 or torch.compiler.is_exporting()


class TokenPacking:
    """Where the real tokens of a padded batch are: ``[B, T, ...]`` <-> packed ``[N, ...]`` (N real tokens).

    The encoder runs its embeddings, projections, FFNs, LayerNorms and dropouts on the N real
    tokens only; attention scatters Q, K and V back to ``[B, T]`` for SDPA under ``attn_mask``.

    Attributes:
        batch, seq_len: the padded shape ``B, T``.
        index: LongTensor ``[N]``, the real tokens' flat positions in ``[B * T]`` (row-major order,
            the order in which ``x[attention_mask.bool()]`` lists them).
        attn_mask: BoolTensor ``[B, 1, 1, T]``, True at the keys a query may attend to.
    """

    def __init__(self, attention_mask: torch.Tensor):
        self.batch, self.seq_len = attention_mask.shape
        self.attention_mask = attention_mask
        self.index = attention_mask.flatten().nonzero().squeeze(1)
        self.attn_mask = attention_mask[:, None, None, :].to(torch.bool)

    def packs(self, attention_mask: torch.Tensor) -> bool:
        """Whether ``attention_mask`` selects the same tokens as this packing's."""
        return attention_mask is self.attention_mask or (
            attention_mask.shape == self.attention_mask.shape
            and torch.equal(attention_mask.bool(), self.attention_mask.bool())
        )

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, ...] -> [N, ...]``."""
        return x.flatten(0, 1).index_select(0, self.index)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, ...] -> [B, T, ...]`` with zeros at the padding."""
        padded = x.new_zeros(self.batch * self.seq_len, *x.shape[1:]).index_copy_(0, self.index, x)
        return padded.view(self.batch, self.seq_len, *x.shape[1:])


class PaddedBatch:
    """:class:`TokenPacking`'s interface for a graph exported once for every input (ONNX, ``torch.export``):
    the tokens stay padded ``[B, T, ...]`` and attention masks the padding, since which tokens are real is
    data an exported graph cannot branch on. ``pad`` zeroes the padding positions, so hidden states are zero
    there as in a packed forward."""

    def __init__(self, attention_mask: torch.Tensor):
        self.batch, self.seq_len = attention_mask.shape
        self.attention_mask = attention_mask
        self.attn_mask = attention_mask[:, None, None, :].to(torch.bool)

    def packs(self, attention_mask: torch.Tensor) -> bool:
        return False

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.attention_mask.view(self.batch, self.seq_len, *([1] * (x.dim() - 2))).to(x.dtype)


class HiddenStates(Sequence):
    """The L + 1 hidden states of a forward: ``states[i]`` is ``[B, T, hidden]`` (zero at padding).

    A packed forward keeps its states as ``[N, hidden]`` and pads one only when it is indexed, so a
    loss over the real tokens (:meth:`at_tokens`) never builds the padded copies.
    """

    def __init__(self, states: Sequence[torch.Tensor], packing: TokenPacking | None = None):
        self._states = tuple(states)
        self._padded = {}
        self.packing = packing

    def __len__(self) -> int:
        return len(self._states)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return tuple(self[j] for j in range(len(self))[i])
        i = range(len(self))[i]
        if self.packing is None:
            return self._states[i]
        if i not in self._padded:
            self._padded[i] = self.packing.pad(self._states[i])
        return self._padded[i]

    def at_tokens(self, i: int, attention_mask: torch.Tensor) -> torch.Tensor:
        """State ``i`` at the tokens ``attention_mask`` keeps, in row-major order: ``[N, hidden]``
        (``states[i][attention_mask.bool()]``, without padding a packed state first)."""
        state = self._states[i]
        if self.packing is not None and self.packing.packs(attention_mask):
            return state
        if self.packing is None and bool(attention_mask.all()):
            return state.flatten(0, -2)
        return self[i][attention_mask.bool()]
