"""G.711 tables against CPython's audioop (the reference g711.c), plus round-trip properties."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dtmfmask.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop  # removed in Python 3.13; the 3.11 copy is our reference

ALL_PCM = np.arange(-32768, 32768, dtype=np.int16)
ALL_CODES = np.arange(256, dtype=np.uint8)

CODECS = {
    "ulaw": (ulaw_encode, ulaw_decode, audioop.lin2ulaw, audioop.ulaw2lin),
    "alaw": (alaw_encode, alaw_decode, audioop.lin2alaw, audioop.alaw2lin),
}


@pytest.mark.parametrize("law", CODECS)
def test_encode_matches_audioop_for_every_sample(law: str) -> None:
    encode, _, ref_encode, _ = CODECS[law]
    expected = np.frombuffer(ref_encode(ALL_PCM.tobytes(), 2), dtype=np.uint8)
    got = encode(ALL_PCM)
    assert got.dtype == np.uint8
    mismatch = np.nonzero(got != expected)[0]
    assert mismatch.size == 0, f"first mismatch at pcm={ALL_PCM[mismatch[0]]}"


@pytest.mark.parametrize("law", CODECS)
def test_decode_matches_audioop_for_every_code(law: str) -> None:
    _, decode, _, ref_decode = CODECS[law]
    expected = np.frombuffer(ref_decode(ALL_CODES.tobytes(), 2), dtype=np.int16)
    got = decode(ALL_CODES)
    assert got.dtype == np.int16
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("law", CODECS)
def test_decode_accepts_payload_bytes(law: str) -> None:
    _, decode, _, _ = CODECS[law]
    np.testing.assert_array_equal(decode(ALL_CODES.tobytes()), decode(ALL_CODES))


@pytest.mark.parametrize("law", CODECS)
def test_shape_is_kept_for_batches(law: str) -> None:
    encode, decode, _, _ = CODECS[law]
    batch = ALL_PCM.reshape(256, 256)
    codes = encode(batch)
    assert codes.shape == (256, 256)
    np.testing.assert_array_equal(codes.ravel(), encode(ALL_PCM))
    assert decode(codes).shape == (256, 256)


@pytest.mark.parametrize("law", CODECS)
def test_float_input_is_rounded_and_clipped(law: str) -> None:
    encode, _, _, _ = CODECS[law]
    floats = np.array([0.4, -0.6, 1000.5, 1e9, -1e9, 32767.4, -32768.6])
    ints = np.array([0, -1, 1000, 32767, -32768, 32767, -32768], dtype=np.int16)
    # rint rounds half to even: 1000.5 -> 1000.
    np.testing.assert_array_equal(encode(floats), encode(ints))


@pytest.mark.parametrize("law", CODECS)
def test_wide_int_input_is_clipped_not_wrapped(law: str) -> None:
    encode, _, _, _ = CODECS[law]
    wide = np.array([40000, -40000, 70000], dtype=np.int64)
    expected = encode(np.array([32767, -32768, 32767], dtype=np.int16))
    np.testing.assert_array_equal(encode(wide), expected)


@pytest.mark.parametrize("law", CODECS)
def test_out_of_range_codes_are_rejected(law: str) -> None:
    _, decode, _, _ = CODECS[law]
    with pytest.raises(ValueError):
        decode(np.array([0, 256]))


@pytest.mark.parametrize("law", CODECS)
def test_results_are_private_copies(law: str) -> None:
    encode, decode, _, _ = CODECS[law]
    first = decode(ALL_CODES)
    first[:] = 0  # the caller owns its result; the shared table must not change
    np.testing.assert_array_equal(decode(ALL_CODES)[1:3], decode(np.array([1, 2])))
    assert decode(ALL_CODES).any()
    codes = encode(ALL_PCM)
    codes[:] = 0
    assert encode(ALL_PCM).any()


pcm_arrays = hnp.arrays(np.int16, st.integers(0, 400))


@pytest.mark.parametrize("law", CODECS)
@given(codes=hnp.arrays(np.uint8, st.integers(0, 400)))
def test_decode_then_encode_is_identity_on_codes(law: str, codes: np.ndarray) -> None:
    encode, decode, _, _ = CODECS[law]
    # Every code decodes to a value that encodes back to it, except µ-law's two zeros
    # (0x7F and 0xFF are -0 and +0), which both decode to 0.
    back = encode(decode(codes))
    if law == "ulaw":
        codes = np.where(codes == 0x7F, 0xFF, codes)
    np.testing.assert_array_equal(back, codes)


@pytest.mark.parametrize("law", CODECS)
@given(pcm=pcm_arrays)
def test_encode_decode_is_idempotent(law: str, pcm: np.ndarray) -> None:
    encode, decode, _, _ = CODECS[law]
    once = decode(encode(pcm))
    np.testing.assert_array_equal(decode(encode(once)), once)


@pytest.mark.parametrize("law", CODECS)
@given(pcm=pcm_arrays)
def test_quantisation_error_is_within_half_a_step(law: str, pcm: np.ndarray) -> None:
    encode, decode, _, _ = CODECS[law]
    x = pcm.astype(np.int64)
    err = np.abs(decode(encode(pcm)).astype(np.int64) - x)
    # Steps double per segment; bound the error by half the step of the segment, with the
    # clipped top of µ-law's range (above 32124) allowed to reach its ceiling.
    bound = np.maximum(np.abs(x) // 16, 16)
    assert np.all((err <= bound) | (np.abs(x) > 32000))


@pytest.mark.parametrize("law", CODECS)
@given(pcm=pcm_arrays)
def test_decoding_is_monotonic(law: str, pcm: np.ndarray) -> None:
    encode, decode, _, _ = CODECS[law]
    ordered = np.sort(pcm)
    assert np.all(np.diff(decode(encode(ordered)).astype(np.int32)) >= 0)
