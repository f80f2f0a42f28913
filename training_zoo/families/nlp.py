"""Language families: character LMs (GRU, Elman RNN, Transformer) on stdlib docstrings, a Markov-chain
LM (LSTM), synthetic sequence tasks (reverse, parity, brackets, digit sums) and synthetic topic
classification (with plenty of data, and with a hundred sentences).

They span the architecture (GRU, LSTM, saturating Elman RNN, causal and bidirectional attention,
bag of embeddings), the objective (next-token prediction over 16 or 96 symbols, sequence-to-sequence,
classification, regression of a sum at a raw scale) and the data regime (fresh-looking large data,
a tiny training set that overfits, label noise).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn

from chuck.zoo import data, models
from chuck.zoo.families.supervised import SupervisedTask
from chuck.zoo.task import SearchSpace, TaskConfig

_SEQ_SPACE = dict(norms=("none",), activations=("relu", "gelu"), batch_sizes=(32, 64))


class _CharLM(SupervisedTask):
    """Next-character prediction on standard-library docstrings: windows of ``seq_len`` + 1 characters."""

    n_classes, per_position = 96, True
    seq_len, corpus_seed = 24, 0

    def data(self, config: TaskConfig):
        windows, _ = data.char_corpus(self.seq_len, 3000, np.random.default_rng(self.corpus_seed))
        w = windows.numpy()
        return w[:, :-1], w[:, 1:]


class CharLMGRU(_CharLM):
    """Character LM with a GRU. Axis: gated recurrent net, 96-way next-token prediction."""

    id, domain, budget, seq_len, corpus_seed = "nlp.charlm_gru", "nlp", 150, 24, 3
    space = SearchSpace(widths=(32, 64), depths=(1, 2), **_SEQ_SPACE)

    def model(self, config: TaskConfig):
        return models.RecurrentModel(96, 96, config.width, config.depth, per_position=True, dropout=config.dropout)


class CharLMRNN(_CharLM):
    """Character LM with a plain Elman RNN (tanh). Axis: saturating recurrent net whose gradients
    explode or vanish through time (Pascanu et al. 2013): clipping and a cautious lr pay."""

    id, domain, budget, seq_len, corpus_seed = "nlp.charlm_rnn", "nlp", 250, 24, 12
    space = SearchSpace(widths=(32, 64), depths=(1, 2), **_SEQ_SPACE)

    def model(self, config: TaskConfig):
        return models.RecurrentModel(96, 96, config.width, config.depth, per_position=True, dropout=config.dropout, cell="rnn")


class CharLMTransformer(_CharLM):
    """Character LM with a tiny causal Transformer. Axis: causal attention, pre-norm."""

    id, domain, budget, seq_len, corpus_seed = "nlp.charlm_transformer", "nlp", 150, 32, 4
    space = SearchSpace(widths=(32, 64), depths=(1, 2), **_SEQ_SPACE)

    def model(self, config: TaskConfig):
        return models.TinyTransformer(
            96, 96, config.width, config.depth, 32, per_position=True, causal=True, dropout=config.dropout, act=config.activation
        )


class ReverseTransformer(SupervisedTask):
    """Output the input sequence reversed (length 8, tokens 1..8), bidirectional Transformer.
    Axis: sequence-to-sequence prediction with attention."""

    id, domain, n_classes, per_position, budget = "nlp.reverse_transformer", "nlp", 9, True, 250
    space = SearchSpace(widths=(32, 64), depths=(1, 2), **_SEQ_SPACE)

    def data(self, config: TaskConfig):
        return data.sequence_task("reverse", 3000, 8, np.random.default_rng(5))

    def model(self, config: TaskConfig):
        return models.TinyTransformer(
            9, 9, config.width, config.depth, 8, per_position=True, causal=False, dropout=config.dropout, act=config.activation
        )


class ParityGRU(SupervisedTask):
    """Parity of a 4-bit string with a GRU. Axis: a classic hard-to-optimize sequence task (a plateau
    that an instance leaves abruptly, or not; 6 bits stayed on it for 300 steps at the calibrated lr)."""

    id, domain, n_classes, budget = "nlp.parity_gru", "nlp", 2, 300
    space = SearchSpace(widths=(16, 32, 64), depths=(1, 2), **_SEQ_SPACE)

    def data(self, config: TaskConfig):
        return data.sequence_task("parity", 2000, 4, np.random.default_rng(6))

    def model(self, config: TaskConfig):
        return models.RecurrentModel(3, 2, config.width, config.depth, per_position=False, dropout=config.dropout)


class _FirstTokenMemory(SupervisedTask):
    """Recall the first of ``length`` tokens from the last recurrent state (``chuck.zoo.data.first_token_memory``).
    Axis: long-range memory, a plateau at chance before the loss drops."""

    domain, n_classes, budget = "nlp", 8, 600
    length: int = 0
    cell: str = "gru"

    def data(self, config: TaskConfig):
        return data.first_token_memory(4000, self.length, vocab=8, seed=11)

    def model(self, config: TaskConfig):
        return models.RecurrentModel(9, 8, config.width, config.depth, per_position=False, dropout=config.dropout, cell=self.cell)


class MemoryGRU(_FirstTokenMemory):
    """The first of 20 tokens, a GRU. Axis: long-range memory, a plateau at chance for about 150-250 steps at
    its tuned lr."""

    id, length, cell = "nlp.memory_gru", 20, "gru"
    space = SearchSpace(widths=(64, 128), depths=(1,), dropouts=(0.0,), **_SEQ_SPACE)


class MemoryLSTM(_FirstTokenMemory):
    """The first of 16 tokens, an LSTM. Axis: long-range memory where a plateau (at chance for about 350 steps
    at a tuned lr) and a start a few times too high (at chance for the whole budget) look alike."""

    id, length, cell = "nlp.memory_lstm", 16, "lstm"
    space = SearchSpace(widths=(48, 64, 96), depths=(1,), dropouts=(0.0,), **_SEQ_SPACE)


class BracketsTransformer(SupervisedTask):
    """Is a string of 10 brackets balanced? Bidirectional Transformer classifier. Axis: attention,
    binary classification of structure."""

    id, domain, n_classes, budget = "nlp.brackets_transformer", "nlp", 2, 250
    space = SearchSpace(widths=(32, 64), depths=(1, 2), **_SEQ_SPACE)

    def data(self, config: TaskConfig):
        return data.sequence_task("brackets", 3000, 10, np.random.default_rng(8))

    def model(self, config: TaskConfig):
        return models.TinyTransformer(
            3, 2, config.width, config.depth, 10, per_position=False, causal=False, dropout=config.dropout, act=config.activation
        )


class _EmbedMean(nn.Module):
    def __init__(self, vocab: int, width: int, head: nn.Module) -> None:
        super().__init__()
        self.embed, self.head = nn.Embedding(vocab, width), head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x).mean(1))


@functools.cache
def _topics() -> tuple[np.ndarray, np.ndarray]:
    x, y, _ = data.topic_sentences(1500, 20, np.random.default_rng(9))
    return x, y


class TopicClassification(SupervisedTask):
    """Synthetic sentences with topic words; mean-of-embeddings + MLP classifier; label noise variants.
    Axis: bag-of-embeddings text classification, label noise."""

    id, domain, n_classes, budget = "nlp.topic_classification", "nlp", 4, 250
    space = SearchSpace(widths=(16, 32, 64), depths=(1, 2), label_noise=(0.0, 0.3))

    def data(self, config: TaskConfig):
        return _topics()

    def model(self, config: TaskConfig):
        head = models.mlp(config.width, 4, config.width, config.depth, config.activation, config.norm, config.dropout)
        return _EmbedMean(data.TOPIC_VOCAB, config.width, head)


class TopicFewShotTransformer(SupervisedTask):
    """The topic sentences, but only 5-10% of the training part (55-110 sentences), through a
    bidirectional Transformer classifier. Axis: tiny data that overfits, with attention."""

    id, domain, n_classes, budget = "nlp.topic_fewshot_transformer", "nlp", 4, 300
    space = SearchSpace(
        widths=(32,),
        depths=(1, 2),
        data_fraction=(0.05, 0.1),
        label_noise=(0.0, 0.15),
        **{**_SEQ_SPACE, "batch_sizes": (16, 32)},
    )

    def data(self, config: TaskConfig):
        return _topics()

    def model(self, config: TaskConfig):
        return models.TinyTransformer(
            data.TOPIC_VOCAB,
            4,
            config.width,
            config.depth,
            20,
            per_position=False,
            causal=False,
            dropout=config.dropout,
            act=config.activation,
        )


class MarkovLSTM(SupervisedTask):
    """Next-token prediction on 20k sequences of a random second-order Markov chain over 16 symbols,
    with an LSTM. Axis: large, easy data (nothing to overfit; the loss floor is the chain's entropy
    rate) and a gated recurrent net with a cell state."""

    id, domain, n_classes, per_position, budget = "nlp.markov_lstm", "nlp", 16, True, 600
    space = SearchSpace(widths=(32, 64), depths=(1,), **{**_SEQ_SPACE, "batch_sizes": (64,)})

    def data(self, config: TaskConfig):
        seq = data.markov_sequences(20_000, 16, 16, seed=14)
        return seq[:, :-1], seq[:, 1:]

    def model(self, config: TaskConfig):
        return models.RecurrentModel(16, 16, config.width, config.depth, per_position=True, dropout=config.dropout, cell="lstm")


class DigitSumTransformer(SupervisedTask):
    """The sum of 12 digits (mean 54, std 10) regressed at its raw scale by a bidirectional Transformer.
    Axis: regression from a sequence at a large target scale (initial MSE ~3000)."""

    id, domain, n_classes, budget = "nlp.digit_sum_transformer", "nlp", None, 200
    space = SearchSpace(widths=(32, 64), depths=(1, 2), **_SEQ_SPACE)

    def data(self, config: TaskConfig):
        return data.sequence_task("digit_sum", 3000, 12, np.random.default_rng(15))

    def model(self, config: TaskConfig):
        return models.TinyTransformer(
            11, 1, config.width, config.depth, 12, per_position=False, causal=False, dropout=config.dropout, act=config.activation
        )


FAMILIES = [
    CharLMGRU,
    CharLMRNN,
    CharLMTransformer,
    ReverseTransformer,
    ParityGRU,
    BracketsTransformer,
    TopicClassification,
    TopicFewShotTransformer,
    MarkovLSTM,
    DigitSumTransformer,
    MemoryGRU,
    MemoryLSTM,
]
