"""Zero-shot evaluation's pure functions on bad input: templates with other braces or without ``{c}``,
numeric or missing class names, labels without a class, an empty image set."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from xformer.errors import XformerError
from xformer.trained.zeroshot import (
    CIFAR10_TEMPLATES,
    check_class_names,
    prompts,
    zeroshot_classifier,
    zeroshot_eval,
)

CLASSES = ["cat", "dog", "emu"]


class ClassIdTowers(torch.nn.Module):
    """An image is the one-hot of its first pixel; a text, the one-hot of the class it names."""

    def __init__(self, classes):
        super().__init__()
        self.classes = classes
        self.texts: list[str] = []

    def encode_image(self, pixel_values):
        return F.one_hot(pixel_values[:, 0, 0, 0].round().long(), len(self.classes)).float()

    def encode_text(self, input_ids, attention_mask):
        return F.one_hot(input_ids[:, 0], len(self.classes)).float()


def tokenizer(model):
    def tokenize(texts):
        model.texts += texts
        ids = torch.tensor([[next(i for i, c in enumerate(model.classes) if c in t)] for t in texts])
        return ids, torch.ones_like(ids)

    return tokenize


def evaluate(images, labels, classes=CLASSES, templates=CIFAR10_TEMPLATES):
    model = ClassIdTowers(CLASSES)
    return zeroshot_eval(model, images, labels, classes, templates, tokenizer(model), lambda x: x.float(),
                         torch.device("cpu"), where="eval.source cifar")


def images_of(labels):
    return torch.tensor(labels, dtype=torch.uint8)[:, None, None, None].expand(len(labels), 3, 2, 2)


def test_templates_with_other_braces_are_filled_by_replacement():
    templates = ["a {c} photo {}", "{x} {c}", "{{c}}", "{c} and {c}", "{0} {c!r}"]
    assert prompts(["cat"], templates) == ["a cat photo {}", "{x} cat", "{cat}", "cat and cat", "{0} {c!r}"]
    model = ClassIdTowers(CLASSES)
    classifier = zeroshot_classifier(model, CLASSES, templates[:4], tokenizer(model), torch.device("cpu"))
    assert classifier.shape == (3, 3) and model.texts[:4] == ["a cat photo {}", "{x} cat", "{cat}", "cat and cat"]
    labels = [0, 1, 2, 2]
    assert evaluate(images_of(labels), torch.tensor(labels), templates=["{x}: {c}"])["top1"] == 1.0


@pytest.mark.parametrize("templates, message", [
    (["a photo of a {c}.", "a photo of a {}."], "prompt template 'a photo of a {}.' has no '{c}'"),
    (["{C}"], "prompt template '{C}' has no '{c}'"),
    ([None], "prompt template None has no '{c}'"),
    ([], "needs a list of prompt templates"),
    ("a photo of a {c}.", "needs a list of prompt templates"),
])
def test_a_template_without_the_class_placeholder(templates, message):
    with pytest.raises(XformerError) as err:
        evaluate(images_of([0, 1]), torch.tensor([0, 1]), templates=templates)
    assert message in str(err.value) and str(err.value).startswith("eval.source cifar: ")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("classes", [[str(i) for i in range(10)], ["0", "1", " 2"], [0, 1, 2], ["1.5", "-2", "3e4"]])
def test_numeric_class_names_are_refused(classes):
    with pytest.raises(XformerError) as err:
        check_class_names(classes, "data/cifar.parquet")
    msg = str(err.value)
    assert msg.startswith("data/cifar.parquet: the class names are numbers")
    assert "--classes" in msg and "eval.classes" in msg and "\n" not in msg
    with pytest.raises(XformerError, match="the class names are numbers"):
        evaluate(images_of([0, 1]), torch.tensor([0, 1]), classes=classes)


def test_class_names_that_are_words_pass():
    check_class_names(CLASSES, "x")
    check_class_names(["7-eleven", "3 dogs", "0"], "x")  # not all of them numbers


@pytest.mark.parametrize("classes, message", [
    ([], "needs a list of class names"),
    ("cat", "needs a list of class names"),
    (["cat", ""], "class name '' is not a name"),
    (["cat", None], "class name None is not a name"),
    (["cat", "dog", "cat"], "class name 'cat' appears twice"),
])
def test_missing_or_bad_class_names(classes, message):
    with pytest.raises(XformerError, match=message):
        evaluate(images_of([0]), torch.tensor([0]), classes=classes)


def test_labels_images_and_class_names_must_agree():
    with pytest.raises(XformerError, match="labels go from 0 to 3 but there are 3 class names"):
        evaluate(images_of([0, 1, 2, 3]), torch.tensor([0, 1, 2, 3]))
    with pytest.raises(XformerError, match="labels go from -1 to 1"):
        evaluate(images_of([0, 1]), torch.tensor([-1, 1]))
    with pytest.raises(XformerError, match="eval.source cifar: no images to classify"):
        evaluate(images_of([]), torch.tensor([], dtype=torch.long))
    with pytest.raises(XformerError, match="3 images but 2 labels"):
        evaluate(images_of([0, 1, 2]), torch.tensor([0, 1]))
    scores = evaluate(images_of([0, 1, 2, 1]), torch.tensor([0, 1, 2, 1]))
    assert scores == {"top1": 1.0, "top3": 1.0, "mean_per_class_recall": 1.0}
