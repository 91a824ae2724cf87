"""Convert a legacy (pre-1.6, non-zip) PyTorch checkpoint to safetensors, with the
standard library only (no torch, no numpy).

    python3 torch_legacy_to_safetensors.py IN.pth OUT.safetensors [KEY]

KEY selects a nested state dict (resemblyzer keeps its weights under "model_state").
Only tensors are written, float32 little-endian, contiguous, in sorted name order, with
no metadata, so the output is byte-for-byte reproducible (the installer pins its SHA-256).
Nothing in the checkpoint is executed: the unpickler resolves only the handful of
globals a state dict needs and refuses every other one.
"""

import collections
import json
import pickle
import struct
import sys

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
ITEMSIZE = {"FloatStorage": 4, "DoubleStorage": 8, "HalfStorage": 2, "LongStorage": 8, "IntStorage": 4}


class StorageType:
    def __init__(self, name):
        self.name = name


class Storage:
    def __init__(self, kind, numel):
        self.kind, self.numel, self.data = kind, numel, None


class Tensor:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)


def rebuild_tensor_v2(storage, offset, size, stride, *_):
    return Tensor(storage, offset, size, stride)


class Unpickler(pickle.Unpickler):
    def __init__(self, f, storages):
        super().__init__(f)
        self.storages = storages

    def find_class(self, module, name):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return rebuild_tensor_v2
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch" and name in ITEMSIZE:
            return StorageType(name)
        raise pickle.UnpicklingError(f"refusing global {module}.{name} in a checkpoint")

    def persistent_load(self, pid):
        typename, stype, key, _location, numel, view = pid
        if typename != "storage" or view is not None:
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        if key not in self.storages:
            self.storages[key] = Storage(stype.name, numel)
        return self.storages[key]


def load(path):
    storages = {}
    with open(path, "rb") as f:
        if pickle.load(f) != LEGACY_MAGIC:
            raise SystemExit(f"{path}: not a legacy PyTorch checkpoint (bad magic number)")
        pickle.load(f)  # protocol version
        pickle.load(f)  # sys info
        obj = Unpickler(f, storages).load()
        for key in pickle.load(f):
            s = storages[key]
            (n,) = struct.unpack("<q", f.read(8))
            if n != s.numel:
                raise SystemExit(f"{path}: storage {key} has {n} elements, expected {s.numel}")
            s.data = f.read(n * ITEMSIZE[s.kind])
            if len(s.data) != n * ITEMSIZE[s.kind]:
                raise SystemExit(f"{path}: storage {key} is truncated")
    return obj


def as_f32(t):
    """The tensor's elements, row-major, as little-endian float32 bytes."""
    kind = t.storage.kind
    fmt = {"FloatStorage": "f", "DoubleStorage": "d", "HalfStorage": "e", "LongStorage": "q", "IntStorage": "i"}[kind]
    size = ITEMSIZE[kind]
    data = t.storage.data
    numel = 1
    for d in t.size:
        numel *= d
    out = bytearray(4 * numel)
    idx = [0] * len(t.size)
    for i in range(numel):
        off = t.offset + sum(a * b for a, b in zip(idx, t.stride))
        (v,) = struct.unpack_from("<" + fmt, data, off * size)
        struct.pack_into("<f", out, 4 * i, float(v))
        for d in reversed(range(len(t.size))):
            idx[d] += 1
            if idx[d] < t.size[d]:
                break
            idx[d] = 0
    return bytes(out)


def contiguous_f32(t):
    if t.storage.kind == "FloatStorage":
        expected, acc = [], 1
        for d in reversed(t.size):
            expected.insert(0, acc)
            acc *= d
        if list(t.stride) == expected or acc == 1:
            return t.storage.data[4 * t.offset : 4 * (t.offset + acc)]
    return as_f32(t)


def main():
    src, dst = sys.argv[1], sys.argv[2]
    obj = load(src)
    if len(sys.argv) > 3:
        obj = obj[sys.argv[3]]
    tensors = sorted((k, v) for k, v in obj.items() if isinstance(v, Tensor))
    header, blobs, offset = {}, [], 0
    for name, t in tensors:
        data = contiguous_f32(t)
        header[name] = {"dtype": "F32", "shape": list(t.size), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with open(dst, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for b in blobs:
            f.write(b)
    print(f"{dst}: {len(tensors)} tensors, {offset} bytes of float32")


if __name__ == "__main__":
    main()
