"""The mini vision-language world: deterministic generation, CoOp layout, and the mini CLIP."""

import hashlib
import io
import json
import re

import open_clip
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from clipfit import data
from clipfit.text_encoding import encode_truncated
from clipfit_world import WORLD_TASKS, generate_task, iterate_pretraining_pairs, pretraining_pair, scenes
from clipfit_world.model import IMAGE_SIZE, MODEL_NAME, MODELS, create_mini_clip, weights_file
from clipfit_world.tasks import render_example


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_pretraining_stream_is_deterministic_per_seed():
    a = [pretraining_pair(0, i) for i in range(20)]
    b = [pretraining_pair(0, i) for i in range(20)]
    assert [(_png(im), c) for im, c in a] == [(_png(im), c) for im, c in b]
    other = [pretraining_pair(1, i) for i in range(20)]
    assert [_png(im) for im, _ in a] != [_png(im) for im, _ in other]


# The SHA-256 of the first 256 v1 captions of seed 0, computed at commit 945b3c5 (the stream the shipped
# mini-clip was pretrained on, README "The built-in mini CLIPs"): v1 must never change, or its weights stop
# reproducing from the command.
V1_CAPTIONS_SHA256 = "61d4f31d3da7a963beb448c5a3d97f12e67980aa60de0ee14b3072f7cc0d4e22"


# The same for v2, computed at commit edc44ef, the stream mini-clip-b's pretraining draws: a run in pieces
# must see one stream, and the shipped file must reproduce from the command.
V2_CAPTIONS_SHA256 = "3e14b3d9d3a0cadc9ca1e633f82baed6aefe2c636937411467cc25fb888ec759"


@pytest.mark.parametrize(("captions", "expected"), [("v1", V1_CAPTIONS_SHA256), ("v2", V2_CAPTIONS_SHA256)])
def test_each_caption_stream_is_the_one_its_model_was_pretrained_on(captions, expected):
    digest = hashlib.sha256()
    for i in range(256):
        digest.update(pretraining_pair(0, i, captions)[1].encode() + b"\n")
    assert digest.hexdigest() == expected


def test_v2_captions_describe_the_same_images_in_richer_language():
    v1 = [pretraining_pair(0, i) for i in range(300)]
    v2 = [pretraining_pair(0, i, "v2") for i in range(300)]
    assert all(_png(a) == _png(b) for (a, _), (b, _) in zip(v1, v2, strict=True))  # the images are v1's
    assert sum(a != b for (_, a), (_, b) in zip(v1, v2, strict=True)) > 200

    def words(pairs):
        return {w for _, c in pairs for w in c.split()}

    assert len(words(v2)) > len(words(v1)) + 30
    # The class words survive: every number, shape and colour word v1 names is still in its v2 caption.
    class_words = set(scenes.NUMBER_WORDS) | {w for ws in scenes.SHAPE_WORDS.values() for w in ws if " " not in w}
    class_words |= {w for ws in scenes.COLOR_WORDS.values() for w in ws}
    for (_, a), (_, b) in zip(v1, v2, strict=True):
        assert {w for w in re.findall(r"[\w-]+", a) if w in class_words} <= set(re.findall(r"[\w-]+", b)), (a, b)
    # The defects v1 leaves uncaptioned are named in some v2 captions.
    assert any(w in c for _, c in v2 for w in ("blurry", "blurred", "grainy", "noisy photo", "scribbles"))
    with pytest.raises(ValueError, match="captions 'v3': not one of v1, v2"):
        pretraining_pair(0, 0, "v3")


def test_pretraining_stream_yields_small_rgb_images_with_varied_captions():
    stream = iterate_pretraining_pairs(seed=0)
    pairs = [next(stream) for _ in range(200)]
    assert all(im.size == (IMAGE_SIZE, IMAGE_SIZE) and im.mode == "RGB" for im, _ in pairs)
    captions = [c for _, c in pairs]
    assert len(set(captions)) > 150
    assert len({c.split()[0] for c in captions}) > 5  # not one template


def test_task_images_are_a_pure_function_of_their_coordinates():
    task = WORLD_TASKS["mini_shapes"]
    assert _png(render_example(task, "train", 3, 7)) == _png(render_example(task, "train", 3, 7))
    assert _png(render_example(task, "train", 3, 7)) != _png(render_example(task, "test", 3, 7))


def test_at_least_four_tasks_of_ten_classes_with_train_val_test():
    full = [t for t in WORLD_TASKS.values() if t.parent is None]
    assert len(full) >= 4
    for t in full:
        assert len(t.classnames) >= 10 and len(set(t.classnames)) == len(t.classnames)
        train, val, test = t.per_class
        assert train >= 16 and val > 0 and test > 0
        assert "{}" in t.template


def test_shifted_domains_are_test_only_with_their_parents_classes():
    shifted = [t for t in WORLD_TASKS.values() if t.parent is not None]
    assert shifted
    for t in shifted:
        parent = WORLD_TASKS[t.parent]
        assert t.classnames == parent.classnames and t.template == parent.template
        assert t.per_class[:2] == (0, 0) and t.per_class[2] > 0
        assert t.shift != parent.shift


def test_generate_task_writes_the_coop_layout(tmp_path):
    task = WORLD_TASKS["mini_colors"]
    folder = generate_task("mini_colors", tmp_path)
    assert folder == tmp_path / task.folder
    split = json.loads((folder / task.split_file).read_text())
    assert set(split) == {"train", "val", "test"}
    for name, per_class in task.splits.items():
        assert len(split[name]) == per_class * len(task.classnames)
        for rel, label, classname in split[name]:
            assert task.classnames[label] == classname
            assert (folder / "images" / rel).is_file()
    counts = {c: sum(1 for _, _, cn in split["train"] if cn == c) for c in task.classnames}
    assert min(counts.values()) >= 16
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary folder left behind


def test_generate_task_is_deterministic_and_idempotent(tmp_path):
    a = generate_task("mini_shapes_sketch", tmp_path / "a")
    b = generate_task("mini_shapes_sketch", tmp_path / "b")
    split = json.loads((a / WORLD_TASKS["mini_shapes_sketch"].split_file).read_text())
    assert split == json.loads((b / WORLD_TASKS["mini_shapes_sketch"].split_file).read_text())
    for rel, _, _ in split["test"][::37]:
        assert (a / "images" / rel).read_bytes() == (b / "images" / rel).read_bytes()
    mtime = (a / WORLD_TASKS["mini_shapes_sketch"].split_file).stat().st_mtime_ns
    assert generate_task("mini_shapes_sketch", tmp_path / "a") == a
    assert (a / WORLD_TASKS["mini_shapes_sketch"].split_file).stat().st_mtime_ns == mtime


def test_an_interrupted_generation_does_not_look_complete(tmp_path):
    (tmp_path / ".mini_textures.tmp-999" / "images").mkdir(parents=True)  # what a killed run leaves
    assert not (tmp_path / "mini_textures").exists()
    folder = generate_task("mini_textures", tmp_path)
    assert (folder / WORLD_TASKS["mini_textures"].split_file).is_file()


def test_mini_clip_has_the_parts_clipfit_tunes():
    model = create_mini_clip(pretrained=False)
    v = model.visual
    assert isinstance(v, open_clip.transformer.VisionTransformer)
    assert isinstance(v.ln_pre, torch.nn.LayerNorm) and isinstance(v.ln_post, torch.nn.LayerNorm)
    assert v.image_size == (IMAGE_SIZE, IMAGE_SIZE)
    for block in v.transformer.resblocks:
        assert isinstance(block.ln_1, torch.nn.LayerNorm) and isinstance(block.ln_2, torch.nn.LayerNorm)
    for block in model.transformer.resblocks:
        assert block.mlp.c_fc.bias is not None and block.mlp.c_proj.bias is not None
    assert model.context_length == 77 and model.vocab_size == 49408


def test_mini_clip_uses_the_standard_clip_tokenizer():
    create_mini_clip(pretrained=False)
    tokens = open_clip.get_tokenizer(MODEL_NAME)(["a photo of a red circle."])
    assert tokens.shape == (1, 77) and int(tokens.max()) == 49407


def test_trimmed_text_encoding_equals_encode_text():
    torch.manual_seed(0)
    model = create_mini_clip(pretrained=False).eval()
    tokens = open_clip.get_tokenizer(MODEL_NAME)(["a star", "the digit 7 on a dark background in bold type"])
    with torch.no_grad():
        torch.testing.assert_close(encode_truncated(model, tokens), model.encode_text(tokens),
                                   atol=1e-5, rtol=1e-5)


def test_mini_clip_b_has_clips_shape_at_a_size_that_ships():
    """The second built-in model's architecture, pinned: 6 image and 6 text blocks at width 160 (mini-clip: 4 and
    3 at 128), CLIP's tokenizer and context, 11,722,401 parameters, so its fp16 file stays under 25 MB."""
    old, new = create_mini_clip(pretrained=False), create_mini_clip(pretrained=False, name="mini-clip-b")
    assert open_clip.get_model_config("mini-clip-b") == {
        "embed_dim": 160,
        "vision_cfg": {"image_size": 64, "layers": 6, "width": 160, "head_width": 32, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 160, "heads": 5, "layers": 6},
    }
    count = sum(p.numel() for p in new.parameters())
    assert count == 11_722_401 and 2 * count < 25e6
    assert len(new.visual.transformer.resblocks) == len(new.transformer.resblocks) == 6
    assert new.transformer.width > old.transformer.width
    assert new.context_length == 77 and new.vocab_size == 49408  # every prompt and template still tokenizes
    with pytest.raises(ValueError, match="'mini-clip-c' is not a built-in mini CLIP"):
        create_mini_clip(pretrained=False, name="mini-clip-c")


# The SHA-256 of the shipped mini-clip.safetensors (commit 7a6df8c): run folders record it as the base weights'
# fingerprint, so the file must stay the same for runs made on it to resume.
MINI_CLIP_SHA256 = "7d4c0242838d3ddfade194a31454b2f817b81cb6a6c08c69650fc5d899f692b4"


# The SHA-256 of the shipped mini-clip-b.safetensors (made by its recipe, README "The built-in mini CLIPs").
MINI_CLIP_B_SHA256 = "808f95fd69a2ee9388b67ba8c5ace848b7b44422339a99df255e131c6ee5014a"


def test_each_builtin_model_is_known_by_its_own_fingerprint():
    """Runs record the base weights' fingerprint: mini-clip's is the one old runs recorded (they still resume),
    mini-clip-b's is its own file's, so a run on one model never resumes a run made on the other."""
    from clipfit.backbone import weights_fingerprint

    assert weights_fingerprint("mini-clip", "builtin") == f"sha256:{MINI_CLIP_SHA256}"
    assert weights_fingerprint("mini-clip-b", "builtin") == f"sha256:{MINI_CLIP_B_SHA256}"
    assert hashlib.sha256(weights_file("mini-clip-b").read_bytes()).hexdigest() == MINI_CLIP_B_SHA256


@pytest.mark.parametrize("model", MODELS)
def test_builtin_weights_load_by_name_strictly_and_are_small(model):
    path = weights_file(model)
    assert path.stat().st_size < 25e6
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        state = {k: f.get_tensor(k) for k in f.keys()}
    assert meta["model"] == model and "seed" in meta and "steps" in meta
    assert all(t.dtype == torch.float16 for t in state.values())
    create_mini_clip(pretrained=False, name=model).load_state_dict(state, strict=True)
    loaded = create_mini_clip(pretrained=True, name=model)
    torch.testing.assert_close(loaded.visual.ln_post.weight, state["visual.ln_post.weight"].float())


def test_mini_clip_b_ships_the_weights_its_recipe_makes():
    """The shipped file's metadata is the recipe `python -m clipfit_world.pretrain --model mini-clip-b` runs, so
    that command finds it finished; it saw every pair of its schedule. (README, "The built-in mini CLIPs": how
    long it took and on what. Unlike mini-clip's, a second run from scratch has not been compared with it.)"""
    from clipfit_world.pretrain import RECIPES, PretrainConfig, _made_by

    recipe = RECIPES["mini-clip-b"]
    assert _made_by(weights_file("mini-clip-b"), PretrainConfig(model="mini-clip-b", seed=0, **recipe))
    with safe_open(str(weights_file("mini-clip-b")), framework="pt") as f:
        meta = f.metadata()
    assert int(meta["pairs_seen"]) == recipe["steps"] * recipe["batch_size"]
    assert sum(piece["steps"] for piece in json.loads(meta["pieces"])) == recipe["steps"]


def _pretrain(out, curve, **kwargs):
    from clipfit_world.pretrain import pretrain_mini_clip

    pretrain_mini_clip(out, seed=0, steps=4, batch_size=4, warmup=1, checkpoint_every=2, curve=curve, **kwargs)
    return load_file(str(out))


def test_pretraining_writes_weights_and_a_loss_curve_and_is_deterministic(tmp_path):
    first = _pretrain(tmp_path / "a.safetensors", tmp_path / "a" / "loss.png")
    second = _pretrain(tmp_path / "b.safetensors", tmp_path / "b" / "loss.png")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    curve = json.loads((tmp_path / "a" / "loss.json").read_text())
    assert len(curve["losses"]) == 4 and curve["config"]["steps"] == 4
    assert (tmp_path / "a" / "loss.png").stat().st_size > 0
    assert not list((tmp_path / "a").glob("checkpoint_*"))  # removed once the weights are written
    with safe_open(str(tmp_path / "a.safetensors"), framework="pt") as f:
        assert f.metadata()["steps"] == "4"


def test_interrupted_pretraining_resumes_to_the_same_weights(tmp_path, monkeypatch):
    from clipfit_world import pretrain

    uninterrupted = _pretrain(tmp_path / "full.safetensors", tmp_path / "full" / "loss.png")
    real_loss, calls = pretrain.clip_loss, []

    def dies_at_step_three(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_loss(*args)

    monkeypatch.setattr(pretrain, "clip_loss", dies_at_step_three)
    with pytest.raises(KeyboardInterrupt):
        _pretrain(tmp_path / "resumed.safetensors", tmp_path / "resumed" / "loss.png")
    assert len(list((tmp_path / "resumed").glob("checkpoint_*.pt"))) == 1
    resumed_calls = []
    monkeypatch.setattr(pretrain, "clip_loss", lambda *args: resumed_calls.append(1) or real_loss(*args))
    resumed = _pretrain(tmp_path / "resumed.safetensors", tmp_path / "resumed" / "loss.png")
    assert len(resumed_calls) == 2  # steps 3 and 4 only: steps 1 and 2 came from the checkpoint
    assert all(torch.equal(uninterrupted[k], resumed[k]) for k in uninterrupted)
    assert len(json.loads((tmp_path / "resumed" / "loss.json").read_text())["losses"]) == 4


@pytest.mark.parametrize("model", MODELS)
def test_pretraining_in_timed_pieces_equals_an_uninterrupted_run(tmp_path, model):
    """--minutes stops a piece at a checkpoint; the same command resumes it, to the same weights bit for bit."""
    from clipfit_world.pretrain import pretrain_mini_clip

    kw = {"model": model, "seed": 0, "steps": 3, "batch_size": 4, "warmup": 1}
    whole = pretrain_mini_clip(tmp_path / "whole.safetensors", curve=tmp_path / "whole" / "loss.png", **kw)
    piece = tmp_path / "pieces.safetensors"
    for pieces in (1, 2):  # steps 1 and 2 each end a piece at its checkpoint
        assert pretrain_mini_clip(piece, curve=tmp_path / "p" / "loss.png", minutes=0, **kw) is None
        curve = json.loads((tmp_path / "p" / "loss.json").read_text())
        assert len(curve["losses"]) == pieces and len(curve["pieces"]) == pieces  # the curve is kept as it goes
    assert pretrain_mini_clip(piece, curve=tmp_path / "p" / "loss.png", minutes=0, **kw) == piece  # the last step
    first, second = load_file(str(whole)), load_file(str(piece))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    curve = json.loads((tmp_path / "p" / "loss.json").read_text())
    # Every step's fp32 loss is equal too: the fp16 file alone could hide a difference below its rounding.
    assert curve["losses"] == json.loads((tmp_path / "whole" / "loss.json").read_text())["losses"]
    assert [p["steps"] for p in curve["pieces"]] == [1, 1, 1] and curve["pairs_seen"] == 12
    # Run once more, the finished weights are found and left as they are.
    stamp = piece.stat().st_mtime_ns
    assert pretrain_mini_clip(piece, curve=tmp_path / "p" / "loss.png", minutes=0, **kw) == piece
    assert piece.stat().st_mtime_ns == stamp
    with safe_open(str(tmp_path / "pieces.safetensors"), framework="pt") as f:
        assert f.metadata()["model"] == model and f.metadata()["pairs_seen"] == "12"


def test_a_checkpoint_from_another_stream_or_a_second_copy_of_the_command_is_refused(tmp_path, monkeypatch):
    from clipfit.errors import ClipFitError
    from clipfit.files import Lock
    from clipfit_world import pretrain

    kw = {"seed": 0, "steps": 3, "batch_size": 4, "warmup": 1, "curve": tmp_path / "c" / "loss.png"}
    assert pretrain.pretrain_mini_clip(tmp_path / "w.safetensors", minutes=0, **kw) is None
    (checkpoint,) = (tmp_path / "c").glob("checkpoint_*.pt")
    with Lock(pretrain.lock_path(checkpoint), "test"), pytest.raises(ClipFitError, match="is being written by pid"):
        pretrain.pretrain_mini_clip(tmp_path / "w.safetensors", **kw)
    real = pretrain.stream_identity
    monkeypatch.setattr(pretrain, "stream_identity", lambda cfg: {**real(cfg), "caption stream": "0" * 64})
    with pytest.raises(ClipFitError, match="was made with another caption stream than this code has"):
        pretrain.pretrain_mini_clip(tmp_path / "w.safetensors", **kw)
    checkpoint.write_bytes(b"not a checkpoint")
    with pytest.raises(ClipFitError, match="cannot be read .*move it away"):
        pretrain.pretrain_mini_clip(tmp_path / "w.safetensors", **kw)
    assert not (tmp_path / "w.safetensors").exists()


def test_the_command_exits_75_when_a_piece_stops_and_0_when_the_run_is_done(tmp_path):
    from clipfit_world.pretrain import PIECE_STOPPED, main

    argv = ["--out", str(tmp_path / "w.safetensors"), "--steps", "2", "--batch-size", "4", "--warmup", "1",
            "--minutes", "0", "--curve", str(tmp_path / "c" / "loss.png")]
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == PIECE_STOPPED == 75
    main(argv)  # the second piece ends the run: no exit status but 0
    assert (tmp_path / "w.safetensors").is_file()


def test_the_number_of_render_workers_does_not_change_the_weights(tmp_path):
    """Batch k is pairs [kB, (k+1)B) whoever draws it: no workers (the main process), one, or two."""
    from clipfit_world.pretrain import pretrain_mini_clip

    weights = []
    for workers in (0, 1, 2):
        out = tmp_path / f"w{workers}.safetensors"
        pretrain_mini_clip(out, seed=0, steps=3, batch_size=4, warmup=1, workers=workers,
                           curve=tmp_path / f"w{workers}" / "loss.png")
        weights.append(load_file(str(out)))
    assert all(torch.equal(weights[0][k], other[k]) for other in weights[1:] for k in weights[0])


def test_a_task_drawn_by_an_older_renderer_is_redrawn_whole(tmp_path, monkeypatch):
    import dataclasses

    from clipfit_world import tasks

    name = "mini_shapes_sketch"
    folder = generate_task(name, tmp_path)
    (folder / "split_fewshot").mkdir()
    (folder / "split_fewshot" / "shot_1-seed_1.json").write_text("{}")  # a draw from the old images
    (folder / tasks.VERSION_FILE).unlink()  # what a folder from before versions were recorded looks like
    newer = dataclasses.replace(WORLD_TASKS[name], version=2)
    monkeypatch.setitem(tasks.WORLD_TASKS, name, newer)
    assert tasks.generated_version(newer, folder) == 1
    data.load_dataset(name, tmp_path)  # what every run does: it redraws the stale folder
    assert tasks.generated_version(newer, folder) == 2
    assert not (folder / "split_fewshot").exists()
    assert not list(tmp_path.glob(".*"))  # nothing set aside is left behind


def test_glyph_tasks_train_without_flips_unless_asked():
    from clipfit.config import RunConfig
    from clipfit.runner import resolve

    def hflip(dataset, **kw):
        return resolve(RunConfig(dataset=dataset, model=MODEL_NAME, pretrained="builtin", **kw)).hflip

    assert hflip("mini_letters") is False and hflip("mini_digits") is False
    assert hflip("mini_shapes") is True and hflip("eurosat") is True
    assert hflip("mini_letters", hflip=True) is True and hflip("eurosat", hflip=False) is False
