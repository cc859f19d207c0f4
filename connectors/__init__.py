"""tripwire.connectors"""
