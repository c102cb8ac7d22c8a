import pytest
import torch

from deberta_fast import log_bucket_position, relative_position_index
from deberta_fast.positions import attention_span, relative_index_table

transformers_deberta = pytest.importorskip("transformers.models.deberta_v2.modeling_deberta_v2")

SETTINGS = [(256, 512), (8, 32), (16, 64), (-1, 512), (0, 24)]


@pytest.mark.parametrize("buckets,max_rel", [(256, 512), (8, 32), (16, 64)])
def test_log_bucket_matches_transformers_exhaustively(buckets, max_rel):
    x = torch.arange(-65535, 65536)
    expected = transformers_deberta.make_log_bucket_position(x, buckets, max_rel).to(torch.int64)
    got = log_bucket_position(x, buckets, max_rel)
    mismatch = (got != expected).nonzero().flatten()
    assert mismatch.numel() == 0, f"first mismatches at x = {x[mismatch[:5]].tolist()}"


def test_log_bucket_is_odd_and_saturates():
    x = torch.arange(0, 65536)
    f = log_bucket_position(x, 256, 512)
    assert torch.equal(log_bucket_position(-x, 256, 512), -f)
    # the boundary named in DESIGN.md: |x| = max_pos - 1 lands exactly on the last bucket
    assert f[511].item() == 255 and f[127].item() == 127


@pytest.mark.parametrize("buckets,max_rel", SETTINGS)
@pytest.mark.parametrize("n", [1, 17, 300, 1025])
def test_relative_position_index_matches_transformers(buckets, max_rel, n):
    h = torch.empty(1, n, 1)
    rel = transformers_deberta.build_relative_position(h, h, bucket_size=buckets, max_position=max_rel)[0]
    span = attention_span(buckets, max_rel)
    expected = torch.clamp(rel + span, 0, 2 * span - 1)  # transformers' c2p index
    got = relative_position_index(n, buckets, max_rel)
    assert got.dtype == torch.int64 and got.shape == (n, n)
    assert torch.equal(got, expected)
    # p2c: transformers gathers with clamp(-r + S) on the transposed scores; same index by oddness
    p2c = torch.clamp(-rel + span, 0, 2 * span - 1).T
    assert torch.equal(got, p2c)


def test_table_slices_agree_across_lengths():
    big = relative_index_table(1000, 256, 512)
    small = relative_index_table(5, 256, 512)
    assert big.dtype == torch.int32 and big.shape == (1999,)
    assert torch.equal(small, big[999 - 4 : 999 + 5])


@pytest.mark.parametrize(
    "n,buckets,max_rel,match",
    [(4, 1, 512, "position_buckets must be >= 2"), (4, 8, 0, "max_relative_positions must be >= 1"),
     (130, 256, 100, r"log bucketing needs .* distances up to 129"), (6, 8, 5, "log bucketing needs"),
     (4, 8.0, 32, "position_buckets must be an int")],
)
def test_bad_position_settings(n, buckets, max_rel, match):
    with pytest.raises(ValueError, match=match):
        relative_position_index(n, buckets, max_rel)


@pytest.mark.parametrize("buckets,max_rel", [(256, 100), (256, 32), (8, 5), (64, 16)])
def test_log_settings_undefined_far_are_fine_near(buckets, max_rel):
    """Log settings undefined beyond buckets // 2 (max_rel - 1 <= buckets // 2) give the plain distances to a
    sequence that never reaches past it, as transformers' index does (a tiny config with buckets 256 and 32
    positions); one token longer is refused."""
    n = buckets // 2 + 1  # distances up to buckets // 2
    rel = torch.arange(n)[:, None] - torch.arange(n)[None, :]
    expected = transformers_deberta.make_log_bucket_position(rel, buckets, max_rel).to(torch.int64)
    assert torch.equal(expected, rel)
    assert torch.equal(relative_position_index(n, buckets, max_rel), rel + buckets)
    with pytest.raises(ValueError, match="log bucketing needs"):
        relative_position_index(n + 1, buckets, max_rel)
