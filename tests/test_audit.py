"""`lpla audit`: an encoder audited on image folders, with each form of knowledge, and the
bad inputs it refuses without leaving anything behind. Small real data: scikit-learn digits as
PNG files, a width-8 small CNN trained for a few epochs."""

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from lpla_fast.cli import main
from lpla_fast.encoders import TrainConfig, train_encoder

N_MEMBERS, N_NONMEMBERS, N_POPULATION = 24, 24, 12
FAST = ["--K", "2", "--bootstrap", "20", "--no-progress"]


def write_pngs(images: torch.Tensor, folder: str, names) -> None:
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    for image, name in zip(images, names):
        pixels = (image.numpy().transpose(1, 2, 0) * 255).round().clip(0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(os.path.join(folder, f"{name}.png"))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A trained `lpla train`-style encoder folder and its members / non-members / population
    as PNG folders."""
    from lpla_fast.data import load_dataset

    root = tmp_path_factory.mktemp("audit")
    data = load_dataset("digits", None, 16)
    order = np.random.default_rng(0).permutation(len(data))
    parts = np.split(order[:N_MEMBERS + N_NONMEMBERS + N_POPULATION], [N_MEMBERS, N_MEMBERS + N_NONMEMBERS])
    folders = {}
    for name, idx in zip(("members", "nonmembers", "population"), parts):
        folders[name] = str(root / "images" / name)
        write_pngs(data.images[torch.as_tensor(idx)], folders[name], idx)
    config = TrainConfig(width=8, epochs=2, batch_size=16, checkpoint_every=1, seed=0, device="cpu")
    encoder_dir = str(root / "encoder")
    train_encoder(data.images[torch.as_tensor(parts[0])], config, checkpoint_dir=encoder_dir, progress=False)
    return {"root": root, "encoder": encoder_dir, **folders}


def audit(setup, out, *extra, members=None, nonmembers=None, encoder=None):
    return main(["audit", "--encoder", encoder or setup["encoder"], "--members", members or setup["members"],
                 "--nonmembers", nonmembers or setup["nonmembers"], "--out", str(out), *FAST, *extra])


def test_audit_without_references_runs_the_global_attacks_on_held_out_halves(setup, tmp_path):
    out = tmp_path / "out"
    assert audit(setup, out) == 0
    results = json.loads((out / "results.json").read_text())
    main_rows = [r for r in results["records"] if r["study"] == "main" and r["metrics"]]
    assert {r["attack"] for r in main_rows} >= {"lpla", "norm", "encodermi-t", "knn"}
    # Calibrated on the members' and non-members' first halves, evaluated on the others only.
    assert all(r["evaluated"] == "audit_halves" and r["metrics"]["n_members"] == N_MEMBERS // 2 for r in main_rows)
    scores = pd.read_parquet(out / "scores.parquet")
    assert set(scores["study"]) == {"main"}
    assert scores["path"].str.startswith(setup["members"]).eq(scores["is_member"]).all()
    assert scores.groupby(["attack", "sample"]).size().max() == 1  # one row per (candidate, attack)
    assert (out / "calibration.json").is_file() and (out / "plots" / "exposed.png").is_file()
    assert list((out / "roc").glob("*.npz")) and (out / "report.html").is_file()
    assert results["config"]["audit"]["preprocessing"]["image_size"] == 16


def test_trained_references_give_lira_and_rmia_and_a_rerun_trains_nothing(setup, tmp_path):
    out = tmp_path / "out"
    args = ["--train-references", "2", "--epochs", "1", "--workers", "1"]
    assert audit(setup, out, *args) == 0
    for r in range(2):
        assert (out / "references" / f"r{r}" / "model.safetensors").is_file()
        assert len((out / "references" / f"r{r}" / "members.txt").read_text().split()) == (N_MEMBERS + N_NONMEMBERS * 3 // 4) // 2
    results = json.loads((out / "results.json").read_text())
    attacks = {r["attack"] for r in results["records"] if r["study"] == "references" and r["metrics"]}
    assert attacks == {"lira", "rmia"}
    assert results["config"]["audit"]["population"]["from"] == "nonmembers"  # a quarter set aside
    scores = pd.read_parquet(out / "scores.parquet")
    lira = scores[(scores["attack"] == "lira") & (scores["statistic"] == "lpla") & (scores["k"] == 2)]
    assert len(lira) == 2 * (N_MEMBERS + N_NONMEMBERS * 3 // 4)  # online and offline, every candidate
    mtime = (out / "references" / "r0" / "model.safetensors").stat().st_mtime_ns
    assert audit(setup, out, *args) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["config"]["audit"]["references"]["reused"] == [True, True]
    assert (out / "references" / "r0" / "model.safetensors").stat().st_mtime_ns == mtime

    # The same references, as a user's references folder, give the same LiRA scores.
    mine = tmp_path / "mine"
    assert audit(setup, mine, "--references", str(out / "references")) == 0
    theirs = pd.read_parquet(mine / "scores.parquet")
    keys = ["attack", "statistic", "variant", "k", "path"]
    pd.testing.assert_frame_equal(scores.sort_values(keys).reset_index(drop=True)[keys + ["score"]],
                                  theirs.sort_values(keys).reset_index(drop=True)[keys + ["score"]])


def test_a_references_folder_without_masks_is_refused_and_leaves_nothing(setup, tmp_path):
    refs = tmp_path / "refs"
    for r in range(2):
        shutil.copytree(setup["encoder"], refs / f"r{r}")
    out = tmp_path / "out"
    assert audit(setup, out, "--references", str(refs)) == 2
    assert not out.exists()


def test_overlapping_members_and_nonmembers_are_refused(setup, tmp_path, capsys):
    nonmembers = tmp_path / "nonmembers"
    shutil.copytree(setup["nonmembers"], nonmembers)
    first = sorted(os.listdir(setup["members"]))[0]
    shutil.copy(os.path.join(setup["members"], first), nonmembers / "copy.png")
    out = tmp_path / "out"
    assert audit(setup, out, nonmembers=str(nonmembers)) == 2
    err = capsys.readouterr().err
    assert "overlap" in err and "identical images" in err and first in err
    assert not out.exists() and [p for p in os.listdir(tmp_path) if p.startswith(".lpla")] == []


def test_an_undecodable_image_is_named_or_skipped_and_listed(setup, tmp_path, capsys):
    members = tmp_path / "members"
    shutil.copytree(setup["members"], members)
    (members / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    assert audit(setup, out, members=str(members)) == 2
    assert "broken.png" in capsys.readouterr().err and not out.exists()
    assert audit(setup, out, "--skip-bad-images", members=str(members)) == 0
    report = (out / "report.md").read_text()
    assert "Skipped images" in report and "broken.png" in report


@pytest.mark.parametrize("extra, message", [
    (["--encoder", "timm:no_such_model"], "unknown timm model"),
    (["--encoder", "nonsense"], "unknown encoder spec"),
    (["--train-references", "1"], "--train-references must be an integer >= 2"),
    (["--K", "0"], "--K must be"),
])
def test_bad_arguments_are_one_line_errors(setup, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    encoder = None
    if extra[0] == "--encoder":
        encoder, extra = extra[1], extra[2:]
    assert audit(setup, out, *extra, encoder=encoder) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_too_few_members_are_refused(setup, tmp_path, capsys):
    few = tmp_path / "few"
    few.mkdir()
    for name in sorted(os.listdir(setup["members"]))[:3]:
        shutil.copy(os.path.join(setup["members"], name), few / name)
    assert audit(setup, tmp_path / "out", members=str(few)) == 2
    assert "at least 4 members" in capsys.readouterr().err


def test_weights_that_do_not_fit_name_the_keys(setup, tmp_path, capsys):
    from safetensors.torch import save_file

    weights = tmp_path / "w.safetensors"
    save_file({"conv1.weight": torch.zeros(64, 3, 7, 7), "nothing.here": torch.zeros(2)}, str(weights))
    assert audit(setup, tmp_path / "out", "--weights", str(weights), encoder="torchvision:resnet18") == 2
    err = capsys.readouterr().err
    assert "do not fit the architecture" in err and "missing" in err and "nothing.here" in err


def test_a_recipe_for_another_architecture_is_refused(setup, tmp_path, capsys):
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"backbone": "resnet18", "epochs": 1}))
    assert audit(setup, tmp_path / "out", "--train-references", "2", "--recipe", str(recipe)) == 2
    assert "is for architecture 'resnet18'" in capsys.readouterr().err


def test_timm_model_with_random_weights_from_safetensors(setup, tmp_path):
    """The flow on an external model: timm resnet18, random weights saved to safetensors, two
    references of its architecture trained here."""
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    model = timm.create_model("resnet18", pretrained=False)
    weights = tmp_path / "r18.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    out = tmp_path / "out"
    assert audit(setup, out, "--weights", str(weights), "--image-size", "16", "--train-references", "2",
                 "--epochs", "1", "--batch-size", "16", "--workers", "1", encoder="timm:resnet18") == 0
    results = json.loads((out / "results.json").read_text())
    pre = results["config"]["audit"]["preprocessing"]
    assert pre["image_size"] == 16 and pre["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert {r["attack"] for r in results["records"] if r["study"] == "references" and r["metrics"]} == {"lira", "rmia"}
    # The references are timm resnet18s, saved as encoder folders.
    config = json.loads((out / "references" / "r0" / "config.json").read_text())["config"]
    assert config["backbone"] == "timm:resnet18"


def test_external_weights_in_lightning_nesting_load_into_a_torchvision_model(tmp_path):
    """load_model_weights reads a Lightning-style checkpoint of backbone.* keys (no classifier)."""
    import torchvision

    from lpla_fast.audit.encoder_spec import load_target

    model = torchvision.models.resnet18()
    ckpt = {"state_dict": {f"backbone.{k}": v for k, v in model.state_dict().items() if not k.startswith("fc.")}}
    torch.save(ckpt, tmp_path / "w.ckpt")
    target = load_target("torchvision:resnet18", str(tmp_path / "w.ckpt"), image_size=32)
    x = torch.rand(2, 3, 32, 32)
    expected = torch.nn.Sequential(*list(model.children())[:-1]).eval()(
        (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
    assert torch.allclose(target.encoder.embed(x), expected.flatten(1), atol=1e-5)
    assert target.preprocessing.image_size == 32 and target.encoder.embed_dim() == 512


def tiny_factory_encoder():
    """A model a user's own package would return: `python:test_audit:tiny_factory_encoder`."""
    torch.manual_seed(3)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1))


def test_a_python_factory_spec_builds_the_users_model_with_the_given_preprocessing():
    """python:package.module:factory calls the factory (no weights, no download); the preprocessing
    comes from the command line, since a factory declares none; a missing factory is one line."""
    from lpla_fast.audit.encoder_spec import load_target

    target = load_target("python:test_audit:tiny_factory_encoder", image_size=8, mean=[0.5] * 3, std=[0.25] * 3)
    x = torch.rand(2, 3, 8, 8)
    expected = tiny_factory_encoder().eval()((x - 0.5) / 0.25).flatten(1)
    assert torch.allclose(target.encoder.embed(x), expected, atol=1e-6)
    assert target.preprocessing.image_size == 8 and list(target.preprocessing.mean) == [0.5] * 3
    with pytest.raises(ValueError, match="no callable 'missing'"):
        load_target("python:test_audit:missing", image_size=8)


def readme_audit_commands():
    """The commands of the README's `lpla audit` worked example (its first code block there)."""
    import re
    import shlex

    text = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    section = text[text.index("## Audit your own encoder"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1).replace("\\\n", " ")
    commands = [shlex.split(line.split("#")[0]) for line in block.splitlines() if line.startswith("lpla ")]
    return [c[1:] for c in commands if "timm:resnet18" not in c]  # the last one needs the user's weights


@pytest.mark.slow  # trains a 200-member encoder and two references: about a minute on 2 busy cores
def test_the_readme_example_runs(tmp_path):
    """The README's worked example, made small: 2 epochs of training, 2 references of 1 epoch, K = 2."""
    fast = {"train": ["--epochs", "2", "--width", "8", "--no-progress"], "export-images": ["--no-progress"],
            "audit": FAST}
    commands = readme_audit_commands()
    assert [c[0] for c in commands] == ["train", "export-images", "audit", "audit"]
    for command in commands:
        command = [str(tmp_path / a) if a.startswith("runs/") else a for a in command]
        if "--train-references" in command:
            i = command.index("--train-references")
            command[i + 1:i + 2] = ["2", "--epochs", "1"]
        assert main(command + fast[command[0]]) == 0, command
    lira = pd.read_parquet(tmp_path / "runs" / "audit-lira" / "scores.parquet")
    assert {"lira", "rmia"} <= set(lira["attack"]) and lira["path"].notna().all()
    assert (tmp_path / "runs" / "audit-lira" / "plots" / "exposed.png").is_file()


@pytest.mark.slow  # trains references in a subprocess, kills it, trains again
def test_an_audit_killed_during_reference_training_resumes(setup, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "out"
    args = ["audit", "--encoder", setup["encoder"], "--members", setup["members"], "--nonmembers",
            setup["nonmembers"], "--out", str(out), "--train-references", "2", "--epochs", "6", "--workers", "1", *FAST]
    proc = subprocess.Popen([sys.executable, "-m", "lpla_fast", *args], env=dict(os.environ, PYTHONPATH=os.getcwd()),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = out / "references" / "r0" / "config.json"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if state.is_file() and 1 <= json.loads(state.read_text())["epochs_done"] < 6:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the audit finished before it could be interrupted"
    proc.send_signal(signal.SIGKILL)  # kill -9 of the process this test started
    proc.wait()
    interrupted_at = json.loads(state.read_text())["epochs_done"]
    assert interrupted_at < 6
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["audit"]["references"]["reused"] == [False, False]
    assert len(json.loads(state.read_text())["history"]) == 6


def test_exported_png_folders_give_lpla_attacks_answer(tmp_path):
    """The same encoder, members and non-members: `lpla audit` on the PNG folders of `lpla
    export-images` and `lpla attack --splits` on the dataset agree on every global attack's AUC
    (the folders hold the splits in their own order, so both draw the same halves and views; only
    the PNGs' 8-bit rounding differs)."""
    assert main(["train", "--dataset", "digits", "--epochs", "20", "--width", "8", "--out", str(tmp_path / "t"),
                 "--no-progress"]) == 0
    assert main(["export-images", "--splits", str(tmp_path / "t" / "splits.json"), "--out", str(tmp_path / "img"),
                 "--no-progress"]) == 0
    common = ["--seed", "0", "--bootstrap", "20", "--no-progress"]
    assert main(["audit", "--encoder", str(tmp_path / "t"), "--members", str(tmp_path / "img" / "members"),
                 "--nonmembers", str(tmp_path / "img" / "nonmembers"), "--population",
                 str(tmp_path / "img" / "reference"), "--K", "4", "--out", str(tmp_path / "audit"), *common]) == 0
    assert main(["attack", "--encoder", str(tmp_path / "t"), "--splits", str(tmp_path / "t" / "splits.json"),
                 "--level", "audit", "--k", "4", "--ks", "1", "2", "4", "--out", str(tmp_path / "attack"), *common]) == 0

    def aucs(run):
        records = json.loads((tmp_path / run / "results.json").read_text())["records"]
        return {r["attack"]: r["metrics"]["auc"] for r in records if r["study"] == "main" and not r.get("skipped")}

    audited, attacked = aucs("audit"), aucs("attack")
    assert set(audited) == set(attacked) == {"lpla", "norm", "encodermi-t", "encodermi-v", "encodermi-s", "knn"}
    for name, auc in attacked.items():
        assert abs(audited[name] - auc) <= 0.03, (name, audited[name], auc)
