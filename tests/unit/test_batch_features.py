import os
from pathlib import Path

from tripwire.features.batch import BatchTable

DAY = 86_400_000


def test_lookups_refresh_and_errors(tmp_path: Path) -> None:
    f = tmp_path / "reference.jsonl"
    f.write_text('{"kind": "account", "account_id": "acc-1", "opened": "1970-01-11", '
                 '"known_payees": ["401234-00000001"]}\n'
                 '{"kind": "merchant", "merchant_id": "m-bad", "high_risk": true}\n')
    clock = [0.0]
    table = BatchTable(f, refresh_s=60, clock=lambda: clock[0])
    view = {"account_id": "acc-1", "event_time": 30 * DAY, "counterparty": "401234-00000001",
            "merchant_id": "m-bad"}
    assert table.features(view) == ({"account_age_days": 20, "payee_known": True,
                                     "merchant_high_risk": True}, None)
    assert table.features({**view, "counterparty": "999999-1"})[0]["payee_known"] is False
    assert table.features({"account_id": "nobody", "event_time": 0}) == ({}, None)

    f.write_text('{"kind": "account", "account_id": "acc-1", "opened": "1970-01-21"}\n')
    os.utime(f, (1, 1))
    assert table.features(view)[0]["account_age_days"] == 20  # not yet time to refresh
    clock[0] = 61
    assert table.features(view)[0]["account_age_days"] == 10

    f.write_text("not json\n")
    os.utime(f, (2, 2))
    clock[0] = 200
    values, error = table.features(view)
    assert values["account_age_days"] == 10  # the last good table stays
    assert error is not None and "not refreshed" in error


def test_missing_file_is_an_error_not_a_crash(tmp_path: Path) -> None:
    values, error = BatchTable(tmp_path / "absent.jsonl").features({"event_time": 0})
    assert values == {} and error is not None and "absent.jsonl" in error


def test_the_decision_carries_batch_features_and_their_errors(tmp_path: Path) -> None:
    from tripwire.connectors.simulator import CARD_SCHEMA, normal_card_payments
    from tripwire.schemas.records import InRecord
    from tripwire.state.manager import StateManager
    from tripwire.streams.decision_path import DecisionPath

    ev = next(normal_card_payments(1, 1_790_000_000_000, 1))
    f = tmp_path / "ref.jsonl"
    f.write_text(f'{{"kind": "account", "account_id": "{ev["account_id"]}", '
                 '"opened": "2020-01-01"}\n')
    base = DecisionPath.default()
    for table, want_age, want_error in ((BatchTable(f), True, False),
                                        (BatchTable(tmp_path / "gone.jsonl"), False, True)):
        path = DecisionPath(base.codec, base.controls, batch=table)
        state = StateManager(path.name, list(path.stores))
        rec = InRecord("t", 0, 0, b"k", base.codec.encode(CARD_SCHEMA, ev), ev["event_time"])
        out = path.process([rec], ev["event_time"], state)[0]
        d = base.codec.decode(out.value)[1]
        assert out.topic_key == "decisions"
        assert ("account_age_days" in d["features"]) is want_age
        assert ("batch" in d["feature_errors"]) is want_error
        assert d["feature_provenance"]["card_auths_1h"] == "card/count/1h@1"
