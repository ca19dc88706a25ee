"""The feature store: numpy-1-loadable pickles, bounded safe reading of forged files, headers, the manifest API."""

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.forged import FORGED, FORGED_NPY, run_bounded
from video_chatgpt.errors import UserError
from video_chatgpt.features.store import (
    MANIFEST_NAME,
    FeatureFileError,
    check_features_match,
    load_features,
    read_feature_header,
    read_manifest,
    save_features,
    serialize_features,
    write_manifest,
)

SHAPE = (356, 32)
REPO = Path(__file__).resolve().parents[2]


def _array(shape=SHAPE, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float16)


@pytest.mark.parametrize("shape", [(2, 3), SHAPE, (356, 1024)])  # small frame, one frame, data outside the frame
def test_pickles_name_numpy_core_and_load_with_both_unpicklers(shape):
    array = _array(shape)
    data = serialize_features(array, "pkl")
    assert b"numpy.core.multiarray" in data and b"numpy._core" not in data
    # The C unpickler and the strict pure-Python one (it checks frame lengths) read the same values.
    for loads in (pickle.loads, pickle._loads):
        loaded = loads(data)
        assert type(loaded) is np.ndarray and loaded.dtype == np.float16
        np.testing.assert_array_equal(loaded, array)


def test_written_pickle_is_what_pickle_writes_apart_from_the_module_name(tmp_path):
    array = _array()
    ours = save_features(tmp_path / "v.pkl", array).read_bytes()
    plain = pickle.dumps(array, protocol=4)
    # numpy 2 writes the 22-character "numpy._core.multiarray"; ours is one byte shorter, the frame length too.
    assert len(plain) - len(ours) == 1
    assert ours.replace(b"\x15numpy.core.multiarray", b"\x16numpy._core.multiarray")[11:] == plain[11:]
    np.testing.assert_array_equal(load_features(tmp_path / "v.pkl", expected_shape=SHAPE), array)


# ----------------------------------------------------------------------------------------------------------------
# Forged files: a few dozen bytes that ask for gigabytes, or for an array the file holds no bytes of. Built opcode by
# opcode (pickle's own opcode constants), each a different route to the allocation.


STORE = "video_chatgpt.features.store"
READERS = {  # how each reader of feature files is called on a forged file
    "load_features": (f"{STORE}:load_features", {}),
    "load_features(expected_shape)": (f"{STORE}:load_features", {"expected_shape": [356, 1024]}),
    "read_feature_header": (f"{STORE}:read_feature_header", {}),
}


@pytest.fixture(scope="module")
def forged_results(tmp_path_factory) -> dict[tuple[str, str], dict]:
    """(kind, reader) -> what that reader did with the forged file, in one bounded child for all of them."""
    folder = tmp_path_factory.mktemp("forged")
    files = {kind: (folder / f"v_{k}.pkl", data) for k, (kind, (data, _)) in enumerate(FORGED.items())}
    files["npy header"] = (folder / "v_npy.npy", FORGED_NPY)
    jobs, keys = [], []
    for kind, (path, data) in files.items():
        path.write_bytes(data)
        for reader, (call, kwargs) in READERS.items():
            jobs.append({"call": call, "args": [str(path)], "kwargs": kwargs})
            keys.append((kind, reader))
    return dict(zip(keys, run_bounded(jobs)))


@pytest.mark.parametrize("reader", sorted(READERS))
@pytest.mark.parametrize("kind", [*FORGED, "npy header"])
def test_a_tiny_forged_file_is_refused_by_its_guard_without_allocating(forged_results, kind, reader):
    """Each forged file ends as one FeatureFileError naming it, from the guard meant for it (not from running out of
    memory later), while the child's tracemalloc peak stays under 16 MB and its address space within 512 MiB."""
    data, words = FORGED[kind] if kind in FORGED else (FORGED_NPY, "truncated")
    assert len(data) < 160
    got = forged_results[(kind, reader)]
    assert got.get("error") == "FeatureFileError", got
    assert "v_" in got["message"] and words in got["message"], got
    assert "out of memory" not in got["message"] and got["peak_mb"] < 16, got


def test_the_forged_files_really_allocate_in_a_plain_unpickler(tmp_path):
    # The control for the test above: under the same limit, a plain pickle.load of the files asking for gigabytes
    # runs out of memory, and the feature-shaped ndarray call returns an array the file holds no bytes of.
    kinds = ["array shape", "bytes length", "frame length", "memo index", "ndarray call, gigabytes",
             "ndarray call, feature shape"]  # fmt: skip
    jobs = []
    for k, kind in enumerate(kinds):
        path = tmp_path / f"v_{k}.pkl"
        path.write_bytes(FORGED[kind][0])
        jobs.append({"call": "tests.helpers.forged:plain_load", "args": [str(path)]})
    *huge, feature_shaped = run_bounded(jobs)
    assert [r.get("error") for r in huge] == ["MemoryError"] * len(huge), huge
    size = len(FORGED["ndarray call, feature shape"][0])
    assert feature_shaped["result"] == f"(356, 1024) float16 from {size} bytes", feature_shaped


@pytest.mark.parametrize("kind", ["ndarray call, feature shape", "ndarray call, header only", "no data bytes"])
def test_extraction_does_not_count_a_forged_file_as_done(tmp_path, kind):
    # A rerun of the extraction skips the videos whose feature file reads as done: it asks the same validating
    # header reader, so a forged file of the expected shape is extracted again, with the reason naming it.
    from video_chatgpt.features.extract import existing_file_problem

    path = tmp_path / "v_forged.pkl"
    path.write_bytes(FORGED[kind][0])
    problem = existing_file_problem(path, (356, 1024))
    assert problem is not None and "v_forged.pkl" in problem and FORGED[kind][1] in problem
    save_features(path, _array((356, 1024)))
    assert existing_file_problem(path, (356, 1024)) is None


def test_a_file_larger_than_the_expected_shape_allows_is_refused_before_reading(tmp_path):
    path = save_features(tmp_path / "v_big.pkl", _array((2000, 32)))
    with pytest.raises(FeatureFileError, match="expected shape"):
        load_features(path, expected_shape=(10, 32))
    assert load_features(path).shape == (2000, 32)


@pytest.mark.parametrize("fmt", ["pkl", "npy"])
def test_header_reads_shape_and_dtype_and_catches_truncation(tmp_path, fmt):
    path = save_features(tmp_path / f"v.{fmt}", _array())
    assert read_feature_header(path) == (SHAPE, np.dtype(np.float16))
    data = path.read_bytes()
    for cut in (len(data) - 1, len(data) // 2, 20):
        path.write_bytes(data[:cut])
        with pytest.raises(FeatureFileError, match=f"v.{fmt}"):
            read_feature_header(path)
        with pytest.raises(FeatureFileError):
            load_features(path)


def test_header_refuses_what_load_refuses(tmp_path):
    path = tmp_path / "v.pkl"
    for obj, words in [({"a": 1}, "bare numpy ndarray"), (np.zeros((2, 2, 2), np.float16), "2 dimensions"),
                       (np.array([["a"]]), "not allowed")]:  # fmt: skip
        path.write_bytes(pickle.dumps(obj))
        with pytest.raises(FeatureFileError, match=words):
            read_feature_header(path)
        with pytest.raises(FeatureFileError, match=words):
            load_features(path)


def _manifest(**over) -> dict:
    base = {"vision_tower": "openai/clip-vit-large-patch14", "num_frames": 100, "spatial_pool": 1,
            "feature_shape": [356, 1024]}  # fmt: skip
    return {**base, **over}


def test_manifest_api_for_data_check_and_training(tmp_path):
    assert read_manifest(tmp_path) is None  # the original's folders: no manifest, no warning, no error
    assert check_features_match(tmp_path, tower_name="anything", width=1, num_tokens=2) == []
    write_manifest(tmp_path, _manifest())
    assert read_manifest(tmp_path)["feature_shape"] == [356, 1024]
    assert check_features_match(tmp_path, tower_name="openai/clip-vit-large-patch14", width=1024, num_tokens=356) == []
    # A local copy of the same tower matches by its last path part; another tower warns.
    local_copy = "/models/clip-vit-large-patch14/"
    assert check_features_match(tmp_path, tower_name=local_copy, width=1024, num_tokens=None) == []
    siglip = "google/siglip-so400m-patch14-384"
    (warning,) = check_features_match(tmp_path, tower_name=siglip, width=1024, num_tokens=356)
    assert "openai/clip-vit-large-patch14" in warning and "siglip" in warning
    with pytest.raises(UserError, match="1024 wide but the model's projector reads 1152"):
        check_features_match(tmp_path, tower_name=None, width=1152, num_tokens=356)
    with pytest.raises(UserError, match="356 tokens per video but the model expects 244"):
        check_features_match(tmp_path, tower_name=None, width=1024, num_tokens=244)


def test_a_broken_manifest_is_a_named_error(tmp_path):
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(UserError, match=MANIFEST_NAME):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("[1, 2]")
    with pytest.raises(UserError, match="not a features manifest"):
        read_manifest(tmp_path)


# ----------------------------------------------------------------------------------------------------------------
# The original's environment: numpy 1.24.3 (its pin) must read our pickles with a plain pickle.load.

PY = f"py{sys.version_info.major}{sys.version_info.minor}"
NUMPY1_VENV = Path.home() / ".cache" / "video_chatgpt_test" / f"np1243-{PY}"


def _numpy1_python() -> Path:
    """A scratch venv with numpy==1.24.3, made once and reused (its wheels stop at Python 3.11, the project's)."""
    python = NUMPY1_VENV / "bin" / "python"
    done = NUMPY1_VENV / ".numpy-1.24.3-installed"
    if not done.exists():
        subprocess.run([sys._base_executable, "-m", "venv", "--clear", str(NUMPY1_VENV)], check=True, timeout=300)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "numpy==1.24.3"], check=True, timeout=600)
        done.write_text("ok\n")
    return python


@pytest.mark.slow
def test_numpy_1_24_3_loads_our_pickles_with_plain_pickle_load(tmp_path):
    python = _numpy1_python()
    array = _array((356, 64))
    path = save_features(tmp_path / "v.pkl", array)
    expected = tmp_path / "expected.bin"
    expected.write_bytes(array.tobytes())
    code = (
        "import pickle, sys, numpy as np\n"
        "assert np.__version__ == '1.24.3', np.__version__\n"
        "a = pickle.load(open(sys.argv[1], 'rb'))\n"
        "assert type(a) is np.ndarray and a.dtype == np.float16 and a.shape == (356, 64), (type(a), a.dtype, a.shape)\n"
        "assert a.tobytes() == open(sys.argv[2], 'rb').read(), 'values differ'\n"
        "sys.stdout.write(pickle.dumps(a, protocol=4).hex())\n"
    )
    command = [str(python), "-c", code, str(path), str(expected)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    # And what numpy 1.24.3 itself writes for the same array is byte for byte our file.
    assert bytes.fromhex(out.stdout) == path.read_bytes()
