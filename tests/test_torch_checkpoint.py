"""Tests of the torch-free checkpoint reader against torch.save / torch.load and torch.jit.save /
torch.jit.load themselves."""

import collections
import copyreg
import io
import os
import pickle
import pickletools
import subprocess
import sys
import types
import zipfile

import numpy as np
import pytest
import torch

from jaxmetrics.checkpoints import torch_checkpoint
from jaxmetrics._errors import CheckpointError

FORMATS = ("zip", "legacy")
_MAGIC = 0x1950A86A20F9469CFC6C
_SYS_INFO = {"protocol_version": 1001, "little_endian": True,
             "type_sizes": {"short": 2, "int": 4, "long": 4}}


def _save(obj, path, fmt):
  torch.save(obj, path, _use_new_zipfile_serialization=fmt == "zip")
  return path


def _expected(tensor):
  tensor = tensor.detach().resolve_conj().resolve_neg()
  # The reader upcasts bfloat16 to float32, which is exact.
  return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()


def _assert_same(arrays, tensors):
  assert list(arrays) == list(tensors)
  for name, tensor in tensors.items():
    expected = _expected(tensor)
    assert arrays[name].dtype == expected.dtype, name
    assert arrays[name].shape == expected.shape, name
    assert np.array_equal(arrays[name], expected), name


def _error(path, match=None):
  with pytest.raises(CheckpointError) as info:
    torch_checkpoint.load(path)
  message = str(info.value)
  assert "\n" not in message and str(path) in message, message
  if match is not None:
    # The path is pytest's tmp folder, named after the test: match on the rest only.
    assert match in message.replace(str(path), ""), message
  return message


def _tensors():
  torch.manual_seed(0)
  base = torch.randn(4, 6)
  shared = torch.arange(10, dtype=torch.int64)
  return {
      "f32_4d": torch.randn(2, 3, 4, 5),
      "f64": torch.randn(7, dtype=torch.float64),
      "f16": torch.randn(3, 4).half(),
      "bf16": torch.randn(5, 2).bfloat16(),
      "i64_0d": torch.tensor(0),
      "i32": torch.tensor([-(2**31), 2**31 - 1], dtype=torch.int32),
      "i8": torch.tensor([-128, 127], dtype=torch.int8),
      "u8": torch.arange(256, dtype=torch.uint8).reshape(16, 16),
      "bool": torch.tensor([True, False, True]),
      "c64": torch.randn(3, dtype=torch.complex64),
      "u16": torch.tensor([0, 1, 65535], dtype=torch.int32).to(torch.uint16),
      "scalar_f32": torch.tensor(3.5),
      "empty": torch.zeros(0, 3),
      "transposed": base.t(),
      "slice": base[1:3, 2:5],
      "strided": base[:, ::2],
      "shared_a": shared[:4],
      "shared_b": shared[3:].view(7, 1),
      "expanded": torch.tensor([1.0, 2.0]).expand(3, 2),
      "conj": torch.randn(2, dtype=torch.complex64).conj(),
      "neg": torch.randn(3)._neg_view(),
      "param": torch.nn.Parameter(torch.randn(2, 2)),
  }


@pytest.mark.parametrize("fmt", FORMATS)
def test_tensors_match_torch_bit_exactly(tmp_path, fmt):
  tensors = _tensors()
  arrays = torch_checkpoint.load(_save(tensors, tmp_path / "t.pth", fmt))
  _assert_same(arrays, tensors)
  # One storage in torch is one buffer here, as for torch.load.
  assert np.shares_memory(arrays["shared_a"], arrays["shared_b"])
  assert np.shares_memory(arrays["transposed"], arrays["slice"])


@pytest.mark.parametrize("fmt", FORMATS)
def test_nested_objects_and_dtype_values(tmp_path, fmt):
  weight = torch.randn(3)
  obj = {"epoch": 7, "names": ["a", "b"], "pair": (weight, weight[1:]), "dtype": torch.float16,
         "inner": collections.OrderedDict(w=weight), "none": None}
  loaded = torch_checkpoint.load(_save(obj, tmp_path / "o.pth", fmt))
  assert loaded["epoch"] == 7 and loaded["names"] == ["a", "b"] and loaded["none"] is None
  assert loaded["dtype"] == "torch.float16"
  assert isinstance(loaded["inner"], collections.OrderedDict)
  np.testing.assert_array_equal(loaded["pair"][1], weight[1:].numpy())
  np.testing.assert_array_equal(loaded["inner"]["w"], weight.numpy())


@pytest.mark.parametrize("fmt", FORMATS)
def test_module_state_dict_round_trip(tmp_path, fmt):
  torch.manual_seed(1)
  model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, bias=False), torch.nn.BatchNorm2d(8),
                              torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1))
  model.train()(torch.randn(2, 3, 9, 9))  # moves running stats and num_batches_tracked
  state = model.state_dict()
  arrays = torch_checkpoint.load_state_dict(_save(state, tmp_path / "m.pth", fmt))
  _assert_same(arrays, state)
  assert arrays["1.num_batches_tracked"].dtype == np.int64
  assert arrays["1.num_batches_tracked"].shape == ()


def test_big_endian_zip_matches_torch_load(tmp_path):
  tensors = {"f32": torch.randn(3, 2).t(), "i64": torch.arange(-3, 3), "f16": torch.randn(4).half(),
             "bf16": torch.randn(4).bfloat16(), "c64": torch.randn(2, dtype=torch.complex64)}
  _save(tensors, tmp_path / "le.pth", "zip")
  # Storage keys are numbered in pickling order; a big-endian machine writes swapped bytes.
  dtypes = {str(i): _expected(t).dtype for i, t in enumerate(tensors.values())}
  dtypes["3"] = np.dtype(np.uint16)
  with zipfile.ZipFile(tmp_path / "le.pth") as source, \
       zipfile.ZipFile(tmp_path / "be.pth", "w") as target:
    for name in source.namelist():
      data = source.read(name)
      if name.endswith("/byteorder"):
        data = b"big"
      elif "/data/" in name:
        data = np.frombuffer(data, dtypes[name.rsplit("/", 1)[1]]).byteswap().tobytes()
      target.writestr(name, data)
  _assert_same(torch_checkpoint.load(tmp_path / "be.pth"), torch.load(tmp_path / "be.pth"))
  _assert_same(torch_checkpoint.load(tmp_path / "be.pth"), tensors)


@pytest.mark.parametrize("key", torch_checkpoint.STATE_DICT_KEYS)
def test_state_dict_under_a_wrapper_key(tmp_path, key):
  state = {"w": torch.ones(2), "step": 3}
  path = _save({key: state, "epoch": 1, "optimizer": {"lr": 0.1}}, tmp_path / "w.pth", "zip")
  assert list(torch_checkpoint.load_state_dict(path)) == ["w"]


@pytest.mark.parametrize("obj", [{"epoch": 1}, [torch.ones(1)], {"model": {"a": 1}}])
def test_state_dict_without_tensors(tmp_path, obj):
  path = _save(obj, tmp_path / "n.pth", "zip")
  with pytest.raises(CheckpointError, match="no tensors found") as info:
    torch_checkpoint.load_state_dict(path)
  assert "\n" not in str(info.value)


def _legacy_offsets(path):
  """Byte offsets where the legacy file's object pickle, key pickle and storage data start."""
  with open(path, "rb") as f:
    for _ in range(3):
      pickle.load(f)  # the magic number, protocol and sys-info: plain ints and dicts
    start = f.tell()
    end = max(pos for _, _, pos in pickletools.genops(f)) + 1  # genops stops after STOP
    f.seek(end)
    keys = pickle.load(f)
    return start, end, f.tell(), keys


@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_files(tmp_path, fmt):
  path = _save({"a": torch.randn(64), "b": torch.randn(8, 8).half()}, tmp_path / "t.pth", fmt)
  data = path.read_bytes()
  if fmt == "legacy":
    start, end, data_start, keys = _legacy_offsets(path)
    assert len(keys) == 2
    cuts = [2, 12, start - 5, start + 30, end - 1, end + 3, data_start + 4, data_start + 40,
            len(data) - 1]
  else:
    cuts = [3, 100, len(data) // 2, len(data) - 30, len(data) - 1]
  for cut in cuts:
    (tmp_path / "cut.pth").write_bytes(data[:cut])
    _error(tmp_path / "cut.pth", "truncated")


@pytest.mark.parametrize("content", [
    b"\x89PNG\r\n\x1a\n" + bytes(64),
    b"hello, this is a text file\n",
    np.random.default_rng(0).bytes(4096),
    pickle.dumps({"a": 1}, protocol=0),
], ids=["png", "text", "random", "protocol0-pickle"])
def test_not_a_checkpoint(tmp_path, content):
  (tmp_path / "x.pth").write_bytes(content)
  _error(tmp_path / "x.pth", "not a PyTorch checkpoint")


def test_zip_that_is_not_a_checkpoint(tmp_path):
  with zipfile.ZipFile(tmp_path / "x.pth", "w") as archive:
    archive.writestr("readme.txt", "hi")
  _error(tmp_path / "x.pth", "data.pkl")


def test_empty_missing_and_directory(tmp_path):
  (tmp_path / "empty.pth").write_bytes(b"")
  _error(tmp_path / "empty.pth", "empty file")
  _error(tmp_path / "missing.pth", "no such file")
  _error(tmp_path, "cannot be opened")


def test_unknown_magic_and_protocol(tmp_path):
  (tmp_path / "m.pth").write_bytes(pickle.dumps(12345, protocol=2) + bytes(32))
  _error(tmp_path / "m.pth", "magic number 0x3039")
  header = pickle.dumps(_MAGIC, protocol=2) + pickle.dumps(999, protocol=2)
  (tmp_path / "p.pth").write_bytes(header + pickle.dumps(_SYS_INFO, protocol=2))
  _error(tmp_path / "p.pth", "protocol version")


class _Call:
  """Pickles as ``fn(*args)``: how a crafted checkpoint calls a global."""

  def __init__(self, fn, *args):
    self.fn, self.args = fn, args

  def __reduce__(self):
    return self.fn, self.args


class _Storage:
  """Pickles as the persistent id ``pid``, as torch pickles a storage."""

  def __init__(self, *pid):
    self.pid = ("storage",) + pid


class _Pickler(pickle.Pickler):

  def persistent_id(self, obj):
    return obj.pid if isinstance(obj, _Storage) else None


def _dumps(obj):
  buffer = io.BytesIO()
  _Pickler(buffer, protocol=2).dump(obj)
  return buffer.getvalue()


def _write_zip(path, data_pkl, records=()):
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr("archive/data.pkl", data_pkl)
    archive.writestr("archive/version", "3\n")
    for key, data in dict(records).items():
      archive.writestr(f"archive/data/{key}", data)
  return path


def _write_legacy(path, obj, storages):
  """A legacy-format file; ``storages`` is ``[(key, element count, bytes)]`` in file order."""
  with open(path, "wb") as f:
    for header in (_MAGIC, 1001, _SYS_INFO):
      pickle.dump(header, f, protocol=2)
    f.write(_dumps(obj))
    pickle.dump([key for key, _, _ in storages], f, protocol=2)
    for _, count, data in storages:
      f.write(count.to_bytes(8, "little") + data)
  return path


def _tensor_v2(storage, offset, size, stride):
  return _Call(torch._utils._rebuild_tensor_v2, storage, offset, size, stride, False,
               collections.OrderedDict())


def test_legacy_storage_views_match_torch_load(tmp_path):
  # PyTorch before 1.0 saved slices of storages as views; torch.load still reads them.
  values = np.arange(10, dtype=np.float32)
  root = ("root", "cpu", 10)
  obj = {"view": _tensor_v2(_Storage(torch.FloatStorage, *root, ("v", 2, 6)), 1, (2, 2), (2, 1)),
         "root": _tensor_v2(_Storage(torch.FloatStorage, *root, None), 0, (10,), (1,))}
  path = _write_legacy(tmp_path / "v.pth", obj, [("root", 10, values.tobytes())])
  expected = torch.load(path, weights_only=False)
  loaded = torch_checkpoint.load(path)
  np.testing.assert_array_equal(loaded["view"], expected["view"].numpy())
  np.testing.assert_array_equal(loaded["root"], expected["root"].numpy())


def _malicious_files(tmp_path, marker):
  payload = _Call(os.system, f"touch {marker}")
  yield _save({"w": torch.ones(2), "x": payload}, tmp_path / "legacy.pth", "legacy")
  yield _save({"w": torch.ones(2), "x": payload}, tmp_path / "zip.pth", "zip")
  yield _write_zip(tmp_path / "raw.pth", pickle.dumps(payload, protocol=2))
  (tmp_path / "raw.pkl").write_bytes(pickle.dumps(payload, protocol=4))
  yield tmp_path / "raw.pkl"


def test_malicious_global_is_refused_and_not_run(tmp_path):
  marker = tmp_path / "pwned"
  files = list(_malicious_files(tmp_path, marker))
  for path in files:
    assert b"system" in path.read_bytes()
    message = _error(path, "forbidden global")
    assert "posix.system" in message or "os.system" in message, message
  assert not marker.exists()


@pytest.mark.parametrize("obj, match", [
    (_tensor_v2("not a storage", 0, (1,), (1,)), "built on a storage"),
    (_tensor_v2(_Storage(torch.FloatStorage, "0", "cpu", 4), 0, (10,), (1,)), "reads element 9"),
    (_tensor_v2(_Storage(torch.FloatStorage, "0", "cpu", 4), 0, (2, 2), (3,)), "differ in length"),
    (_tensor_v2(_Storage(torch.FloatStorage, "0", "cpu", 4), -1, (1,), (1,)), "storage offset"),
    (_Call(torch._utils._rebuild_tensor_v2, 1, 2), "called with 2 arguments"),
    (_Call(torch._utils._rebuild_parameter, "x", False, collections.OrderedDict()), "Parameter"),
    (_Storage(torch.FloatStorage, "0", "cpu", 4, "extra"), "persistent id"),
], ids=["not-storage", "out-of-bounds", "rank", "offset", "arity", "parameter", "pid"])
def test_allowed_globals_check_their_arguments(tmp_path, obj, match):
  path = _write_zip(tmp_path / "bad.pth", _dumps(obj), {"0": bytes(16)})
  _error(path, match)


def test_build_on_an_allowed_global_is_refused(tmp_path):
  # GLOBAL, EMPTY_DICT, BUILD: would set attributes on the reader's own rebuild function.
  data = b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n}b."
  _error(_write_zip(tmp_path / "b.pth", data), "set the state")


def test_huge_declared_storage_is_refused_before_allocation(tmp_path):
  numel = 2**40  # 4 TiB of float32
  obj = _tensor_v2(_Storage(torch.FloatStorage, "0", "cpu", numel, None), 0, (1,), (1,))
  _error(_write_legacy(tmp_path / "l.pth", obj, [("0", numel, bytes(16))]), "truncated")
  obj = _tensor_v2(_Storage(torch.FloatStorage, "0", "cpu", numel), 0, (1,), (1,))
  _error(_write_zip(tmp_path / "z.pth", _dumps(obj), {"0": bytes(16)}), "holds 16 bytes")


def test_dtypes_without_numpy_form_are_refused(tmp_path):
  path = _save({"f8": torch.zeros(2, dtype=torch.float8_e4m3fn)}, tmp_path / "f8.pth", "zip")
  _error(path, "unsupported dtype torch.float8_e4m3fn")


def test_reader_does_not_import_torch():
  code = "import sys, jaxmetrics.checkpoints.torch_checkpoint; print('torch' in sys.modules)"
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=root, env=env)
  assert result.stdout.strip() == "False"


# ------------------------------------------------------------------------- TorchScript archives


class _Leaf(torch.nn.Module):

  def __init__(self):
    super().__init__()
    self.lin = torch.nn.Linear(3, 4)
    self.register_buffer("steps", torch.arange(5))
    self.register_buffer("scratch", torch.zeros(2), persistent=False)  # TorchScript keeps it
    self.register_parameter("unused", None)
    self.plain = torch.ones(3)  # not a buffer: absent from the state dict

  def forward(self, x):
    return self.lin(x) + self.steps[:4].float() + self.scratch.sum() + self.plain.sum()


class _Tree(torch.nn.Module):
  """Nested submodules, parameters before buffers, a tied weight, a shared submodule, float16."""

  sizes: list[int]
  names: dict[str, int]

  def __init__(self):
    super().__init__()
    self.first = _Leaf()
    self.second = _Leaf()
    self.second.lin.weight = self.first.lin.weight
    self.alias = self.first
    self.register_buffer("count", torch.tensor(3))
    self.scale = torch.nn.Parameter(torch.randn(2, 2).half())
    self.head = torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.ReLU())
    self.sizes = [1, 2]
    self.names = {"a": 1}

  def forward(self, x):
    y = self.first(x) + self.second(x) + self.alias(x)
    return self.head(y) + self.scale.float().sum() + self.count + self.sizes[0] + self.names["a"]


def _script(module, how, path):
  from tests._clip_fixtures import quiet_jit
  with quiet_jit():
    if how == "trace":
      module = torch.jit.trace(module, torch.randn(2, 3), check_trace=False)
    else:
      module = torch.jit.script(module)
    torch.jit.save(module, str(path))
  return path


def _jit_state_dict(path):
  from tests._clip_fixtures import quiet_jit
  with quiet_jit():
    return torch.jit.load(str(path)).state_dict()


def _assert_same_state_dict(arrays, expected):
  assert list(arrays) == list(expected)
  for name, tensor in expected.items():
    assert arrays[name].dtype == tensor.numpy().dtype, name
    assert arrays[name].shape == tuple(tensor.shape), name
    assert np.array_equal(arrays[name], tensor.numpy()), name


@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript_module_tree_matches_torch_jit_load(tmp_path, how):
  torch.manual_seed(2)
  path = _script(_Tree(), how, tmp_path / "tree.pt")
  expected = _jit_state_dict(path)
  assert "first.scratch" in expected and "first.plain" not in expected  # what torch does
  arrays = torch_checkpoint.load_state_dict(path)
  _assert_same_state_dict(arrays, expected)
  assert arrays["second.lin.weight"] is arrays["first.lin.weight"]
  assert arrays["alias.steps"] is arrays["first.steps"]
  assert arrays["scale"].dtype == np.float16
  assert torch_checkpoint.is_torchscript(path)


@pytest.mark.parametrize("how", ["script", "trace"])
def test_clip_shaped_archive_matches_torch_jit_load(tmp_path, how):
  from tests._clip_fixtures import OPENAI_VARIANT, OpenAIClip, save_openai_archive
  torch.manual_seed(3)
  model = OpenAIClip(OPENAI_VARIANT, vocab_size=62).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.normal_()
  path = save_openai_archive(model, tmp_path / "clip.pt", how)
  expected = _jit_state_dict(path)
  arrays = torch_checkpoint.load_state_dict(path)
  _assert_same_state_dict(arrays, expected)
  assert arrays["visual.transformer.resblocks.1.attn.in_proj_weight"].dtype == np.float16
  assert arrays["input_resolution"].dtype == np.int64 and arrays["input_resolution"].shape == ()
  if how == "trace":  # the attention mask became a constant, outside the state dict
    with zipfile.ZipFile(path) as archive:
      assert any("/constants/" in n for n in archive.namelist())


def test_torch_save_files_are_not_torchscript(tmp_path):
  assert not torch_checkpoint.is_torchscript(_save({"a": torch.ones(1)}, tmp_path / "z.pth", "zip"))
  assert not torch_checkpoint.is_torchscript(tmp_path / "absent.pt")


class _ScriptObject:
  """Pickles as TorchScript pickles a module: GLOBAL __torch__ <name>, NEWOBJ (args), BUILD."""

  def __init__(self, state, args=()):
    self.state, self.args = state, args

  def __reduce__(self):
    return copyreg.__newobj__, (type(self), *self.args), self.state


@pytest.fixture
def script_class(monkeypatch):
  """Makes classes the pickler names ``__torch__.<name>``, as torch.jit.save does."""
  namespace = types.ModuleType("__torch__")
  monkeypatch.setitem(sys.modules, "__torch__", namespace)

  def make(name):
    cls = type(name, (_ScriptObject,), {"__module__": "__torch__", "__qualname__": name})
    setattr(namespace, name, cls)
    return cls

  return make


_CODE = ('class M(Module):\n  __parameters__ = ["w", ]\n  __buffers__ = []\n  w : Tensor\n'
         '  training : bool\n  sub : __torch__.M\n')


def _write_script(path, root, code=_CODE, constants=True):
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr("archive/data.pkl", _dumps(root))
    if constants:
      archive.writestr("archive/constants.pkl", pickle.dumps((), protocol=2))
    archive.writestr("archive/code/__torch__.py", code)
    archive.writestr("archive/version", "3\n")
    archive.writestr("archive/data/0", np.arange(4, dtype=np.float32).tobytes())
  return path


def _weight():
  return _tensor_v2(_Storage(torch.FloatStorage, "0", "cpu", 4), 0, (2, 2), (2, 1))


def test_crafted_torchscript_archive(tmp_path, script_class):
  m = script_class("M")
  root = m({"w": _weight(), "training": False, "sub": m({"w": _weight(), "training": False,
                                                          "sub": None})})
  arrays = torch_checkpoint.load_state_dict(_write_script(tmp_path / "m.pt", root))
  assert list(arrays) == ["w", "sub.w"]
  np.testing.assert_array_equal(arrays["sub.w"], np.arange(4, dtype=np.float32).reshape(2, 2))


def test_torchscript_archive_with_a_forbidden_global_is_refused_and_not_run(tmp_path, script_class):
  marker = tmp_path / "pwned"
  root = script_class("M")({"w": _weight(), "sub": _Call(os.system, f"touch {marker}")})
  path = _write_script(tmp_path / "evil.pt", root)
  assert b"system" in path.read_bytes()
  message = _error(path, "forbidden global")
  assert "TorchScript" in message and ("posix.system" in message or "os.system" in message)
  assert not marker.exists()


def test_torch_classes_outside_an_archive_are_refused(tmp_path, script_class):
  # Without constants.pkl this is a torch.save file, where __torch__ classes have no place.
  root = script_class("M")({"w": _weight()})
  _error(_write_script(tmp_path / "m.pth", root, constants=False), "forbidden global __torch__.M")


@pytest.mark.parametrize("case, match", [
    ("undeclared", "class __torch__.N is not declared in code/__torch__.py"),
    ("not-a-tensor", "w is declared a parameter or buffer of __torch__.M but holds 'text'"),
    ("arguments", "constructed with 1 arguments"),
    ("state", "must be a dict of attributes"),
    ("cycle", "contains itself"),
    ("declaration", "declares __parameters__ as"),
])
def test_malformed_torchscript_archives(tmp_path, script_class, case, match):
  m = script_class("M")
  code = _CODE
  if case == "undeclared":
    root = script_class("N")({"w": _weight()})
  elif case == "not-a-tensor":
    root = m({"w": "text"})
  elif case == "arguments":
    root = m({"w": _weight()}, args=(1,))
  elif case == "state":
    root = m(["w"])
  elif case == "cycle":
    root = m({"w": _weight()})
    root.state["sub"] = root
  else:
    root = m({"w": _weight()})
    code = code.replace('["w", ]', '[__import__("os"), ]')
  _error(_write_script(tmp_path / f"{case}.pt", root, code), match)
