from labkit.bench import cache

from . import assert_spread_printed, baselines, values


def test_compares_hits_and_counts_stampedes():
    rows = cache.run(seconds=0.1, clients=10)
    table = values(rows)
    for name in ("raw GET + json.loads", "labkit cached (xfetch)", "dogpile.cache redis"):
        assert table[("hits per second", name)] > 0
    recomputes, misses = "stampede: recomputes at expiry", "stampede: misses at expiry"
    assert table[(recomputes, "lock")] == 1 and table[(misses, "swr")] == 0
    assert table[(recomputes, "none")] > table[(recomputes, "lock")]
    assert_spread_printed(rows, "hits per second")
    assert baselines(rows) == {"hits per second": "raw GET + json.loads", recomputes: "none", misses: "none"}
