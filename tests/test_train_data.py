"""Training CLI without models: the dataset check, cache keys, losses, gradient flow
through comfy.ops.manual_cast and the output-folder guard."""
import json

import pytest
import torch

from sonic_diffusion.train import cli, losses
from sonic_diffusion.train.cache import FeatureCache
from sonic_diffusion.train.checkpoint import OutputExistsError, prepare_output
from sonic_diffusion.train.dataset import check_folder
from sonic_diffusion.train.synthetic import make_pairs, write_png, write_wav


def _messy_folder(root):
    import numpy as np

    make_pairs(root, n=4)                        # p0..p3; p1 has no caption
    write_wav(root / "lonely.wav", np.zeros(800))  # audio without image
    rng = np.random.default_rng(1)
    write_png(root / "mute.png", rng)              # image without audio
    (root / "broken.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk")  # corrupt audio
    write_png(root / "broken.png", rng)
    (root / "sub").mkdir()
    write_wav(root / "sub" / "deep.wav", np.zeros(800))
    write_png(root / "sub" / "deep.jpg", rng)
    (root / ".sonic_cache").mkdir()                # hidden: ignored
    write_wav(root / ".sonic_cache" / "x.wav", np.zeros(800))
    return root


def test_check_reports_missing_corrupt_and_captionless(tmp_path, capsys):
    root = _messy_folder(tmp_path / "data")
    rep = check_folder(root).as_dict()
    assert rep["pairs"] == 6                       # p0..p3, broken, sub/deep
    assert rep["usable_pairs"] == 5
    assert rep["missing_image"] == ["lonely"]
    assert rep["missing_audio"] == ["mute"]
    assert [u["stem"] for u in rep["unreadable"]] == ["broken"]
    assert rep["unreadable"][0]["file"] == "broken.wav"
    assert rep["without_caption"] == ["p1", "sub/deep"]
    assert rep["classes"] == {"noise": 2, "tone": 2}
    assert rep["unlabeled"] == ["broken", "sub/deep"]

    assert cli.main(["check", "--data", str(root), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["missing_image"] == ["lonely"] and len(out["unreadable"]) == 1
    assert cli.main(["check", "--data", str(root)]) == 0
    text = capsys.readouterr().out
    assert "missing image: 1 (lonely)" in text and "broken.wav" in text and "without (p1" in text


def test_check_empty_folder_fails(tmp_path, capsys):
    (tmp_path / "d").mkdir()
    assert cli.main(["check", "--data", str(tmp_path / "d")]) == 1


def test_cache_key_follows_content_and_settings(tmp_path):
    cache = FeatureCache(tmp_path / "c")
    f = tmp_path / "a.bin"
    f.write_bytes(b"one")
    h1 = cache.file_hash(f)
    k1 = cache.key("clap", audio=h1, window="center")
    assert cache.key("clap", audio=cache.file_hash(f), window="center") == k1
    assert cache.key("clap", audio=h1, window="start") != k1
    f.write_bytes(b"two!")  # new size: the remembered hash is not reused
    assert cache.file_hash(f) != h1
    cache.save("clap", k1, {"embedding": torch.ones(3)})
    assert torch.equal(cache.load("clap", k1)["embedding"], torch.ones(3))
    cache._path("clap", k1).write_bytes(b"damaged")
    assert cache.load("clap", k1) is None  # recomputed, never trusted


def test_losses():
    w = losses.reverse_sigmoid_weights()
    assert w.shape == (77,) and torch.all(w[1:] < w[:-1]) and abs(float(w.mean()) - 1) < 1e-5
    a = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    negs = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    mask = torch.ones(3, 5, dtype=torch.bool)
    good = losses.info_nce(a, a, negs, mask, 0.1)
    bad = losses.info_nce(a, -a, negs, mask, 0.1)
    assert torch.all(good < bad)
    # A masked-out negative does not count.
    only_one = mask.clone()
    only_one[:, 1:] = False
    assert torch.all(losses.info_nce(a, a, negs, only_one, 0.1) <= good + 1e-6)


def test_gradients_flow_through_manual_cast_in_bf16():
    """Trained weights stay float32 while the UNet computes in bf16: comfy.ops.manual_cast
    casts them per call, and the gradient must come back to the float32 master weights."""
    from sonic_diffusion.adapter import GatedAudioAttention
    from sonic_diffusion.train.loop import differentiable_attention

    torch.manual_seed(0)
    block = GatedAudioAttention(320).float()
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.05)  # comfy.ops layers leave weights uninitialised
        block.gate_adapter.fill_(0.5)
        block.norm_adapter.weight.fill_(1.0)
    h = torch.randn(2, 16, 320, dtype=torch.bfloat16)
    tokens = torch.randn(2, 77, 768, dtype=torch.bfloat16, requires_grad=False)
    with differentiable_attention():
        out = block.residual(h, tokens)
        assert out.dtype == torch.bfloat16
        out.float().pow(2).mean().backward()
    for name, p in block.named_parameters():
        assert p.dtype == torch.float32
        assert p.grad is not None and p.grad.dtype == torch.float32, name
        assert bool(p.grad.isfinite().all()) and float(p.grad.abs().sum()) > 0, name
    # The same gradients as a float32 computation, to bf16 accuracy.
    ref = {n: p.grad.clone() for n, p in block.named_parameters()}
    block.zero_grad()
    with differentiable_attention():
        block.residual(h.float(), tokens.float()).pow(2).mean().backward()
    for name, p in block.named_parameters():
        torch.testing.assert_close(ref[name], p.grad, rtol=0.1, atol=0.1 * float(p.grad.abs().max()))


def test_output_guard(tmp_path):
    out = tmp_path / "out"
    prepare_output(out, "projector.safetensors", resume=False, overwrite=False)
    (out / "projector.safetensors").write_bytes(b"earlier result")
    with pytest.raises(OutputExistsError):
        prepare_output(out, "projector.safetensors", resume=False, overwrite=False)
    assert (out / "projector.safetensors").read_bytes() == b"earlier result"
    prepare_output(out, "projector.safetensors", resume=False, overwrite=True)
    assert not (out / "projector.safetensors").exists()


def test_check_errors_are_printed_once_and_name_a_file(tmp_path, capsys):
    assert cli.main(["check", "--data", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data folder not found" in err[0], err
    f = tmp_path / "pairs.zip"
    f.write_bytes(b"PK")
    assert cli.main(["check", "--data", str(f)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a file" in err[0], err


@pytest.mark.parametrize(("header", "row"), [
    ("stem,class", "{s},{c}"), ("Stem,Class", "{s},{c}"), ("CLASS,STEM", "{c},{s}"),
    ("file,split,label", "{s}.wav,train,{c}"), ("", "{s},{c}")])
def test_labels_header_is_read_by_column_names(tmp_path, header, row):
    from sonic_diffusion.evaluate.data import read_labels as eval_labels
    from sonic_diffusion.train.dataset import read_labels

    rows = [header] if header else []
    rows += [row.format(s=s, c=c) for s, c in (("a", "rain"), ("b", "thunder"))]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    labels, problems = read_labels(tmp_path / "labels.csv")
    assert labels == {"a": "rain", "b": "thunder"} and problems == []
    assert eval_labels(tmp_path / "labels.csv") == labels  # the evaluation tool reads the same way
