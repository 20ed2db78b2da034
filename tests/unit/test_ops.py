"""control.ops: the one table of operations (RPC, HTTP and pydpctl on a store file), its argument checks, its
errors, the history it records and the revision check."""

from __future__ import annotations

import inspect

import pytest

from control import ops
from control.store import Store

TWO = [{"name": "e1", "ip": "198.51.100.21"}, {"name": "e2", "ip": "198.51.100.22"}]


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "pydp.db") as s:
        s.add_cluster({"name": "web", "cluster_ip": "198.51.100.10", "edge": TWO})
        yield s


def test_the_table_matches_the_store_methods():
    for op in ops.OPS.values():
        sig = inspect.signature(getattr(Store, op.method))
        params = [p for p in sig.parameters.values() if p.name != "self"]
        assert [p.name for p in params] == [p.name for p in op.params], op.name
        for p, q in zip(params, op.params):
            assert (p.default is inspect.Parameter.empty) == q.required, (op.name, p.name)
            if not q.required:
                assert p.default == q.default, (op.name, p.name)
    assert ops.WRITE_OPS == {"add_cluster", "edit_cluster", "delete_cluster", "duplicate_cluster",
                             "set_cluster_enabled", "add_edge", "edit_edge", "remove_edge", "set_edge_state",
                             "import_text", "set_bgp", "remove_bgp"}
    assert all(o.version == 1 for o in ops.OPS.values())
    t = ops.table()
    assert [x["name"] for x in t] == list(ops.OPS) and {x["kind"] for x in t} == {"read", "write"}


@pytest.mark.parametrize("name,args,field,text", [
    ("nope", {}, "op", "unknown operation 'nope'"),
    ("get_cluster", {}, "name", "name: missing"),
    ("get_cluster", {"name": 3}, "name", "name: must be string, got an integer"),
    ("get_cluster", {"name": "web", "colour": 1}, "colour", "colour: unknown parameter of get_cluster"),
    ("set_cluster_enabled", {"name": "web", "enabled": "yes"}, "enabled", "must be boolean, got a string"),
    ("set_edge_state", {"cluster": "web", "edge": "e1", "state": "sleepy"}, "state", "must be one of active"),
    ("duplicate_cluster", {"name": "web", "new_name": "w2", "cluster_ip": "198.51.100.11", "vhid": True}, "vhid",
     "must be integer, got a boolean"),
    ("add_edge", {"cluster": "web", "edge": []}, "edge", "must be object, got an array"),
    ("history", {"limit": 0}, "limit", "between 1 and 10000"),
])
def test_bad_arguments_name_the_field_and_change_nothing(store, name, args, field, text):
    rev = store.revision()
    with pytest.raises(ops.OpError) as e:
        ops.call(store, name, args, via="rpc", user="t")
    assert e.value.kind == "bad_request" and e.value.field == field and text in e.value.message
    assert store.revision() == rev


def test_store_refusals_carry_the_field(store):
    with pytest.raises(ops.OpError) as e:
        ops.call(store, "edit_cluster", {"name": "web", "changes": {"cluster_ip": "x", "carp": {"vhid": 0}}},
                 via="http", user="t")
    assert e.value.kind == "invalid"
    assert [x["field"] for x in e.value.errors] == ["cluster_ip", "carp.vhid"]
    with pytest.raises(ops.OpError) as e:
        ops.call(store, "remove_edge", {"cluster": "web", "edge": "e9"}, via="http", user="t")
    assert e.value.kind == "not_found"
    assert ops.error_field("cluster 'web' edge 'e1' weight: must be ...") == "edge.weight"
    assert ops.error_field("cluster 'web' edge name: duplicate edge name") == "edge.name"
    assert ops.error_field("cluster #2 edge #1 ip: bad") == "edge.ip"
    assert ops.error_field("name: duplicate cluster name 'web'") == "name"
    assert ops.error_field("the store is busy") == ""


def test_secrets_never_over_http(store):
    store.edit_cluster("web", {"carp": {"passphrase": "s3cret"}})
    with pytest.raises(ops.OpError) as e:
        ops.call(store, "list_clusters", {"include_secrets": True}, via="http", user="t")
    assert e.value.kind == "forbidden" and e.value.field == "include_secrets"
    rows, _ = ops.call(store, "list_clusters", {"include_secrets": True}, via="rpc", user="root")
    assert rows[0]["carp"]["passphrase"] == "s3cret"
    assert store.history(limit=1)[0]["args"] == {"name": "web", "changes": {"carp": {"passphrase": "***"}}}


def test_writes_are_recorded_and_checked_against_the_revision(store):
    rev = store.revision()
    result, info = ops.call(store, "set_edge_state", {"cluster": "web", "edge": "e1", "state": "draining"},
                            via="rpc", user="alice", if_match=rev)
    assert info == {"revision": rev + 1, "changed": True}
    h = store.history(limit=1)[0]
    assert (h["op"], h["via"], h["user"], h["revision"]) == ("set_edge_state", "rpc", "alice", rev + 1)
    with pytest.raises(ops.OpError) as e:
        ops.call(store, "set_edge_state", {"cluster": "web", "edge": "e1", "state": "active"}, via="http",
                 user="bob", if_match=rev)
    assert e.value.kind == "conflict" and e.value.field == "revision"
    assert store.revision() == rev + 1 and store.get_cluster("web")["edge"][0]["state"] == "draining"
    # a change that changes nothing keeps the revision and records nothing
    _, info = ops.call(store, "set_edge_state", {"cluster": "web", "edge": "e1", "state": "draining"},
                       via="http", user="bob", if_match=rev + 1)
    assert info == {"revision": rev + 1, "changed": False} and len(store.history()) == 2
    _, info = ops.call(store, "revision", {}, via="http", user="bob")
    assert info["revision"] is None


def test_import_is_recorded_without_its_text(store):
    text = store.export_text()
    ops.call(store, "import_text", {"text": text.replace("198.51.100.10", "198.51.100.11")}, via="cli", user="c")
    h = store.history(limit=1)[0]
    assert h["op"] == "import_text" and h["args"]["text"] == f"<{len(text)} characters>"


def test_direct_store_changes_are_recorded_too(store):
    store.delete_cluster("web")
    h = store.history(limit=1)[0]
    assert (h["op"], h["via"], h["args"]) == ("delete_cluster", "store", {"name": "web"})
