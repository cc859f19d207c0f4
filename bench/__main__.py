"""Run a benchmark: ``python -m bench <name> [options]``."""

import sys

BENCHES = {
    "passthrough": "bench.passthrough",
    "validation": "bench.validation",
    "features": "bench.features",
    "controls": "bench.controls",
    "path": "bench.path",
    "txn": "bench.txn",
    "stall": "bench.stall",
    "state": "bench.state",
    "idle": "bench.idle",
    "hotkey": "bench.hotkey",
    "actions": "bench.actions",
    "monitor": "bench.monitor",
    "decide": "bench.decide",
    "backtest": "bench.backtest",
    "peer": "bench.peer",
    "rates": "bench.rates",
    "primitives": "bench.primitives",
}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in BENCHES:
        print(f"usage: python -m bench {{{'|'.join(BENCHES)}}} [options]", file=sys.stderr)
        sys.exit(2)
    import importlib
    import signal

    # a timeout or kill ends the run through `finally`, so the broker it started stops too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    importlib.import_module(BENCHES[sys.argv[1]]).main(sys.argv[2:])


main()
