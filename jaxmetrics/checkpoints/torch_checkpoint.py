"""Reads PyTorch checkpoints (``.pth``) into NumPy arrays, without torch and without running code.

Host-only: file I/O. Both on-disk formats of ``torch.save``, and ``torch.jit.save`` archives, are
read:

* **zip** (the default since PyTorch 1.6): ``<prefix>/data.pkl`` holds the pickled object tree,
  ``<prefix>/data/<key>`` the raw bytes of each storage and ``<prefix>/byteorder`` their byte
  order (little-endian when absent).
* **legacy** (``_use_new_zipfile_serialization=False``; the official FID weights
  ``pt_inception-2015-12-05-6726825d.pth``): five consecutive pickles -- the magic number
  ``0x1950a86a20f9469cfc6c``, the protocol version 1001, a sys-info dict, the object tree, the
  list of storage keys -- then, per key in that order, an int64 element count and the storage's
  little-endian bytes.
* **TorchScript** (``torch.jit.save``; OpenAI's CLIP ``ViT-B-32.pt``): the zip layout above plus
  ``<prefix>/code/`` and ``<prefix>/constants.pkl``. ``data.pkl`` pickles the module tree: one
  object per module, of a class named ``__torch__.<module path>.<Name>``, whose state (set by the
  BUILD opcode) is a dict of every attribute -- submodules, parameters, buffers, plain tensors and
  values such as ``training`` -- in the class's slot order. Which attributes are parameters and
  buffers is not in the pickle: the class declaration in ``code/__torch__/<module path>.py``
  lists them (``__parameters__ = [...]``, ``__buffers__ = [...]``). ``constants.pkl`` holds the
  tensors the traced code inlines (e.g. an attention mask); they are not part of the state dict.

A ``.pth`` is a pickle, and unpickling it with :mod:`pickle` runs whatever callables it names. Here
the unpickler resolves only the globals a state dict needs (``_ALLOWED_GLOBALS``), each to a NumPy
implementation that checks its arguments; any other global raises :class:`CheckpointError` before
anything is called. In a TorchScript archive a ``__torch__.*`` class resolves to an inert record of
its attributes (no code from ``code/`` is run: its class declarations are only read as text), and
the few ``torch.jit._pickle`` helpers that tag typed lists and dicts return their argument. Every
size read from the file is checked against the bytes actually present before memory is allocated
for it.

Example::

  from jaxmetrics.checkpoints import torch_checkpoint
  params = torch_checkpoint.load_state_dict("pt_inception-2015-12-05-6726825d.pth")
  params["fc.weight"].shape   # (1008, 2048), float32
"""

import ast
import collections
import io
import os
import pickle
import re
import struct
import zipfile

import numpy as np

from jaxmetrics._errors import CheckpointError

__all__ = ["STATE_DICT_KEYS", "is_torchscript", "load", "load_state_dict"]

STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "params")
"""Keys under which :func:`load_state_dict` looks for the state dict when the root holds no tensor."""

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_ZIP_LOCAL_HEADER = struct.Struct("<4s22xHH")

# torch dtype name -> NumPy dtype of its bytes on disk (always little-endian, see byteorder).
_DTYPES = {
    "float64": "<f8",
    "float32": "<f4",
    "float16": "<f2",
    "bfloat16": "<u2",  # upcast to float32 on decoding: NumPy has no bfloat16
    "complex128": "<c16",
    "complex64": "<c8",
    "int64": "<i8",
    "int32": "<i4",
    "int16": "<i2",
    "int8": "i1",
    "uint64": "<u8",
    "uint32": "<u4",
    "uint16": "<u2",
    "uint8": "u1",
    "bool": "?",
}
_UNSUPPORTED_DTYPES = frozenset({
    "complex32", "qint8", "quint8", "qint32", "quint4x2", "quint2x4", "bits1x8", "bits2x4",
    "bits4x2", "bits8", "bits16", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2",
    "float8_e5m2fnuz", "float8_e8m0fnu", "float4_e2m1fn_x2",
})
# Storage class name in the pickle -> torch dtype name of its elements.
_STORAGE_DTYPES = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "ComplexDoubleStorage": "complex128",
    "ComplexFloatStorage": "complex64",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "UntypedStorage": "uint8",
}
_UNSUPPORTED_STORAGES = frozenset({
    "QInt8Storage", "QUInt8Storage", "QInt32Storage", "QUInt4x2Storage", "QUInt2x4Storage",
})
# torch.cuda.*Storage appears in files saved from a GPU by old PyTorch; the data is the same.
_STORAGE_MODULES = ("torch", "torch.cuda", "torch.storage")


class _Invalid(Exception):
  """Why a checkpoint cannot be read; :func:`load` prefixes the path and raises CheckpointError."""


class _Inert:
  """Base of every object the unpickler can reach that is not plain data.

  The pickle BUILD opcode calls ``__setstate__`` (or sets attributes) on any object on its stack; a
  crafted file could otherwise rewrite the allowed globals for every later load in the process.
  """

  __slots__ = ()

  def __setstate__(self, state):
    raise _Invalid(f"the pickle tries to set the state of {self!r}: expected a plain state dict")


class _Pending(_Inert):
  """Stands for a tensor during the first pass over a legacy pickle, before storages are read."""

  __slots__ = ()

  def __repr__(self):
    return "<tensor not read yet>"


_PENDING = _Pending()


class _StorageType(_Inert):
  """What a storage class such as ``torch.FloatStorage`` resolves to: its element dtype."""

  __slots__ = ("name", "dtype")

  def __init__(self, name, dtype):
    self.name = name
    self.dtype = dtype

  def __repr__(self):
    return f"torch.{self.name}"


class _Storage(_Inert):
  """One storage: its raw bytes once read, decoded on demand to each dtype a tensor asks for."""

  __slots__ = ("key", "storage_type", "numel", "byteorder", "raw", "_decoded")

  def __init__(self, key, storage_type, numel, byteorder="little"):
    self.key = key
    self.storage_type = storage_type
    self.numel = numel
    self.byteorder = byteorder
    self.raw = None
    self._decoded = {}

  @property
  def nbytes(self):
    return self.numel * np.dtype(_DTYPES[self.storage_type.dtype]).itemsize

  def __repr__(self):
    return f"<storage {self.key!r} of {self.numel} {self.storage_type.dtype}>"

  def decoded(self, dtype, conj=False, neg=False):
    """The whole storage as a 1-d array of ``dtype`` (a torch dtype name), cached per request.

    Decoding at the storage level keeps tensors that share a storage sharing one array, also
    when they are bfloat16 (upcast) or carry torch's lazy conjugate/negative bits.
    """
    key = (dtype, conj, neg)
    if key not in self._decoded:
      stored = np.dtype(_DTYPES[dtype])
      if self.byteorder == "big":
        stored = stored.newbyteorder(">")
      count = self.raw.size // stored.itemsize
      values = self.raw[:count * stored.itemsize].view(stored)
      if dtype == "bfloat16":
        # bfloat16 is the top half of a float32, so the upcast is exact.
        values = (values.astype(np.uint32) << 16).view(np.float32)
      elif not stored.isnative:
        values = values.astype(stored.newbyteorder("="))
      if conj:
        values = np.conj(values)
      if neg:
        values = np.negative(values)
      self._decoded[key] = values
    return self._decoded[key]


class _Global(_Inert):
  """An allowed global: a NumPy-side stand-in for the torch callable of the same name."""

  __slots__ = ("name", "_fn", "_min_args", "_max_args")

  def __init__(self, name, fn, min_args, max_args):
    self.name = name
    self._fn = fn
    self._min_args = min_args
    self._max_args = max_args

  def __repr__(self):
    return self.name

  def __call__(self, *args):
    if not self._min_args <= len(args) <= self._max_args:
      expected = (f"{self._min_args}" if self._min_args == self._max_args
                  else f"{self._min_args} to {self._max_args}")
      raise _Invalid(f"{self.name} is called with {len(args)} arguments, expected {expected}")
    return self._fn(*args)


def _check_int(value, what, minimum=0):
  if type(value) is not int or value < minimum:  # bool is an int subclass, and never a size
    raise _Invalid(f"tensor {what} must be an int >= {minimum}, found {_describe(value)}")
  return value


def _check_ints(values, what):
  if not isinstance(values, (tuple, list)) or len(values) > 64:
    raise _Invalid(f"tensor {what} must be a tuple of at most 64 ints, found {_describe(values)}")
  return tuple(_check_int(v, what) for v in values)


def _check_autograd(requires_grad, backward_hooks):
  if type(requires_grad) is not bool:
    raise _Invalid(f"requires_grad must be a bool, found {_describe(requires_grad)}")
  if not isinstance(backward_hooks, dict):
    raise _Invalid(f"backward_hooks must be a dict, found {_describe(backward_hooks)}")


def _tensor(storage, storage_offset, size, stride, dtype=None, metadata=None):
  """Builds the array a torch tensor views: ``storage[offset + sum(index * stride)]``."""
  if not isinstance(storage, _Storage):
    raise _Invalid(f"a tensor must be built on a storage, found {_describe(storage)}")
  offset = _check_int(storage_offset, "storage offset")
  size = _check_ints(size, "size")
  stride = _check_ints(stride, "stride")
  if len(size) != len(stride):
    raise _Invalid(f"tensor size {size} and stride {stride} differ in length")
  dtype = storage.storage_type.dtype if dtype is None else dtype
  conj = neg = False
  if metadata is not None:
    if not isinstance(metadata, dict) or not set(metadata) <= {"conj", "neg"} or any(
        type(v) is not bool for v in metadata.values()):
      raise _Invalid(f"tensor metadata must be a dict of conj/neg bools, found {_describe(metadata)}")
    conj, neg = metadata.get("conj", False), metadata.get("neg", False)
    kind = "f" if dtype == "bfloat16" else np.dtype(_DTYPES[dtype]).kind
    if (conj and kind != "c") or (neg and kind not in "fic"):
      raise _Invalid(f"tensor metadata {metadata} does not apply to dtype {dtype}")
  itemsize = np.dtype(_DTYPES[dtype]).itemsize
  available = storage.nbytes // itemsize
  if all(size):
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= available:
      raise _Invalid(f"tensor of size {size}, stride {stride} and offset {offset} reads element "
                     f"{last}, but storage {storage.key!r} holds {available} {dtype} elements")
  if storage.raw is None:
    return _PENDING
  values = storage.decoded(dtype, conj, neg)
  if not all(size):
    return np.zeros(size, values.dtype)
  return np.lib.stride_tricks.as_strided(
      values[offset:], shape=size, strides=tuple(s * values.itemsize for s in stride))


def _rebuild_tensor(storage, storage_offset, size, stride):
  return _tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       metadata=None):
  _check_autograd(requires_grad, backward_hooks)
  return _tensor(storage, storage_offset, size, stride, metadata=metadata)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype,
                       metadata=None):
  _check_autograd(requires_grad, backward_hooks)
  if not (isinstance(dtype, str) and dtype.startswith("torch.") and dtype[6:] in _DTYPES):
    raise _Invalid(f"_rebuild_tensor_v3 needs a torch dtype, found {_describe(dtype)}")
  return _tensor(storage, storage_offset, size, stride, dtype[6:], metadata)


def _rebuild_parameter(data, requires_grad, backward_hooks):
  if not isinstance(data, (np.ndarray, _Pending)):
    raise _Invalid(f"a Parameter must wrap a tensor, found {_describe(data)}")
  _check_autograd(requires_grad, backward_hooks)
  return data


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
  del state  # Python attributes set on the Parameter; a state dict has no use for them.
  return _rebuild_parameter(data, requires_grad, backward_hooks)


def _globals_table():
  table = {}
  for module, name, fn, min_args, max_args in (
      ("collections", "OrderedDict", collections.OrderedDict, 0, 1),
      ("torch._utils", "_rebuild_tensor", _rebuild_tensor, 4, 4),
      ("torch._utils", "_rebuild_tensor_v2", _rebuild_tensor_v2, 6, 7),
      ("torch._utils", "_rebuild_tensor_v3", _rebuild_tensor_v3, 7, 8),
      ("torch._utils", "_rebuild_parameter", _rebuild_parameter, 3, 3),
      ("torch._utils", "_rebuild_parameter_with_state", _rebuild_parameter_with_state, 4, 4),
  ):
    table[module, name] = _Global(f"{module}.{name}", fn, min_args, max_args)
  for name, dtype in _STORAGE_DTYPES.items():
    storage_type = _StorageType(name, dtype)
    for module in _STORAGE_MODULES:
      table[module, name] = storage_type
  for name in _DTYPES:
    # Dtypes are inert data: they come out of load() as their name, e.g. "torch.float32".
    table["torch", name] = f"torch.{name}"
  return table


_ALLOWED_GLOBALS = _globals_table()


def _same(value):
  return value


def _untagged(value, type_tag):
  if not isinstance(type_tag, str):
    raise _Invalid(f"restore_type_tag needs a type string, found {_describe(type_tag)}")
  return value


# torch.jit._pickle: TorchScript tags typed lists and dicts with these; each returns its argument.
_SCRIPT_GLOBALS = {
    ("torch.jit._pickle", name): _Global(f"torch.jit._pickle.{name}", fn, n, n)
    for name, fn, n in (("build_intlist", _same, 1), ("build_doublelist", _same, 1),
                        ("build_boollist", _same, 1), ("build_tensorlist", _same, 1),
                        ("restore_type_tag", _untagged, 2))
}
_SCRIPT_MODULE = "__torch__"


def _find_global(module, name, script=None):
  """Resolves a pickled global, or refuses it without importing or calling anything.

  ``script`` (a :class:`_ScriptClasses`) is given for the ``data.pkl`` of a TorchScript archive;
  only then are ``__torch__.*`` classes and the ``torch.jit._pickle`` helpers allowed.
  """
  found = _ALLOWED_GLOBALS.get((module, name))
  if found is not None:
    return found
  if script is not None:
    if module == _SCRIPT_MODULE or module.startswith(_SCRIPT_MODULE + "."):
      return script.get(module, name)
    if (module, name) in _SCRIPT_GLOBALS:
      return _SCRIPT_GLOBALS[module, name]
  qualname = _printable(f"{module}.{name}")
  if module in _STORAGE_MODULES and name in _UNSUPPORTED_STORAGES:
    raise _Invalid(f"unsupported storage type {qualname}: quantized tensors have no NumPy form")
  if module == "torch" and name in _UNSUPPORTED_DTYPES:
    raise _Invalid(f"unsupported dtype {qualname}: expected a dtype with a NumPy equivalent")
  if script is not None:
    raise _Invalid(f"forbidden global {qualname} in the TorchScript pickle (not executed): "
                   "expected only __torch__.* classes, OrderedDict, torch tensor rebuilders, "
                   "storage types, dtypes and torch.jit._pickle type tags, so the archive holds "
                   "more than modules and tensors, or it is malicious")
  raise _Invalid(f"forbidden global {qualname} in the pickle (not executed): expected only "
                 "OrderedDict, torch tensor/parameter rebuilders, storage types and dtypes, "
                 "so this is not a plain state dict, or it is malicious")


class _ScriptObject(_Inert):
  """An object of a TorchScript class: the attributes its state holds, and nothing callable.

  :class:`_ScriptClasses` makes one subclass per ``__torch__.*`` name, because the NEWOBJ opcode
  needs a type. Construction takes no arguments and the state can be set once, to a dict.
  """

  __slots__ = ("attributes",)
  qualified_name = _SCRIPT_MODULE

  def __new__(cls, *args):
    if args:
      raise _Invalid(f"{cls.qualified_name} is constructed with {len(args)} arguments: expected "
                     "none, as torch.jit.save writes")
    obj = super().__new__(cls)
    obj.attributes = None
    return obj

  def __setstate__(self, state):
    if self.attributes is not None:
      raise _Invalid(f"the pickle sets the state of a {self.qualified_name} object twice")
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
      raise _Invalid(f"the state of a {self.qualified_name} object must be a dict of attributes, "
                     f"found {_describe(state)}")
    self.attributes = state

  def __repr__(self):
    return f"<{self.qualified_name} object>"


_SCRIPT_CLASS = re.compile(r"^class (\w+)(?:\((.*)\))?:[ \t]*$", re.M)
_SCRIPT_NAMES = re.compile(r"^  (__parameters__|__buffers__) = (\[.*\])[ \t]*$", re.M)


class _ScriptClasses:
  """The ``__torch__.*`` classes of one archive, and their declarations in ``code/``.

  Args:
    read_code: ``read_code(entry) -> str or None`` reads ``<prefix>/code/<entry>`` as text.
  """

  def __init__(self, read_code):
    self._read_code = read_code
    self._types = {}
    self._files = {}

  def get(self, module, name):
    """The stand-in type for the global ``module.name``."""
    qualname = f"{module}.{name}"
    if not all(part.isidentifier() for part in qualname.split(".")):
      raise _Invalid(f"malformed TorchScript class name {_printable(qualname)}: expected dotted "
                     "identifiers")
    cls = self._types.get(qualname)
    if cls is None:
      cls = self._types[qualname] = type(name, (_ScriptObject,),
                                         {"__slots__": (), "qualified_name": qualname})
    return cls

  def declaration(self, cls):
    """``(is_module, parameters, buffers)`` from the class's declaration in ``code/``."""
    module, _, name = cls.qualified_name.rpartition(".")
    entry = module.replace(".", "/") + ".py"
    if entry not in self._files:
      text = self._read_code(entry)
      self._files[entry] = {} if text is None else _parse_declarations(text, entry)
    found = self._files[entry].get(name)
    if found is None:
      raise _Invalid(f"class {cls.qualified_name} is not declared in code/{entry}: expected the "
                     "code/ folder torch.jit.save writes beside data.pkl")
    return found


def _parse_declarations(text, entry):
  """``{class name: (is_module, parameters, buffers)}`` of one ``code/`` file, read as text.

  TorchScript prints each class at column 0 (``class Linear(Module):``) and, for modules, the
  lists ``__parameters__ = ["weight", "bias", ]`` and ``__buffers__ = [...]`` indented by two
  spaces right below. The lists are parsed with :func:`ast.literal_eval`, which evaluates nothing.
  """
  classes = list(_SCRIPT_CLASS.finditer(text))
  out = {}
  for i, match in enumerate(classes):
    body = text[match.end():classes[i + 1].start() if i + 1 < len(classes) else len(text)]
    lists = {"__parameters__": (), "__buffers__": ()}
    for line in _SCRIPT_NAMES.finditer(body):
      try:
        names = ast.literal_eval(line.group(2))
      except (ValueError, SyntaxError, MemoryError, RecursionError):
        names = None
      if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise _Invalid(f"code/{entry}: class {match.group(1)} declares {line.group(1)} as "
                       f"{_printable(line.group(2), 80)}, expected a list of names")
      lists[line.group(1)] = tuple(names)
    out[match.group(1)] = (match.group(2) == "Module", lists["__parameters__"],
                           lists["__buffers__"])
  return out


_MAX_MODULE_DEPTH = 256
_MAX_CODE_BYTES = 64 << 20


def _script_state_dict(root, classes):
  """The flat state dict of a TorchScript module tree, as ``torch.jit.load(f).state_dict()``.

  Per module: its parameters, then its buffers (each in slot order, ``None`` skipped), then each
  submodule's entries under ``<attribute>.``. A tensor reachable under two names (tied weights,
  a shared submodule) is listed under both, as torch does.
  """
  if not isinstance(root, _ScriptObject):
    raise _Invalid(f"the TorchScript data.pkl holds {_describe(root)}, expected a __torch__ module")
  out = collections.OrderedDict()
  active = set()

  def visit(obj, prefix):
    if obj.attributes is None:
      raise _Invalid(f"module {prefix.rstrip('.') or '(root)'} of class {obj.qualified_name} has "
                     "no state in the pickle")
    if id(obj) in active or len(active) >= _MAX_MODULE_DEPTH:
      raise _Invalid(f"module {prefix.rstrip('.')} contains itself or nests more than "
                     f"{_MAX_MODULE_DEPTH} deep: expected a module tree")
    is_module, parameters, buffers = classes.declaration(type(obj))
    if not is_module:
      raise _Invalid(f"{prefix.rstrip('.') or 'the root'} is a {obj.qualified_name}, which is not "
                     "declared as a Module in code/")
    active.add(id(obj))
    attributes = obj.attributes
    for group in (set(parameters), set(buffers)):
      for name, value in attributes.items():
        if name not in group or value is None:
          continue
        if not isinstance(value, np.ndarray):
          raise _Invalid(f"{prefix}{name} is declared a parameter or buffer of "
                         f"{obj.qualified_name} but holds {_describe(value)}")
        out[prefix + name] = value
    for name, value in attributes.items():
      if isinstance(value, _ScriptObject) and classes.declaration(type(value))[0]:
        visit(value, f"{prefix}{name}.")
    active.discard(id(obj))

  visit(root, "")
  return out


class _Storages:
  """The storages a pickle refers to by persistent id, by key.

  Args:
    read: for the zip format, ``read(key, nbytes) -> uint8 array`` reads a storage on first use;
      ``None`` for the legacy format, whose storages are filled in after the object pickle.
    byteorder: ``"little"`` or ``"big"``, the byte order of the stored elements.
  """

  def __init__(self, read=None, byteorder="little"):
    self.roots = {}
    self._views = {}
    self._read = read
    self._byteorder = byteorder

  def persistent_load(self, pid):
    """Resolves ``('storage', type, key, location, numel)`` (+ ``view_metadata`` if legacy)."""
    legacy = self._read is None
    expected = (f"('storage', storage type, key, location, numel{', view' if legacy else ''})")
    if not isinstance(pid, tuple) or not pid:
      raise _Invalid(f"expected a persistent id {expected}, found {_describe(pid)}")
    kind = _ascii(pid[0])
    if kind == "module":
      raise _Invalid("the file pickles a whole nn.Module, expected a state dict "
                     "(save model.state_dict() instead)")
    if kind != "storage" or len(pid) != (6 if legacy else 5):
      raise _Invalid(f"expected a persistent id {expected}, found {_describe(pid)}")
    storage_type, key, location, numel = pid[1:5]
    key, location = _ascii(key), _ascii(location)
    if not isinstance(storage_type, _StorageType) or not isinstance(key, str) or not isinstance(
        location, str) or type(numel) is not int or numel < 0:
      raise _Invalid(f"expected a persistent id {expected}, found {_describe(pid)}")
    storage = self.roots.get(key)
    if storage is None:
      storage = self.roots[key] = _Storage(key, storage_type, numel, self._byteorder)
      if self._read is not None:
        storage.raw = self._read(key, storage.nbytes)
    elif storage.storage_type is not storage_type or storage.numel != numel:
      raise _Invalid(f"storage {key!r} is declared as {storage.numel} {storage.storage_type!r} and "
                     f"as {numel} {storage_type!r}: expected one type and size per storage")
    return storage if not legacy or pid[5] is None else self._view(storage, pid[5])

  def _view(self, root, view_metadata):
    """A storage that is a slice of another (written by PyTorch before 1.0 only)."""
    if not (isinstance(view_metadata, tuple) and len(view_metadata) == 3 and
            isinstance(_ascii(view_metadata[0]), str) and
            all(type(v) is int and v >= 0 for v in view_metadata[1:])):
      raise _Invalid(f"expected storage view metadata (key, offset, size), "
                     f"found {_describe(view_metadata)}")
    key, offset, numel = _ascii(view_metadata[0]), view_metadata[1], view_metadata[2]
    if offset + numel > root.numel:
      raise _Invalid(f"storage view {key!r} covers elements {offset}..{offset + numel} of "
                     f"storage {root.key!r}, which holds {root.numel}")
    view = self._views.get(key)
    if view is None:
      view = self._views[key] = _Storage(key, root.storage_type, numel, root.byteorder)
    if view.raw is None and root.raw is not None:
      itemsize = np.dtype(_DTYPES[root.storage_type.dtype]).itemsize
      view.raw = root.raw[offset * itemsize:(offset + numel) * itemsize]
    return view


class _Unpickler(pickle.Unpickler):
  """Unpickler that resolves only allowed globals and reads storages through ``storages``."""

  def __init__(self, file, storages=None, script=None):
    super().__init__(file)
    self._storages = storages
    self._script = script

  def find_class(self, module, name):
    return _find_global(module, name, self._script)

  def persistent_load(self, pid):
    if self._storages is None:
      raise _Invalid(f"unexpected persistent id {_describe(pid)} outside the object pickle")
    return self._storages.persistent_load(pid)


def _unpickle(file, what, storages=None, script=None):
  """Loads one pickle from ``file``; failures become one-line :class:`_Invalid` naming ``what``."""
  try:
    return _Unpickler(file, storages, script).load()
  except _Invalid:
    raise
  except Exception as err:  # noqa: BLE001 -- untrusted bytes can fail in any way; all mean "unreadable"
    if isinstance(err, EOFError) or "truncated" in str(err):
      raise _Invalid(f"truncated inside the {what}: expected a complete pickle, "
                     "the file ends first") from err
    raise _Invalid(f"corrupt {what}: expected a pickle, found bytes that fail with "
                   f"{type(err).__name__}: {_one_line(err)}") from err


def _load_legacy(f, size):
  """Reads the pre-zip format; see the module docstring for the layout."""
  head = f.read(16)
  f.seek(0)
  try:
    magic = _Unpickler(f).load()
  except _Invalid:
    raise
  except Exception as err:  # noqa: BLE001 -- see _unpickle
    if isinstance(err, EOFError) or "truncated" in str(err):
      raise _Invalid("truncated inside the magic-number pickle: expected a complete pickle, "
                     "the file ends first") from err
    raise _Invalid(_not_a_checkpoint(head)) from err
  if type(magic) is not int or magic != _LEGACY_MAGIC:
    found = f"magic number {magic:#x}" if type(magic) is int else f"a pickle of {_describe(magic)}"
    raise _Invalid(f"not a PyTorch checkpoint: expected a zip archive or the legacy magic number "
                   f"{_LEGACY_MAGIC:#x}, found {found}")
  protocol = _unpickle(f, "protocol-version pickle")
  if type(protocol) is not int or protocol != _LEGACY_PROTOCOL:
    raise _Invalid(f"unsupported legacy protocol version: expected {_LEGACY_PROTOCOL}, "
                   f"found {_describe(protocol)}")
  sys_info = _unpickle(f, "sys-info pickle")
  if not isinstance(sys_info, dict):
    raise _Invalid(f"corrupt sys-info pickle: expected a dict, found {_describe(sys_info)}")
  start = f.tell()
  storages = _Storages()
  # First pass: learn every storage's type and size, and check each tensor against them.
  _unpickle(f, "object pickle", storages)
  keys = _unpickle(f, "storage-key pickle")
  if not isinstance(keys, list) or not all(isinstance(_ascii(k), str) for k in keys):
    raise _Invalid(f"corrupt storage-key pickle: expected a list of str, found {_describe(keys)}")
  for key in map(_ascii, keys):
    storage = storages.roots.get(key)
    if storage is None:
      raise _Invalid(f"storage key {key!r} is not referenced by the object pickle")
    if storage.raw is not None:
      raise _Invalid(f"storage key {key!r} is listed twice")
    position = f.tell()
    header = f.read(8)
    if len(header) < 8:
      raise _Invalid(f"truncated at byte {position}: expected the element count of storage "
                     f"{key!r}, the file ends first")
    count = int.from_bytes(header, "little", signed=True)
    if count != storage.numel:
      raise _Invalid(f"corrupt storage {key!r}: the object pickle declares {storage.numel} "
                     f"elements, the data section {count}")
    if position + 8 + storage.nbytes > size:
      raise _Invalid(f"truncated: storage {key!r} needs {storage.nbytes} bytes at byte "
                     f"{position + 8}, the file has {size - position - 8} left")
    storage.raw = _read_exactly(f, storage.nbytes)
  unread = [k for k, s in storages.roots.items() if s.raw is None]
  if unread:
    raise _Invalid(f"storage {unread[0]!r} is used by a tensor but missing from the storage keys")
  # Second pass: the same pickle again, now building arrays on the storages just read.
  f.seek(start)
  return _unpickle(f, "object pickle", storages)


def _load_zip(f, size):
  """Reads the zip format; see the module docstring for the layout."""
  try:
    archive = zipfile.ZipFile(f)
  except Exception as err:  # noqa: BLE001 -- zipfile raises several types for damaged archives
    raise _Invalid(f"truncated or corrupt zip archive: expected a readable torch.save zip, "
                   f"found {type(err).__name__}: {_one_line(err)}") from err
  with archive:
    names = archive.namelist()
    found = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(found) != 1:
      listed = ", ".join(_printable(n) for n in names[:4]) or "no entries"
      raise _Invalid(f"not a PyTorch checkpoint: expected a zip archive with one <prefix>/data.pkl "
                     f"(torch.save), found {len(names)} entries ({listed})")
    prefix = found[0][:-len("data.pkl")]
    byteorder = "little"
    if f"{prefix}byteorder" in names:
      byteorder = _read_record(f, archive, f"{prefix}byteorder", size).tobytes().decode("latin-1")
      if byteorder not in ("little", "big"):
        raise _Invalid(f"{prefix}byteorder: expected 'little' or 'big', found {byteorder[:20]!r}")
    data = _read_record(f, archive, found[0], size).tobytes()

    def read(key, nbytes):
      return _read_record(f, archive, f"{prefix}data/{key}", size, nbytes)

    storages = _Storages(read, byteorder)
    if f"{prefix}constants.pkl" not in names:
      return _unpickle(io.BytesIO(data), f"{found[0]} pickle", storages)

    def read_code(entry):
      name = f"{prefix}code/{entry}"
      if name not in names:
        return None
      # torch.jit.save deflates code/ (unlike data/); read at most _MAX_CODE_BYTES of it.
      try:
        with archive.open(name) as member:
          text = member.read(_MAX_CODE_BYTES + 1)
      except Exception as err:  # noqa: BLE001 -- zipfile/zlib raise several types for bad data
        raise _Invalid(f"entry {_printable(name)} cannot be read ({type(err).__name__}: "
                       f"{_one_line(err)}): expected TorchScript code") from err
      if len(text) > _MAX_CODE_BYTES:
        raise _Invalid(f"entry {_printable(name)} holds more than {_MAX_CODE_BYTES} bytes: "
                       "expected TorchScript code")
      try:
        return text.decode("utf-8")
      except UnicodeDecodeError:
        raise _Invalid(f"entry {_printable(name)} is not UTF-8 text: expected TorchScript "
                       "code") from None

    classes = _ScriptClasses(read_code)
    root = _unpickle(io.BytesIO(data), f"{found[0]} pickle", storages, classes)
    return _script_state_dict(root, classes)


def _read_record(f, archive, name, size, nbytes=None):
  """Reads one uncompressed zip entry with a single ``readinto``; torch.save never compresses."""
  try:
    info = archive.getinfo(name)
  except KeyError:
    raise _Invalid(f"the zip archive has no entry {_printable(name)} for a storage "
                   "the pickle refers to") from None
  if nbytes is not None and info.file_size != nbytes:
    raise _Invalid(f"entry {_printable(name)} holds {info.file_size} bytes, expected {nbytes} "
                   "from the storage's declared size")
  if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
    raise _Invalid(f"entry {_printable(name)} is compressed or encrypted: expected the stored "
                   "(uncompressed) entries torch.save writes")
  if info.header_offset + _ZIP_LOCAL_HEADER.size > size:
    raise _Invalid(f"truncated: entry {_printable(name)} starts past the end of the file")
  f.seek(info.header_offset)
  signature, name_length, extra_length = _ZIP_LOCAL_HEADER.unpack(f.read(_ZIP_LOCAL_HEADER.size))
  if signature != b"PK\x03\x04":
    raise _Invalid(f"corrupt zip archive: expected a local header for {_printable(name)} at byte "
                   f"{info.header_offset}, found {signature.hex()}")
  start = info.header_offset + _ZIP_LOCAL_HEADER.size + name_length + extra_length
  if start + info.file_size > size:
    raise _Invalid(f"truncated: entry {_printable(name)} needs {info.file_size} bytes at byte "
                   f"{start}, the file has {max(size - start, 0)} left")
  f.seek(start)
  return _read_exactly(f, info.file_size)


def _read_exactly(f, nbytes):
  """``nbytes`` from ``f`` as a writable uint8 array, read in one call (the caller checked size)."""
  buffer = np.empty(nbytes, np.uint8)
  got = f.readinto(memoryview(buffer)) if nbytes else 0
  if got != nbytes:
    raise _Invalid(f"truncated: expected {nbytes} bytes at byte {f.tell() - (got or 0)}, "
                   f"read {got or 0}")
  return buffer


def load(path):
  """Reads a ``torch.save`` file (zip or legacy format) or a ``torch.jit.save`` archive without
  torch and without running code.

  Args:
    path: a ``.pth``/``.pt`` file written by ``torch.save`` or ``torch.jit.save``.

  Returns:
    For ``torch.save``, the pickled object tree (dicts, ``OrderedDict``, lists, tuples, numbers,
    strings) with every tensor and ``nn.Parameter`` as a ``numpy.ndarray`` of the tensor's shape,
    strides and dtype, except bfloat16, which comes out as float32 (exactly: NumPy has no
    bfloat16). Arrays are writable views of one buffer per storage, so tensors that shared a
    storage in torch share memory here too. A torch dtype stored as a value comes out as its name,
    e.g. ``"torch.int64"``. For a TorchScript archive, the module's state dict as an
    ``OrderedDict`` of such arrays: the names, order and values of
    ``torch.jit.load(path).state_dict()``.

  Raises:
    CheckpointError: the file is missing, empty, truncated, not a torch checkpoint, holds a dtype
      NumPy lacks (float8, quantized), or its pickle names a global other than OrderedDict, the
      tensor/parameter rebuilders, storage types and dtypes -- in a TorchScript archive also
      ``__torch__.*`` classes and ``torch.jit._pickle`` type tags (the global is never called).
  """
  path = os.fspath(path)
  try:
    f = open(path, "rb")  # noqa: SIM115 -- closed below; the error must name the path
  except FileNotFoundError:
    raise CheckpointError(f"{path}: no such file, expected a PyTorch checkpoint") from None
  except OSError as err:
    raise CheckpointError(f"{path}: cannot be opened ({err.strerror or err}), "
                          "expected a readable PyTorch checkpoint file") from None
  try:
    with f:
      size = os.fstat(f.fileno()).st_size
      head = f.read(512)
      f.seek(0)
      if not head:
        raise _Invalid("empty file (0 bytes), expected a PyTorch checkpoint")
      if head[:4] in (b"PK\x03\x04", b"PK\x05\x06") or b"PK\x03\x04".startswith(head):
        return _load_zip(f, size)
      if head[257:262] == b"ustar":
        raise _Invalid("a tar-format checkpoint (the earliest PyTorch releases), not supported: "
                       "expected the zip or legacy pickle format")
      # Legacy files start with a pickle: PROTO (protocol >= 2) or, for protocols 0-1, LONG.
      if head[:1] not in (b"\x80", b"L"):
        raise _Invalid(_not_a_checkpoint(head))
      return _load_legacy(f, size)
  except _Invalid as err:
    raise CheckpointError(f"{path}: {err}") from err
  except MemoryError as err:
    raise CheckpointError(f"{path}: a size in the file is too large to allocate, "
                          "expected a checkpoint that fits in memory") from err
  except OSError as err:
    raise CheckpointError(f"{path}: read failed ({err.strerror or err})") from err


def load_state_dict(path):
  """Reads the state dict of a ``torch.save`` file or a TorchScript archive as a flat
  ``{name: numpy.ndarray}`` dict.

  For a TorchScript archive (``torch.jit.save``, e.g. OpenAI's CLIP ``.pt`` files) it is the
  module's state dict, equal to ``torch.jit.load(path).state_dict()``: parameters and buffers by
  dotted name, in torch's order, a tied tensor under each of its names. For ``torch.save`` files
  the state dict is the root object if it is a dict holding at least one tensor, otherwise the
  first value under :data:`STATE_DICT_KEYS` (``"state_dict"``, ``"model_state_dict"``, ``"model"``,
  ``"params"``) that is such a dict, as training scripts save ``{"state_dict": ..., "epoch": ...}``.
  Every tensor entry is kept in file order, ``num_batches_tracked`` (0-d int64) included; entries
  that are not tensors are dropped. Arrays are as :func:`load` returns them.

  Raises:
    CheckpointError: as :func:`load`, or no state dict of tensors is found, or a tensor's name is
      not a string.
  """
  root = load(path)
  state = None
  if _holds_tensor(root):
    state = root
  elif isinstance(root, dict):
    state = next((root[k] for k in STATE_DICT_KEYS if _holds_tensor(root.get(k))), None)
  if state is None:
    raise CheckpointError(f"{os.fspath(path)}: no tensors found: expected a dict of tensors, or "
                          f"one under {'/'.join(STATE_DICT_KEYS)}, found {_describe(root)}")
  arrays = {}
  for name, value in state.items():
    if isinstance(value, np.ndarray):
      if not isinstance(name, str):
        raise CheckpointError(f"{os.fspath(path)}: tensor names must be str, found "
                              f"{_describe(name)}")
      arrays[name] = value
  return arrays


def is_torchscript(path):
  """Whether ``path`` is a TorchScript archive (``torch.jit.save``): a zip with one
  ``<prefix>/data.pkl`` and a ``<prefix>/constants.pkl`` beside it. Reads only the zip directory;
  ``False`` for anything else, unreadable files included."""
  try:
    with zipfile.ZipFile(os.fspath(path)) as archive:
      names = set(archive.namelist())
  except Exception:  # noqa: BLE001 -- not a readable zip: not an archive
    return False
  found = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
  return len(found) == 1 and found[0][:-len("data.pkl")] + "constants.pkl" in names


def _holds_tensor(value):
  return isinstance(value, dict) and any(isinstance(v, np.ndarray) for v in value.values())


def _not_a_checkpoint(head):
  return (f"not a PyTorch checkpoint: expected a zip archive or a legacy pickle starting with "
          f"the magic number {_LEGACY_MAGIC:#x}, found bytes {head[:8].hex()}")


def _ascii(value):
  # Checkpoints written by Python 2 hold these ids as bytes.
  return value.decode("ascii", "replace") if isinstance(value, bytes) else value


def _printable(text, limit=120):
  text = text.encode("unicode_escape").decode("ascii")
  return text if len(text) <= limit else text[:limit] + "..."


def _one_line(err):
  return _printable(" ".join(str(err).split()), limit=200)


def _describe(value):
  """A short one-line description of an unpickled value, for error messages."""
  if isinstance(value, dict):
    keys = ", ".join(_printable(repr(k), 40) for k in list(value)[:5])
    return f"a {type(value).__name__} with keys [{keys}{', ...' if len(value) > 5 else ''}]"
  if isinstance(value, np.ndarray):
    return f"an array {value.dtype}{list(value.shape)}"
  if isinstance(value, (int, float, str, bytes, tuple, type(None))):
    return _printable(repr(value), 80)
  return f"a {type(value).__name__}"
