"""The convergence report's training tasks: for each, its data, its model, its loss and how it is evaluated.

Three small models, each trained in seconds on a CPU, each the kind of loop our users write:

- ``mlp``: the two-layer net of PyTorch's "Learning PyTorch with Examples" tutorial, as written
  there: ``x = randn(64, 1000)``, ``y = randn(64, 10)``, Linear(1000, 100)-ReLU-Linear(100, 10),
  ``MSELoss(reduction="sum")``, the whole batch every step, 500 steps (the tutorial: Adam, lr 1e-4).
  Random targets: there is nothing to generalise to, so only the training loss is reported.
- ``digits``: a CNN shaped as the classic MNIST examples (pytorch/examples ``mnist``: two 3x3
  convolutions, max-pooling, dropout, two linear layers) on scikit-learn's handwritten digits
  (``load_digits``: 1,797 8x8 images shipped inside the package, no download); a stratified split,
  fixed by the seed, of 1,437 training and 360 test images, minibatches of 64; test loss and accuracy reported.
- ``charlm``: a character-level transformer language model (two pre-norm layers, causal
  attention, learned positions) on Python's own standard library sources: a fixed list of
  modules to train on and two others held out for validation; the validation loss is reported,
  beside the unigram entropy of the text (what a model that ignores context achieves at best).
  The text, and so the numbers, are those of the Python that runs it (here 3.11).

Every task is deterministic given its seed: the data, the order of minibatches (a
``torch.Generator`` of its own) and the model's initial weights; dropout draws from the global
generator, which :func:`benchmarks.convergence.train` seeds before each run. Cross-entropies are in nats.
"""

import math
import sysconfig
from collections import Counter
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

Batch = tuple[Tensor, Tensor]


@dataclass(frozen=True)
class Task:
    """One training problem; subclasses provide the data and the model."""

    name = ""
    description = ""
    # metrics evaluate() returns, in the order tables show them
    metrics = ("train_loss",)
    full_steps = 0  # steps at the default scale
    full_batch = False  # every step sees all the training data: its loss is exact, not a sample

    steps: int
    seed: int = 0

    def model(self) -> nn.Module:
        """A fresh model, its weights drawn from ``seed``: every run starts from the same point."""
        with torch.random.fork_rng():
            torch.manual_seed(self.seed)
            return self._model()

    def _model(self) -> nn.Module:
        raise NotImplementedError

    def batch(self, step: int) -> Batch:
        """The inputs and targets of step ``step`` (0-based), the same for every run."""
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """The held-out ``metrics`` (and the MLP's exact training loss), the model in eval mode (no dropout).

        A minibatch task's ``train_loss`` is not evaluated here: the training loop reports the mean
        of the batch losses since the previous evaluation, as training loops print it."""
        raise NotImplementedError


# --- the tutorial's MLP ---------------------------------------------------------------------------
@dataclass(frozen=True)
class MLP(Task):
    name = "mlp"
    description = "the tutorial's two-layer net on random data (N=64, D_in=1000, H=100, D_out=10, summed MSE)"
    full_steps = 500
    full_batch = True

    def _data(self) -> Batch:
        generator = torch.Generator().manual_seed(self.seed)
        return torch.randn(64, 1000, generator=generator), torch.randn(64, 10, generator=generator)

    def _model(self) -> nn.Module:
        return nn.Sequential(nn.Linear(1000, 100), nn.ReLU(), nn.Linear(100, 10))

    def batch(self, step: int) -> Batch:
        return self._data()  # the whole (random) data set every step, as the tutorial

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        inputs, targets = batch
        return F.mse_loss(model(inputs), targets, reduction="sum")

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        model.eval()
        try:
            return {"train_loss": self.loss(model, self._data()).item()}
        finally:
            model.train()


# --- the MNIST-style CNN on scikit-learn's digits --------------------------------------------------
@cache
def digits_split(seed: int) -> tuple[Batch, Batch]:
    """(train, test) images as (N, 1, 8, 8) float tensors normalised by the training set, and labels."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16  # pixels are 0..16
    labels = torch.tensor(digits.target)
    train, test = train_test_split(range(len(labels)), test_size=0.2, random_state=seed, stratify=digits.target)
    train_images, test_images = images[train], images[test]
    mean, std = train_images.mean(), train_images.std()  # as MNIST's Normalize((0.1307,), (0.3081,))
    return ((train_images - mean) / std, labels[train]), ((test_images - mean) / std, labels[test])


class DigitsNet(nn.Module):
    """pytorch/examples' MNIST ``Net``, its first linear layer sized for 8x8 inputs (64*2*2, not 64*12*12)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3)   # 8x8 -> 6x6
        self.conv2 = nn.Conv2d(32, 64, 3)  # -> 4x4, pooled to 2x2
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(64 * 2 * 2, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        x = self.dropout2(F.relu(self.fc1(self.dropout1(x).flatten(1))))
        return self.fc2(x)  # logits; cross_entropy is the example's log_softmax + nll_loss


@dataclass(frozen=True)
class Digits(Task):
    name = "digits"
    description = "an MNIST-style CNN on scikit-learn's 8x8 handwritten digits (1,437 train / 360 test, batch 64)"
    metrics = ("train_loss", "test_loss", "test_accuracy")
    full_steps = 154  # 7 epochs
    batch_size = 64

    def _model(self) -> nn.Module:
        return DigitsNet()

    def batch(self, step: int) -> Batch:
        images, labels = digits_split(self.seed)[0]
        per_epoch = len(labels) // self.batch_size  # the last partial batch is dropped
        epoch, index = divmod(step, per_epoch)
        order = _epoch_order(len(labels), self.seed, epoch)
        chosen = order[index * self.batch_size:(index + 1) * self.batch_size]
        return images[chosen], labels[chosen]

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        images, labels = batch
        return F.cross_entropy(model(images), labels)

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        images, labels = digits_split(self.seed)[1]
        model.eval()
        try:
            logits = model(images)
        finally:
            model.train()
        return {"test_loss": F.cross_entropy(logits, labels).item(),
                "test_accuracy": (logits.argmax(1) == labels).float().mean().item()}


@cache
def _epoch_order(size: int, seed: int, epoch: int) -> Tensor:
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


# --- the character-level language model ----------------------------------------------------------
# Standard-library modules: the last two are held out for validation. Pure Python, present in
# every CPython 3.11+.
TRAIN_MODULES = ("functools.py", "contextlib.py", "fractions.py", "random.py", "statistics.py", "calendar.py",
                 "string.py", "shlex.py", "queue.py", "copy.py", "fnmatch.py", "glob.py", "bisect.py")
VAL_MODULES = ("textwrap.py", "heapq.py")


@cache
def stdlib_text() -> tuple[str, str]:
    """(training text, validation text): the modules' sources, each list joined."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return tuple("".join((root / name).read_text(encoding="utf-8") for name in names)
                 for names in (TRAIN_MODULES, VAL_MODULES))


@cache
def vocabulary() -> str:
    """The characters of both texts, sorted: one token each."""
    return "".join(sorted(set("".join(stdlib_text()))))


def encode(text: str) -> Tensor:
    index = {char: i for i, char in enumerate(vocabulary())}
    return torch.tensor([index[char] for char in text])


def unigram_entropy(text: str) -> float:
    """Entropy in nats of the text's character frequencies: the loss of the best model that ignores context."""
    counts = Counter(text)
    total = sum(counts.values())
    return -sum(n / total * math.log(n / total) for n in counts.values())


class CharTransformer(nn.Module):
    """A GPT-style decoder: token and position embeddings, pre-norm causal layers, a linear head."""

    def __init__(self, vocab: int, context: int, width: int, heads: int = 4, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.position = nn.Parameter(torch.randn(context, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=4 * width, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.layers = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(context), persistent=False)

    def forward(self, tokens: Tensor) -> Tensor:
        length = tokens.shape[1]
        x = self.embed(tokens) + self.position[:length]
        x = self.layers(x, mask=self.mask[:length, :length], is_causal=True)
        return self.head(self.norm(x))


@dataclass(frozen=True)
class CharLM(Task):
    name = "charlm"
    description = ("a character-level transformer (2 layers, width 32, context 32, batch 32) on standard-library "
                   "sources, 2 modules held out")
    metrics = ("train_loss", "val_loss")
    full_steps = 120
    width = 32
    context = 32
    batch_size = 32
    eval_windows = 64  # fixed windows of the validation text that evaluations score

    def _model(self) -> nn.Module:
        return CharTransformer(len(vocabulary()), self.context, self.width)

    @property
    def entropy(self) -> float:
        """The unigram entropy of the training text, in nats."""
        return unigram_entropy(stdlib_text()[0])

    def batch(self, step: int) -> Batch:
        return _windows(_tokens()[0], self.context, _starts(len(_tokens()[0]), self.context, self.batch_size,
                                                           self.seed, step))

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        inputs, targets = batch
        return F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten())

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        model.eval()
        try:
            return {"val_loss": self.loss(model, _fixed_windows(_tokens()[1], self.context, self.eval_windows)).item()}
        finally:
            model.train()


@cache
def _tokens() -> tuple[Tensor, Tensor]:
    return tuple(encode(text) for text in stdlib_text())


def _starts(length: int, context: int, count: int, seed: int, step: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return torch.randint(0, length - context, (count,), generator=generator)


def _windows(tokens: Tensor, context: int, starts: Tensor) -> Batch:
    """Inputs ``tokens[s:s+context]`` and targets shifted by one, for each start ``s``."""
    offsets = starts[:, None] + torch.arange(context + 1)
    windows = tokens[offsets]
    return windows[:, :-1], windows[:, 1:]


@cache
def _fixed_windows(tokens: Tensor, context: int, count: int) -> Batch:
    """``count`` windows spread evenly over the text: what evaluations score."""
    return _windows(tokens, context, torch.linspace(0, len(tokens) - context - 1, count).long())


TASKS: dict[str, type[Task]] = {task.name: task for task in (MLP, Digits, CharLM)}
