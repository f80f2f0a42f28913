"""Language families: character LMs (GRU, Transformer) on stdlib docstrings, synthetic sequence
tasks (reverse, parity, brackets) and synthetic topic classification."""

from __future__ import annotations

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
    """Character LM with a GRU."""

    id, domain, budget, seq_len, corpus_seed = "nlp.charlm_gru", "nlp", 150, 24, 3
    space = SearchSpace(widths=(32, 64), depths=(1, 2), **_SEQ_SPACE)

    def model(self, config: TaskConfig):
        return models.GRUModel(96, 96, config.width, config.depth, per_position=True, dropout=config.dropout)


class CharLMTransformer(_CharLM):
    """Character LM with a tiny causal Transformer."""

    id, domain, budget, seq_len, corpus_seed = "nlp.charlm_transformer", "nlp", 150, 32, 4
    space = SearchSpace(widths=(32, 64), depths=(1, 2), **_SEQ_SPACE)

    def model(self, config: TaskConfig):
        return models.TinyTransformer(96, 96, config.width, config.depth, 32, per_position=True, causal=True,
                                      dropout=config.dropout, act=config.activation)


class ReverseTransformer(SupervisedTask):
    """Output the input sequence reversed (length 8, tokens 1..8), bidirectional Transformer."""

    id, domain, n_classes, per_position, budget = "nlp.reverse_transformer", "nlp", 9, True, 250
    space = SearchSpace(widths=(32, 64), depths=(1, 2), **_SEQ_SPACE)

    def data(self, config: TaskConfig):
        return data.sequence_task("reverse", 3000, 8, np.random.default_rng(5))

    def model(self, config: TaskConfig):
        return models.TinyTransformer(9, 9, config.width, config.depth, 8, per_position=True, causal=False,
                                      dropout=config.dropout, act=config.activation)


class ParityGRU(SupervisedTask):
    """Parity of a 6-bit string with a GRU (a classic hard-to-optimize sequence task)."""

    id, domain, n_classes, budget = "nlp.parity_gru", "nlp", 2, 300
    space = SearchSpace(widths=(16, 32, 64), depths=(1, 2), **_SEQ_SPACE)

    def data(self, config: TaskConfig):
        return data.sequence_task("parity", 2000, 6, np.random.default_rng(6))

    def model(self, config: TaskConfig):
        return models.GRUModel(3, 2, config.width, config.depth, per_position=False, dropout=config.dropout)


class BracketsTransformer(SupervisedTask):
    """Is a string of 10 brackets balanced? Bidirectional Transformer classifier."""

    id, domain, n_classes, budget = "nlp.brackets_transformer", "nlp", 2, 250
    space = SearchSpace(widths=(32, 64), depths=(1, 2), **_SEQ_SPACE)

    def data(self, config: TaskConfig):
        return data.sequence_task("brackets", 3000, 10, np.random.default_rng(8))

    def model(self, config: TaskConfig):
        return models.TinyTransformer(3, 2, config.width, config.depth, 10, per_position=False, causal=False,
                                      dropout=config.dropout, act=config.activation)


class _EmbedMean(nn.Module):
    def __init__(self, vocab: int, width: int, head: nn.Module) -> None:
        super().__init__()
        self.embed, self.head = nn.Embedding(vocab, width), head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x).mean(1))


class TopicClassification(SupervisedTask):
    """Synthetic sentences with topic words; mean-of-embeddings + MLP classifier; label noise variants."""

    id, domain, n_classes, budget = "nlp.topic_classification", "nlp", 4, 250
    space = SearchSpace(widths=(16, 32, 64), depths=(1, 2), label_noise=(0.0, 0.3))

    def data(self, config: TaskConfig):
        x, y, _ = data.topic_sentences(1500, 20, np.random.default_rng(9))
        return x, y

    def model(self, config: TaskConfig):
        head = models.mlp(config.width, 4, config.width, config.depth, config.activation, config.norm, config.dropout)
        return _EmbedMean(data.TOPIC_VOCAB, config.width, head)


FAMILIES = [CharLMGRU, CharLMTransformer, ReverseTransformer, ParityGRU, BracketsTransformer, TopicClassification]
