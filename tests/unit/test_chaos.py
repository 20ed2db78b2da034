"""The chaos run's parts that need no lab (control/lab/chaos.py): the seeded schedule, each invariant check fed
observations, the resource bookkeeping, the report's keys and the refusals (the run itself:
tests/lab/test_lab_chaos.py)."""

from __future__ import annotations

import random

import pytest

from control.lab import chaos as C

KINDS = C.fault_kinds()


# ---- the schedule

def test_schedule_depends_on_the_seed_only():
    a = C.schedule(7, 50, KINDS)
    assert a == C.schedule(7, 50, list(reversed(KINDS)))           # the order kinds are given in does not matter
    assert a != C.schedule(8, 50, KINDS)
    assert len(a) == 50 and set(a) <= set(KINDS)


def test_schedule_covers_every_kind_each_pass_and_never_repeats_in_a_row():
    plan = C.schedule(1, 3 * len(KINDS), KINDS)
    for i in range(3):
        assert sorted(plan[i * len(KINDS):(i + 1) * len(KINDS)]) == sorted(KINDS)
    assert all(x != y for x, y in zip(plan, plan[1:]))
    assert C.schedule(1, 5, KINDS) == plan[:5]                    # a shorter run is a prefix of a longer one


def test_round_choices_are_replayable_and_independent_of_other_rounds():
    assert C.round_rng(3, 4).random() == C.round_rng(3, 4).random()
    assert C.round_rng(3, 4).random() != C.round_rng(3, 5).random()


def test_schedule_refuses_nonsense():
    with pytest.raises(ValueError):
        C.schedule(1, 3, [])
    with pytest.raises(ValueError):
        C.schedule(1, -1, KINDS)


def test_fault_table_has_the_issue_kinds():
    groups = {}
    for k, f in C.FAULTS.items():
        assert f.kind == k and f.group
        if f.carp:
            groups.setdefault(f.group, set()).add(k)
    assert groups["appliance"] == {"dataplane_kill", "daemon_kill", "both_kill", "daemon_sigterm",
                                   "dataplane_sighup", "daemon_restart", "data_link_flap"}
    assert groups["edge"] == {"edge_kill", "edge_link_flap"} and groups["mgmt"] == {"mgmt_link_cut"}
    assert groups["config"] == {"drain", "edge_remove_add", "weight_change", "cluster_toggle"}
    assert groups["hostile"] == {"carp_bad_adverts", "arp_icmp_flood", "syn_flood"}


SCALE_OUT = ["appliance_drain", "appliance_kill", "bgp_session_reset", "dataplane_sighup", "drain", "edge_kill",
             "edge_link_flap", "edge_remove_add", "router_restart", "syn_flood", "weight_change"]


def test_scale_out_kinds_are_its_own_plus_those_of_the_pair_that_apply():
    assert C.fault_kinds(3) == SCALE_OUT
    assert set(C.SCALE_OUT_KINDS) <= set(SCALE_OUT) and not set(C.SCALE_OUT_KINDS) & set(KINDS)
    # CARP's own checks have no place behind a BGP router
    assert not {"carp_bad_adverts", "arp_icmp_flood", "mgmt_link_cut", "cluster_toggle"} & set(SCALE_OUT)
    plan = C.schedule(5, 2 * len(SCALE_OUT), SCALE_OUT)
    assert sorted(plan[:len(SCALE_OUT)]) == SCALE_OUT and plan == C.schedule(5, 2 * len(SCALE_OUT), SCALE_OUT)


def test_kinds_option_per_mode():
    assert C.parse_kinds(None) == KINDS
    assert C.parse_kinds("drain, syn_flood,drain") == ["drain", "syn_flood"]
    with pytest.raises(ValueError, match="unknown fault kind.*nope"):
        C.parse_kinds("drain,nope")
    assert C.parse_kinds(None, scale_out=4) == SCALE_OUT
    assert C.parse_kinds("router_restart,appliance_kill", scale_out=2) == ["appliance_kill", "router_restart"]
    with pytest.raises(ValueError, match="carp_bad_adverts"):          # no CARP in the scale-out lab
        C.parse_kinds("carp_bad_adverts", scale_out=3)
    with pytest.raises(ValueError, match="router_restart"):            # no router in the pair's lab
        C.parse_kinds("router_restart")


def test_cli_refuses_bad_scale_out_and_bad_kinds_clearly():
    from control.lab import cli

    args = cli.build_parser().parse_args(["chaos", "--scale-out", "9"])
    with pytest.raises(ValueError, match="scale-out 9"):
        cli.cmd_chaos(args)
    args = cli.build_parser().parse_args(["chaos", "--scale-out", "3", "--kinds", "carp_bad_adverts"])
    with pytest.raises(ValueError, match="carp_bad_adverts"):
        cli.cmd_chaos(args)
    args = cli.build_parser().parse_args(["chaos", "--kinds", "meteor"])
    with pytest.raises(ValueError, match="meteor"):
        cli.cmd_chaos(args)
    text = cli.build_parser()._subparsers._group_actions[0].choices["chaos"].format_help()
    assert "--seed" in text and "--scale-out" in text and "--kinds" in text


# ---- invariants fed observations

def test_carp_exactly_one_master():
    assert C.check_carp({"web": {"A": "master", "B": "backup"}, "web6": {"A": "backup", "B": "master"}}) == []
    two = C.check_carp({"web": {"A": "master", "B": "master"}})
    none = C.check_carp({"web": {"A": "backup", "B": None}})
    assert two == ["cluster web: 2 masters (A=master, B=master)"] and "0 masters" in none[0]


def test_breaks_are_expected_only_when_a_round_overlapping_them_may_break_their_edge():
    rounds = [{"round": 1, "fault": "edge_kill", "t0": 100.0, "t1": 120.0, "may_break": ["e2"]},
              {"round": 2, "fault": "drain", "t0": 120.0, "t1": 140.0, "may_break": []},
              {"round": 3, "fault": "edge_remove_add", "t0": 140.0, "t1": 160.0, "may_break": ["e1"]}]
    conns = [{"id": 1, "edge": "e2", "last_ok": 105.0, "broken": 135.0},     # a request timeout shows late
             {"id": 2, "edge": "e1", "last_ok": 110.0, "broken": 110.5},
             {"id": 3, "edge": "e2", "last_ok": 125.0, "broken": 126.0},
             {"id": 4, "edge": "e1", "last_ok": 139.8, "broken": 140.3},     # the reset came in round 3
             {"id": 5, "edge": "e3", "last_ok": None, "opened": None, "broken": 99.0},    # before any round
             {"id": 6, "edge": None, "last_ok": None, "broken": 130.0, "err": "connect: TimeoutError()"}]
    expected, unexpected = C.split_broken(conns, rounds)
    assert [(c["id"], c["round"]) for c in expected] == [(1, 1), (4, 3)]
    assert [(c["id"], c["round"]) for c in unexpected] == [(2, 1), (3, 2), (5, None)]


def test_no_new_connection_inside_an_edge_window():
    events = [{"t": 10.0, "edge": "e1"}, {"t": 11.0, "edge": "e2"}, {"t": 12.0, "edge": "e2"},
              {"t": 15.0, "edge": "e2"}, {"t": 11.5, "edge": None, "err": "ConnectionRefusedError"}]
    assert C.check_no_new(events, [("e2", 11.5, 15.0)]) == [{"t": 12.0, "edge": "e2"}]
    assert C.check_no_new(events, []) == []


STORE = [{"name": "web", "cluster_ip": "198.51.100.10", "enabled": True,
          "edge": [{"name": "e1", "ip": "198.51.100.21", "weight": 1, "state": "active"},
                   {"name": "e2", "ip": "198.51.100.22", "weight": 3, "state": "draining"}]}]


def live(**over):
    lv = {"web": {"cluster_ip": "198.51.100.10", "enabled": True, "active": True,
                  "edges": {"e1": {"ip": "198.51.100.21", "weight": 1, "state": "up"},
                            "e2": {"ip": "198.51.100.22", "weight": 3, "state": "draining"}}}}
    for k, v in over.items():
        if k in ("e1", "e2"):
            lv["web"]["edges"][k].update(v)
        else:
            lv["web"][k] = v
    return lv


def test_drift_live_config_against_the_store():
    store = C.store_summary(STORE)
    assert C.check_drift(store, live(), {}, {"web": True}) == []
    # an active edge whose health is down is live as down, not as drift
    assert C.check_drift(store, live(e1={"state": "down"}), {("web", "e1"): "down"}, {}) == []
    assert C.check_drift(store, live(e1={"state": "down"}), {("web", "e1"): "up"}, {}) == [
        "cluster web: edge e1 live 198.51.100.21/1/down, store 198.51.100.21/1/up"]
    assert C.check_drift(store, live(e2={"weight": 1}), {}, {}) == [
        "cluster web: edge e2 live 198.51.100.22/1/draining, store 198.51.100.22/3/draining"]
    assert C.check_drift(store, live(enabled=False), {}, {}) == ["cluster web: live enabled=False, store True"]
    assert C.check_drift(store, live(), {}, {"web": False}) == ["cluster web: live owned=True, CARP says False"]
    lv = live()
    del lv["web"]["edges"]["e2"]
    assert C.check_drift(store, lv, {}, {}) == ["cluster web: edge e2 not live"]
    assert C.check_drift(store, {}, {}, {}) == ["cluster web: not live"]


def test_both_appliances_agree_on_the_edge_set():
    a = C.store_summary(STORE)
    b = C.store_summary([{**STORE[0], "edge": STORE[0]["edge"][:1]}])
    assert C.check_edge_sets({"A": a, "B": a}, ("web",)) == []
    bad = C.check_edge_sets({"A": a, "B": b}, ("web",))
    assert len(bad) == 1 and bad[0].startswith("cluster web: A:")


def test_counters_never_go_backwards():
    stats = {"ports": [{"port": 0, "rx_packets": 10, "tx_packets": 8, "exc_to_kernel": 2, "drops": {"no_mbuf": 0},
                        "name": "p0", "link_up": True}],
             "workers": [{"worker": 1, "polls": 99, "lcore": 1, "cycles_per_packet": 3.5}],
             "clusters": {"web": {"slot": 2, "packets": 5, "bytes": 500, "drop_not_active": 0, "active": True,
                                  "edges": {"e1": {"slot": 0, "packets": 4, "new_flows": 2, "weight": 1}}},
                          "new": {"slot": None, "packets": 0}}}
    cur = C.flat_counters(stats)
    assert cur == {"port0.rx_packets": 10, "port0.tx_packets": 8, "port0.exc_to_kernel": 2, "port0.drops.no_mbuf": 0,
                   "worker1.polls": 99, "web@2.packets": 5, "web@2.bytes": 500, "web@2.drop_not_active": 0,
                   "web@2.e1@0.packets": 4, "web@2.e1@0.new_flows": 2}
    assert C.check_counters(cur, {**cur, "port0.rx_packets": 11}) == []
    assert C.check_counters(cur, {**cur, "web@2.packets": 4}) == ["web@2.packets: 5 -> 4"]


def test_resources_growth_per_instance_after_warm_up():
    r = C.Resources()
    assert C.WARMUP_ROUNDS == 3
    for rss, fds in ((50_000, 20), (60_000, 30), (61_000, 30), (61_500, 30), (62_000, 31)):   # 3 rounds warm-up
        r.add("A.control", 100, rss, fds)
    for rss in (40_000, 40_100, 40_200, 60_000):     # a restarted instance too short-lived to judge
        r.add("A.control", 200, rss, 10)
    for rss in (9_000, 9_000, 9_000, 9_050, 9_100):
        r.add("B.dataplane", 300, rss, 5)
    rss, fds = r.growth()
    assert rss == {"A.control": 1000, "B.dataplane": 100} and fds == {"A.control": 1, "B.dataplane": 0}
    assert r.check() == []
    r.add("A.control", 100, 61_000 + C.RSS_LIMIT_KIB + 1, 30 + C.FD_LIMIT + 1)
    assert r.check() == [f"A.control: RSS grew {C.RSS_LIMIT_KIB + 1} KiB (limit {C.RSS_LIMIT_KIB})",
                         f"A.control: {C.FD_LIMIT + 1} more open descriptors (limit {C.FD_LIMIT})"]
    assert r.series["B.dataplane"][0] == [0, 300, 9_000, 5]


def test_proc_usage_of_this_process_and_of_none():
    import os

    rss, fds = C.proc_usage(os.getpid())
    assert rss > 1000 and fds >= 3
    assert C.proc_usage(2 ** 22 + 7) is None


def test_report_keys():
    v = C.Violation(3, "drain", "no_new_to_unavailable_edge", {"events": [{"t": 1.0, "edge": "e2"}]})
    res = C.report(9, 4, {"drain": 2, "edge_kill": 2}, [v], 120, 5, 1, {"A.control": 12}, {"A.control": 0}, 61.23)
    assert set(res) == {"seed", "rounds", "faults", "violations", "connections", "rss_growth_kib", "fd_growth",
                        "run_s"}
    assert res["connections"] == {"opened": 120, "broken_expected": 5, "broken_unexpected": 1}
    assert res["violations"] == [{"round": 3, "fault": "drain", "invariant": "no_new_to_unavailable_edge",
                                  "evidence": {"events": [{"t": 1.0, "edge": "e2"}]}}]
    assert res["run_s"] == 61.2 and res["faults"] == {"drain": 2, "edge_kill": 2}


def test_hostile_frames_are_well_formed():
    from control.carp import codec
    from control.lab import hostile as H

    rng = random.Random(1)
    f = H.syn_frame(H.mac("02:00:00:00:01:0a"), bytes(6), bytes([198, 51, 100, 10]), 80, rng)
    assert f[12:14] == b"\x08\x00" and f[23] == 6 and f[26] == 203 and H.csum(f[14:34]) == 0
    assert f[47] == 0x02                                             # SYN only
    tcp_pseudo = f[26:34] + bytes([0, 6]) + (len(f) - 34).to_bytes(2, "big") + f[34:]
    assert H.csum(tcp_pseudo) == 0
    a = H.arp_frame(bytes(6), bytes([198, 51, 100, 201]), bytes([198, 51, 100, 2]))
    assert a[:6] == b"\xff" * 6 and a[12:14] == b"\x08\x06" and a[-4:] == bytes([198, 51, 100, 2])
    i = H.icmp_frame(bytes(6), bytes(6), bytes(4), bytes(4), 5)
    assert i[34] == 8 and H.csum(i[34:]) == 0
    c = H.bad_hmac_frame(bytes(6), "198.51.100.99", 10, "198.51.100.10", 42)
    adv = codec.decode(c[34:])
    assert c[:6] == H.CARP_GROUP_MAC and adv.vhid == 10 and adv.advskew == 0
    with pytest.raises(codec.CarpError):
        codec.verify(adv, b"pydp-lab-carp", ["198.51.100.10"])


def test_cli_exit_status_follows_the_violations(monkeypatch, capsys, tmp_path):
    from control.lab import cli

    res = C.report(5, 2, {"drain": 1, "edge_kill": 1}, [], 40, 3, 0, {"A.control": 10}, {"A.control": 0}, 12.0)
    monkeypatch.setattr(C, "run", lambda *a, **k: res)
    args = cli.build_parser().parse_args(["chaos", "--rounds", "2", "--seed", "5", "--kinds", "drain,edge_kill"])
    assert cli.cmd_chaos(args) == 0 and "0 violations" in capsys.readouterr().out
    res["violations"] = [C.Violation(2, "edge_kill", "no_new_to_unavailable_edge", {"events": []}).row()]
    assert cli.cmd_chaos(args) == 1
    out = capsys.readouterr().out
    assert "1 violations" in out and "round 2 edge_kill: no_new_to_unavailable_edge" in out
    with pytest.raises(ValueError, match="--rounds 0"):
        cli.cmd_chaos(cli.build_parser().parse_args(["chaos", "--rounds", "0"]))


# ---- scale-out invariants

BIRD_ROUTES = """Table master4:
198.51.100.10/32     unicast [lbA 05:20:01.123] * (100) [AS64512i]
	via 198.51.100.2 on eth0
	Type: BGP univ
	BGP.origin: IGP
	BGP.as_path: 64512
	BGP.next_hop: 198.51.100.2
                     unicast [lbC 05:20:02.456] (100) [AS64512i]
	via 198.51.100.4 on eth0
	Type: BGP univ
                     unicast [lbB 05:20:01.789] (100) [AS64512i]
	via 198.51.100.3 on eth0
198.51.100.99/32     unicast [lbA 05:20:01.123] * (100) [AS64512i]
	via 198.51.100.2 on eth0
"""


def test_bird_routes_lists_every_path_of_a_prefix():
    r = C.bird_routes(BIRD_ROUTES)
    assert r["198.51.100.10/32"] == ["198.51.100.2", "198.51.100.3", "198.51.100.4"]
    assert r["198.51.100.99/32"] == ["198.51.100.2"]
    assert C.bird_routes("Table master4:\n") == {}


def test_check_routes_wants_every_announcing_appliance_and_no_other():
    addrs = {"A": "198.51.100.2", "B": "198.51.100.3", "C": "198.51.100.4"}
    all3 = ["198.51.100.2", "198.51.100.3", "198.51.100.4"]
    assert C.check_routes({"A": True, "B": True, "C": True}, addrs, all3, all3) == []
    out = C.check_routes({"A": True, "B": False, "C": True}, addrs, all3, all3)
    assert "appliance B: not announcing" in out and any("BIRD route" in x for x in out)
    assert any("kernel route" in x for x in out)
    # BIRD has it, the kernel lost a next hop (or the other way round)
    out = C.check_routes({"A": True, "B": True, "C": True}, addrs, all3, all3[:2])
    assert out == [f"router kernel route via {all3[:2]}, announced by {all3}"]


def test_check_maglev_wants_every_peer_to_agree():
    agree = {"web": {"192.0.2.2:7470": {"digest": "ab", "agreement": "agree"}}}
    assert C.check_maglev({"A": agree, "B": agree}) == []
    out = C.check_maglev({"A": agree, "B": {"web": {"192.0.2.1:7470": {"digest": "cd", "agreement": "mismatch"}}}})
    assert out == ["appliance B: cluster web: maglev {'192.0.2.1:7470': 'mismatch'}"]
    assert C.check_maglev({"A": {"web": {}}}) == ["appliance A: cluster web: no maglev peers"]


def test_keep_logs_copies_files_and_skips_sockets(tmp_path):
    # a scale-out run with violations lost its report: BIRD's control sockets (bird.ctl) could not be copied
    import socket

    run = tmp_path / "run"
    (run / "lbA").mkdir(parents=True)
    (run / "lbA" / "control.log").write_text("log\n")
    (run / "lbA" / "pydp.db").write_text("db")
    socks = []
    for name in ("lbA/bird.ctl", "lbA/ctl-1.sock"):
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(run / name))
        socks.append(s)
    try:
        dest = C.keep_logs(run, tmp_path / "chaos.json")
    finally:
        for s in socks:
            s.close()
    assert dest == str(tmp_path / "chaos-logs")
    assert sorted(p.name for p in (tmp_path / "chaos-logs" / "lbA").iterdir()) == ["control.log"]
