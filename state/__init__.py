"""Per-partition state: stores (memory, RocksDB), the manager that restores and
records them through compacted changelogs, the write-back cache, expiring entries
and compacted values."""
