"""The evaluation CLI end to end on random-weight models in their real formats:
tiny transformers CLIPs, a Wav2CLIP.pt-format state dict, torch-fidelity's FID Inception."""
import json
import shutil

import eval_stand_ins as testing
import numpy as np
import pytest
import torch
from PIL import Image

from sonic_diffusion.evaluate.cli import main
from sonic_diffusion.evaluate.wav2clip import Wav2ClipWeightsError, load_wav2clip
from sonic_diffusion.safe_load import load_weights_file
from testing.fixtures import write_audio

CLASSES = ("rain", "thunder", "wind")
N = 6


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return testing.model_folder(tmp_path_factory.mktemp("eval-models"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-data")
    rng = np.random.default_rng(0)
    for d in ("audio", "ref"):
        (root / d).mkdir()
    rows = ["stem,class"]
    t = np.arange(8000) / 16000  # 0.5 s
    for i in range(N):
        stem = f"clip{i:02d}"
        wave = 0.3 * np.sin(2 * np.pi * (150 + 120 * i) * t) + 0.05 * rng.standard_normal(t.shape)
        write_audio(root / "audio" / f"{stem}.wav", wave.astype(np.float32)[None], 16000, "wav16")
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / "ref" / f"{stem}.png")
        rows.append(f"{stem},{CLASSES[i % 3]}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def _args(dataset, models, gen, out, *extra):
    return ["--generated", str(gen), "--audio", str(dataset / "audio"), "--reference", str(dataset / "ref"),
            "--labels", str(dataset / "labels.csv"), "--models-dir", str(models["clip_b32"].parent),
            "--cache-dir", str(dataset / "cache"), "--out", str(out), "--no-progress", *extra]


def test_cli_writes_table_and_json_and_reuses_the_cache(dataset, models, tmp_path, capsys):
    gen = tmp_path / "gen"
    shutil.copytree(dataset / "ref", gen)  # generated == ground truth
    out = tmp_path / "res.json"
    assert main(_args(dataset, models, gen, out, "--distractors", "3", "--seed", "7")) == 0
    table = capsys.readouterr().out
    for name in ("AIS", "IIS", "AIC", "FID"):
        assert f"\n{name} " in table
    res = json.loads(out.read_text())
    assert res["n_items"] == N and res["n_distractors"] == 3 and res["n_dataset"] == N
    # Each image is its own ground truth: it beats every distractor, and FID against itself is 0.
    assert res["metrics"]["IIS"] == 1.0
    assert abs(res["metrics"]["FID"]) < 1e-3
    # AIS recomputed here from the models' own outputs (transformers CLIP, the Wav2CLIP
    # module, numpy scoring): the tool's per-item values and mean are exactly these.
    ref_ais = _reference_ais(dataset, models, gen, res["distractors"]["sets"])
    assert {s: v["ais"] for s, v in res["per_item"].items()} == ref_ais
    assert res["metrics"]["AIS"] == pytest.approx(np.mean(list(ref_ais.values())), abs=1e-12)
    assert 0.0 <= res["metrics"]["AIC"] <= 1.0
    assert res["metric_info"]["AIC"]["classes"] == list(CLASSES)
    assert res["metric_info"]["AIC"]["template"] == "a photo of {class}"
    sets = res["distractors"]["sets"]
    assert res["distractors"]["seed"] == 7 and sorted(sets) == [f"clip{i:02d}" for i in range(N)]
    assert all(len(v) == 3 and s not in v for s, v in sets.items())
    # The reported numbers are the means of the per-item values.
    items = res["per_item"].values()
    assert res["metrics"]["AIS"] == pytest.approx(np.mean([v["ais"] for v in items]))
    assert res["metrics"]["AIC"] == pytest.approx(np.mean([v["correct"] for v in items]))
    assert sum(res["cache"]["computed"].values()) > 0

    # Second run: nothing new to compute, same numbers, same distractors.
    assert main(_args(dataset, models, gen, out, "--distractors", "3", "--seed", "7")) == 0
    again = json.loads(out.read_text())
    assert sum(again["cache"]["computed"].values()) == 0
    assert again["metrics"] == res["metrics"] and again["distractors"]["sets"] == sets


def _reference_ais(dataset, models, gen, sets):
    from transformers import CLIPImageProcessor, CLIPModel

    from sonic_diffusion.audio_decode import decode_audio
    from sonic_diffusion.evaluate.wav2clip import prepare_wave

    clip = CLIPModel.from_pretrained(str(models["clip_b32"]), local_files_only=True).eval()
    proc = CLIPImageProcessor.from_pretrained(str(models["clip_b32"]), local_files_only=True)
    w2c = load_wav2clip(models["wav2clip"])
    unit = lambda x: (x / x.norm(dim=-1, keepdim=True))[0].double().numpy()
    with torch.no_grad():
        image = {s: unit(clip.get_image_features(**proc(images=[Image.open(gen / f"{s}.png").convert("RGB")],
                                                              return_tensors="pt"))) for s in sets}
        sound = {s: unit(w2c(prepare_wave(*decode_audio(dataset / "audio" / f"{s}.wav"), 10.0)[None]))
                 for s in sets}
    return {s: float(np.mean([image[s] @ sound[d] < image[s] @ sound[s] for d in ds])) for s, ds in sets.items()}


def test_bad_model_files_get_one_line(dataset, models, tmp_path, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x80\x02 not a pickle at all")
    cases = [("--wav2clip", "ais", junk, "could not be read"), ("--wav2clip", "ais", models["inception"], "Wav2CLIP"),
             ("--inception", "fid", junk, "could not be read"),
             ("--inception", "fid", models["wav2clip"], "not torch-fidelity's FID Inception weights")]
    for option, metric, path, reason in cases:
        args = _args(dataset, models, dataset / "ref", tmp_path / "r.json", "--metrics", metric, option, str(path),
                     "--no-cache")
        assert main(args) == 2, (option, path)
        err = capsys.readouterr().err
        last = err.strip().splitlines()[-1]
        assert "Traceback" not in err and last.startswith(f"error: {option} {path}") and reason in last, err


def test_a_grown_folder_only_computes_the_new_files(dataset, models, tmp_path, capsys):
    gen = tmp_path / "gen"
    gen.mkdir()
    rng = np.random.default_rng(1)

    def add(i):  # a noisy copy of the reference: new content, new cache entries
        ref = np.asarray(Image.open(dataset / "ref" / f"clip{i:02d}.png"), dtype=np.int16)
        noisy = np.clip(ref + rng.integers(-20, 21, ref.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(gen / f"clip{i:02d}.png")

    for i in range(4):
        add(i)
    out = tmp_path / "res.json"
    assert main(_args(dataset, models, gen, out, "--distractors", "0")) == 0
    first = json.loads(out.read_text())
    assert first["n_items"] == 4 and first["n_distractors"] == N - 1
    for i in (4, 5):
        add(i)
    assert main(_args(dataset, models, gen, out, "--distractors-from", str(tmp_path / "res.json"))) == 0
    res = json.loads(out.read_text())
    comp = res["cache"]["computed"]
    assert res["n_items"] == N
    assert comp["CLIP ViT-B/32 images"] == 2 and comp["CLIP ViT-L/14 images"] == 2
    assert comp["Inception generated"] == 2
    assert comp["Wav2CLIP audio"] == 0 and comp["CLIP ViT-L/14 references"] == 0
    assert comp["Inception references"] == 0 and comp["CLIP ViT-L/14 prompts"] == 0
    assert res["distractors"]["reused_from_file"] == 4
    for s in first["per_item"]:  # old items keep their scores
        assert res["per_item"][s] == first["per_item"][s]
    # The table's FID grows when the generated set is pushed away from the references.
    assert res["metrics"]["FID"] > 1e-3
    capsys.readouterr()


def test_missing_models_are_named_with_their_source(dataset, tmp_path, capsys):
    args = ["--generated", str(dataset / "ref"), "--audio", str(dataset / "audio"), "--reference",
            str(dataset / "ref"), "--labels", str(dataset / "labels.csv"), "--models-dir", str(tmp_path)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Wav2CLIP.pt" in err and "lyrebird-wav2clip" in err
    assert "openai/clip-vit-base-patch32" in err and "openai/clip-vit-large-patch14" in err
    assert "weights-inception-2015-12-05-6726825d.pth" in err and "--inception" in err


def test_wav2clip_matches_the_published_package(tmp_path):
    w2c = pytest.importorskip("wav2clip.model.encoder")
    path = testing.random_wav2clip(tmp_path / "Wav2CLIP.pt", seed=3)
    theirs = w2c.ResNetExtractor(checkpoint=load_weights_file(path)[0], scenario="frozen", transform=True)
    ours = load_wav2clip(path)
    g = torch.Generator().manual_seed(0)
    for n in (700, 16000):
        x = torch.randn(1, n, generator=g)
        with torch.no_grad():
            torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
    sd = load_weights_file(path)[0]
    del sd["audio_encoder.layer3.0.conv1.weight"]
    torch.save(sd, tmp_path / "broken.pt")
    with pytest.raises(Wav2ClipWeightsError, match=r"layer3\.0\.conv1\.weight"):
        load_wav2clip(tmp_path / "broken.pt")


def test_generate_renders_through_the_pack_graph_then_evaluates(host, fixture_dir, dataset, models, tmp_path,
                                                                capsys):
    names = ["tone440_mono_44k_3s.wav", "noise_stereo_48k_10s_f32.wav"]
    data = tmp_path / "data"
    (data / "audio").mkdir(parents=True)
    (data / "ref").mkdir()
    rng = np.random.default_rng(2)
    for n in names:
        shutil.copy(fixture_dir.audio(n), data / "audio" / n)
        stem = n.rsplit(".", 1)[0]
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(data / "ref" / f"{stem}.png")
    (data / "labels.csv").write_text("".join(f"{n.rsplit('.', 1)[0]},{c}\n" for n, c in zip(names, CLASSES)))
    gen = tmp_path / "gen"
    args = ["--generated", str(gen), "--audio", str(data / "audio"), "--reference", str(data / "ref"),
            "--labels", str(data / "labels.csv"), "--models-dir", str(models["clip_b32"].parent),
            "--cache-dir", str(tmp_path / "cache"), "--no-progress", "--audio-seconds", "1", "--generate",
            "--checkpoint", str(fixture_dir.full_checkpoint()),
            "--adapter", str(fixture_dir.gates()), "--projector", str(fixture_dir.projector()),
            "--clap", str(fixture_dir.clap()), "--steps", "1", "--width", "64", "--height", "64"]
    assert main(args) == 0
    res = json.loads((gen / "evaluation.json").read_text())
    assert res["generation"]["rendered"] == 2 and res["n_items"] == 2
    record = json.loads((gen / "generation.json").read_text())
    seeds = {s: v["seed"] for s, v in record["images"].items()}
    for n in names:
        img = Image.open(gen / f"{n.rsplit('.', 1)[0]}.png")
        assert img.size == (64, 64)
    # Each image is exactly what the pack's graph renders for its audio and recorded seed.
    from sonic_diffusion.graphs import audio_to_image

    files = [host.link_model(k, p) for k, p in (("checkpoints", fixture_dir.full_checkpoint()),
                                                ("audio_encoders", fixture_dir.clap()),
                                                ("sonic_diffusion", fixture_dir.gates()),
                                                ("sonic_diffusion", fixture_dir.projector()))]
    for n in names:
        stem = n.rsplit(".", 1)[0]
        run = host.run(audio_to_image(*files, host.put_input(data / "audio" / n, name=f"gen-{n}"), seed=seeds[stem],
                                      steps=1, cfg=7.5))
        direct = (run.outputs("dec")[0][0].float().clamp(0, 1).numpy() * 255.0).round().astype(np.uint8)
        assert np.array_equal(np.asarray(Image.open(gen / f"{stem}.png")), direct), stem
    assert set(res["metrics"]) == {"AIS", "IIS", "AIC", "FID"}
    # Same settings again: the images are kept, nothing is rendered or embedded anew.
    assert main(args) == 0
    res = json.loads((gen / "evaluation.json").read_text())
    assert res["generation"] == dict(res["generation"], rendered=0, kept=2)
    assert sum(res["cache"]["computed"].values()) == 0
    assert {s: v["seed"] for s, v in json.loads((gen / "generation.json").read_text())["images"].items()} == seeds
    # Other settings on the same folder are refused without --overwrite.
    assert main([*args[:-1], "32"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_generate_removes_the_host_folder_it_made(fixture_dir, dataset, tmp_path, monkeypatch):
    """A run that boots its own host (the CLI) removes that host's base folder afterwards.
    The test host is already booted, so the boot is observed, not repeated."""
    from sonic_diffusion import host as host_module
    from sonic_diffusion.evaluate import generate as gen_module

    bases = []
    monkeypatch.setattr(gen_module, "_booted", lambda: False)
    monkeypatch.setattr(host_module, "boot_in_process", lambda base, **k: bases.append(base))
    out = gen_module.generate([dataset / "audio" / "clip00.wav"], tmp_path / "gen",
                              fixture_dir.full_checkpoint(), fixture_dir.gates(),
                              fixture_dir.clap(), projector=fixture_dir.projector(), steps=1, width=64, height=64,
                              progress=False)
    assert out == {"rendered": 1, "kept": 0}
    assert len(bases) == 1 and bases[0].name.startswith("sonic-eval-comfy-") and not bases[0].exists()
