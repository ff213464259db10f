"""Tests for bagrepro.models.weights: download, cache, hash checks and strict loading (all offline)."""

import functools
import hashlib
import http.server
import pathlib
import socket
import threading

import pytest
import torch
from torch import nn

from bagrepro.core.errors import WeightsError
from bagrepro.models import weights as W


class NotATensor:
    """An arbitrary class that torch.load(weights_only=True) must refuse."""


def small_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4))


def trained_state() -> dict:
    torch.manual_seed(0)
    m = small_model()
    with torch.no_grad():
        m[1].running_mean.uniform_()
        m[1].running_var.uniform_(1, 2)
        m[1].num_batches_tracked.fill_(7)
    return m.state_dict()


def sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_hashed(obj, folder: pathlib.Path, stem: str = "tiny", ext: str = ".pth.tar") -> pathlib.Path:
    """Save ``obj`` as ``<stem>-<sha256[:8]>.<ext>`` in ``folder`` (the release naming convention)."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "tmp.bin"
    torch.save(obj, tmp)
    path = folder / f"{stem}-{sha256(tmp)[:8]}{ext}"
    tmp.rename(path)
    return path


def one_line_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert msg and "\n" not in msg and "\r" not in msg, msg
    return msg


@pytest.fixture(autouse=True)
def torch_home(tmp_path, monkeypatch):
    """Point torch hub's cache into tmp_path so the real cache is never touched."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)  # the loopback test server must be reached directly
    return home


@pytest.fixture
def release(tmp_path):
    """A released checkpoint served from a file:// URL: (source path, spec, saved state_dict)."""
    sd = trained_state()
    src = save_hashed(sd, tmp_path / "server")
    return src, W.WeightsSpec(src.as_uri()), sd


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture
def http_root(tmp_path):
    """Serve a fresh folder over HTTP on 127.0.0.1; yield (folder, base URL)."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


# --- names and paths -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, prefix",
    [
        ("bagnet32-2ddd53ed.pth.tar", "2ddd53ed"),
        ("resnet50-0676ba61.pth", "0676ba61"),
        ("deeplabv3_resnet50_coco-cd0a2569.pth", "cd0a2569"),
        ("model.pth", None),
        ("model-v2.pth", None),
        ("net-1234.pth", None),  # fewer than 8 hex digits: not a hash
        ("a-2ddd53ed.b-c.pth", None),  # hex run not right after the last '-'
    ],
)
def test_hash_prefix_from_filename(name, prefix):
    assert W.hash_prefix_from_filename(name) == prefix


def test_spec_filename_and_cache_path(torch_home):
    url = (
        "https://bitbucket.org/wielandbrendel/bag-of-feature-pretrained-models/raw/"
        "249e8fa82c0913623a807d9d35eeab9da7dcc2a8/bagnet32-2ddd53ed.pth.tar"
    )
    spec = W.WeightsSpec(url)
    assert spec.filename == "bagnet32-2ddd53ed.pth.tar"
    assert spec.expected_prefix == "2ddd53ed"
    assert W.WeightsSpec(url, sha256_prefix="abcdef").expected_prefix == "abcdef"
    assert W.cache_path(spec) == torch_home / "hub" / "checkpoints" / "bagnet32-2ddd53ed.pth.tar"


def test_spec_rejects_bad_input():
    with pytest.raises(WeightsError) as e:
        W.WeightsSpec("https://example.org/weights/")
    one_line_error(e)
    with pytest.raises(WeightsError) as e:
        W.WeightsSpec("https://example.org/w.pth", sha256_prefix="not-hex")
    one_line_error(e)


# --- download and cache ----------------------------------------------------------------------


def test_download_once_then_cache(release):
    src, spec, sd = release
    model = small_model()
    used = W.load_pretrained(model, spec, progress=False)
    assert used == W.cache_path(spec) and used.is_file()
    assert sha256(used) == sha256(src)
    for k, v in sd.items():
        assert torch.equal(model.state_dict()[k], v), k
    src.unlink()  # a second load must not need the source
    again = W.load_state_dict(spec, progress=False)
    assert again.keys() == sd.keys()
    assert all(torch.equal(again[k], sd[k]) for k in sd)
    assert [p.name for p in used.parent.iterdir()] == [spec.filename]
    assert socket.getdefaulttimeout() is None  # the download timeout is restored


def test_download_wrong_hash_caches_nothing(release):
    src, _, _ = release
    bad = src.with_name("tiny-00000000.pth.tar")
    src.rename(bad)
    spec = W.WeightsSpec(bad.as_uri())
    with pytest.raises(WeightsError) as e:
        W.resolve_weights_file(spec, progress=False)
    msg = one_line_error(e)
    assert bad.as_uri() in msg and "00000000" in msg and "nothing is cached" in msg
    cache_dir = W.cache_path(spec).parent
    assert not cache_dir.exists() or list(cache_dir.iterdir()) == []


@pytest.mark.parametrize("kind", ["missing_file", "closed_port"])
def test_download_unreachable(tmp_path, kind):
    if kind == "missing_file":
        url = (tmp_path / "nowhere" / "x-12345678.pth").as_uri()
    else:
        url = f"http://127.0.0.1:{closed_port()}/x-12345678.pth"
    spec = W.WeightsSpec(url)
    with pytest.raises(WeightsError) as e:
        W.load_state_dict(spec, progress=False)
    msg = one_line_error(e)
    assert url in msg and str(W.cache_path(spec)) in msg and "--weights-dir" in msg
    assert "x-12345678.pth" in msg
    assert not W.cache_path(spec).exists()


def test_http_download_and_404(http_root):
    root, base = http_root
    sd = trained_state()
    src = save_hashed(sd, root)
    loaded = W.load_state_dict(W.WeightsSpec(f"{base}/{src.name}"), progress=False)
    assert all(torch.equal(loaded[k], sd[k]) for k in sd)
    spec = W.WeightsSpec(f"{base}/gone-12345678.pth")
    with pytest.raises(WeightsError) as e:
        W.load_state_dict(spec, progress=False)
    msg = one_line_error(e)
    assert "HTTP Error 404" in msg and spec.url in msg and "--weights-dir" in msg
    assert not W.cache_path(spec).exists()


def test_corrupt_cache_file(release):
    _, spec, _ = release
    cached = W.cache_path(spec)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"truncated")
    with pytest.raises(WeightsError) as e:
        W.load_state_dict(spec, progress=False)
    msg = one_line_error(e)
    assert str(cached) in msg and "delete" in msg


def test_name_without_hash_is_not_verified(tmp_path):
    sd = trained_state()
    src = tmp_path / "server" / "plain.pth"
    src.parent.mkdir()
    torch.save(sd, src)
    spec = W.WeightsSpec(src.as_uri())
    assert spec.expected_prefix is None
    assert W.load_state_dict(spec, progress=False).keys() == sd.keys()


# --- weights_dir ------------------------------------------------------------------------------


def test_weights_dir_with_file(release, torch_home):
    src, spec, sd = release
    model = small_model()
    assert W.load_pretrained(model, spec, weights_dir=src.parent) == src
    assert torch.equal(model[0].weight, sd["0.weight"])
    assert not torch_home.exists()  # no download, no cache


def test_weights_dir_without_file(tmp_path, release, torch_home):
    _, spec, _ = release
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WeightsError) as e:
        W.resolve_weights_file(spec, weights_dir=empty)
    assert str(empty / spec.filename) in one_line_error(e)
    assert not torch_home.exists()


def test_weights_dir_renamed_file_fails_hash(tmp_path, release):
    src, _, _ = release
    spec = W.WeightsSpec("https://example.org/tiny-abcdef12.pth.tar")
    folder = tmp_path / "mine"
    folder.mkdir()
    src.rename(folder / spec.filename)
    with pytest.raises(WeightsError) as e:
        W.resolve_weights_file(spec, weights_dir=folder)
    msg = one_line_error(e)
    assert str(folder / spec.filename) in msg and "abcdef12" in msg


# --- reading checkpoints ---------------------------------------------------------------------


def test_arbitrary_object_refused(tmp_path):
    path = save_hashed({"w": torch.zeros(1), "obj": NotATensor()}, tmp_path / "d")
    with pytest.raises(WeightsError) as e:
        W.load_state_dict(W.WeightsSpec(path.as_uri()), weights_dir=path.parent)
    msg = one_line_error(e)
    assert "weights_only" in msg and str(path) in msg and "NotATensor" in msg


@pytest.mark.parametrize("content", [b"this is not a checkpoint" * 20, b""])
def test_garbage_file(tmp_path, content):
    path = tmp_path / "garbage.pth"
    path.write_bytes(content)
    with pytest.raises(WeightsError) as e:
        W.load_state_dict(W.WeightsSpec(path.as_uri()), weights_dir=tmp_path)
    assert str(path) in one_line_error(e)


@pytest.mark.parametrize(
    "obj", [torch.zeros(3), [torch.zeros(1)], {"a": torch.zeros(1), "n": 3}, {}], ids=str
)
def test_not_a_dict_of_tensors(tmp_path, obj):
    path = tmp_path / "odd.pth"
    torch.save(obj, path)
    with pytest.raises(WeightsError) as e:
        W.load_state_dict(W.WeightsSpec(path.as_uri()), weights_dir=tmp_path)
    assert str(path) in one_line_error(e)


def test_wrapped_and_module_prefixed(tmp_path):
    sd = trained_state()
    wrapped = {"epoch": torch.tensor(3), "state_dict": {f"module.{k}": v for k, v in sd.items()}}
    path = save_hashed(wrapped, tmp_path / "d")
    loaded = W.load_state_dict(W.WeightsSpec(path.as_uri()), weights_dir=path.parent)
    assert loaded.keys() == sd.keys()
    assert all(torch.equal(loaded[k], sd[k]) for k in sd)


def test_partial_module_prefix_kept():
    sd = {"module.a": torch.zeros(1), "b": torch.zeros(1)}
    assert W._normalise(sd, "x").keys() == sd.keys()


# --- strict loading --------------------------------------------------------------------------


def test_load_into_reports_keys_and_shapes():
    sd = trained_state()
    del sd["1.weight"], sd["1.bias"]
    sd["2.extra"] = torch.zeros(1)
    sd["0.weight"] = torch.zeros(10, 5)
    with pytest.raises(WeightsError) as e:
        W.load_into(small_model(), sd, "ckpt.pth")
    msg = one_line_error(e)
    assert msg.startswith("ckpt.pth does not match Sequential: ")
    assert "2 missing keys (1.weight, 1.bias)" in msg
    assert "1 unexpected key (2.extra)" in msg
    assert "1 shape mismatch (0.weight: checkpoint [10, 5] vs model [4, 3, 3, 3])" in msg


def test_load_into_lists_at_most_five():
    sd = {f"k{i}": torch.zeros(1) for i in range(8)}
    with pytest.raises(WeightsError) as e:
        W.load_into(nn.Linear(1, 1), sd, "src")
    msg = one_line_error(e)
    assert "8 unexpected keys (k0, k1, k2, k3, k4, ...)" in msg and "k5" not in msg


def test_load_into_tolerates_missing_num_batches_tracked():
    sd = trained_state()
    del sd["1.num_batches_tracked"]
    model = small_model()
    W.load_into(model, sd, "old.pth")
    assert torch.equal(model[1].running_mean, sd["1.running_mean"])
    assert model[1].num_batches_tracked.item() == 0
