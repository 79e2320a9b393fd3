"""The mini world's defaults users see, in a module that imports nothing, so `clipfit --help` shows them at once."""

# The demo: digits, where zero-shot is clearly above chance (29% over 10 classes) but far from perfect, as
# on a real downstream task; the README's table has every task, the ones where CLIPFit loses included.
DEMO_TASK = "mini_digits"
DEMO_OUT = "runs/demo"
DEMO_EPOCHS = 100
# mini-clip-b: the deeper model, in which CLIPFit's text half has a tower to act on; 2 CPU cores run the demo on it
# well inside 5 minutes (README).
DEMO_MODEL = "mini-clip-b"
# Where `clipfit table mini-world` keeps its run folders (finished runs are reused).
TABLE_OUT = "runs/mini-world-table"
# The built-in models (`clipfit_world.model`); the first is the one the tests and the tables use by default.
BUILTIN_MODELS = ("mini-clip", "mini-clip-b")
