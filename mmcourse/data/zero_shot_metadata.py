"""Class names and caption templates: data only, no logic (like open_clip's zero_shot_metadata.py).

Every template is a `str.format` string. Digit templates have ONE positional field `{}` that
takes a class name, either the word form ("seven", `DIGIT_CLASSNAMES`) or the numeral form
("7", `DIGIT_NUMERALS`)::

    DIGIT_TEMPLATES_TRAIN[0].format(DIGIT_CLASSNAMES[7])   # 'a photo of the digit seven.'

Training captions use `DIGIT_TEMPLATES_TRAIN`; `DIGIT_TEMPLATES_HELDOUT` are phrasings a model
never sees in training, so zero-shot evaluation with them measures whether it learned the digit
and not the sentence. Some of their words ("pixelated", "sketch", "someone") occur in no training
caption: their embeddings keep their initial values, so the model must learn to rely on the
digit's name (in one measured run, accuracy with held-out and with training templates agreed
within 2 points at every epoch).

Shapes templates use NAMED fields: `{size}`, `{colour}`, `{shape}`, `{position}` for one object,
and `{first}`, `{relation}`, `{second}` (each object an already formatted phrase such as
"small red circle") for two. `SHAPES_CLASS_TEMPLATES*` take one positional `{}` class name such
as "red circle", for zero-shot classification of colour × shape.
"""

# ---------------------------------------------------------------------------------- digits
DIGIT_CLASSNAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_NUMERALS = ("0", "1", "2", "3", "4", "5", "6", "7", "8", "9")

DIGIT_TEMPLATES_TRAIN = (
    "a photo of the digit {}.",
    "a handwritten {}.",
    "the number {}.",
    "an image of a {}.",
    "a scan of a handwritten digit {}.",
    "a low resolution picture of a {}.",
    "a digit {} written by hand.",
    "a blurry {}.",
    "this is a {}.",
    "a small image of the number {}.",
)

DIGIT_TEMPLATES_HELDOUT = (
    "a drawing of the digit {}.",
    "someone wrote a {}.",
    "a pixelated {}.",
    "a sketch of the number {}.",
    "the handwritten numeral {}.",
)

# ---------------------------------------------------------------------------------- shapes
SHAPE_NAMES = ("circle", "square", "triangle", "cross")

# Saturated colours that stay distinct after downsampling; RGB in [0, 1].
COLOUR_RGB = {
    "red": (0.95, 0.15, 0.15),
    "green": (0.15, 0.85, 0.2),
    "blue": (0.2, 0.35, 1.0),
    "yellow": (0.95, 0.9, 0.1),
    "magenta": (0.95, 0.2, 0.9),
    "cyan": (0.1, 0.9, 0.95),
}
COLOUR_NAMES = tuple(COLOUR_RGB)

# Where a single object sits; centres are in fractions of the image side (x, y), y down.
POSITION_CENTRES = {
    "top left": (0.28, 0.28),
    "top right": (0.72, 0.28),
    "bottom left": (0.28, 0.72),
    "bottom right": (0.72, 0.72),
    "center": (0.5, 0.5),
}
POSITION_NAMES = tuple(POSITION_CENTRES)

# Object radius as a fraction of the image side.
SIZE_RADII = {"small": 0.13, "large": 0.21}
SIZE_NAMES = tuple(SIZE_RADII)

# How the first object of a two-object image sits relative to the second.
RELATION_NAMES = ("to the left of", "to the right of", "above", "below")

# One object. Some templates omit attributes, as real captions do.
SHAPES_TEMPLATES_TRAIN = (
    "a {size} {colour} {shape} in the {position}.",
    "a picture of a {colour} {shape}.",
    "a {colour} {shape}.",
    "there is a {size} {colour} {shape}.",
    "a {colour} {shape} in the {position}.",
    "an image with a {size} {colour} {shape} in the {position}.",
    "the {shape} in the {position} is {colour}.",
    "a {size} {shape} coloured {colour}.",
)
SHAPES_TEMPLATES_HELDOUT = (
    "a drawing of a {colour} {shape}.",
    "in the {position} there is a {size} {colour} {shape}.",
    "one {colour} {shape}, {size}, in the {position}.",
)

# Two objects: `{first}` / `{second}` are object phrases like "small red circle".
SHAPES_PAIR_TEMPLATES_TRAIN = (
    "a {first} {relation} a {second}.",
    "a picture of a {first} {relation} a {second}.",
    "there is a {first} {relation} a {second}.",
)
SHAPES_PAIR_TEMPLATES_HELDOUT = (
    "a drawing of a {first} {relation} a {second}.",
)

# Zero-shot over colour × shape: class names such as "red circle" fill `{}`.
SHAPES_CLASS_TEMPLATES_TRAIN = (
    "a picture of a {}.",
    "a {}.",
)
SHAPES_CLASS_TEMPLATES_HELDOUT = (
    "a drawing of a {}.",
)
