"""Offline image–caption datasets, generated or shipped with scikit-learn (nothing downloads).

One module per data set, all `torch.utils.data.Dataset`s whose items are dicts
`{"image": (C, H, W) float in [0, 1], "caption": str, "label": int, "index": int}`:

- `digits`: `CaptionedDigits`, scikit-learn's 8×8 handwritten digits with template captions.
- `shapes`: `Shapes`, rendered scenes of one or two coloured objects with compositional
  captions and held-out colour–shape combinations; `render_objects` paints objects.
- `vqa`: `ShapesVQA`, questions about Shapes scenes with ground-truth answers, balanced so the
  question alone does not give the answer away; `question_prior_predictions`, `per_type_accuracy`.
- `faces`: `FacesSentiment`, drawn faces with short messages, labelled kind or mean; the label
  needs both modalities on its confounded part.
- `loaders`: the split names, `make_collate(tokenizer)` (tokenizes captions into a batch) and
  the shared `DataLoader` construction behind `digits_dataloaders` / `shapes_dataloaders`.

Everything is deterministic given `seed`. Training captions are drawn afresh each time an
item is read (from torch's global generator, which `seed_everything` seeds), so a model sees
many phrasings of each image; val and test captions are fixed per item.
"""
from mmcourse.data.digits import (CaptionedDigits, digit_augmentation, digits_dataloaders, load_digit_arrays,
                                  make_digits_splits)
from mmcourse.data.loaders import SPLITS, make_collate
from mmcourse.data.faces import (EXPRESSIONS, MESSAGE_KINDS, MESSAGES, FacesSentiment, faces_corpus, render_faces,
                                 sentiment_label)
from mmcourse.data.shapes import SHAPES_CLASSNAMES, Shapes, render_objects, shapes_dataloaders
from mmcourse.data.vqa import (ANSWERS, QUESTION_TYPES, ShapesVQA, per_type_accuracy, question_prior_predictions,
                               vqa_corpus)

__all__ = ["SPLITS", "SHAPES_CLASSNAMES", "CaptionedDigits", "Shapes", "digit_augmentation", "digits_dataloaders",
           "load_digit_arrays", "make_collate", "make_digits_splits", "render_objects", "shapes_dataloaders",
           "ANSWERS", "QUESTION_TYPES", "ShapesVQA", "per_type_accuracy", "question_prior_predictions", "vqa_corpus",
           "EXPRESSIONS", "MESSAGE_KINDS", "MESSAGES", "FacesSentiment", "faces_corpus", "render_faces",
           "sentiment_label"]
