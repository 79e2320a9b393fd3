"""The mini world's defaults users see, in a module that imports nothing, so `clipfit --help` shows them at once."""

# The demo: digits, where zero-shot is clearly above chance (36% over 10 classes) but far from perfect, as
# on a real downstream task; the README's table has every task, the ones where CLIPFit loses included.
DEMO_TASK = "mini_digits"
DEMO_OUT = "runs/demo"
DEMO_EPOCHS = 100
# mini-clip-b: the deeper model (6 text blocks against mini-clip's 3), the closer to CLIP's shape; 2 CPU cores run
# the demo on it in under a minute (README).
DEMO_MODEL = "mini-clip-b"
# Where `clipfit table mini-world` keeps its run folders (finished runs are reused).
TABLE_OUT = "runs/mini-world-table"
# The built-in models (`clipfit_world.model`); the first is the default of `clipfit table mini-world` and most tests.
BUILTIN_MODELS = ("mini-clip", "mini-clip-b")
