"""The lesson 13 module (`labkit.lessons.l13_cluster`): its experiments on real clusters, and each check
accepting the reference answer and rejecting the plausible wrong ones."""

import binascii
import random
import time

import pytest
import redis
from redis.crc import key_slot as redis_py_slot

from labkit.lessons import l13_cluster as lesson
from labkit.server import capabilities, cluster
from labkit.server.process import temp_root

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def c():
    """The lesson's own cluster: three primaries with a replica each, node timeout 5 s between experiments."""
    topo = lesson.fresh_cluster()
    yield topo
    lesson.stop_cluster(topo)


@pytest.fixture(scope="module")
def rc(c):
    client = c.client()
    yield client
    client.close()


@pytest.fixture(scope="module")
def bare():
    """Three primaries, no replicas: for the exercise checks, fast to start."""
    with cluster(primaries=3, replicas=0, node_timeout_ms=lesson.CALM_TIMEOUT_MS) as topo:
        yield topo


# -- 13.1 slots -----------------------------------------------------------------------------------------------
def test_crc16_is_the_standard_xmodem_checksum():
    rng = random.Random(1)
    samples = [b"", b"123456789", bytes(range(256))] + [rng.randbytes(rng.randint(1, 40)) for _ in range(300)]
    assert lesson.crc16(b"123456789") == 0x31C3  # the published check value of CRC-16/XMODEM
    assert all(lesson.crc16(data) == binascii.crc_hqx(data, 0) for data in samples)


@pytest.mark.parametrize("key", ["user:42", "{user:42}:cart", "a{b}c{d}", "{}x", "x{}", "{", "}{x}", "{{a}}", "ü{ß}",
                                 "lab:l13:{}:cart", "{a", ""])
def test_key_slot_follows_the_hash_tag_rules(key):
    assert lesson.key_slot(key) == redis_py_slot(key.encode())


def test_hashed_part_takes_the_first_non_empty_braces():
    assert lesson.hashed_part("lab:{a}{b}") == "a"
    assert lesson.hashed_part("lab:{}{b}") == "lab:{}{b}"  # empty first braces: the whole key
    assert lesson.hashed_part("lab:{open") == "lab:{open"


def test_the_server_and_the_lesson_agree_and_keys_spread(c):
    keys = [f"lab:l13:test:{i}" for i in range(500)]
    assert lesson.server_slots(c.primaries[0].client(), keys) == [lesson.key_slot(k) for k in keys]
    per_node = lesson.keys_by_node(c, keys)
    assert sum(per_node.values()) == 500 and len(per_node) == 3 and min(per_node.values()) > 100


def test_a_hot_tag_puts_most_reads_on_one_primary(c, rc):
    cold = [f"lab:l13:test:cold:{i}" for i in range(300)]
    hot = [f"lab:l13:test:{{hot}}:{i}" for i in range(20)]
    rc.mset_nonatomic(dict.fromkeys(cold + hot, "x"))
    uniform = lesson.ops_per_node(c, rc, lesson.hot_workload(hot, cold, 1500, share=0.0))
    skewed = lesson.ops_per_node(c, rc, lesson.hot_workload(hot, cold, 1500, share=0.8))
    rc.delete(*cold, *hot)
    assert sum(uniform.values()) == sum(skewed.values()) == 1500
    assert max(uniform.values()) < 0.45 * 1500 and max(skewed.values()) > 0.75 * 1500
    assert max(skewed, key=skewed.get) == lesson.label(c.primary_for(hot[0]))


# -- 13.2 hash tags -------------------------------------------------------------------------------------------
def test_multi_key_commands_need_one_slot_even_on_one_node(c):
    pair = lesson.same_node_pair(c, lambda i: f"lab:l13:test:pair:{i}")
    assert lesson.key_slot(pair[0]) != lesson.key_slot(pair[1]) and c.primary_for(pair[0]) is c.primary_for(pair[1])
    without = lesson.multi_key_table(c, pair)
    tagged = lesson.multi_key_table(c, ("lab:l13:test:{t}:a", "lab:l13:test:{t}:b"))
    assert set(without) == set(lesson.MULTI_KEY_COMMANDS) and all("CrossSlot" in v for v in without.values())
    assert set(tagged.values()) == {"ok"}


def test_one_tag_for_everything_is_one_node(rc):
    over = lesson.written_per_node(rc, [f"lab:l13:test:{{all}}:{i}" for i in range(300)])
    spread = lesson.written_per_node(rc, [f"lab:l13:test:{{u{i}}}:p" for i in range(300)])
    assert sorted(over.values()) == [0, 0, 300] and max(spread.values()) < 200 and sum(spread.values()) == 300


# -- 13.3 the client's view -----------------------------------------------------------------------------------
def test_a_pipeline_costs_one_round_trip_per_primary(c):
    counting = lesson.counting_client(c)
    keys = [f"lab:l13:test:rt:{i}" for i in range(300)]
    trips = lesson.round_trips(c, counting, keys)
    counting.close()
    assert sum(trips["one by one"].values()) == 300 and list(trips["one pipeline"].values()) == [1, 1, 1]


def test_redis_py_refuses_splits_or_asks_one_node(c, rc):
    keys = lesson.one_key_per_primary(c, "test:behaviours")
    assert len({lesson.key_slot(k) for k in keys}) == 3
    rc.mset_nonatomic(dict.fromkeys(keys, 1))
    rows = {row.call: row for row in lesson.redis_py_behaviours(rc, keys)}
    for refused in ("mset(3 keys)", "mget(3 keys)", "eval(script, 3 keys)", "rename(a, b)"):
        assert rows[refused].outcome.startswith("RedisClusterException")
    assert rows["keys(pattern)"].outcome == "1" and rows["scan_iter(pattern)"].outcome == "3"
    assert rows["delete(3 keys)"].outcome == "3" and sum(r.crossslot_replies for r in rows.values()) == 0
    assert rc.exists(*keys) == 0


def test_round_robin_replica_reads_are_stale_while_the_replica_lags(c):
    stale, from_replica, reads = lesson.stale_reads(c, "lab:l13:test:{stale}:k", reads=10)
    assert reads == 10 and stale == from_replica and 3 <= stale <= 7
    with c.primary_for("lab:l13:test:{stale}:k").client() as primary:  # the replica applies writes again:
        primary.set("lab:l13:test:{stale}:after", 1)
        assert primary.wait(1, 5000) == 1  # WAIT sees it acknowledge this connection's write
        primary.delete("lab:l13:test:{stale}:after", "lab:l13:test:{stale}:k")


# -- 13.4 resharding ------------------------------------------------------------------------------------------
def test_resharding_under_load_step_by_step_and_with_the_cli(c, rc):
    first, second, _ = sorted(c.serving_primaries(), key=lambda n: n.port)
    for method, slots in (("steps", 200), ("valkey-cli", 10)):
        run = lesson.reshard_under_load(c, rc, first, slots, second, method, keys=200)
        assert run.errors == {} and run.lost == 0 and run.keys == 200 and run.ops > 0, run
        assert run.redirects["MOVED"] > 0 and run.after[lesson.label(second)] >= run.before[lesson.label(second)] + 200
    assert not rc.keys("lab:l13:reshard:*", target_nodes=rc.PRIMARIES)


def test_atomic_resharding_where_the_engine_has_it(c, rc):
    first, _, third = sorted(c.serving_primaries(), key=lambda n: n.port)
    if not capabilities(first.client()).atomic_slot_migration:
        with pytest.raises(ValueError, match="MIGRATESLOTS"):
            lesson.reshard_under_load(c, rc, first, 100, third, "atomic", keys=50)
        assert not rc.keys("lab:l13:reshard:*", target_nodes=rc.PRIMARIES)
        return
    run = lesson.reshard_under_load(c, rc, first, 1000, third, "atomic", keys=200)
    assert run.errors == {} and run.lost == 0 and run.redirects["ASK"] == 0 and run.redirects["MOVED"] > 0


def test_compare_reshards_moves_the_same_slots_back_and_forth_in_turns(c, rc):
    first, second, _ = sorted(c.serving_primaries(), key=lambda n: n.port)
    atomic = capabilities(first.client()).atomic_slot_migration
    ranges = c.slot_ranges(first)
    methods = ("steps", "atomic") if atomic else ("steps",)
    comparison = lesson.compare_reshards(c, rc, first, second, 400, methods, rounds=2, keys=100)
    a, b = lesson.label(first), lesson.label(second)
    assert [run.method for run in comparison.runs] == (["steps", "atomic", "atomic", "steps"] if atomic else
                                                       ["steps", "steps"])
    assert [(run.source, run.target) for run in comparison.runs] == [(a, b), (b, a)] * (len(comparison.runs) // 2)
    assert all(run.slots == 400 and run.errors == {} and run.lost == 0 and run.moved_keys() == run.keys == 100
               for run in comparison.runs)
    assert c.slot_ranges(first) == ranges  # an even number of runs: the slots are back
    if atomic:
        assert comparison.ratio() > 1 and comparison.ratio() == comparison.median("steps") / comparison.median("atomic")


def test_reshard_comparison_takes_medians():
    runs = [lesson.Reshard(m, 10, 1, t, {}, {}, 0, 1) for m, t in
            (("steps", 3.0), ("atomic", 1.0), ("atomic", 9.0), ("steps", 1.0), ("steps", 2.0), ("atomic", 0.5))]
    comparison = lesson.ReshardComparison(10, runs)
    assert comparison.seconds("steps") == [3.0, 1.0, 2.0] and comparison.median("atomic") == 1.0
    assert comparison.ratio() == 2.0


def test_the_load_counts_a_lost_increment(c):
    keys = ["lab:l13:test:{lost}:a", "lab:l13:test:{lost}:b"]
    with lesson.Load(c, keys) as load:
        time.sleep(0.05)
    with c.client() as rc:
        rc.decr(keys[0])  # a write the application believes happened, undone behind its back
        assert load.lost() == 1
        rc.delete(*keys)


# -- 13.5 failover --------------------------------------------------------------------------------------------
def test_failover_takes_at_least_the_node_timeout_and_the_killed_node_rejoins(c):
    run = lesson.failover_under_load(c, "lab:l13:test:{fo}", 500)
    assert run.promoted_s >= 0.5 and run.writes_back_s >= 0.5 and run.lost == 0 and run.acked > 0
    assert len(c.serving_primaries()) == 3 and all(n.is_running() for n in c.servers)
    c.config_set(cluster_node_timeout=lesson.CALM_TIMEOUT_MS)


def test_writes_a_lagging_replica_never_applied_are_lost(c):
    c.config_set(cluster_node_timeout=500)
    try:
        lost = lesson.lost_writes(c, "lab:l13:test:{ledger}", writes=20)
    finally:
        c.config_set(cluster_node_timeout=lesson.CALM_TIMEOUT_MS)
    assert (lost.acked, lost.replicas_confirmed, lost.survived) == (20, 0, 0)
    assert all(n.is_running() for n in c.servers)


def test_full_coverage_yes_stops_every_key_and_no_only_the_dead_slots(c):
    dead = "lab:l13:test:{gone}"
    alive = lesson.key_elsewhere(c, dead, "test:alive")
    with c.client() as rc:
        rc.set(alive, "here")
    try:
        seen = lesson.coverage_loss(c, alive, dead)
    finally:
        c.config_set(cluster_node_timeout=lesson.CALM_TIMEOUT_MS)
    assert "ClusterDown" in seen.full_coverage_yes["cluster client, live slot"]
    assert seen.full_coverage_no["cluster client, live slot"] == "'here'"
    assert "here" not in seen.full_coverage_no["plain client, dead slot"]
    with c.client() as rc:
        assert rc.get(alive) == "here" and rc.config_get("cluster-require-full-coverage") == {
            "cluster-require-full-coverage": "yes"}
        rc.delete(alive)


def test_fit_line_is_least_squares():
    runs = [lesson.Failover(t, 0.2 + 1.5 * t / 1000, 0, 0, 0, 0) for t in (500, 1000, 2000)]
    slope, intercept = lesson.fit_line(runs)
    assert slope == pytest.approx(1.5) and intercept == pytest.approx(0.2)


# -- 13.7 and 13.8 --------------------------------------------------------------------------------------------
def test_keyspace_events_are_heard_only_where_the_key_lives(c):
    keys = [f"lab:l13:test:ev:{i}" for i in range(30)]
    one, every = (lesson.keyspace_events_seen(c, keys, every_primary=flag) for flag in (False, True))
    assert one == lesson.keys_by_node(c, keys)[lesson.label(min(c.serving_primaries(), key=lambda n: n.port))]
    assert every == 30
    assert c.primaries[0].client().config_get("notify-keyspace-events")["notify-keyspace-events"] == ""


def test_more_primaries_share_the_cpu_of_the_same_workload(c):
    runs = lesson.throughput(c, counts=(1, 3), commands=30_000, rounds=1)
    one, three = runs
    assert (one.primaries, three.primaries) == (1, 3) and one.ops_per_s > 0 and len(three.cpu_s) == 3
    assert max(three.cpu_s.values()) < 0.6 * next(iter(one.cpu_s.values()))


# -- common mistakes ---------------------------------------------------------------------------------------------
def test_an_undeclared_key_works_until_its_slot_moves_away(c, rc):
    declared = "lab:l13:test:{orders}:count"
    hidden = lesson.key_beside(c, declared, "test:audit")
    assert c.primary_for(hidden) is c.primary_for(declared) and lesson.key_slot(hidden) != lesson.key_slot(declared)
    assert rc.eval(lesson.UNDECLARED, 1, declared, hidden) == 1
    elsewhere = next(n for n in c.serving_primaries() if n is not c.primary_for(hidden))
    c.migrate_slots(lesson.key_slot(hidden), lesson.key_slot(hidden), elsewhere)
    with pytest.raises(redis.ResponseError, match="non local key"):
        rc.eval(lesson.UNDECLARED, 1, declared, hidden)
    rc.delete(declared, hidden)


def test_a_static_slot_map_fails_after_a_move_and_redis_py_does_not(c, rc):
    giver, taker = sorted(c.serving_primaries(), key=lambda n: n.port)[:2]
    low, high = min(c.slot_ranges(giver))
    keys = lesson.keys_in_slots(range(low, high + 1), 50, "test:map")
    rc.mset_nonatomic(dict.fromkeys(keys, 1))
    static = lesson.StaticSlotMap(c)
    assert lesson.read_all(static.get, keys) == {"ok": 50}
    c.migrate_slots(low, high, taker)
    broken = lesson.read_all(static.get, keys)
    static.close()
    assert broken == {"MovedError": 50} and lesson.read_all(rc.get, keys) == {"ok": 50}
    rc.delete(*keys)


# -- exercise 1: cart keys ---------------------------------------------------------------------------------------
def reference_cart_keys(user_id):
    return {part: f"lab:l13:{{cart-{user_id}}}:{part}" for part in ("cart", "reserved", "hold")}


def test_cart_keys_accepts_one_tag_per_user(bare):
    verdict = lesson.check_cart_keys(bare, reference_cart_keys)
    assert verdict, verdict.message
    with bare.client() as rc:
        assert not rc.keys("lab:l13:*", target_nodes=rc.PRIMARIES)


WRONG_CARTS = {
    "no tag": (lambda u: {p: f"lab:l13:cart:{u}:{p}" for p in lesson.CART_PARTS}, "one slot"),
    "one tag for every user": (lambda u: {p: f"lab:l13:{{carts}}:{u}:{p}" for p in lesson.CART_PARTS},
                               "over-tagging"),
    "a tag per last digit of the id": (lambda u: {p: f"lab:l13:{{cart-{u[-1]}}}:{u}:{p}" for p in lesson.CART_PARTS},
                                       "over-tagging"),
    "three shard tags": (lambda u: {p: f"lab:l13:{{shard-{int(u.split('-')[1]) % 3}}}:{u}:{p}"
                                    for p in lesson.CART_PARTS}, "over-tagging"),
    "a tag per key": (lambda u: {p: f"lab:l13:{{{u}-{p}}}" for p in lesson.CART_PARTS}, "same hash tag"),
    "empty braces": (lambda u: {p: f"lab:l13:{{}}:{u}:{p}" for p in lesson.CART_PARTS}, "same hash tag"),
    "the first braces shared": (lambda u: {p: f"lab:l13:{{shop}}:{{{u}}}:{p}" for p in lesson.CART_PARTS},
                                "over-tagging"),
    "outside the prefix": (lambda u: {p: f"cart:{{{u}}}:{p}" for p in lesson.CART_PARTS}, "prefix"),
    "the same keys for everyone": (lambda u: {p: f"lab:l13:{{cart}}:{p}" for p in lesson.CART_PARTS}, "same key"),
    "missing a part": (lambda u: {"cart": f"lab:l13:{{{u}}}:cart"}, "dict with the keys"),
    "a list": (lambda u: [f"lab:l13:{{{u}}}:{p}" for p in lesson.CART_PARTS], "dict with the keys"),
    "raises": (lambda u: {}["cart"], "raised KeyError"),
}


@pytest.mark.parametrize("name", WRONG_CARTS)
def test_cart_keys_rejects(bare, name):
    answer, says = WRONG_CARTS[name]
    verdict = lesson.check_cart_keys(bare, answer)
    assert not verdict and says in verdict.message, verdict.message
    with bare.client() as rc:
        assert not rc.keys("lab:l13:*", target_nodes=rc.PRIMARIES)


def test_cart_keys_wants_a_function(bare):
    assert not lesson.check_cart_keys(bare, reference_cart_keys("ada"))


# -- exercise 2: move a slot -------------------------------------------------------------------------------------
def _ids(c, *nodes):
    return [c.node_id(n) for n in nodes]


def reference_move_slot(c, slot, target):
    source = c.owner(slot)
    src, dst = source.client(), target.client()
    source_id, target_id = _ids(c, source, target)
    dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
    src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
    while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
        src.execute_command("MIGRATE", target.host, target.port, "", 0, 5000, "AUTH", target.password, "KEYS", *keys)
    for node in [target, source] + [n for n in c.serving_primaries() if n not in (source, target)]:
        node.client().execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)


def moves_nothing(c, slot, target):
    pass


def only_setslot_node(c, slot, target):
    for node in [target] + [n for n in c.serving_primaries() if n is not target]:
        node.client().execute_command("CLUSTER", "SETSLOT", slot, "NODE", c.node_id(target))


def migrate_with_copy(c, slot, target):
    source = c.owner(slot)
    src = source.client()
    source_id, target_id = _ids(c, source, target)
    target.client().execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
    src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
    keys = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)
    src.execute_command("MIGRATE", target.host, target.port, "", 0, 5000, "COPY", "AUTH", target.password, "KEYS",
                        *keys)
    for node in [target, source] + [n for n in c.serving_primaries() if n not in (source, target)]:
        node.client().execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)


def no_importing_or_migrating(c, slot, target):
    """Moves the keys while the source still owns the slot: meanwhile the source answers a moved key with
    nil, and an INCR there makes a new key. (The pause stands for a slot with many keys: a wide window.)"""
    source = c.owner(slot)
    src = source.client()
    keys = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)
    src.execute_command("MIGRATE", target.host, target.port, "", 0, 5000, "AUTH", target.password, "KEYS", *keys)
    time.sleep(0.05)
    for node in [target, source] + [n for n in c.serving_primaries() if n not in (source, target)]:
        node.client().execute_command("CLUSTER", "SETSLOT", slot, "NODE", c.node_id(target))


def only_half_the_keys(c, slot, target):
    source = c.owner(slot)
    src = source.client()
    source_id, target_id = _ids(c, source, target)
    target.client().execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
    src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
    keys = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 20)  # one batch: 20 of the 40
    src.execute_command("MIGRATE", target.host, target.port, "", 0, 5000, "AUTH", target.password, "KEYS", *keys)
    target.client().execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)


def migrating_first(c, slot, target):
    """The protocol with the two marks the wrong way round: the source MIGRATING before the target IMPORTING."""
    source = c.owner(slot)
    src, dst = source.client(), target.client()
    source_id, target_id = _ids(c, source, target)
    src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
    dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
    while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
        src.execute_command("MIGRATE", target.host, target.port, "", 0, 5000, "AUTH", target.password, "KEYS", *keys)
    for node in [target, source] + [n for n in c.serving_primaries() if n not in (source, target)]:
        node.client().execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)


# Each is rejected for one of the consequences of its bug, which one depends on timing (an error raised in
# the answer, keys left behind, or increments lost when the old owner drops the keys of a slot it lost).
CONSEQUENCES = ("raised", "still on the old owner", "increments are missing")
WRONG_MOVES = {
    "moves nothing": (moves_nothing, ("no slot moved",)),
    "only SETSLOT NODE": (only_setslot_node, CONSEQUENCES),
    "MIGRATE ... COPY": (migrate_with_copy, CONSEQUENCES),
    "no IMPORTING/MIGRATING": (no_importing_or_migrating, CONSEQUENCES),
    "stops after one batch": (only_half_the_keys, CONSEQUENCES),
    "MIGRATING before IMPORTING": (migrating_first, ("MIGRATING before the target was marked IMPORTING",)),
}


def test_move_slot_accepts_the_protocol(bare):
    verdict = lesson.check_move_slot(bare, reference_move_slot)
    assert verdict, verdict.message
    bare.wait_healthy()


@pytest.mark.parametrize("name", WRONG_MOVES)
def test_move_slot_rejects(bare, name):
    answer, says = WRONG_MOVES[name]
    verdict = lesson.check_move_slot(bare, answer)
    assert not verdict and any(words in verdict.message for words in says), verdict.message
    bare.wait_healthy()  # the check put the slots back in one piece: the next test starts clean
    with bare.client() as rc:
        assert not rc.keys("lab:l13:*", target_nodes=rc.PRIMARIES)


def test_move_slot_check_leaves_the_holders_with_the_greatest_config_epoch(bare):
    """A target with the greatest epoch that claimed a slot (only SETSLOT NODE) has a claim in flight that would
    take the slot back from its holder after the check: the check's tidy-up bumps each holder past it."""
    target = sorted(bare.serving_primaries(), key=lambda n: n.port)[0]
    epoch = {}
    with target.client() as admin:
        admin.execute_command("CLUSTER", "BUMPEPOCH")
    for node in bare.serving_primaries():
        with node.client() as admin:
            epoch[node] = int(admin.cluster("info")["cluster_my_epoch"])
    assert epoch[target] == max(epoch.values())
    owners = lesson.slot_owners(bare)
    holders = {owners[slot] for slot in lesson._exercise_keys(owners, target)}  # the check's slots stay there
    lesson.check_move_slot(bare, only_setslot_node)
    bare.wait_healthy()
    for node in holders:
        with node.client() as admin:
            assert int(admin.cluster("info")["cluster_my_epoch"]) > epoch[target]


def test_move_slot_accepts_the_protocol_on_a_cluster_with_replicas(c):
    """Since Valkey 8 each SETSLOT waits for the node's replicas: the reference must still pass where it does."""
    assert all(c.replicas_of(n) for n in c.serving_primaries())
    verdict = lesson.check_move_slot(c, reference_move_slot)
    assert verdict, verdict.message
    c.wait_healthy()
    with c.client() as rc:
        assert not rc.keys("lab:l13:exercise*", target_nodes=rc.PRIMARIES)


def test_cart_keys_accepts_one_tag_per_user_on_a_cluster_with_replicas(c):
    verdict = lesson.check_cart_keys(c, reference_cart_keys)
    assert verdict, verdict.message


def test_a_new_key_bounces_while_only_the_source_is_migrating(bare):
    """What the order rule of check_move_slot guards against: source MIGRATING, target not IMPORTING yet."""
    slot = lesson.key_slot("lab:l13:{bounce}:new")
    source = bare.owner(slot)
    target = next(n for n in bare.serving_primaries() if n is not source)
    with source.client() as src, target.client() as dst, bare.client() as rc:
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", bare.node_id(target))
        try:
            with pytest.raises(redis.exceptions.ClusterError, match="TTL exhausted"):
                rc.set("lab:l13:{bounce}:new", 1)  # ASK to the target, MOVED back to the source, again and again
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", bare.node_id(source))
            assert rc.set("lab:l13:{bounce}:new", 1)  # in the right state the ASK is followed
            assert dst.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 1  # the new key is on the target
            with dst.pipeline(transaction=False) as asking:
                asking.execute_command("ASKING")
                asking.delete("lab:l13:{bounce}:new")
                assert asking.execute() == [True, 1]
        finally:
            for node in (target, source):
                node.client().execute_command("CLUSTER", "SETSLOT", slot, "STABLE")
    bare.wait_healthy()


def test_setslot_log_records_marks_in_the_order_sent_pipelines_and_lower_case_too(bare):
    slot = lesson.key_slot("lab:l13:{order}")
    source = bare.owner(slot)
    target = next(n for n in bare.serving_primaries() if n is not source)
    with lesson.setslot_log() as sent, source.client() as src, target.client() as dst:
        with dst.pipeline(transaction=False) as pipe:
            pipe.execute_command("cluster setslot", slot, "importing", bare.node_id(source))
            pipe.execute()
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", bare.node_id(target))
        for node in (src, dst):
            node.execute_command("CLUSTER", "SETSLOT", slot, "STABLE")
    assert sent == [(target.port, slot, "IMPORTING"), (source.port, slot, "MIGRATING")]
    assert lesson._order_problems(sent, {slot: source}, target) == []
    assert lesson._order_problems(sent[::-1], {slot: source}, target)
    assert lesson._order_problems(sent[1:], {slot: source}, target)


def test_move_slot_wants_a_function(bare):
    assert not lesson.check_move_slot(bare, "move_slot")


def test_fresh_cluster_stops_the_previous_one_and_sweeps_what_dead_kernels_left():
    dead = next(pid for pid in range(4_000_000, 4_100_000) if not lesson._alive(pid))
    stale = temp_root() / f"l13-{dead}-killed"
    (stale / "labkit-server").mkdir(parents=True)
    first = lesson.fresh_cluster(primaries=1, replicas=0)
    second = lesson.fresh_cluster(primaries=1, replicas=0)
    try:
        assert not any(n.is_running() for n in first.servers) and all(n.is_running() for n in second.servers)
        assert not stale.exists() and not first.root.exists() and second.root.exists()
        assert {s.dir.parent for s in second.servers} == {second.root}
    finally:
        assert lesson.stop_cluster(second) == 0
    assert not second.root.exists()
